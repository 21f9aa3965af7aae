/**
 * @file Reference implementations of tensor ops in plain TypeScript, for tests only.
 *
 * Tests check the ONNX-compiled engine's forward values against these functions. They are
 * deliberately slow and obvious: plain loops over multi-indices, float64 arithmetic inside,
 * float32 stored at the end, no tricks shared with the engine (no graphs, no ONNX, no
 * ONNX Runtime), so that a bug in the engine cannot hide behind the same bug here.
 * Semantics follow numpy / PyTorch, and ONNX where only ONNX defines a detail.
 *
 * Arrays are HostArrays in C (row-major) order. Arithmetic ops return float32 unless noted;
 * index outputs are int64 (BigInt64Array) and comparison outputs are 'bool' (Uint8Array of
 * 0/1). Pure data-movement ops (transpose, reshape, slice, concat, pad, expand, gather,
 * where, upsampleNearest2x) keep their input's dtype.
 */
import { DTYPES, type AnyTypedArray, type DType } from '../../src/engine/dtype.js';
import { HostArray, numel } from '../../src/engine/host.js';

// ---------------------------------------------------------------------------------------------
// Multi-index helpers
// ---------------------------------------------------------------------------------------------

/** Row-major strides (in elements) of a shape. */
export function strides(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i]!;
  }
  return s;
}

/** The multi-index of flat position `i` in a row-major array of `shape`. */
export function unravel(i: number, shape: readonly number[]): number[] {
  const idx = new Array<number>(shape.length);
  for (let k = shape.length - 1; k >= 0; k--) {
    const d = shape[k]!;
    idx[k] = i % d;
    i = Math.floor(i / d);
  }
  return idx;
}

/** The flat position of a multi-index, given the strides. */
export function ravel(idx: readonly number[], strd: readonly number[]): number {
  let flat = 0;
  for (let k = 0; k < idx.length; k++) flat += idx[k]! * strd[k]!;
  return flat;
}

/** numpy broadcasting of several shapes (right-aligned; a dim of 1 stretches). */
export function broadcastShapes(...shapes: (readonly number[])[]): number[] {
  const rank = Math.max(0, ...shapes.map((s) => s.length));
  const out = new Array<number>(rank).fill(1);
  for (const s of shapes) {
    const off = rank - s.length;
    for (let k = 0; k < s.length; k++) {
      const d = s[k]!;
      const o = out[off + k]!;
      if (d === o || d === 1) continue;
      if (o === 1) out[off + k] = d;
      else throw new RangeError(`cannot broadcast shapes ${shapes.map(fmtShape).join(', ')}`);
    }
  }
  return out;
}

/**
 * The flat position in an input of shape `inShape` (with strides `inStrides`) that the output
 * multi-index `outIdx` reads under numpy broadcasting: right-aligned, size-1 dims read index 0.
 */
export function broadcastIndex(
  outIdx: readonly number[],
  inShape: readonly number[],
  inStrides: readonly number[] = strides(inShape),
): number {
  const off = outIdx.length - inShape.length;
  let flat = 0;
  for (let k = 0; k < inShape.length; k++) {
    if (inShape[k] !== 1) flat += outIdx[off + k]! * inStrides[k]!;
  }
  return flat;
}

function fmtShape(s: readonly number[]): string {
  return `[${s.join(', ')}]`;
}

function normAxis(axis: number, rank: number, what: string): number {
  const a = axis < 0 ? axis + rank : axis;
  if (!Number.isInteger(a) || a < 0 || a >= rank) {
    throw new RangeError(`${what}: axis ${axis} out of range for rank ${rank}`);
  }
  return a;
}

// ---------------------------------------------------------------------------------------------
// Element access
// ---------------------------------------------------------------------------------------------

/** Index access common to every typed array (reads give number or bigint). */
type Elements = { [i: number]: number | bigint; readonly length: number };

function elems(a: AnyTypedArray): Elements {
  return a as unknown as Elements;
}

/** IEEE half-precision bits to a number. */
function halfToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac === 0 ? sign * Infinity : NaN;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** All elements as float64 numbers (int64 through Number, bool as 0/1, float16 decoded). */
function values(x: HostArray): Float64Array {
  const out = new Float64Array(x.size);
  const d = elems(x.data);
  for (let i = 0; i < out.length; i++) {
    out[i] = x.dtype === 'float16' ? halfToNumber(d[i] as number) : Number(d[i]);
  }
  return out;
}

/** A float32 (or bool: nonzero -> 1) HostArray from float64 values. */
function fromValues(
  v: ArrayLike<number>,
  shape: readonly number[],
  dtype: 'float32' | 'bool' = 'float32',
): HostArray {
  if (dtype === 'bool') {
    const out = new Uint8Array(v.length);
    for (let i = 0; i < v.length; i++) out[i] = v[i] !== 0 ? 1 : 0;
    return new HostArray(out, shape, 'bool');
  }
  return new HostArray(Float32Array.from(v), shape, 'float32');
}

/** `v` in the storage of `dtype` (bigint for int64). */
function storable(v: number, dtype: DType): number | bigint {
  if (dtype === 'int64') return BigInt(Math.trunc(v));
  if (dtype === 'bool') return v !== 0 ? 1 : 0;
  if (dtype === 'float16') throw new TypeError('reference: writing float16 is not supported');
  return v;
}

/**
 * A new array of `outShape` and x's dtype whose element at multi-index `idx` is x's element
 * at flat position `src(idx)`, or `fill` where `src` returns -1.
 */
function remap(
  x: HostArray,
  outShape: readonly number[],
  src: (idx: number[]) => number,
  fill = 0,
): HostArray {
  const n = numel(outShape);
  const out = DTYPES[x.dtype].make(n);
  const o = elems(out);
  const d = elems(x.data);
  const fillV = x.dtype === 'float16' ? 0 : storable(fill, x.dtype);
  for (let i = 0; i < n; i++) {
    const j = src(unravel(i, outShape));
    o[i] = j < 0 ? fillV : d[j]!;
  }
  return new HostArray(out, outShape, x.dtype);
}

// ---------------------------------------------------------------------------------------------
// Elementwise
// ---------------------------------------------------------------------------------------------

export function unary(x: HostArray, f: (v: number) => number): HostArray {
  const v = values(x);
  const out = new Float64Array(v.length);
  for (let i = 0; i < v.length; i++) out[i] = f(v[i]!);
  return fromValues(out, x.shape);
}

/** `f` elementwise under numpy broadcasting; for 'bool' output a nonzero result is true. */
export function binary(
  a: HostArray,
  b: HostArray,
  f: (x: number, y: number) => number,
  outDtype: 'float32' | 'bool' = 'float32',
): HostArray {
  const shape = broadcastShapes(a.shape, b.shape);
  const av = values(a);
  const bv = values(b);
  const as = strides(a.shape);
  const bs = strides(b.shape);
  const out = new Float64Array(numel(shape));
  for (let i = 0; i < out.length; i++) {
    const idx = unravel(i, shape);
    out[i] = f(av[broadcastIndex(idx, a.shape, as)]!, bv[broadcastIndex(idx, b.shape, bs)]!);
  }
  return fromValues(out, shape, outDtype);
}

/** numpy where(c, a, b), broadcasting all three; the output has a's dtype. */
export function where(c: HostArray, a: HostArray, b: HostArray): HostArray {
  if (a.dtype !== b.dtype) throw new TypeError(`where: dtypes ${a.dtype} and ${b.dtype} differ`);
  const shape = broadcastShapes(c.shape, a.shape, b.shape);
  const cv = values(c);
  const [cs, as, bs] = [strides(c.shape), strides(a.shape), strides(b.shape)];
  const out = DTYPES[a.dtype].make(numel(shape));
  const o = elems(out);
  const ad = elems(a.data);
  const bd = elems(b.data);
  for (let i = 0; i < out.length; i++) {
    const idx = unravel(i, shape);
    o[i] =
      cv[broadcastIndex(idx, c.shape, cs)] !== 0
        ? ad[broadcastIndex(idx, a.shape, as)]!
        : bd[broadcastIndex(idx, b.shape, bs)]!;
  }
  return new HostArray(out, shape, a.dtype);
}

// ---------------------------------------------------------------------------------------------
// Reductions
// ---------------------------------------------------------------------------------------------

/**
 * Splits x's positions into groups that share the kept (non-reduced) coordinates. Returns
 * the output shape (with or without the reduced dims) and, for each output position, the
 * flat input positions reduced into it, in increasing order.
 */
function reductionGroups(
  shape: readonly number[],
  axes: readonly number[],
  keepDims: boolean,
): { outShape: number[]; groups: number[][] } {
  const rank = shape.length;
  const reduced = new Set(axes.map((a) => normAxis(a, rank, 'reduce')));
  const keptShape = shape.map((d, k) => (reduced.has(k) ? 1 : d));
  const groups: number[][] = Array.from({ length: numel(keptShape) }, () => []);
  const ks = strides(keptShape);
  for (let i = 0; i < numel(shape); i++) {
    const idx = unravel(i, shape);
    groups[broadcastIndex(idx, keptShape, ks)]!.push(i);
  }
  const outShape = keepDims ? keptShape : shape.filter((_, k) => !reduced.has(k));
  return { outShape, groups };
}

/**
 * Sum, mean or max over `axes` (an empty list reduces nothing). Over zero elements the sum is
 * 0, the mean NaN and the max -Infinity. max propagates NaN (as numpy and torch do).
 */
export function reduce(
  x: HostArray,
  axes: number[],
  keepDims: boolean,
  kind: 'sum' | 'mean' | 'max',
): HostArray {
  const v = values(x);
  const { outShape, groups } = reductionGroups(x.shape, axes, keepDims);
  const out = groups.map((g) => {
    if (kind === 'max') {
      let m = -Infinity;
      for (const i of g) m = Math.max(m, v[i]!); // Math.max propagates NaN
      return m;
    }
    let s = 0;
    for (const i of g) s += v[i]!;
    return kind === 'mean' ? s / g.length : s;
  });
  return fromValues(out, outShape);
}

/** Index (int64) of the first maximum along `axis`; a NaN counts as the maximum (numpy). */
export function argmax(x: HostArray, axis: number, keepDims: boolean): HostArray {
  const ax = normAxis(axis, x.shape.length, 'argmax');
  if (x.shape[ax] === 0) throw new RangeError('argmax: empty axis');
  const v = values(x);
  const { outShape, groups } = reductionGroups(x.shape, [ax], keepDims);
  const out = new BigInt64Array(groups.length);
  groups.forEach((g, o) => {
    let best = 0; // groups list positions in increasing order, i.e. increasing index on `ax`
    for (let j = 1; j < g.length; j++) {
      if (Number.isNaN(v[g[best]!]!)) break;
      if (Number.isNaN(v[g[j]!]!) || v[g[j]!]! > v[g[best]!]!) best = j;
    }
    out[o] = BigInt(best);
  });
  return new HostArray(out, outShape, 'int64');
}

/** Calls `fn` once per line along `axis`, with the flat positions of that line in order. */
function forEachLine(shape: readonly number[], axis: number, fn: (line: number[]) => void): void {
  const { groups } = reductionGroups(shape, [axis], true);
  for (const g of groups) fn(g);
}

/**
 * The k largest (or smallest) values along `axis` and their int64 indices, sorted (descending
 * for largest, ascending otherwise); equal values keep the lower index first. NaN inputs are
 * not supported (their order is unspecified).
 */
export function topk(
  x: HostArray,
  k: number,
  axis: number,
  largest: boolean,
): { values: HostArray; indices: HostArray } {
  const ax = normAxis(axis, x.shape.length, 'topk');
  const n = x.shape[ax]!;
  if (!Number.isInteger(k) || k < 0 || k > n) {
    throw new RangeError(`topk: k=${k} for an axis of ${n}`);
  }
  const v = values(x);
  const outShape = x.shape.map((d, i) => (i === ax ? k : d));
  const os = strides(outShape);
  const vals = new Float64Array(numel(outShape));
  const inds = new BigInt64Array(vals.length);
  forEachLine(x.shape, ax, (line) => {
    const order = line.map((_, j) => j);
    order.sort((p, q) => {
      const d = largest ? v[line[q]!]! - v[line[p]!]! : v[line[p]!]! - v[line[q]!]!;
      return d !== 0 ? d : p - q;
    });
    const base = unravel(line[0]!, x.shape);
    for (let j = 0; j < k; j++) {
      base[ax] = j;
      const o = ravel(base, os);
      vals[o] = v[line[order[j]!]!]!;
      inds[o] = BigInt(order[j]!);
    }
  });
  return { values: fromValues(vals, outShape), indices: new HostArray(inds, outShape, 'int64') };
}

/** exp(x - max) / sum(exp(x - max)) along `axis`. */
export function softmax(x: HostArray, axis: number): HostArray {
  const ax = normAxis(axis, x.shape.length, 'softmax');
  const v = values(x);
  const out = new Float64Array(v.length);
  forEachLine(x.shape, ax, (line) => {
    let m = -Infinity;
    for (const i of line) m = Math.max(m, v[i]!);
    let s = 0;
    for (const i of line) s += Math.exp(v[i]! - m);
    for (const i of line) out[i] = Math.exp(v[i]! - m) / s;
  });
  return fromValues(out, x.shape);
}

/** x - max - log(sum(exp(x - max))) along `axis`. */
export function logSoftmax(x: HostArray, axis: number): HostArray {
  const ax = normAxis(axis, x.shape.length, 'logSoftmax');
  const v = values(x);
  const out = new Float64Array(v.length);
  forEachLine(x.shape, ax, (line) => {
    let m = -Infinity;
    for (const i of line) m = Math.max(m, v[i]!);
    let s = 0;
    for (const i of line) s += Math.exp(v[i]! - m);
    const lse = m + Math.log(s);
    for (const i of line) out[i] = v[i]! - lse;
  });
  return fromValues(out, x.shape);
}

// ---------------------------------------------------------------------------------------------
// Normalisation
// ---------------------------------------------------------------------------------------------

/** (v - mean) / sqrt(var + eps) over the given positions, biased variance; written to out. */
function normalise(
  v: Float64Array,
  group: readonly number[],
  eps: number,
  out: Float64Array,
): void {
  let s = 0;
  for (const i of group) s += v[i]!;
  const mean = s / group.length;
  let ss = 0;
  for (const i of group) ss += (v[i]! - mean) ** 2;
  const inv = 1 / Math.sqrt(ss / group.length + eps);
  for (const i of group) out[i] = (v[i]! - mean) * inv;
}

/**
 * Layer norm over the trailing axes [axis, rank) (ONNX LayerNormalization / torch layer_norm):
 * biased variance; scale and bias broadcast against x.shape.slice(axis).
 */
export function layerNorm(
  x: HostArray,
  axis: number,
  eps: number,
  scale?: HostArray,
  bias?: HostArray,
): HostArray {
  const rank = x.shape.length;
  const ax = normAxis(axis, rank, 'layerNorm');
  const v = values(x);
  const out = new Float64Array(v.length);
  const inner = x.shape.slice(ax);
  const m = numel(inner);
  for (let start = 0; start < v.length; start += m) {
    const group = Array.from({ length: m }, (_, j) => start + j);
    normalise(v, group, eps, out);
  }
  const affine = (p: HostArray | undefined, f: (o: number, q: number) => number): void => {
    if (p === undefined) return;
    broadcastShapes(inner, p.shape); // checks compatibility
    const pv = values(p);
    const ps = strides(p.shape);
    for (let i = 0; i < out.length; i++) {
      const idx = unravel(i % m, inner);
      out[i] = f(out[i]!, pv[broadcastIndex(idx, p.shape, ps)]!);
    }
  };
  affine(scale, (o, q) => o * q);
  affine(bias, (o, q) => o + q);
  return fromValues(out, x.shape);
}

/**
 * Group norm (torch GroupNorm): x [N, C, ...]; the C channels split into `groups` consecutive
 * groups, each normalised over its channels and all spatial positions (biased variance); then
 * a per-channel scale and bias of shape [C].
 */
export function groupNorm(
  x: HostArray,
  groups: number,
  eps: number,
  scale?: HostArray,
  bias?: HostArray,
): HostArray {
  if (x.shape.length < 2) throw new RangeError('groupNorm: x must be [N, C, ...]');
  const [n, c] = [x.shape[0]!, x.shape[1]!];
  if (c % groups !== 0) throw new RangeError(`groupNorm: ${c} channels in ${groups} groups`);
  const spatial = numel(x.shape.slice(2));
  const perGroup = (c / groups) * spatial;
  const v = values(x);
  const out = new Float64Array(v.length);
  for (let b = 0; b < n; b++) {
    for (let g = 0; g < groups; g++) {
      const start = (b * groups + g) * perGroup;
      normalise(v, Array.from({ length: perGroup }, (_, j) => start + j), eps, out);
    }
  }
  const sv = scale === undefined ? undefined : values(scale);
  const bv = bias === undefined ? undefined : values(bias);
  for (const p of [sv, bv]) {
    if (p !== undefined && p.length !== c) {
      throw new RangeError(`groupNorm: scale/bias not [${c}]`);
    }
  }
  for (let i = 0; i < out.length; i++) {
    const ch = Math.floor(i / spatial) % c;
    if (sv !== undefined) out[i] = out[i]! * sv[ch]!;
    if (bv !== undefined) out[i] = out[i]! + bv[ch]!;
  }
  return fromValues(out, x.shape);
}

// ---------------------------------------------------------------------------------------------
// Linear algebra and convolution
// ---------------------------------------------------------------------------------------------

/**
 * numpy matmul: [..., M, K] @ [..., K, N] -> [..., M, N] with the batch dims broadcast.
 * A rank-1 operand is promoted (a: [K] -> [1, K], b: [K] -> [K, 1]) and the added dim
 * removed from the result, as in numpy.
 */
export function matmul(a: HostArray, b: HostArray): HostArray {
  if (a.shape.length === 0 || b.shape.length === 0) throw new RangeError('matmul: scalar operand');
  const a1 = a.shape.length === 1;
  const b1 = b.shape.length === 1;
  const aShape = a1 ? [1, a.shape[0]!] : [...a.shape];
  const bShape = b1 ? [b.shape[0]!, 1] : [...b.shape];
  const [m, k] = aShape.slice(-2) as [number, number];
  const [k2, n] = bShape.slice(-2) as [number, number];
  if (k !== k2) throw new RangeError(`matmul: ${fmtShape(a.shape)} @ ${fmtShape(b.shape)}`);
  const aBatch = aShape.slice(0, -2);
  const bBatch = bShape.slice(0, -2);
  const batch = broadcastShapes(aBatch, bBatch);
  const as = strides(aShape).slice(0, -2);
  const bs = strides(bShape).slice(0, -2);
  const av = values(a);
  const bv = values(b);
  const out = new Float64Array(numel(batch) * m * n);
  for (let t = 0; t < numel(batch); t++) {
    const idx = unravel(t, batch);
    const ao = broadcastIndex(idx, aBatch, as);
    const bo = broadcastIndex(idx, bBatch, bs);
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let p = 0; p < k; p++) s += av[ao + i * k + p]! * bv[bo + p * n + j]!;
        out[(t * m + i) * n + j] = s;
      }
    }
  }
  let outShape = [...batch, m, n];
  if (a1) outShape = outShape.filter((_, i) => i !== outShape.length - 2);
  if (b1) outShape = outShape.slice(0, -1);
  return fromValues(out, outShape);
}

/** softmax(scale q k^T) v over [B, H, T, D] tensors ('tokens') or [B, H, D, T] ('channels'). */
export function attention(q: HostArray, k: HostArray, v: HostArray, scale: number,
  layout: 'tokens' | 'channels'): HostArray {
  const swap = (x: HostArray) => transpose(x, [0, 1, 3, 2]);
  const [qt, kt, vt] = layout === 'tokens' ? [q, k, v] : [swap(q), swap(k), swap(v)];
  const s = matmul(qt, swap(kt));
  const o = matmul(softmax(unary(s, (x) => x * scale), -1), vt);
  return layout === 'tokens' ? o : swap(o);
}

function checkRank4(x: HostArray, what: string): [number, number, number, number] {
  if (x.shape.length !== 4) {
    throw new RangeError(`${what}: expected rank 4, got ${fmtShape(x.shape)}`);
  }
  return x.shape as unknown as [number, number, number, number];
}

/**
 * 2-D convolution as torch Conv2d / ONNX Conv (cross-correlation, no kernel flip).
 * x [N, C, H, W], w [O, C/groups, kh, kw], bias [O]; pads are [top, left, bottom, right];
 * out size floor((H + pt + pb - d*(kh-1) - 1) / s) + 1; padding reads zeros.
 */
export function conv2d(
  x: HostArray,
  w: HostArray,
  bias: HostArray | undefined,
  stride: [number, number],
  pads: [number, number, number, number],
  dilation: [number, number],
  groups: number,
): HostArray {
  const [n, c, h, wd] = checkRank4(x, 'conv2d x');
  const [o, cg, kh, kw] = checkRank4(w, 'conv2d w');
  if (c % groups !== 0 || o % groups !== 0 || cg !== c / groups) {
    throw new RangeError(
      `conv2d: x ${fmtShape(x.shape)}, w ${fmtShape(w.shape)}, groups ${groups}`,
    );
  }
  const [sy, sx] = stride;
  const [pt, pl, pb, pr] = pads;
  const [dy, dx] = dilation;
  const oh = Math.floor((h + pt + pb - dy * (kh - 1) - 1) / sy) + 1;
  const ow = Math.floor((wd + pl + pr - dx * (kw - 1) - 1) / sx) + 1;
  const og = o / groups;
  const xv = values(x);
  const wv = values(w);
  const bv = bias === undefined ? undefined : values(bias);
  const xs = strides(x.shape);
  const ws = strides(w.shape);
  const outShape = [n, o, Math.max(oh, 0), Math.max(ow, 0)];
  const out = new Float64Array(numel(outShape));
  for (let i = 0; i < out.length; i++) {
    const [b, oc, y, xo] = unravel(i, outShape) as [number, number, number, number];
    const g = Math.floor(oc / og);
    let s = bv === undefined ? 0 : bv[oc]!;
    for (let ci = 0; ci < cg; ci++) {
      for (let ky = 0; ky < kh; ky++) {
        const iy = y * sy - pt + ky * dy;
        if (iy < 0 || iy >= h) continue;
        for (let kx = 0; kx < kw; kx++) {
          const ix = xo * sx - pl + kx * dx;
          if (ix < 0 || ix >= wd) continue;
          s += xv[ravel([b, g * cg + ci, iy, ix], xs)]! * wv[ravel([oc, ci, ky, kx], ws)]!;
        }
      }
    }
    out[i] = s;
  }
  return fromValues(out, outShape);
}

/**
 * 2-D transposed convolution as torch ConvTranspose2d / ONNX ConvTranspose: the adjoint of
 * conv2d in x. x [N, C, H, W], w [C, O/groups, kh, kw], bias [O]; pads are ONNX-style
 * [top, left, bottom, right] (trimmed off the full output); the output size is
 * (H-1)*s - pt - pb + d*(kh-1) + 1 + outputPadding. Input (b, c, iy, ix) adds
 * x * w[c, o, ky, kx] into output (b, g*O/groups + o, iy*s - pt + ky*d, ix*s - pl + kx*d).
 */
export function convTranspose2d(
  x: HostArray,
  w: HostArray,
  bias: HostArray | undefined,
  stride: [number, number],
  pads: [number, number, number, number],
  dilation: [number, number],
  groups: number,
  outputPadding: [number, number],
): HostArray {
  const [n, c, h, wd] = checkRank4(x, 'convTranspose2d x');
  const [wc, og, kh, kw] = checkRank4(w, 'convTranspose2d w');
  if (wc !== c || c % groups !== 0) {
    throw new RangeError(
      `convTranspose2d: x ${fmtShape(x.shape)}, w ${fmtShape(w.shape)}, groups ${groups}`,
    );
  }
  const [sy, sx] = stride;
  const [pt, pl, pb, pr] = pads;
  const [dy, dx] = dilation;
  const o = og * groups;
  const cg = c / groups;
  const oh = (h - 1) * sy - pt - pb + dy * (kh - 1) + 1 + outputPadding[0];
  const ow = (wd - 1) * sx - pl - pr + dx * (kw - 1) + 1 + outputPadding[1];
  if (oh < 0 || ow < 0) throw new RangeError(`convTranspose2d: negative output size`);
  const xv = values(x);
  const wv = values(w);
  const ws = strides(w.shape);
  const outShape = [n, o, oh, ow];
  const os = strides(outShape);
  const out = new Float64Array(numel(outShape));
  if (bias !== undefined) {
    const bv = values(bias);
    if (bv.length !== o) throw new RangeError(`convTranspose2d: bias not [${o}]`);
    for (let i = 0; i < out.length; i++) out[i] = bv[unravel(i, outShape)[1]!]!;
  }
  for (let i = 0; i < xv.length; i++) {
    const [b, ci, iy, ix] = unravel(i, x.shape) as [number, number, number, number];
    const g = Math.floor(ci / cg);
    for (let oc = 0; oc < og; oc++) {
      for (let ky = 0; ky < kh; ky++) {
        const y = iy * sy - pt + ky * dy;
        if (y < 0 || y >= oh) continue;
        for (let kx = 0; kx < kw; kx++) {
          const xo = ix * sx - pl + kx * dx;
          if (xo < 0 || xo >= ow) continue;
          out[ravel([b, g * og + oc, y, xo], os)]! += xv[i]! * wv[ravel([ci, oc, ky, kx], ws)]!;
        }
      }
    }
  }
  return fromValues(out, outShape);
}

// ---------------------------------------------------------------------------------------------
// Data movement (these keep the input's dtype)
// ---------------------------------------------------------------------------------------------

/** numpy transpose: out.shape[i] = x.shape[perm[i]]. */
export function transpose(x: HostArray, perm: number[]): HostArray {
  const rank = x.shape.length;
  if (perm.length !== rank || [...perm].sort((p, q) => p - q).some((p, i) => p !== i)) {
    throw new RangeError(`transpose: bad permutation [${perm.join(', ')}] for rank ${rank}`);
  }
  const outShape = perm.map((p) => x.shape[p]!);
  const xs = strides(x.shape);
  return remap(x, outShape, (idx) => {
    const src = new Array<number>(rank);
    perm.forEach((p, i) => (src[p] = idx[i]!));
    return ravel(src, xs);
  });
}

/** numpy reshape (a copy); one dim may be -1 and is then inferred. */
export function reshape(x: HostArray, shape: number[]): HostArray {
  const known = numel(shape.filter((d) => d !== -1));
  const holes = shape.filter((d) => d === -1).length;
  const full = shape.map((d) => (d === -1 ? x.size / known : d));
  if (holes > 1 || numel(full) !== x.size || !full.every((d) => Number.isInteger(d) && d >= 0)) {
    throw new RangeError(`reshape: ${fmtShape(x.shape)} to ${fmtShape(shape)}`);
  }
  return new HostArray(x.data.slice(), full, x.dtype);
}

/** Element j of axis i is x's element starts[i] + j*steps[i] (steps may be negative). */
export function slice(
  x: HostArray,
  starts: number[],
  steps: number[],
  counts: number[],
): HostArray {
  const rank = x.shape.length;
  if (starts.length !== rank || steps.length !== rank || counts.length !== rank) {
    throw new RangeError('slice: starts, steps and counts need one entry per axis');
  }
  for (let i = 0; i < rank; i++) {
    const last = starts[i]! + (counts[i]! - 1) * steps[i]!;
    const d = x.shape[i]!;
    if (counts[i]! > 0 && (starts[i]! < 0 || starts[i]! >= d || last < 0 || last >= d)) {
      throw new RangeError(`slice: axis ${i} reads outside [0, ${d})`);
    }
  }
  const xs = strides(x.shape);
  return remap(x, counts, (idx) => ravel(idx.map((j, i) => starts[i]! + j * steps[i]!), xs));
}

/** numpy concatenate along `axis`; the output has the first array's dtype. */
export function concat(xs: HostArray[], axis: number): HostArray {
  if (xs.length === 0) throw new RangeError('concat: no arrays');
  const first = xs[0]!;
  const rank = first.shape.length;
  const ax = normAxis(axis, rank, 'concat');
  for (const x of xs) {
    const ok =
      x.dtype === first.dtype &&
      x.shape.length === rank &&
      x.shape.every((d, i) => i === ax || d === first.shape[i]);
    if (!ok) throw new RangeError(`concat: ${fmtShape(x.shape)} vs ${fmtShape(first.shape)}`);
  }
  const outShape = [...first.shape];
  outShape[ax] = xs.reduce((s, x) => s + x.shape[ax]!, 0);
  const out = DTYPES[first.dtype].make(numel(outShape));
  const o = elems(out);
  const os = strides(outShape);
  let offset = 0;
  for (const x of xs) {
    const d = elems(x.data);
    for (let i = 0; i < x.size; i++) {
      const idx = unravel(i, x.shape);
      idx[ax]! += offset;
      o[ravel(idx, os)] = d[i]!;
    }
    offset += x.shape[ax]!;
  }
  return new HostArray(out, outShape, first.dtype);
}

/** Constant padding; pads are ONNX-style [begin_0..begin_{r-1}, end_0..end_{r-1}], >= 0. */
export function pad(x: HostArray, pads: number[], value: number): HostArray {
  const rank = x.shape.length;
  if (pads.length !== 2 * rank || pads.some((p) => !Number.isInteger(p) || p < 0)) {
    throw new RangeError(`pad: need ${2 * rank} non-negative pads, got [${pads.join(', ')}]`);
  }
  const outShape = x.shape.map((d, i) => d + pads[i]! + pads[rank + i]!);
  const xs = strides(x.shape);
  return remap(
    x,
    outShape,
    (idx) => {
      const src = idx.map((j, i) => j - pads[i]!);
      return src.every((j, i) => j >= 0 && j < x.shape[i]!) ? ravel(src, xs) : -1;
    },
    value,
  );
}

/** numpy broadcast_to: `shape` must be what x broadcasts to (x's dims are 1 or equal). */
export function expand(x: HostArray, shape: number[]): HostArray {
  const off = shape.length - x.shape.length;
  const ok = off >= 0 && x.shape.every((d, i) => d === 1 || d === shape[off + i]);
  if (!ok) throw new RangeError(`expand: ${fmtShape(x.shape)} to ${fmtShape(shape)}`);
  const xs = strides(x.shape);
  return remap(x, shape, (idx) => broadcastIndex(idx, x.shape, xs));
}

/** Int64 (or int32) index values as numbers, negatives counted from the end of `dim`. */
function indexValues(indices: HostArray, dim: number, what: string): number[] {
  if (indices.dtype !== 'int64' && indices.dtype !== 'int32') {
    throw new TypeError(`${what}: indices must be int64 or int32, got ${indices.dtype}`);
  }
  return Array.from(values(indices), (k) => {
    const j = k < 0 ? k + dim : k;
    if (j < 0 || j >= dim) throw new RangeError(`${what}: index ${k} out of range for ${dim}`);
    return j;
  });
}

/** numpy take(x, indices, axis): shape x.shape[:axis] + indices.shape + x.shape[axis+1:]. */
export function gather(x: HostArray, indices: HostArray, axis: number): HostArray {
  const rank = x.shape.length;
  const ax = normAxis(axis, rank, 'gather');
  const iv = indexValues(indices, x.shape[ax]!, 'gather');
  const ir = indices.shape.length;
  const outShape = [...x.shape.slice(0, ax), ...indices.shape, ...x.shape.slice(ax + 1)];
  const xs = strides(x.shape);
  const is = strides(indices.shape);
  return remap(x, outShape, (idx) => {
    const k = iv[ravel(idx.slice(ax, ax + ir), is)]!;
    return ravel([...idx.slice(0, ax), k, ...idx.slice(ax + ir)], xs);
  });
}

/**
 * A float32 copy of target with updates[i..., rest] added into row indices[i...] along axis 0
 * (duplicate indices accumulate; negative indices count from the end). indices has any shape
 * I, updates has shape I + target.shape[1:]. The adjoint of gather(., indices, 0).
 */
export function scatterAdd(target: HostArray, indices: HostArray, updates: HostArray): HostArray {
  if (target.shape.length === 0) throw new RangeError('scatterAdd: scalar target');
  const iv = indexValues(indices, target.shape[0]!, 'scatterAdd');
  const row = numel(target.shape.slice(1));
  const want = [...indices.shape, ...target.shape.slice(1)];
  if (want.length !== updates.shape.length || want.some((d, i) => d !== updates.shape[i])) {
    throw new RangeError(`scatterAdd: updates ${fmtShape(updates.shape)}, want ${fmtShape(want)}`);
  }
  const out = values(target);
  const uv = values(updates);
  iv.forEach((r, t) => {
    for (let j = 0; j < row; j++) out[r * row + j]! += uv[t * row + j]!;
  });
  return fromValues(out, target.shape);
}

/** [N, C, H, W] -> [N, C, 2H, 2W], out[.., y, x] = in[.., floor(y/2), floor(x/2)]. */
export function upsampleNearest2x(x: HostArray): HostArray {
  const [n, c, h, w] = checkRank4(x, 'upsampleNearest2x');
  const xs = strides(x.shape);
  return remap(x, [n, c, 2 * h, 2 * w], ([b, ch, y, xo]) =>
    ravel([b!, ch!, Math.floor(y! / 2), Math.floor(xo! / 2)], xs),
  );
}

/**
 * ONNX Cast: to int truncates toward zero (NaN or infinity into an int throws here, since
 * ONNX leaves it undefined); to bool is `v != 0` (so NaN is true); int64 beyond 2^53 loses
 * precision through float64, which the tests do not rely on.
 */
export function cast(x: HostArray, to: 'float32' | 'int64' | 'int32' | 'bool'): HostArray {
  const v = values(x);
  if (to === 'float32' || to === 'bool') return fromValues(v, x.shape, to);
  const out = DTYPES[to].make(v.length);
  const o = elems(out);
  for (let i = 0; i < v.length; i++) {
    if (!Number.isFinite(v[i]!)) throw new RangeError(`cast: ${v[i]} to ${to}`);
    o[i] = to === 'int64' ? BigInt(Math.trunc(v[i]!)) : Math.trunc(v[i]!);
  }
  return new HostArray<DType>(out, x.shape, to);
}

// ---------------------------------------------------------------------------------------------
// Special functions
// ---------------------------------------------------------------------------------------------

/**
 * The error function to about 1e-15 relative. For |v| < 6 the series
 * erf(v) = 2/sqrt(pi) * exp(-v^2) * sum_n (2v^2)^n v / (1*3*5*...*(2n+1)),
 * whose terms are all of v's sign (no cancellation); beyond, erf is +-1 in float64
 * (erfc(6) ~ 2e-17).
 */
export function erf(v: number): number {
  if (Number.isNaN(v)) return NaN;
  if (Math.abs(v) >= 6) return Math.sign(v);
  let term = v;
  let sum = v;
  for (let n = 1; Math.abs(term) > 1e-17 * Math.abs(sum); n++) {
    term *= (2 * v * v) / (2 * n + 1);
    sum += term;
  }
  return (2 / Math.sqrt(Math.PI)) * Math.exp(-v * v) * sum;
}

/** torch gelu: exact x * Phi(x) via erf, or its tanh approximation. */
export function gelu(x: HostArray, approximate: 'none' | 'tanh'): HostArray {
  if (approximate === 'tanh') {
    const c = Math.sqrt(2 / Math.PI);
    return unary(x, (v) => 0.5 * v * (1 + Math.tanh(c * (v + 0.044715 * v ** 3))));
  }
  return unary(x, (v) => 0.5 * v * (1 + erf(v / Math.SQRT2)));
}

/**
 * The largest |a - b| over all elements (shapes must match). Equal values (infinities
 * included) and NaN against NaN differ by 0; NaN against a number differs by Infinity.
 */
export function maxAbsDiff(a: HostArray, b: HostArray): number {
  if (a.shape.length !== b.shape.length || a.shape.some((d, i) => d !== b.shape[i])) {
    throw new RangeError(`maxAbsDiff: shapes ${fmtShape(a.shape)} and ${fmtShape(b.shape)}`);
  }
  const av = values(a);
  const bv = values(b);
  let m = 0;
  for (let i = 0; i < av.length; i++) {
    const [p, q] = [av[i]!, bv[i]!];
    if (p === q || (Number.isNaN(p) && Number.isNaN(q))) continue;
    const d = Number.isNaN(p) || Number.isNaN(q) ? Infinity : Math.abs(p - q);
    m = Math.max(m, d);
  }
  return m;
}
