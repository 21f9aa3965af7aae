/**
 * @file Tests for the safetensors reader and writer.
 *
 * Reference: the format checks of huggingface/safetensors `tensor.rs`, and the golden files of
 * test/data/golden (written by diffusers' tooling, see its README). Why: round trips must be
 * bit-exact, every safety rule must fire on a file crafted to break it, and no mutation of a
 * valid file may escape as anything but a SafetensorsError.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { goldenModelFolder } from '../../test/support/golden.js';
import { goldenDir } from '../../test/support/paths.js';
import { FileKindError } from './files.js';
import {
  floatBitsToHalf, parseSafetensors, parseSafetensorsHeader, SafetensorsError, SafetensorsFile,
  serializeSafetensors, writeSafetensors,
  type SafetensorsRule, type TensorData, type TensorInput,
} from './safetensors.js';

let scratch = '';
before(async () => { scratch = await mkdtemp(join(tmpdir(), 'diffuse-st-')); });
after(async () => { await rm(scratch, { recursive: true, force: true }); });

const bitsOf = (a: Float32Array) => new Uint32Array(a.buffer, a.byteOffset, a.length);
const bytesOf = (a: TensorData['data'] | TensorInput['data']) =>
  Buffer.from(a.buffer, a.byteOffset, a.byteLength);
const f32FromBits = (bits: number[]) => new Float32Array(new Uint32Array(bits).buffer);

/** A file from header text and data bytes; `length` overrides the u64 header length. */
function craft(header: string, data: Uint8Array = new Uint8Array(0), length?: bigint): Uint8Array {
  const json = Buffer.from(header, 'utf8');
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, length ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

function isRule(rule: SafetensorsRule, ...mentions: string[]) {
  return (e: unknown) => {
    assert.ok(e instanceof SafetensorsError, `expected SafetensorsError, got ${String(e)}`);
    assert.equal(e.rule, rule, e.message);
    assert.ok(e.message.includes(rule), e.message);
    for (const m of mentions) assert.ok(e.message.includes(m), `${e.message} lacks ${m}`);
    return true;
  };
}

let fileCount = 0;
async function scratchFile(bytes: Uint8Array): Promise<string> {
  const path = join(scratch, `f${fileCount++}.safetensors`);
  await writeFile(path, bytes);
  return path;
}

describe('round trip', () => {
  const f32Bits = [0x7fc00001, 0x7f800001, 0xffc12345, 0x80000000, 0x00000001, 0x007fffff,
    0x7f800000, 0xff800000, 0x7f7fffff, 0x3f800000];
  const f64 = new Float64Array([-0, 5e-324, Infinity, -Infinity, Math.PI, 1.7976931348623157e308]);
  new DataView(f64.buffer).setBigUint64(0, 0x7ff8_0000_dead_beefn, true); // NaN with payload
  const allHalves = new Uint16Array(65536).map((_, i) => i);
  const tensors: Record<string, TensorInput> = {
    f32: { dtype: 'F32', shape: [2, 5], data: f32FromBits(f32Bits) },
    f64: { dtype: 'F64', shape: [6], data: f64 },
    i64: { dtype: 'I64', shape: [3], data: new BigInt64Array([-(2n ** 63n), 2n ** 63n - 1n, 0n]) },
    i32: { dtype: 'I32', shape: [2], data: new Int32Array([-(2 ** 31), 2 ** 31 - 1]) },
    i16: { dtype: 'I16', shape: [2], data: new Int16Array([-32768, 32767]) },
    i8: { dtype: 'I8', shape: [2], data: new Int8Array([-128, 127]) },
    u8: { dtype: 'U8', shape: [3], data: new Uint8Array([0, 7, 255]) },
    bool: { dtype: 'BOOL', shape: [1, 3], data: new Uint8Array([1, 0, 1]) },
    f16: { dtype: 'F16', shape: [256, 256], data: allHalves },
    bf16: { dtype: 'BF16', shape: [4], data: new Uint16Array([0x3f80, 0xffc1, 0x0001, 0x8000]) },
    scalar: { dtype: 'F32', shape: [], data: new Float32Array([2.5]) },
    empty: { dtype: 'I32', shape: [0, 3], data: new Int32Array(0) },
  };
  const metadata = { format: 'pt', note: 'ünïcode "quoted" \\ \n', '0': 'integer-like key' };

  function checkSame(read: Map<string, TensorData>) {
    assert.equal(read.size, Object.keys(tensors).length);
    for (const [name, want] of Object.entries(tensors)) {
      const got = read.get(name)!;
      assert.equal(got.dtype, want.dtype, name);
      assert.deepEqual(got.shape, want.shape, name);
      assert.equal(got.data.constructor, want.data.constructor, name);
      assert.ok(bytesOf(got.data).equals(bytesOf(want.data)), `${name} bytes differ`);
    }
  }

  test('in memory: every dtype bit-exact, metadata kept', () => {
    const bytes = serializeSafetensors(tensors, metadata);
    const { metadata: meta, tensors: read } = parseSafetensors(bytes);
    assert.deepEqual(meta, metadata);
    checkSame(read);
    assert.deepEqual([...bitsOf(read.get('f32')!.data as Float32Array)], f32Bits);
  });

  test('through a file: write atomically, open lazily, read each tensor', async () => {
    const path = join(scratch, 'roundtrip.safetensors');
    await writeSafetensors(path, new Map(Object.entries(tensors)), metadata);
    const file = await SafetensorsFile.open(path);
    try {
      assert.deepEqual(file.metadata, metadata);
      checkSame(await file.readAll());
      assert.equal(file.entries.get('f64')!.byteLength, 48);
    } finally { await file.close(); }
    assert.ok((await readFile(path)).equals(serializeSafetensors(tensors, metadata)));
  });

  test('writer layout: 8-byte dtypes first, then by name; header padded with spaces', () => {
    const bytes = serializeSafetensors(tensors, metadata);
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    assert.equal(n % 8, 0);
    const text = Buffer.from(bytes.subarray(8, 8 + n)).toString('utf8');
    assert.match(text, /} *$/);
    const order = [...parseSafetensorsHeader(bytes).entries.keys()];
    // 8-byte dtypes, then 4 ('empty' is I32), 2 and 1, each group by name.
    assert.deepEqual(order, ['f64', 'i64', 'empty', 'f32', 'i32', 'scalar', 'bf16', 'f16', 'i16',
      'bool', 'i8', 'u8']);
  });
});

describe('half floats', () => {
  test('F16 and BF16 widen to the hand-computed values', () => {
    const f16 = [0x3c00, 0xc000, 0x7bff, 0x0001, 0x03ff, 0x0400, 0x7c00, 0xfc00, 0x8000, 0x3555];
    const want16 = [1, -2, 65504, 2 ** -24, 1023 * 2 ** -24, 2 ** -14, Infinity, -Infinity, -0,
      0.333251953125];
    const bf16 = [0x3f80, 0xc000, 0x7f80, 0x0001, 0x4049];
    const wantBf = [1, -2, Infinity, 2 ** -133, 3.140625];
    const bytes = serializeSafetensors({
      h: { dtype: 'F16', shape: [f16.length], data: new Uint16Array(f16) },
      b: { dtype: 'BF16', shape: [bf16.length], data: new Uint16Array(bf16) },
    });
    const raw = parseSafetensors(bytes).tensors;
    assert.ok(raw.get('h')!.data instanceof Uint16Array);
    const wide = parseSafetensors(bytes, { widen: true }).tensors;
    assert.deepEqual([...wide.get('h')!.data], want16);
    assert.deepEqual([...wide.get('b')!.data], wantBf);
  });

  test('F16 NaN payloads survive widening and narrowing', () => {
    const nans = [0x7e00, 0x7c01, 0xfd55, 0x7fff];
    const data = new Uint16Array(nans);
    const bytes = serializeSafetensors({ h: { dtype: 'F16', shape: [4], data } });
    const wide = parseSafetensors(bytes, { widen: true }).tensors.get('h')!.data as Float32Array;
    assert.deepEqual([...bitsOf(wide)].map((b) => b.toString(16)),
      ['7fc00000', '7f802000', 'ffaaa000', '7fffe000']);
    assert.deepEqual([...bitsOf(wide)].map(floatBitsToHalf), nans);
  });

  test('F32 -> F16: round to nearest even, overflow to inf, subnormals', () => {
    const cases: [number, number][] = [
      [1, 0x3c00], [-2, 0xc000], [65504, 0x7bff], [65519.99, 0x7bff], [65520, 0x7c00],
      [1e6, 0x7c00], [-1e6, 0xfc00], [2 ** -24, 0x0001], [2 ** -25, 0x0000],
      [1.5 * 2 ** -25, 0x0001], [3 * 2 ** -25, 0x0002], [2 ** -14, 0x0400], [-0, 0x8000],
      [1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02], [2 ** -14 - 2 ** -25, 0x0400],
      [Infinity, 0x7c00], [NaN, 0x7e00], [1e-10, 0x0000], [-1e-10, 0x8000],
    ];
    const data = new Float32Array(cases.map(([x]) => x));
    const bytes = serializeSafetensors({ x: { dtype: 'F16', shape: [cases.length], data } });
    const got = parseSafetensors(bytes).tensors.get('x')!.data;
    const hex = (h: number | bigint) => h.toString(16);
    assert.deepEqual([...got].map(hex), cases.map(([, h]) => hex(h)));
  });

  test('F32 -> F16 -> F32 is the identity on every half, and picks the nearest half', () => {
    const halves = new Uint16Array(65536).map((_, i) => i);
    const bytes = serializeSafetensors({ h: { dtype: 'F16', shape: [65536], data: halves } });
    const wide = parseSafetensors(bytes, { widen: true }).tensors.get('h')!;
    const back = parseSafetensors(serializeSafetensors({
      h: { dtype: 'F16', shape: [65536], data: wide.data as Float32Array },
    })).tensors.get('h')!.data;
    assert.ok(bytesOf(back).equals(bytesOf(halves)));
    // Random finite f32 values: no other half is nearer; ties go to the even one.
    const widened = wide.data as Float32Array;
    let state = 0x9e3779b9;
    for (let i = 0; i < 20000; i++) {
      state ^= state << 13; state ^= state >>> 17; state ^= state << 5; state >>>= 0;
      const bits = (state & 0x8fffffff) | 0x30000000; // exponents near the half range
      const x = f32FromBits([bits >>> 0])[0]!;
      const h = floatBitsToHalf(bits >>> 0);
      if ((h & 0x7fff) === 0x7c00) { assert.ok(Math.abs(x) >= 65520, `${x}`); continue; }
      const err = Math.abs(widened[h]! - x);
      for (const other of [h - 1, h + 1]) {
        if ((other & 0x7fff) >= 0x7c00 || (other & 0x8000) !== (h & 0x8000)) continue;
        const otherErr = Math.abs(widened[other]! - x);
        assert.ok(err < otherErr || (err === otherErr && (h & 1) === 0), `${x} -> ${h}`);
      }
    }
  });
});

describe('golden files', () => {
  // diffusers' weights file, rebuilt from the seed by test/support/golden.ts: its SHA-256 is
  // the one weights.sha256 recorded from diffusers' file, so the rewrite below reproduces a file
  // that another writer wrote.
  test('unet2d weights: 320 F32 tensors, provenance shapes, byte-identical rewrite', async () => {
    const dir = join(goldenDir, 'unet2d');
    const provenance = JSON.parse(await readFile(join(dir, 'weights_provenance.json'), 'utf8')) as
      { num_params: number; state_dict_keys_and_shapes: Record<string, number[]> };
    const shapes = provenance.state_dict_keys_and_shapes;
    const path = join(await goldenModelFolder('unet2d'), 'diffusion_pytorch_model.safetensors');
    const file = await SafetensorsFile.open(path);
    try {
      assert.deepEqual(file.metadata, { format: 'pt' });
      assert.equal(file.entries.size, 320);
      assert.equal(Object.keys(shapes).length, 320);
      let params = 0;
      for (const [name, entry] of file.entries) {
        assert.equal(entry.dtype, 'F32', name);
        assert.deepEqual(entry.shape, shapes[name], name);
        params += entry.byteLength / 4;
      }
      assert.equal(params, provenance.num_params); // 4,023,233
      assert.deepEqual(file.entries.get('conv_in.weight')!.shape, [32, 1, 3, 3]);
      assert.deepEqual(file.entries.get('time_embedding.linear_1.weight')!.shape, [128, 32]);
      const bias = await file.read('conv_in.bias');
      assert.equal(bias.data.length, 32);
      const bytes = await readFile(path);
      const sums = await readFile(join(goldenDir, 'weights.sha256'), 'utf8');
      assert.ok(sums.includes(`${createHash('sha256').update(bytes).digest('hex')}  unet2d/`));
      const parsed = parseSafetensors(bytes);
      assert.ok(bytesOf(parsed.tensors.get('conv_in.bias')!.data).equals(bytesOf(bias.data)));
      assert.ok(Buffer.from(serializeSafetensors(parsed.tensors, parsed.metadata)).equals(bytes));
    } finally { await file.close(); }
  });

  test('dit io: I64 and F64 match io.json, byte-identical rewrite', async () => {
    const dir = join(goldenDir, 'dit');
    const bytes = await readFile(join(dir, 'io.safetensors'));
    const json = JSON.parse(await readFile(join(dir, 'io.json'), 'utf8')) as
      { tensors: Record<string, { shape: number[]; data: number[] }> };
    const { metadata, tensors } = parseSafetensors(bytes);
    assert.deepEqual([...tensors.keys()], ['class_labels', 'out_f64', 't', 'out', 'x']);
    assert.match(metadata['note']!, /^DiTTransformer2DModel/);
    const labels = tensors.get('class_labels')!;
    assert.equal(labels.dtype, 'I64');
    assert.deepEqual([...labels.data], [3n, 7n]);
    assert.deepEqual([...tensors.get('t')!.data], [10n, 500n]);
    const out64 = tensors.get('out_f64')!;
    assert.equal(out64.dtype, 'F64');
    assert.deepEqual(out64.shape, [2, 1, 32, 32]);
    assert.deepEqual([...out64.data], json.tensors['out_f64']!.data);
    assert.deepEqual([...tensors.get('x')!.data], json.tensors['x']!.data.map(Math.fround));
    assert.ok(Buffer.from(serializeSafetensors(tensors, metadata)).equals(bytes));
  });
});

describe('alignment', () => {
  const header = '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'; // 55 bytes: unaligned
  const data = new Uint8Array(f32FromBits([0x3f800000, 0x7fc00001]).buffer);

  test('an aligned tensor is a view into the input, an unaligned one a copy', () => {
    const one = f32FromBits([0x3f800000]);
    const aligned = serializeSafetensors({ a: { dtype: 'F32', shape: [1], data: one } });
    assert.equal(parseSafetensors(aligned).tensors.get('a')!.data.buffer, aligned.buffer);
    const bytes = craft(header, data);
    const a = parseSafetensors(bytes).tensors.get('a')!;
    assert.notEqual(a.data.buffer, bytes.buffer);
    assert.deepEqual([...bitsOf(a.data as Float32Array)], [0x3f800000, 0x7fc00001]);
    const shifted = new Uint8Array(bytes.length + 1).fill(9);
    shifted.set(bytes, 1);
    const b = parseSafetensors(shifted.subarray(1)).tensors.get('a')!;
    assert.deepEqual([...bitsOf(b.data as Float32Array)], [0x3f800000, 0x7fc00001]);
  });
});

describe('safety rules', () => {
  const f32 = (shape: unknown, offsets: unknown, dtype = '"F32"') =>
    `{"dtype":${dtype},"shape":${JSON.stringify(shape)},` +
    `"data_offsets":${JSON.stringify(offsets)}}`;
  const zeros = (n: number) => new Uint8Array(n);
  const cases: [string, SafetensorsRule, Uint8Array, string[]][] = [
    ['header length over 100 MB', 'header-too-large', craft('{}', zeros(0), 100_000_001n),
      ['100000001']],
    ['header length 2^64 - 1', 'header-too-large', craft('{}', zeros(0), 2n ** 64n - 1n), []],
    ['file shorter than 8 bytes', 'header-truncated', new Uint8Array(5), ['5']],
    ['header past the end of file', 'header-truncated', craft('{}', zeros(0), 100n), ['100']],
    ['invalid UTF-8', 'invalid-utf8', craft('{"ab":1}').map((b, i) => (i === 10 ? 0xff : b)), []],
    ['truncated JSON', 'invalid-json', craft('{"a":'), []],
    ['JSON array', 'invalid-json', craft('[]'), ['not a JSON object']],
    ['byte-order mark', 'invalid-json', craft('\ufeff{}'), []],
    ['duplicate tensor', 'duplicate-key',
      craft(`{"a":${f32([1], [0, 4])},"a":${f32([1], [0, 4])}}`, zeros(4)), ['"a"']],
    ['duplicate by escape', 'duplicate-key',
      craft(`{"a":${f32([1], [0, 4])},"\\u0061":${f32([1], [0, 4])}}`, zeros(4)), ['"a"']],
    ['duplicate field', 'duplicate-key',
      craft('{"a":{"dtype":"F32","dtype":"I32","shape":[1],"data_offsets":[0,4]}}', zeros(4)),
      ['"dtype"', 'entry "a"']],
    ['duplicate metadata', 'duplicate-key', craft('{"__metadata__":{"k":"1","k":"2"}}'), ['"k"']],
    ['unknown dtype', 'invalid-entry', craft(`{"a":${f32([1], [0, 4], '"F128"')}}`, zeros(4)),
      ['"a"', 'F128']],
    ['sub-byte dtype', 'invalid-entry', craft(`{"a":${f32([2], [0, 1], '"F4"')}}`, zeros(1)),
      ['"a"', 'sub-byte dtype F4']],
    ['negative dim', 'invalid-entry', craft(`{"a":${f32([-1], [0, 4])}}`, zeros(4)), ['[-1]']],
    ['fractional dim', 'invalid-entry', craft(`{"a":${f32([1.5], [0, 4])}}`, zeros(4)), []],
    ['one offset', 'invalid-entry', craft(`{"a":${f32([1], [0])}}`, zeros(4)), ['[0]']],
    ['end before begin', 'invalid-entry', craft(`{"a":${f32([0], [4, 0])}}`, zeros(4)), []],
    ['shape nested 100,000 deep', 'invalid-entry', craft(`{"a":{"dtype":"F32","shape":` +
      `${'['.repeat(1e5)}${']'.repeat(1e5)},"data_offsets":[0,0]}}`), ['an array of 1 items']],
    ['entry not an object', 'invalid-entry', craft('{"a":[1,2]}'), ['"a"']],
    ['metadata value not a string', 'invalid-metadata', craft('{"__metadata__":{"k":1}}'),
      ['"k"']],
    ['metadata not an object', 'invalid-metadata', craft('{"__metadata__":["k"]}'), []],
    ['gap before the first tensor', 'offsets-not-contiguous',
      craft(`{"a":${f32([1], [4, 8])}}`, zeros(8)), ['"a"', '4', 'gap']],
    ['overlap', 'offsets-not-contiguous',
      craft(`{"a":${f32([2], [0, 8])},"b":${f32([1], [4, 8])}}`, zeros(8)), ['"b"', 'overlap']],
    ['bytes do not match shape', 'size-mismatch', craft(`{"a":${f32([3], [0, 8])}}`, zeros(8)),
      ['"a"', '8', '12']],
    ['element count over 2^53', 'size-mismatch',
      craft(`{"a":${f32([2 ** 40, 2 ** 40, 0], [0, 0])}}`), ['2^53']],
    ['2^40 elements, consistent offsets', 'file-length-mismatch',
      craft(`{"a":${f32([2 ** 40], [0, 2 ** 42])}}`, zeros(8)), ['4398046511104']],
    ['trailing byte', 'file-length-mismatch', craft(`{"a":${f32([1], [0, 4])}}`, zeros(5)),
      ['5']],
    ['missing byte', 'file-length-mismatch', craft(`{"a":${f32([1], [0, 4])}}`, zeros(3)), []],
  ];

  for (const [what, rule, bytes, mentions] of cases) {
    test(`${rule}: ${what}`, async () => {
      assert.throws(() => parseSafetensors(bytes), isRule(rule, ...mentions));
      await assert.rejects(SafetensorsFile.open(await scratchFile(bytes)), isRule(rule));
    });
  }

  test('the first violation is reported: an earlier bad entry wins over a later one', () => {
    const bytes = craft(`{"b":${f32([1], [0, 4], '"X"')},"a":{"dtype":"F32"}}`, zeros(4));
    assert.throws(() => parseSafetensors(bytes), isRule('invalid-entry', '"b"'));
  });

  test('null metadata is read as none; extra entry fields are ignored', () => {
    const bytes = craft('{"__metadata__":null,' +
      '"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":{}}}', new Uint8Array([42]));
    const { metadata, tensors } = parseSafetensors(bytes);
    assert.deepEqual(metadata, {});
    assert.deepEqual([...tensors.get('a')!.data], [42]);
  });

  test('"__proto__" is an ordinary tensor name and metadata key', () => {
    const bytes = craft('{"__metadata__":{"__proto__":"x"},' +
      '"__proto__":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', new Uint8Array([5]));
    const { metadata, tensors } = parseSafetensors(bytes);
    assert.equal(Object.getPrototypeOf(metadata), Object.prototype);
    assert.deepEqual(Object.entries(metadata), [['__proto__', 'x']]);
    assert.deepEqual([...tensors.get('__proto__')!.data], [5]);
    const again = parseSafetensors(serializeSafetensors(tensors, metadata));
    assert.deepEqual(Object.entries(again.metadata), [['__proto__', 'x']]);
  });

  test('unsupported dtypes parse in the header and fail only when read', async () => {
    const header = `{"q":${f32([2], [0, 4], '"U16"')},"w":${f32([1], [4, 8])}}`;
    const bytes = craft(header.padEnd(64), zeros(8));
    assert.equal(parseSafetensorsHeader(bytes).entries.get('q')!.dtype, 'U16');
    assert.throws(() => parseSafetensors(bytes), isRule('unsupported-dtype', 'U16', '"q"'));
    const file = await SafetensorsFile.open(await scratchFile(bytes));
    try {
      await assert.rejects(file.read('q'), isRule('unsupported-dtype', 'U16', '"q"'));
      assert.deepEqual([...(await file.read('w')).data], [0]);
      await assert.rejects(file.read('nope'), isRule('tensor-not-found', '"nope"'));
    } finally { await file.close(); }
  });

  test('a path that is a folder or a FIFO is named as such, before it is opened',
    { skip: process.platform === 'win32' && 'no mkfifo', timeout: 5000 }, async () => {
      const folder = join(scratch, 'folder.safetensors');
      await mkdir(folder);
      await assert.rejects(SafetensorsFile.open(folder), (e: unknown) => {
        assert.ok(e instanceof FileKindError, String(e));
        assert.equal(e.message, `${folder}: not a regular file (a folder): expected a ` +
          '.safetensors file');
        return true;
      });
      const fifo = join(scratch, 'fifo.safetensors');
      execFileSync('mkfifo', [fifo]);
      // Opening a FIFO for reading would wait for a writer: the timeout fails a blocking open.
      await assert.rejects(SafetensorsFile.open(fifo), { name: 'FileKindError',
        message: `${fifo}: not a regular file (a FIFO): expected a .safetensors file` });
      const missing = join(scratch, 'missing.safetensors');
      await assert.rejects(SafetensorsFile.open(missing), { name: 'FileKindError',
        message: `${missing}: no such file: expected a .safetensors file` });
    });

  test('writer rejects inconsistent input', () => {
    const bad: [Record<string, TensorInput>, string][] = [
      [{ a: { dtype: 'F32', shape: [3], data: new Float32Array(2) } }, 'needs 3 elements'],
      // Sound: deliberately the wrong array type for the dtype, as untyped callers might pass.
      [{ a: { dtype: 'I32', shape: [1], data: new Float32Array(1) as unknown as Int32Array } },
        'Float32Array'],
      [{ __metadata__: { dtype: 'U8', shape: [0], data: new Uint8Array(0) } }, 'reserved'],
      [{ a: { dtype: 'U8', shape: [-1], data: new Uint8Array(0) } }, '-1'],
    ];
    for (const [tensors, mention] of bad) {
      assert.throws(() => serializeSafetensors(tensors), isRule('invalid-input', mention));
    }
  });
});

describe('fuzz', () => {
  const base = serializeSafetensors({
    w: { dtype: 'F32', shape: [2, 3], data: new Float32Array([1, 2, 3, 4, 5, 6]) },
    steps: { dtype: 'I64', shape: [2], data: new BigInt64Array([10n, 500n]) },
    h: { dtype: 'F16', shape: [3], data: new Uint16Array([0x3c00, 0x7c00, 0x0001]) },
    b: { dtype: 'BF16', shape: [2], data: new Uint16Array([0x3f80, 0xc000]) },
    mask: { dtype: 'BOOL', shape: [1], data: new Uint8Array([1]) },
    pix: { dtype: 'U8', shape: [5], data: new Uint8Array([1, 2, 3, 4, 5]) },
    none: { dtype: 'I32', shape: [0], data: new Int32Array(0) },
    d: { dtype: 'F64', shape: [1], data: new Float64Array([0.5]) },
  }, { format: 'pt' });
  const headerLen = Number(new DataView(base.buffer).getBigUint64(0, true));
  const headerText = Buffer.from(base.subarray(8, 8 + headerLen)).toString('latin1');

  /** xorshift32: a reproducible stream of uint32. */
  let state = 0x2545f491;
  const next = () => {
    state ^= state << 13; state ^= state >>> 17; state ^= state << 5;
    return (state >>>= 0);
  };
  const below = (n: number) => next() % n;
  const pick = <T>(xs: readonly T[]): T => xs[below(xs.length)]!;

  const withHeader = (text: string) =>
    craft('', Buffer.concat([Buffer.from(text, 'latin1'), base.subarray(8 + headerLen)]),
      BigInt(text.length));
  const numbers = ['0', '1', '7', '-1', '1.5', '1e3', '4294967296', '1099511627776',
    '9007199254740993', '18446744073709551615', '1e400'];

  /** Token swaps that reach the rules random edits rarely do. */
  const swaps: [string, string][] = [['"steps"', '"w"'], ['"pt"', '1'], ['"F32"', '"F8_E4M3"'],
    ['"I64"', '"U64"'], ['"shape"', '"shape","shape":[]'], ['{"format"', '["format"']];

  function mutate(): Uint8Array {
    const kind = below(8);
    if (kind === 0) { // flip a few bytes anywhere
      const out = base.slice();
      for (let k = 1 + below(4); k > 0; k--) out[below(out.length)]! ^= 1 + below(255);
      return out;
    }
    if (kind === 1) return base.slice(0, below(base.length)); // truncate
    if (kind === 2) { // edit the header length
      const out = base.slice();
      const n = pick([0n, 1n, BigInt(headerLen - 1), BigInt(headerLen + 1), BigInt(headerLen + 8),
        BigInt(next()), 2n ** 63n, 2n ** 64n - 1n, 100_000_001n]);
      new DataView(out.buffer).setBigUint64(0, n, true);
      return out;
    }
    if (kind === 3) { // replace one number in the header (offsets, shapes)
      const runs = [...headerText.matchAll(/\d+/g)];
      const run = pick(runs);
      const value = below(3) === 0 ? String(Number(run[0]) + pick([-1, 1, 4, -4])) : pick(numbers);
      return withHeader(headerText.slice(0, run.index) + value +
        headerText.slice(run.index! + run[0].length));
    }
    if (kind === 4) { // replace one header character with JSON punctuation or a random byte
      const at = below(headerText.length);
      const c = below(2) === 0 ? pick([...'"{}[],:\\ 0']) : String.fromCharCode(below(256));
      return withHeader(headerText.slice(0, at) + c + headerText.slice(at + 1));
    }
    if (kind === 5) { // swap one token
      const [from, to] = pick(swaps);
      return withHeader(headerText.replace(from, to));
    }
    if (kind === 6) { // flip a data byte: the file stays valid
      const out = base.slice();
      out[8 + headerLen + below(base.length - 8 - headerLen)]! ^= 1 + below(255);
      return out;
    }
    const out = new Uint8Array(base.length + 1 + below(16)); // append bytes
    out.set(base);
    return out;
  }

  test('2,000 mutations each parse or throw a SafetensorsError', async (t) => {
    const outcomes = new Map<string, number>();
    for (let i = 0; i < 2000; i++) {
      const bytes = mutate();
      let outcome = 'ok';
      try {
        const { tensors } = parseSafetensors(bytes, { widen: i % 2 === 0 });
        let total = 0;
        for (const t of tensors.values()) total += t.data.byteLength;
        assert.ok(total <= 2 * bytes.length, `mutation ${i}: ${total} bytes from ${bytes.length}`);
      } catch (e) {
        if (!(e instanceof SafetensorsError)) assert.fail(`mutation ${i} threw ${String(e)}`);
        outcome = e.rule;
      }
      outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
      if (i % 40 === 0) { // the file API must agree with the in-memory one
        const path = await scratchFile(bytes);
        const fileOutcome = await SafetensorsFile.open(path).then(
          async (f) => { await f.readAll({ widen: true }); await f.close(); return 'ok'; },
          (e: unknown) => (e instanceof SafetensorsError ? e.rule : String(e)));
        assert.equal(fileOutcome, outcome, `mutation ${i} via file`);
      }
    }
    t.diagnostic(`outcomes: ${JSON.stringify(Object.fromEntries(outcomes))}`);
    // Every rule a file can break is reached, and valid mutants decode.
    const reached = [...outcomes.keys()].sort();
    assert.deepEqual(reached, ['duplicate-key', 'file-length-mismatch', 'header-too-large',
      'header-truncated', 'invalid-entry', 'invalid-json', 'invalid-metadata', 'invalid-utf8',
      'offsets-not-contiguous', 'ok', 'size-mismatch', 'unsupported-dtype'],
    JSON.stringify([...outcomes]));
    assert.ok(outcomes.get('ok')! > 100, JSON.stringify([...outcomes]));
  });
});

describe('atomic write', () => {
  const good = { a: { dtype: 'F32', shape: [2], data: new Float32Array([1, 2]) } } as const;

  async function assertFailsCleanly(tensors: Record<string, TensorInput>, mention: string) {
    const dir = await mkdtemp(join(scratch, 'atomic-'));
    const path = join(dir, 'model.safetensors');
    await writeSafetensors(path, good);
    const before = await readFile(path);
    await assert.rejects(writeSafetensors(path, tensors), (e: unknown) =>
      e instanceof Error && e.message.includes(mention));
    assert.deepEqual(await readdir(dir), ['model.safetensors']);
    assert.ok((await readFile(path)).equals(before));
  }

  test('a data getter that throws midway leaves no temp file and the target intact', async () => {
    const exploding = { dtype: 'F32', shape: [1024] } as const;
    Object.defineProperty(exploding, 'data', { get() { throw new Error('device lost'); } });
    await assertFailsCleanly({
      first: { dtype: 'F64', shape: [1], data: new Float64Array([1]) },
      // Sound: `exploding` has the TensorInput fields; its `data` is a getter that throws.
      second: exploding as unknown as TensorInput,
    }, 'device lost');
  });

  test('a tensor whose data does not match its shape fails the write cleanly', async () => {
    await assertFailsCleanly({ a: { dtype: 'F32', shape: [5], data: new Float32Array(4) } },
      'needs 5 elements');
  });

  test('a successful write replaces the target and leaves only it', async () => {
    const dir = await mkdtemp(join(scratch, 'atomic-'));
    const path = join(dir, 'model.safetensors');
    await writeSafetensors(path, good);
    const data = new BigInt64Array([7n]);
    await writeSafetensors(path, { b: { dtype: 'I64', shape: [1], data } });
    assert.deepEqual(await readdir(dir), ['model.safetensors']);
    assert.deepEqual([...parseSafetensors(await readFile(path)).tensors.keys()], ['b']);
  });
});
