/**
 * @file Shared pieces of the safetensors format: the dtype table, `SafetensorsError` and its
 * rules, and the small checks that both the reader (`safetensors.ts`) and the writer
 * (`safetensors-write.ts`) use. Internal helpers are exported for those two modules only;
 * `safetensors.ts` re-exports the public ones.
 *
 * Reference: huggingface/safetensors, `safetensors/src/tensor.rs`. Layout: u64 little-endian
 * header length N, N bytes of UTF-8 JSON `{name: {dtype, shape, data_offsets: [begin, end]},
 * __metadata__?: {str: str}}`, then the data buffer.
 */

// ---- dtypes ----

/** Bytes per element of every dtype the header may name (sub-byte F4/F6 are not accepted). */
export const DTYPE_SIZE = {
  BOOL: 1, U8: 1, I8: 1, F8_E5M2: 1, F8_E4M3: 1, F8_E8M0: 1,
  I16: 2, U16: 2, F16: 2, BF16: 2,
  I32: 4, U32: 4, F32: 4,
  F64: 8, I64: 8, U64: 8, C64: 8,
} as const;

export type SafetensorsDtype = keyof typeof DTYPE_SIZE;

/** Real safetensors dtypes of under a byte, named as such rather than as unknown. */
export const SUB_BYTE_DTYPES: readonly string[] = ['F4', 'F6_E2M3', 'F6_E3M2'];

/** The typed array each readable dtype decodes to; F16/BF16 are raw bits unless widened. */
export interface DtypeArrays {
  F32: Float32Array; F64: Float64Array; I64: BigInt64Array; I32: Int32Array; I16: Int16Array;
  I8: Int8Array; U8: Uint8Array; BOOL: Uint8Array;
  F16: Uint16Array | Float32Array; BF16: Uint16Array | Float32Array;
}
export type ReadableDtype = keyof DtypeArrays;

type ViewCtor = new (buffer: ArrayBufferLike, byteOffset: number, length: number) => unknown;
export const VIEW_CTOR: { [D in ReadableDtype]: ViewCtor } = {
  F32: Float32Array, F64: Float64Array, I64: BigInt64Array, I32: Int32Array, I16: Int16Array,
  I8: Int8Array, U8: Uint8Array, BOOL: Uint8Array, F16: Uint16Array, BF16: Uint16Array,
};

export function isReadable(dtype: SafetensorsDtype): dtype is ReadableDtype {
  return Object.hasOwn(VIEW_CTOR, dtype);
}

// ---- errors ----

export type SafetensorsRule =
  | 'header-too-large' | 'header-truncated' | 'invalid-utf8' | 'invalid-json' | 'duplicate-key'
  | 'invalid-entry' | 'invalid-metadata' | 'offsets-not-contiguous' | 'size-mismatch'
  | 'file-length-mismatch' | 'unsupported-dtype' | 'tensor-not-found' | 'invalid-input';

/** A file (or writer input) that breaks one of the format's rules; `rule` says which. */
export class SafetensorsError extends Error {
  override name = 'SafetensorsError';
  constructor(readonly rule: SafetensorsRule, message: string) {
    super(`safetensors ${rule}: ${message}`);
  }
}

export function fail(rule: SafetensorsRule, message: string): never {
  throw new SafetensorsError(rule, message);
}

// ---- shared checks ----

export const METADATA_KEY = '__metadata__';
export const isLittleEndian = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** A short description of a header value for messages: never recursive, never huge. */
export function show(value: unknown): string {
  if (typeof value === 'string') {
    return JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}...` : value);
  }
  if (Array.isArray(value)) {
    const flat = value.length <= 16 && value.every((v) => typeof v !== 'object' || v === null);
    return flat ? `[${value.map(show).join(',')}]` : `an array of ${value.length} items`;
  }
  return typeof value === 'object' && value !== null ? 'an object' : String(value);
}

export const isIndex = (x: unknown): x is number => Number.isSafeInteger(x) && (x as number) >= 0;

/** Bytes a tensor needs, or a size-mismatch error when a partial product passes 2^53. */
export function tensorBytes(where: string, dtype: SafetensorsDtype, shape: readonly number[]):
  number {
  let count = 1n;
  for (const dim of shape) {
    count *= BigInt(dim);
    if (count > BigInt(Number.MAX_SAFE_INTEGER)) {
      fail('size-mismatch', `${where} shape ${show(shape)} has more than 2^53 elements`);
    }
  }
  const bytes = count * BigInt(DTYPE_SIZE[dtype]);
  if (bytes > BigInt(Number.MAX_SAFE_INTEGER)) {
    fail('size-mismatch', `${where} shape ${show(shape)} ${dtype} needs more than 2^53 bytes`);
  }
  return Number(bytes);
}
