/** @file Element types of tensors and host arrays, with their ONNX codes and typed arrays. */

/** Element types Diffuse traces. float16 is reserved for GPU graphs (ORT's CPU kernels are fp32). */
export type DType = 'float32' | 'float16' | 'int64' | 'int32' | 'bool';

export type TypedArrayOf<D extends DType> = D extends 'float32'
  ? Float32Array
  : D extends 'float16'
    ? Uint16Array // raw IEEE half bits: Node 20 has no Float16Array
    : D extends 'int64'
      ? BigInt64Array
      : D extends 'int32'
        ? Int32Array
        : Uint8Array;

export type AnyTypedArray = Float32Array | Uint16Array | BigInt64Array | Int32Array | Uint8Array;

interface DTypeInfo {
  /** onnx.TensorProto.DataType */
  onnx: number;
  bytes: number;
  isFloat: boolean;
  /** The typed array that holds it. */
  array: abstract new (...args: never[]) => AnyTypedArray;
  make(n: number): AnyTypedArray;
}

export const DTYPES: Record<DType, DTypeInfo> = {
  float32: { onnx: 1, bytes: 4, isFloat: true, array: Float32Array,
    make: (n) => new Float32Array(n) },
  float16: { onnx: 10, bytes: 2, isFloat: true, array: Uint16Array,
    make: (n) => new Uint16Array(n) },
  int64: { onnx: 7, bytes: 8, isFloat: false, array: BigInt64Array,
    make: (n) => new BigInt64Array(n) },
  int32: { onnx: 6, bytes: 4, isFloat: false, array: Int32Array,
    make: (n) => new Int32Array(n) },
  bool: { onnx: 9, bytes: 1, isFloat: false, array: Uint8Array,
    make: (n) => new Uint8Array(n) },
};

/** 'Float32Array (float32), ..., Uint8Array (bool)': the accepted arrays, for messages. */
export const ARRAY_TYPES = Object.entries(DTYPES)
  .map(([d, info]) => `${info.array.name} (${d})`).join(', ');

/** The class name of an array (or the type of a non-array), for messages. */
export function arrayName(a: unknown): string {
  if (a === null || typeof a !== 'object') return a === null ? 'null' : typeof a;
  return (a as object).constructor?.name ?? 'an object';
}

export function isFloat(d: DType): boolean {
  return DTYPES[d].isFloat;
}

/** The dtype a typed array holds (Uint16Array is read as float16 bits, Uint8Array as bool). */
export function dtypeOfArray(a: AnyTypedArray): DType {
  if (a instanceof Float32Array) return 'float32';
  if (a instanceof BigInt64Array) return 'int64';
  if (a instanceof Int32Array) return 'int32';
  if (a instanceof Uint16Array) return 'float16';
  if (a instanceof Uint8Array) return 'bool';
  // Not 'bool' by default: an Int8Array or Float64Array would be reinterpreted byte by byte.
  throw new TypeError(`HostArray: ${arrayName(a)} holds no dtype of Diffuse: expected ` +
    ARRAY_TYPES);
}
