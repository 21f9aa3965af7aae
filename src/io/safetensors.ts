/**
 * @file Safe reader for the safetensors format.
 *
 * Reference: huggingface/safetensors, `safetensors/src/tensor.rs` (`SafeTensors::read_metadata`,
 * `Metadata::validate`). Layout: u64 little-endian header length N, N bytes of UTF-8 JSON
 * `{name: {dtype, shape, data_offsets: [begin, end]}, __metadata__?: {str: str}}`, then the data
 * buffer. Why: checkpoints are downloaded from strangers, so every number in the header is
 * checked before any allocation or view is made, and each failure is a `SafetensorsError` naming
 * its rule. Files are read lazily, tensor by tensor. The dtype table and error live in
 * `safetensors-format.ts` and the writer in `safetensors-write.ts`; their public symbols are
 * re-exported here, so importers need only this module.
 */
import type { FileHandle } from 'node:fs/promises';
import { openRegularFile } from './files.js';
import {
  DTYPE_SIZE, fail, isIndex, isLittleEndian, isReadable, METADATA_KEY, show, SUB_BYTE_DTYPES,
  tensorBytes, VIEW_CTOR, type DtypeArrays, type ReadableDtype, type SafetensorsDtype,
} from './safetensors-format.js';

export {
  SafetensorsError, type ReadableDtype, type SafetensorsDtype, type SafetensorsRule,
} from './safetensors-format.js';
export {
  floatBitsToHalf, serializeSafetensors, writeSafetensors, type TensorInput,
} from './safetensors-write.js';

/** A decoded tensor; narrowing on `dtype` gives the array type. */
export type TensorData = {
  [D in ReadableDtype]: { name: string; dtype: D; shape: number[]; data: DtypeArrays[D] };
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

// ---- header validation ----

/** The reference reader's limit (`MAX_HEADER_SIZE` in tensor.rs). */
export const MAX_HEADER_BYTES = 100_000_000;

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

const isPlainObject = (x: unknown): x is Record<string, unknown> =>
  typeof x === 'object' && x !== null && !Array.isArray(x);

function parseEntry(name: string, raw: unknown) {
  const where = `tensor ${show(name)}`;
  if (!isPlainObject(raw)) return fail('invalid-entry', `${where} is not an object`);
  // Extra fields are ignored, as serde does in the reference reader.
  const { dtype, shape, data_offsets: offsets } = raw;
  if (typeof dtype !== 'string' || !Object.hasOwn(DTYPE_SIZE, dtype)) {
    const subByte = typeof dtype === 'string' && SUB_BYTE_DTYPES.includes(dtype);
    fail('invalid-entry', subByte ? `${where} has sub-byte dtype ${dtype}, which is not read`
      : `${where} has unknown dtype ${show(dtype)}`);
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

  /** Reads and checks the header; a path that is not a regular file is a FileKindError. */
  static async open(path: string): Promise<SafetensorsFile> {
    const file = await openRegularFile(path, 'a .safetensors file');
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
