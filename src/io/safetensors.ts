/**
 * @file Safe reader and writer for the safetensors format.
 *
 * Reference: huggingface/safetensors, `safetensors/src/tensor.rs` (`SafeTensors::read_metadata`,
 * `Metadata::validate`, `prepare`). Layout: u64 little-endian header length N, N bytes of UTF-8
 * JSON `{name: {dtype, shape, data_offsets: [begin, end]}, __metadata__?: {str: str}}`, then the
 * data buffer. Why: checkpoints are downloaded from strangers, so every number in the header is
 * checked before any allocation or view is made, and each failure is a `SafetensorsError` naming
 * its rule. Files are read lazily, tensor by tensor, and written by streaming into a temporary
 * file that is renamed over the target. About 580 lines, over the 400 budget: validation, half
 * conversions and the atomic writer share the dtype table and the header plan, and splitting
 * them would export internals.
 */
import { randomBytes } from 'node:crypto';
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';

// ---- dtypes ----

/** Bytes per element of every dtype the header may name (sub-byte F4/F6 are not accepted). */
const DTYPE_SIZE = {
  BOOL: 1, U8: 1, I8: 1, F8_E5M2: 1, F8_E4M3: 1, F8_E8M0: 1,
  I16: 2, U16: 2, F16: 2, BF16: 2,
  I32: 4, U32: 4, F32: 4,
  F64: 8, I64: 8, U64: 8, C64: 8,
} as const;

export type SafetensorsDtype = keyof typeof DTYPE_SIZE;

/** The typed array each readable dtype decodes to; F16/BF16 are raw bits unless widened. */
interface DtypeArrays {
  F32: Float32Array; F64: Float64Array; I64: BigInt64Array; I32: Int32Array; I16: Int16Array;
  I8: Int8Array; U8: Uint8Array; BOOL: Uint8Array;
  F16: Uint16Array | Float32Array; BF16: Uint16Array | Float32Array;
}
export type ReadableDtype = keyof DtypeArrays;

type ViewCtor = new (buffer: ArrayBufferLike, byteOffset: number, length: number) => unknown;
const VIEW_CTOR: { [D in ReadableDtype]: ViewCtor } = {
  F32: Float32Array, F64: Float64Array, I64: BigInt64Array, I32: Int32Array, I16: Int16Array,
  I8: Int8Array, U8: Uint8Array, BOOL: Uint8Array, F16: Uint16Array, BF16: Uint16Array,
};

function isReadable(dtype: SafetensorsDtype): dtype is ReadableDtype {
  return Object.hasOwn(VIEW_CTOR, dtype);
}

/** A decoded tensor; narrowing on `dtype` gives the array type. */
export type TensorData = {
  [D in ReadableDtype]: { name: string; dtype: D; shape: number[]; data: DtypeArrays[D] };
}[ReadableDtype];

/** A tensor to write: F16/BF16 take raw bits (Uint16Array) or floats to round (Float32Array). */
export type TensorInput = {
  [D in ReadableDtype]: { dtype: D; shape: readonly number[]; data: DtypeArrays[D] };
}[ReadableDtype];

/** Where one tensor lies: `byteOffset` counts from the start of the file. */
export interface SafetensorsEntry {
  dtype: SafetensorsDtype;
  shape: number[];
  byteOffset: number;
  byteLength: number;
}

export interface ReadOptions {
  /** F16/BF16 as Float32Array instead of raw Uint16Array bits (ignored for other dtypes). */
  widen?: boolean;
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

function fail(rule: SafetensorsRule, message: string): never {
  throw new SafetensorsError(rule, message);
}

// ---- header validation ----

/** The reference reader's limit (`MAX_HEADER_SIZE` in tensor.rs). */
export const MAX_HEADER_BYTES = 100_000_000;
const METADATA_KEY = '__metadata__';
const isLittleEndian = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** A validated header: metadata, and the tensors in file order. */
export interface SafetensorsHeader {
  metadata: Record<string, string>;
  entries: Map<string, SafetensorsEntry>;
}

/** Reads and checks the 8-byte length prefix; returns N. */
function headerLength(prefix: Uint8Array, fileLength: number): number {
  if (fileLength < 8) fail('header-truncated', `file is ${fileLength} bytes, shorter than 8`);
  const view = new DataView(prefix.buffer, prefix.byteOffset, 8);
  const n = view.getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES)) {
    fail('header-too-large', `header length ${n} exceeds ${MAX_HEADER_BYTES} bytes`);
  }
  if (Number(n) > fileLength - 8) {
    fail('header-truncated', `header length ${n} exceeds file length ${fileLength} - 8`);
  }
  return Number(n);
}

/**
 * Checks that the JSON text (already accepted by JSON.parse) has no repeated key in any object,
 * and returns the top-level keys in document order. JSON.parse keeps the last duplicate silently.
 */
function scanKeys(text: string): string[] {
  const topKeys: string[] = [];
  // One frame per open object or array; `keys` is null for arrays.
  const stack: { keys: Set<string> | null; expectKey: boolean; path: string }[] = [];
  let lastKey = '';
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      let j = i + 1;
      let escaped = false;
      for (; text.charCodeAt(j) !== 0x22; j++) {
        if (text.charCodeAt(j) === 0x5c) { j++; escaped = true; } // skip the escaped character
      }
      const frame = stack[stack.length - 1];
      if (frame?.keys && frame.expectKey) {
        const key: string = escaped ? JSON.parse(text.slice(i, j + 1)) : text.slice(i + 1, j);
        if (frame.keys.has(key)) {
          fail('duplicate-key', `key ${show(key)} appears twice in ${frame.path}`);
        }
        frame.keys.add(key);
        if (stack.length === 1) topKeys.push(key);
        frame.expectKey = false;
        lastKey = key;
      }
      i = j;
    } else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      const path = stack.length === 0 ? 'the header' : `entry ${show(lastKey)}`;
      stack.push({ keys: c === 0x7b ? new Set() : null, expectKey: true, path });
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      stack.pop();
    } else if (c === 0x2c /* , */) {
      const frame = stack[stack.length - 1];
      if (frame?.keys) frame.expectKey = true;
    }
  }
  return topKeys;
}

/** A short description of a header value for messages: never recursive, never huge. */
function show(value: unknown): string {
  if (typeof value === 'string') {
    return JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}...` : value);
  }
  if (Array.isArray(value)) {
    const flat = value.length <= 16 && value.every((v) => typeof v !== 'object' || v === null);
    return flat ? `[${value.map(show).join(',')}]` : `an array of ${value.length} items`;
  }
  return typeof value === 'object' && value !== null ? 'an object' : String(value);
}

const isIndex = (x: unknown): x is number => Number.isSafeInteger(x) && (x as number) >= 0;
const isPlainObject = (x: unknown): x is Record<string, unknown> =>
  typeof x === 'object' && x !== null && !Array.isArray(x);

function parseEntry(name: string, raw: unknown) {
  const where = `tensor ${show(name)}`;
  if (!isPlainObject(raw)) return fail('invalid-entry', `${where} is not an object`);
  // Extra fields are ignored, as serde does in the reference reader.
  const { dtype, shape, data_offsets: offsets } = raw;
  if (typeof dtype !== 'string' || !Object.hasOwn(DTYPE_SIZE, dtype)) {
    fail('invalid-entry', `${where} has unknown dtype ${show(dtype)}`);
  }
  if (!Array.isArray(shape) || !shape.every(isIndex)) {
    fail('invalid-entry', `${where} shape ${show(shape)} is not non-negative integers`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isIndex)) {
    fail('invalid-entry', `${where} data_offsets ${show(offsets)} is not [begin, end]`);
  }
  const [begin, end] = offsets as [number, number];
  if (end < begin) fail('invalid-entry', `${where} data_offsets end ${end} < begin ${begin}`);
  return { name, dtype: dtype as SafetensorsDtype, shape: shape as number[], begin, end };
}

/** Bytes a tensor needs, or a size-mismatch error when a partial product passes 2^53. */
function tensorBytes(where: string, dtype: SafetensorsDtype, shape: readonly number[]): number {
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

/** Validates header bytes for a file of `fileLength` bytes whose header is `header.length`. */
function parseHeader(header: Uint8Array, fileLength: number): SafetensorsHeader {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(header);
  } catch {
    return fail('invalid-utf8', `header of ${header.length} bytes is not valid UTF-8`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    return fail('invalid-json', `header is not JSON (${(e as Error).message})`);
  }
  if (!isPlainObject(json)) return fail('invalid-json', 'header is not a JSON object');
  const keys = scanKeys(text);

  let metadata: Record<string, string> = {};
  const items: ReturnType<typeof parseEntry>[] = [];
  for (const key of keys) {
    const value = json[key];
    if (key !== METADATA_KEY) { items.push(parseEntry(key, value)); continue; }
    if (value === null) continue; // the reference reader reads null as "no metadata"
    if (!isPlainObject(value)) fail('invalid-metadata', '__metadata__ is not an object');
    for (const [k, v] of Object.entries(value as object)) {
      if (typeof v !== 'string') {
        fail('invalid-metadata', `__metadata__ ${show(k)} is ${typeof v}, not string`);
      }
    }
    metadata = value as Record<string, string>; // a fresh object from JSON.parse: not shared
  }

  // As Metadata::validate: in (begin, end) order, each tensor starts where the last one ended.
  items.sort((a, b) => a.begin - b.begin || a.end - b.end);
  const dataStart = 8 + header.length;
  const entries = new Map<string, SafetensorsEntry>();
  let expectedBegin = 0;
  for (const { name, dtype, shape, begin, end } of items) {
    const where = `tensor ${show(name)}`;
    if (begin !== expectedBegin) {
      const what = begin < expectedBegin ? 'overlaps the previous one' : 'leaves a gap';
      fail('offsets-not-contiguous',
        `${where} starts at ${begin}, expected ${expectedBegin}: ${what}`);
    }
    const bytes = tensorBytes(where, dtype, shape);
    if (end - begin !== bytes) {
      fail('size-mismatch',
        `${where} spans ${end - begin} bytes, ${show(shape)} ${dtype} needs ${bytes}`);
    }
    entries.set(name, { dtype, shape, byteOffset: dataStart + begin, byteLength: bytes });
    expectedBegin = end;
  }
  if (dataStart + expectedBegin !== fileLength) {
    const total = dataStart + expectedBegin;
    fail('file-length-mismatch', `8 + header ${header.length} + data ${expectedBegin} = ` +
      `${total} bytes, file has ${fileLength}`);
  }
  return { metadata, entries };
}

// ---- decoding ----

let halfTable: Uint32Array | undefined;

/** f32 bits of every f16 bit pattern: exact (subnormals, inf, NaN payloads kept). */
function halfToFloatBits(): Uint32Array {
  if (halfTable) return halfTable;
  const table = new Uint32Array(65536);
  const asFloat = new Float32Array(table.buffer);
  for (let h = 0; h < 65536; h++) {
    const sign = (h & 0x8000) << 16;
    const exp = (h >> 10) & 0x1f;
    const mant = h & 0x3ff;
    if (exp === 0x1f) table[h] = sign | 0x7f800000 | (mant << 13);
    else if (exp !== 0) table[h] = sign | ((exp + 112) << 23) | (mant << 13); // rebias 15 -> 127
    else asFloat[h] = (sign ? -mant : mant) * 2 ** -24; // zero or subnormal: mant * 2^-24
  }
  return (halfTable = table);
}

function widenHalf(bits: Uint16Array, dtype: 'F16' | 'BF16'): Float32Array {
  const out = new Float32Array(bits.length);
  const outBits = new Uint32Array(out.buffer); // copy as integers so NaN payloads survive
  if (dtype === 'BF16') for (let i = 0; i < bits.length; i++) outBits[i] = bits[i]! << 16;
  else {
    const table = halfToFloatBits();
    for (let i = 0; i < bits.length; i++) outBits[i] = table[bits[i]!]!;
  }
  return out;
}

/** Decodes bytes[start, start + entry.byteLength) of a validated entry. */
function decode(name: string, entry: SafetensorsEntry, bytes: Uint8Array, start: number,
  opts: ReadOptions): TensorData {
  const { dtype, shape, byteLength } = entry;
  if (!isReadable(dtype)) {
    const what = `unsupported dtype ${dtype} for tensor ${show(name)}`;
    return fail('unsupported-dtype', what);
  }
  if (!isLittleEndian) throw new Error('safetensors: big-endian hosts are not supported');
  const size = DTYPE_SIZE[dtype];
  let buffer: ArrayBufferLike = bytes.buffer;
  let offset = bytes.byteOffset + start;
  if (offset % size !== 0) { // a view must be aligned: copy this tensor only
    buffer = bytes.slice(start, start + byteLength).buffer;
    offset = 0;
  }
  // Sound: VIEW_CTOR[dtype] builds exactly DtypeArrays[dtype] (raw bits for F16/BF16).
  const view = new VIEW_CTOR[dtype](buffer, offset, byteLength / size) as TensorData['data'];
  const data = opts.widen && (dtype === 'F16' || dtype === 'BF16')
    ? widenHalf(view as Uint16Array, dtype) : view;
  return { name, dtype, shape: [...shape], data } as TensorData;
}

// ---- reading ----

/**
 * Parses and validates the header of a whole file held in memory, without decoding any tensor.
 * Useful to list a file that holds dtypes this module cannot decode.
 */
export function parseSafetensorsHeader(bytes: Uint8Array): SafetensorsHeader {
  const n = headerLength(bytes, bytes.length);
  return parseHeader(bytes.subarray(8, 8 + n), bytes.length);
}

/**
 * Parses a whole file held in memory. Tensors are views into `bytes` (no copy) unless misaligned
 * or widened, so writing to one writes to `bytes`.
 */
export function parseSafetensors(bytes: Uint8Array, opts: ReadOptions = {}):
  { metadata: Record<string, string>; tensors: Map<string, TensorData> } {
  const { metadata, entries } = parseSafetensorsHeader(bytes);
  const tensors = new Map<string, TensorData>();
  for (const [name, entry] of entries) {
    tensors.set(name, decode(name, entry, bytes, entry.byteOffset, opts));
  }
  return { metadata, tensors };
}

/** Reads `length` bytes at `position` fully, in chunks of at most 1 GiB. */
async function readExactly(file: FileHandle, length: number, position: number):
  Promise<Uint8Array> {
  const out = new Uint8Array(length);
  for (let done = 0; done < length;) {
    const chunk = Math.min(length - done, 2 ** 30);
    const { bytesRead } = await file.read(out, done, chunk, position + done);
    if (bytesRead === 0) {
      const want = position + length;
      fail('file-length-mismatch', `file ended at ${position + done}, expected ${want}`);
    }
    done += bytesRead;
  }
  return out;
}

/** A safetensors file opened lazily: the header is read and checked, tensors on demand. */
export class SafetensorsFile {
  private constructor(
    private readonly file: FileHandle,
    readonly path: string,
    readonly metadata: Record<string, string>,
    readonly entries: ReadonlyMap<string, SafetensorsEntry>,
  ) {}

  static async open(path: string): Promise<SafetensorsFile> {
    const file = await open(path, 'r');
    try {
      const { size } = await file.stat();
      const prefix = size >= 8 ? await readExactly(file, 8, 0) : new Uint8Array(8);
      const n = headerLength(prefix, size); // checked against the limit before allocating
      const { metadata, entries } = parseHeader(await readExactly(file, n, 8), size);
      return new SafetensorsFile(file, path, metadata, entries);
    } catch (e) {
      await file.close();
      throw e;
    }
  }

  /** Reads one tensor into a fresh buffer (always aligned). */
  async read(name: string, opts: ReadOptions = {}): Promise<TensorData> {
    const entry = this.entries.get(name);
    if (!entry) {
      return fail('tensor-not-found', `no tensor ${show(name)} in ${this.path}`);
    }
    if (!isReadable(entry.dtype)) return decode(name, entry, new Uint8Array(0), 0, opts);
    const bytes = await readExactly(this.file, entry.byteLength, entry.byteOffset);
    return decode(name, entry, bytes, 0, opts);
  }

  /** Reads every tensor, in file order. */
  async readAll(opts: ReadOptions = {}): Promise<Map<string, TensorData>> {
    const out = new Map<string, TensorData>();
    for (const name of this.entries.keys()) out.set(name, await this.read(name, opts));
    return out;
  }

  async close(): Promise<void> {
    await this.file.close();
  }
}

// ---- encoding ----

/** f16 bits of an f32 bit pattern: round to nearest even, overflow to inf, NaN payload kept. */
export function floatBitsToHalf(f: number): number {
  const sign = (f >>> 16) & 0x8000;
  const exp = (f >>> 23) & 0xff;
  const mant = f & 0x7fffff;
  if (exp === 0xff) { // inf, or NaN with the top 10 payload bits (never 0: that would be inf)
    return mant === 0 ? sign | 0x7c00 : sign | 0x7c00 | (mant >>> 13 || 1);
  }
  const halfExp = exp - 127 + 15;
  if (halfExp >= 0x1f) return sign | 0x7c00;
  let q: number;
  let rest: number;
  let shift: number;
  if (halfExp <= 0) { // half subnormal: significand * 2^(e-23) in units of 2^-24
    shift = 14 - halfExp;
    if (shift > 24) return sign; // below half of the smallest subnormal
    const significand = mant | 0x800000;
    q = significand >>> shift;
    rest = significand & ((1 << shift) - 1);
  } else {
    shift = 13;
    q = (halfExp << 10) | (mant >>> 13);
    rest = mant & 0x1fff;
  }
  const half = 1 << (shift - 1);
  if (rest > half || (rest === half && (q & 1) === 1)) q++; // a carry may reach inf: correct
  return sign | q;
}

/** bf16 bits of an f32 bit pattern: round to nearest even, NaN kept quiet. */
function floatBitsToBrain(f: number): number {
  if ((f & 0x7fffffff) > 0x7f800000) return ((f >>> 16) | 0x40) & 0xffff;
  return ((f + 0x7fff + ((f >>> 16) & 1)) >>> 16) & 0xffff;
}

interface PlannedTensor { name: string; input: TensorInput; byteLength: number }

/** Sorted tensors (dtype size descending, then name by code point) and the padded header. */
function plan(tensors: ReadonlyMap<string, TensorInput> | Record<string, TensorInput>,
  metadata?: Record<string, string>) {
  const list = tensors instanceof Map ? [...tensors] : Object.entries(tensors);
  const planned: (PlannedTensor & { key: Buffer })[] = list.map(([name, input]) => {
    const where = `tensor ${show(name)}`;
    if (name === METADATA_KEY) fail('invalid-input', `${where} is a reserved name`);
    if (!isReadable(input.dtype)) {
      fail('invalid-input', `${where} dtype ${input.dtype} cannot be written`);
    }
    if (!Array.isArray(input.shape) || !input.shape.every(isIndex)) {
      fail('invalid-input', `${where} shape ${show(input.shape)} is not non-negative integers`);
    }
    const byteLength = tensorBytes(where, input.dtype, input.shape);
    return { name, input, byteLength, key: Buffer.from(name, 'utf8') };
  });
  planned.sort((a, b) =>
    DTYPE_SIZE[b.input.dtype] - DTYPE_SIZE[a.input.dtype] || Buffer.compare(a.key, b.key));
  const parts: string[] = [];
  if (metadata && Object.keys(metadata).length > 0) { // empty metadata is left out
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') {
        fail('invalid-input', `metadata ${show(k)} is not a string`);
      }
    }
    parts.push(`"${METADATA_KEY}":${JSON.stringify(metadata)}`);
  }
  let offset = 0;
  for (const { name, input, byteLength } of planned) {
    const data_offsets = [offset, offset + byteLength]; // key order as the reference writer
    const info = { dtype: input.dtype, shape: input.shape, data_offsets };
    parts.push(`${JSON.stringify(name)}:${JSON.stringify(info)}`);
    offset += byteLength;
  }
  const json = new TextEncoder().encode(`{${parts.join(',')}}`);
  const padded = new Uint8Array(Math.ceil(json.length / 8) * 8).fill(0x20); // data 8-aligned
  padded.set(json);
  const header = new Uint8Array(8 + padded.length);
  new DataView(header.buffer).setBigUint64(0, BigInt(padded.length), true);
  header.set(padded, 8);
  return { header, planned, dataLength: offset };
}

/** The bytes of one tensor, in chunks of at most 1 Mi elements when converted. */
function* tensorChunks({ name, input, byteLength }: PlannedTensor): Generator<Uint8Array> {
  if (!isLittleEndian) throw new Error('safetensors: big-endian hosts are not supported');
  const { dtype, data } = input; // `data` is read here, once, so a lazy getter runs late
  const want = byteLength / DTYPE_SIZE[dtype];
  const ok = data instanceof VIEW_CTOR[dtype] ||
    ((dtype === 'F16' || dtype === 'BF16') && data instanceof Float32Array);
  if (!ok || data.length !== want) {
    fail('invalid-input', `tensor ${show(name)} ${dtype} needs ${want} elements, got ` +
      `${data?.constructor?.name} of ${data?.length}`);
  }
  if (!(data instanceof Float32Array && (dtype === 'F16' || dtype === 'BF16'))) {
    yield new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    return;
  }
  const bits = new Uint32Array(data.buffer, data.byteOffset, data.length);
  const round = dtype === 'F16' ? floatBitsToHalf : floatBitsToBrain;
  for (let start = 0; start < bits.length; start += 1 << 20) {
    const out = new Uint16Array(Math.min(1 << 20, bits.length - start));
    for (let i = 0; i < out.length; i++) out[i] = round(bits[start + i]!);
    yield new Uint8Array(out.buffer);
  }
}

/** Serialises to one buffer: fine for small files; use `writeSafetensors` for models. */
export function serializeSafetensors(
  tensors: ReadonlyMap<string, TensorInput> | Record<string, TensorInput>,
  metadata?: Record<string, string>,
): Uint8Array {
  const { header, planned, dataLength } = plan(tensors, metadata);
  const out = new Uint8Array(header.length + dataLength);
  out.set(header);
  let at = header.length;
  for (const tensor of planned) {
    for (const chunk of tensorChunks(tensor)) { out.set(chunk, at); at += chunk.length; }
  }
  return out;
}

async function writeFully(file: FileHandle, bytes: Uint8Array): Promise<void> {
  for (let done = 0; done < bytes.length;) {
    const chunk = Math.min(bytes.length - done, 64 * 2 ** 20);
    const { bytesWritten } = await file.write(bytes, done, chunk);
    done += bytesWritten;
  }
}

/**
 * Writes a safetensors file atomically: header and tensors are streamed to a temporary file in
 * the same folder, which is fsynced and renamed over `path`. On error the temporary file is
 * removed and `path` is untouched.
 */
export async function writeSafetensors(
  path: string,
  tensors: ReadonlyMap<string, TensorInput> | Record<string, TensorInput>,
  metadata?: Record<string, string>,
): Promise<void> {
  const { header, planned } = plan(tensors, metadata);
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`;
  const file = await open(tmp, 'wx');
  let closed = false;
  try {
    await writeFully(file, header);
    for (const tensor of planned) {
      for (const chunk of tensorChunks(tensor)) await writeFully(file, chunk);
    }
    await file.sync();
    closed = true;
    await file.close();
    await rename(tmp, path);
  } catch (e) {
    if (!closed) await file.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    throw e;
  }
  await syncFolder(dirname(path));
}

/** Makes the rename durable; best effort (folders cannot be opened on Windows). */
async function syncFolder(folder: string): Promise<void> {
  if (process.platform === 'win32') return;
  const dir = await open(folder, 'r').catch(() => undefined);
  await dir?.sync().catch(() => undefined);
  await dir?.close().catch(() => undefined);
}
