/**
 * @file Host arrays: a typed array plus a shape, the values that go in and out of
 * compiled functions. Plain data (no methods that compute): computation belongs in graphs.
 */
import {
  ARRAY_TYPES, arrayName, DTYPES, dtypeOfArray, type AnyTypedArray, type DType, type TypedArrayOf,
} from './dtype.js';

export type Nested = number | boolean | bigint | Nested[];

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

function checkShape(shape: readonly number[], what: string): void {
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) {
      throw new TypeError(`${what}: shape must be non-negative integers, got [${shape.join(', ')}]`);
    }
  }
}

export class HostArray<D extends DType = DType> {
  readonly shape: readonly number[];
  readonly dtype: D;
  readonly data: TypedArrayOf<D>;

  constructor(data: TypedArrayOf<D>, shape: readonly number[], dtype?: D) {
    checkShape(shape, 'HostArray');
    if (dtype !== undefined) { // a dtype its array does not hold would reach ORT misread
      if (!Object.hasOwn(DTYPES, dtype)) {
        throw new TypeError(`HostArray: unknown dtype '${String(dtype)}': expected ${ARRAY_TYPES}`);
      }
      if (!(data instanceof DTYPES[dtype].array)) {
        throw new TypeError(`HostArray: dtype ${dtype} needs a ${DTYPES[dtype].array.name}, got ` +
          `${arrayName(data)}`);
      }
    }
    const dt = dtype ?? (dtypeOfArray(data) as D);
    const n = numel(shape);
    if (data.length !== n) {
      throw new TypeError(
        `HostArray: data has ${data.length} elements but shape [${shape.join(', ')}] needs ${n}`,
      );
    }
    this.data = data;
    this.shape = Object.freeze([...shape]);
    this.dtype = dt;
  }

  get size(): number {
    return this.data.length;
  }

  static zeros<D extends DType = 'float32'>(shape: readonly number[], dtype?: D): HostArray<D> {
    checkShape(shape, 'HostArray.zeros');
    const dt = (dtype ?? 'float32') as D;
    return new HostArray(DTYPES[dt].make(numel(shape)) as TypedArrayOf<D>, shape, dt);
  }

  static full(shape: readonly number[], value: number): HostArray<'float32'> {
    const a = HostArray.zeros(shape, 'float32');
    a.data.fill(value);
    return a;
  }

  static ones(shape: readonly number[]): HostArray<'float32'> {
    return HostArray.full(shape, 1);
  }

  static scalar(value: number): HostArray<'float32'> {
    return new HostArray(Float32Array.of(value), []);
  }

  /** From nested JS arrays; the shape is read off the nesting, which must be rectangular. */
  static fromNested<D extends DType = 'float32'>(values: Nested, dtype?: D): HostArray<D> {
    const shape: number[] = [];
    for (let v: Nested = values; Array.isArray(v); v = v[0] as Nested) {
      shape.push(v.length);
      if (v.length === 0) break;
    }
    const flat: Nested[] = [];
    const walk = (v: Nested, depth: number): void => {
      if (depth === shape.length) {
        if (Array.isArray(v)) throw new TypeError('HostArray.fromNested: ragged nesting (too deep)');
        flat.push(v);
        return;
      }
      if (!Array.isArray(v) || v.length !== shape[depth]) {
        throw new TypeError(
          `HostArray.fromNested: ragged nesting at depth ${depth}: expected ${shape[depth]} items`,
        );
      }
      for (const x of v) walk(x, depth + 1);
    };
    walk(values, 0);
    const dt = (dtype ?? 'float32') as D;
    const out = DTYPES[dt].make(flat.length);
    for (let i = 0; i < flat.length; i++) {
      const x = flat[i];
      if (out instanceof BigInt64Array) out[i] = BigInt(x as number | bigint);
      else (out as Float32Array)[i] = Number(x);
    }
    return new HostArray(out as TypedArrayOf<D>, shape, dt);
  }

  /** Element at a multi-index (numbers; int64 values come back as numbers). */
  get(...index: number[]): number {
    if (index.length !== this.shape.length) {
      throw new RangeError(`HostArray.get: ${index.length} indices for rank ${this.shape.length}`);
    }
    let flat = 0;
    for (let i = 0; i < index.length; i++) {
      const k = index[i]!;
      const d = this.shape[i]!;
      if (k < 0 || k >= d) throw new RangeError(`HostArray.get: index ${k} out of [0, ${d}) at axis ${i}`);
      flat = flat * d + k;
    }
    return Number(this.data[flat]);
  }

  toNested(): Nested {
    const vals = Array.from(this.data as ArrayLike<number | bigint>, (v) =>
      this.dtype === 'bool' ? v !== 0 : typeof v === 'bigint' ? Number(v) : v,
    ) as Nested[];
    const build = (axis: number, offset: number): Nested => {
      if (axis === this.shape.length) return vals[offset]!;
      const stride = numel(this.shape.slice(axis + 1));
      return Array.from({ length: this.shape[axis]! }, (_, i) => build(axis + 1, offset + i * stride));
    };
    return build(0, 0);
  }

  /** Same data, another shape of equal size (no copy). */
  reshape(shape: readonly number[]): HostArray<D> {
    return new HostArray(this.data, shape, this.dtype);
  }

  clone(): HostArray<D> {
    return new HostArray(this.data.slice() as TypedArrayOf<D>, this.shape, this.dtype);
  }

  toString(): string {
    const head = `${this.dtype}[${this.shape.join(',')}]`;
    const fmt = (v: number | bigint): string =>
      typeof v === 'bigint' ? v.toString() : Number.isInteger(v) ? String(v) : v.toPrecision(5);
    const limit = 6;
    const show = (axis: number, offset: number, indent: string): string => {
      if (axis === this.shape.length) return fmt(this.data[offset] as number | bigint);
      const n = this.shape[axis]!;
      const stride = numel(this.shape.slice(axis + 1));
      const idx = n <= limit ? [...Array(n).keys()] : [0, 1, 2, -1, n - 2, n - 1];
      const parts = idx.map((i) => (i < 0 ? '...' : show(axis + 1, offset + i * stride, indent + ' ')));
      const sep = axis === this.shape.length - 1 ? ', ' : `,\n${indent} `;
      return `[${parts.join(sep)}]`;
    };
    return `${head} ${show(0, 0, '')}`;
  }
}

export function isHostArray(x: unknown): x is HostArray {
  return x instanceof HostArray;
}

export type { AnyTypedArray };
