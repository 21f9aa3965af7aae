/**
 * @file Writer for the safetensors format: `serializeSafetensors` to one buffer, and the atomic
 * `writeSafetensors`, which streams header and tensors into a temporary file in the same folder,
 * fsyncs it and renames it over the target.
 *
 * Reference: huggingface/safetensors, `safetensors/src/tensor.rs` (`prepare`): tensors sorted by
 * dtype size descending then name, header JSON padded with spaces so the data is 8-aligned.
 * F16/BF16 inputs given as floats are rounded to nearest even.
 */
import { randomBytes } from 'node:crypto';
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import {
  DTYPE_SIZE, fail, isIndex, isLittleEndian, isReadable, METADATA_KEY, show, tensorBytes,
  VIEW_CTOR, type DtypeArrays, type ReadableDtype,
} from './safetensors-format.js';

/** A tensor to write: F16/BF16 take raw bits (Uint16Array) or floats to round (Float32Array). */
export type TensorInput = {
  [D in ReadableDtype]: { dtype: D; shape: readonly number[]; data: DtypeArrays[D] };
}[ReadableDtype];

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
