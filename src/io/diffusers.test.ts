/**
 * @file Tests for diffusers' folder layout: round trips (single file, shards, fp16 variant),
 * the golden UNet2DModel folder written by diffusers 0.31, folder resolution, every error a
 * user can meet (each must name the path and the problem), and saves that crash half-way.
 *
 * Reference: diffusers v0.31.0 `save_pretrained` / `from_pretrained` file names, and the
 * golden folder test/data/golden/unet2d (see its README). Expected JSON text below was
 * printed by Python's `json.dumps(v, indent=2, sort_keys=True)`.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import {
  mkdir, mkdtemp, readdir, readFile, rename, rm, truncate, unlink, writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { HostArray } from '../engine/host.js';
import { RngKey } from '../engine/random/philox.js';
import { readConfig } from '../models/config.js';
import { Conv2d, GroupNorm, Linear } from '../nn/layers.js';
import { Module, stateDict, type ParamsOf } from '../nn/module.js';
import { StateDictError } from '../nn/state.js';
import { goldenModelFolder } from '../../test/support/golden.js';
import { goldenDir } from '../../test/support/paths.js';
import {
  DiffusersFolderError, loadModel, readModelFolder, readModelIndex, readSchedulerConfig,
  saveModel, toPythonJson, writeModelIndex, writeSchedulerConfig, type ModelClass,
} from './diffusers.js';
import { SafetensorsFile, writeSafetensors, type TensorInput } from './safetensors.js';

// ---- a small model of our own ----

// A type, not an interface: readConfig's `T extends Record<string, unknown>` needs one.
type TinyConfig = {
  in_channels: number;
  hidden_size: number;
  num_layers: number;
  norm_eps: number;
};
const TINY_DEFAULTS: TinyConfig = {
  in_channels: 3, hidden_size: 8, num_layers: 2, norm_eps: 1e-5,
};

class TinyLayer extends Module {
  readonly norm: GroupNorm;
  readonly to_q: Linear;
  constructor(c: TinyConfig) {
    super();
    this.norm = new GroupNorm(2, c.hidden_size, c.norm_eps);
    this.to_q = new Linear(c.hidden_size, c.hidden_size);
  }
}
class Tiny extends Module {
  readonly conv_in: Conv2d;
  readonly layers: TinyLayer[];
  readonly proj_out: Linear;
  constructor(c: TinyConfig) {
    super();
    this.conv_in = new Conv2d(c.in_channels, c.hidden_size, 3, { padding: 1 });
    this.layers = Array.from({ length: c.num_layers }, () => new TinyLayer(c));
    this.proj_out = new Linear(c.hidden_size, c.in_channels);
  }
}
const TinyModel: ModelClass<Tiny, TinyConfig> = {
  className: 'TinyModel',
  readConfig: (raw, opts) => readConfig('TinyModel', raw, TINY_DEFAULTS, opts),
  create: (c) => new Tiny(c),
  toConfig: (c) => ({ ...c }),
  rename: (name) => name.replace('.query.', '.to_q.'), // a legacy name, as UNet attention has
};
const config: TinyConfig = { in_channels: 3, hidden_size: 8, num_layers: 3, norm_eps: 1e-6 };
// conv_in 8*3*3*3 + 8, per layer 8 + 8 + 64 + 8, proj_out 24 + 3
const TINY_PARAMS = 224 + 3 * 88 + 27;

function tinyParams(seed: number) {
  return new Tiny(config).init(RngKey.fromSeed(seed));
}

const bits = (a: HostArray) =>
  Array.from(new Uint32Array((a.data as Float32Array).slice().buffer));

function assertSameParams(got: ParamsOf<Tiny, HostArray>, want: ParamsOf<Tiny, HostArray>) {
  const g = stateDict(got);
  const w = stateDict(want);
  assert.deepEqual([...g.keys()], [...w.keys()]);
  for (const [name, a] of w) {
    assert.deepEqual(g.get(name)!.shape, a.shape, name);
    assert.deepEqual(bits(g.get(name)!), bits(a), `${name} differs`);
  }
}

/** Expects a DiffusersFolderError (or `cls`) whose message has every fragment. */
function fails(mentions: (string | RegExp)[],
  cls: new (...a: never[]) => Error = DiffusersFolderError) {
  return (e: unknown) => {
    assert.ok(e instanceof cls, `expected ${cls.name}, got ${String(e)}`);
    for (const m of mentions) {
      const ok = typeof m === 'string' ? e.message.includes(m) : m.test(e.message);
      assert.ok(ok, `"${e.message}" lacks ${String(m)}`);
    }
    return true;
  };
}

let scratch = '';
let count = 0;
const fresh = () => join(scratch, `m${count++}`);
before(async () => { scratch = await mkdtemp(join(tmpdir(), 'diffuse-diffusers-')); });
after(async () => { await rm(scratch, { recursive: true, force: true }); });

const silent = { warn: () => undefined };
const sorted = async (dir: string) => (await readdir(dir)).sort();

// ---- round trips ----

describe('round trip', () => {
  test('single file: bit-exact params, diffusers config keys and file names', async () => {
    const dir = fresh();
    const params = tinyParams(1);
    assert.equal(new Tiny(config).numParams(), TINY_PARAMS);
    await saveModel(dir, TinyModel, config, params);
    assert.deepEqual(await sorted(dir), ['config.json', 'diffusion_pytorch_model.safetensors']);
    assert.deepEqual(await sorted(scratch), [dir.slice(scratch.length + 1)]); // no leftovers
    assert.equal(await readFile(join(dir, 'config.json'), 'utf8'), [
      '{', '  "_class_name": "TinyModel",', '  "_diffusers_version": "0.31.0",',
      '  "hidden_size": 8,', '  "in_channels": 3,', '  "norm_eps": 1e-06,',
      '  "num_layers": 3', '}', ''].join('\n'));
    const file = await SafetensorsFile.open(join(dir, 'diffusion_pytorch_model.safetensors'));
    assert.deepEqual(file.metadata, { format: 'pt' });
    const size = file.entries.size;
    await file.close();
    assert.equal(size, 2 + 3 * 4 + 2);

    const loaded = await loadModel(dir, TinyModel);
    assert.deepEqual(loaded.config, config);
    assert.equal(loaded.model.numParams(), TINY_PARAMS);
    assert.equal(loaded.folder, dir);
    assertSameParams(loaded.params, params);
  });

  test('sharded: greedy split in state-dict order, index with weight_map, bit-exact', async () => {
    const dir = fresh();
    const params = tinyParams(2);
    // Bytes in order: conv_in 864, 32, then per layer 32, 32, 256, 32, then proj_out 96, 12.
    await saveModel(dir, TinyModel, config, params, { maxShardSize: 400 });
    const files = await sorted(dir);
    const shards = files.filter((f) => f.endsWith('.safetensors'));
    // [864] alone (over the limit), [32 + 32 + 32 + 256 + 32], [32 + 32 + 256 + 32 + 32],
    // [32 + 256 + 32], [96 + 12]
    assert.equal(shards.length, 5);
    assert.deepEqual(shards.slice(0, 2), ['diffusion_pytorch_model-00001-of-00005.safetensors',
      'diffusion_pytorch_model-00002-of-00005.safetensors']);
    assert.ok(files.includes('diffusion_pytorch_model.safetensors.index.json'));
    const index = JSON.parse(await readFile(join(dir,
      'diffusion_pytorch_model.safetensors.index.json'), 'utf8'));
    assert.equal(index.metadata.total_size, TINY_PARAMS * 4);
    assert.equal(index.weight_map['conv_in.weight'], shards[0]);
    assert.equal(index.weight_map['conv_in.bias'], shards[1]);
    assert.equal(index.weight_map['layers.0.to_q.bias'], shards[1]);
    assert.equal(index.weight_map['layers.1.norm.weight'], shards[2]);
    assert.equal(Object.keys(index.weight_map).length, 16);

    const read = await readModelFolder(dir);
    assert.deepEqual(read.weightFiles.map((f) => f.slice(dir.length + 1)), shards);
    assertSameParams((await loadModel(dir, TinyModel)).params, params);

    // Saving unsharded over it removes the shards and the index (a stale index would win).
    await saveModel(dir, TinyModel, config, tinyParams(3));
    assert.deepEqual(await sorted(dir), ['config.json', 'diffusion_pytorch_model.safetensors']);
    assertSameParams((await loadModel(dir, TinyModel)).params, tinyParams(3));
  });

  test('fp16 variant beside float32 weights: within half precision, both kept', async () => {
    const dir = fresh();
    const params = tinyParams(4);
    await saveModel(dir, TinyModel, config, params);
    await saveModel(dir, TinyModel, config, params, { dtype: 'float16', variant: 'fp16' });
    assert.deepEqual(await sorted(dir), ['config.json', 'diffusion_pytorch_model.fp16.safetensors',
      'diffusion_pytorch_model.safetensors']);
    const file = await SafetensorsFile.open(join(dir, 'diffusion_pytorch_model.fp16.safetensors'));
    assert.equal(file.entries.get('conv_in.weight')!.dtype, 'F16');
    await file.close();

    const half = await loadModel(dir, TinyModel, { variant: 'fp16' });
    const want = stateDict(params);
    let worst = 0;
    let changed = 0;
    for (const [name, a] of stateDict(half.params)) {
      assert.equal(a.dtype, 'float32');
      const w = want.get(name)!.data as Float32Array;
      (a.data as Float32Array).forEach((v, i) => {
        // round to nearest: relative error <= 2^-11 for normal halves
        worst = Math.max(worst, Math.abs(v - w[i]!) / Math.max(Math.abs(w[i]!), 2 ** -14));
        if (v !== w[i]) changed++;
      });
    }
    assert.ok(worst <= 2 ** -11, `relative error ${worst}`);
    assert.ok(changed > TINY_PARAMS / 2, 'fp16 values should differ from float32 ones');
    assertSameParams((await loadModel(dir, TinyModel)).params, params); // float32 file intact
  });

  test('sharded fp16: diffusers names, and the legacy index name loads too', async () => {
    const dir = fresh();
    const params = tinyParams(5);
    await saveModel(dir, TinyModel, config, params,
      { dtype: 'float16', variant: 'fp16', maxShardSize: '1KB' });
    const files = await sorted(dir);
    assert.deepEqual(files, ['config.json',
      'diffusion_pytorch_model.fp16-00001-of-00002.safetensors',
      'diffusion_pytorch_model.fp16-00002-of-00002.safetensors',
      'diffusion_pytorch_model.safetensors.index.fp16.json']);
    await assert.rejects(loadModel(dir, TinyModel), fails(['no weights',
      'diffusion_pytorch_model.safetensors.index.json, diffusion_pytorch_model.safetensors;',
      'diffusion_pytorch_model.fp16-00001-of-00002.safetensors']));
    const a = await loadModel(dir, TinyModel, { variant: 'fp16' });
    await rename(join(dir, files[3]!),
      join(dir, 'diffusion_pytorch_model.safetensors.fp16.index.json'));
    const b = await loadModel(dir, TinyModel, { variant: 'fp16' });
    assertSameParams(b.params, a.params);
  });

  test('legacy names are renamed; F64 files narrow to float32', async () => {
    const dir = fresh();
    await saveModel(dir, TinyModel, config, tinyParams(6));
    const weights = join(dir, 'diffusion_pytorch_model.safetensors');
    const read = await readModelFolder(dir);
    const legacy = new Map([...read.stateDict].map(([name, a]) => [
      name.replace('.to_q.', '.query.'),
      { dtype: 'F64' as const, shape: a.shape, data: Float64Array.from(a.data as Float32Array) },
    ]));
    assert.ok(legacy.has('layers.2.query.weight'));
    await writeSafetensors(weights, legacy);
    assertSameParams((await loadModel(dir, TinyModel)).params, tinyParams(6));
  });
});

// ---- diffusers' own files ----

describe('golden folder written by diffusers 0.31', () => {
  const data = join(goldenDir, 'unet2d'); // config.json, provenance: diffusers' files
  let dir = ''; // a copy of config.json and the weights file, regenerated from the seed
  before(async () => { dir = await goldenModelFolder('unet2d'); });

  test('UNet2DModel: 320 tensors, the shapes diffusers listed, 4,023,233 numbers', async () => {
    const read = await readModelFolder(dir);
    assert.equal(read.className, 'UNet2DModel');
    assert.equal(read.config._diffusers_version, '0.31.0');
    assert.deepEqual(read.config.block_out_channels, [32, 64, 128]);
    assert.equal(read.stateDict.size, 320);
    const provenance = JSON.parse(await readFile(join(data, 'weights_provenance.json'), 'utf8'));
    const shapes: Record<string, number[]> = provenance.state_dict_keys_and_shapes;
    let total = 0;
    for (const [name, shape] of Object.entries(shapes)) {
      const a = read.stateDict.get(name);
      assert.ok(a, `${name} missing`);
      assert.deepEqual(a.shape, shape, name);
      assert.equal(a.dtype, 'float32');
      total += a.size;
    }
    assert.equal(total, provenance.num_params);
    assert.equal(total, 4_023_233);
    assert.ok(read.stateDict.has('down_blocks.1.attentions.0.to_q.weight'));
  });

  test('config.json written back is what diffusers wrote, but for 0.0 -> 0', async () => {
    const text = await readFile(join(data, 'config.json'), 'utf8');
    const read = await readModelFolder(dir);
    // JSON.parse reads 0.0 as 0, and nothing says it was a float: ints and floats are one type
    // here. Python reads `"dropout": 0` as int 0, which diffusers accepts wherever a float goes.
    const floats = text.match(/\d\.0,?\n/g) ?? [];
    assert.equal(floats.length, 1); // "dropout": 0.0
    assert.equal(`${toPythonJson(read.config)}\n`, text.replace(/(\d)\.0(,?\n)/g, '$1$2'));
  });

  test('loading it as our model reports the class names', async () => {
    await assert.rejects(loadModel(dir, TinyModel),
      fails([join(dir, 'config.json'), "'UNet2DModel'", "expected 'TinyModel'"]));
  });
});

// ---- where a model is found ----

describe('folder resolution', () => {
  test('subfolder when it has a config, else the repo root; subfolder wins', async () => {
    const pipe = fresh();
    await saveModel(join(pipe, 'unet'), TinyModel, config, tinyParams(7));
    const viaSub = await loadModel(pipe, TinyModel, { subfolder: 'unet' });
    assert.equal(viaSub.folder, join(pipe, 'unet'));

    const root = fresh(); // google/ddpm-cifar10-32 keeps its UNet at the root
    await saveModel(root, TinyModel, config, tinyParams(8));
    const viaRoot = await loadModel(root, TinyModel, { subfolder: 'unet' });
    assert.equal(viaRoot.folder, root);
    assertSameParams(viaRoot.params, tinyParams(8));

    await saveModel(join(root, 'unet'), TinyModel, config, tinyParams(9));
    assertSameParams((await loadModel(root, TinyModel, { subfolder: 'unet' })).params,
      tinyParams(9));
    assertSameParams((await loadModel(root, TinyModel)).params, tinyParams(8));
  });

  test('no config anywhere names both places looked in', async () => {
    const dir = fresh();
    await mkdir(join(dir, 'unet'), { recursive: true });
    await assert.rejects(loadModel(dir, TinyModel, { subfolder: 'unet' }),
      fails([join(dir, 'unet', 'config.json'), join(dir, 'config.json')]));
  });
});

// ---- errors ----

describe('errors name the path and the problem', () => {
  test('a sharded index with a missing shard names the shard', async () => {
    const copy = fresh();
    await saveModel(copy, TinyModel, config, tinyParams(10), { maxShardSize: 400 });
    await unlink(join(copy, 'diffusion_pytorch_model-00003-of-00005.safetensors'));
    await assert.rejects(loadModel(copy, TinyModel), fails([
      join(copy, 'diffusion_pytorch_model.safetensors.index.json'),
      'missing shards: diffusion_pytorch_model-00003-of-00005.safetensors (5 tensors)']));
  });

  test('an index placing a tensor in the wrong shard, or outside the folder', async () => {
    const copy = fresh();
    await saveModel(copy, TinyModel, config, tinyParams(10), { maxShardSize: 400 });
    const path = join(copy, 'diffusion_pytorch_model.safetensors.index.json');
    const idx = JSON.parse(await readFile(path, 'utf8'));
    idx.weight_map['proj_out.bias'] = 'diffusion_pytorch_model-00001-of-00005.safetensors';
    await writeFile(path, JSON.stringify(idx));
    await assert.rejects(loadModel(copy, TinyModel),
      fails(['00001-of-00005.safetensors', "no tensor 'proj_out.bias'"]));
    idx.weight_map['proj_out.bias'] = '../elsewhere.safetensors';
    await writeFile(path, JSON.stringify(idx));
    await assert.rejects(loadModel(copy, TinyModel),
      fails([path, "weight_map['proj_out.bias']", '"../elsewhere.safetensors"']));
  });

  test('invalid JSON names the file and the JSON error', async () => {
    const copy = fresh();
    await saveModel(copy, TinyModel, config, tinyParams(11));
    await writeFile(join(copy, 'config.json'), '{"in_channels": 3,}');
    await assert.rejects(loadModel(copy, TinyModel),
      fails([join(copy, 'config.json'), 'invalid JSON', /JSON|property|token/]));
    await writeFile(join(copy, 'config.json'), '[1, 2]');
    await assert.rejects(loadModel(copy, TinyModel),
      fails(['expected a JSON object, got an array']));
  });

  test('a wrong _class_name names both classes', async () => {
    const copy = fresh();
    await saveModel(copy, TinyModel, config, tinyParams(12));
    const path = join(copy, 'config.json');
    const raw = JSON.parse(await readFile(path, 'utf8'));
    await writeFile(path, JSON.stringify({ ...raw, _class_name: 'DiTTransformer2DModel' }));
    await assert.rejects(loadModel(copy, TinyModel),
      fails([path, "'DiTTransformer2DModel'", "expected 'TinyModel'"]));
    // A model that accepts an old class name lists it for the loader and for readConfig.
    const Aliased: ModelClass<Tiny, TinyConfig> = { ...TinyModel, aliases: ['LegacyTinyModel'],
      readConfig: (r, o) =>
        readConfig('TinyModel', r, TINY_DEFAULTS, { ...o, aliases: ['LegacyTinyModel'] }) };
    await assert.rejects(loadModel(copy, Aliased), fails(["expected 'TinyModel'"]));
    await writeFile(path, JSON.stringify({ ...raw, _class_name: 'LegacyTinyModel' }));
    assertSameParams((await loadModel(copy, Aliased)).params, tinyParams(12));
  });

  test('unknown config keys warn, missing keys take defaults', async () => {
    const copy = fresh();
    await saveModel(copy, TinyModel, config, tinyParams(13));
    const path = join(copy, 'config.json');
    const { norm_eps: _drop, ...raw } = JSON.parse(await readFile(path, 'utf8'));
    await writeFile(path, JSON.stringify({ ...raw, upcast_attention: true }));
    const warnings: string[] = [];
    const loaded = await loadModel(copy, TinyModel, { warn: (m) => warnings.push(m) });
    assert.deepEqual(warnings, ["TinyModel config: unknown key 'upcast_attention' ignored"]);
    assert.equal(loaded.config.norm_eps, TINY_DEFAULTS.norm_eps);
  });

  test('missing weights list every name looked for and what the folder has', async () => {
    const copy = fresh();
    await saveModel(copy, TinyModel, config, tinyParams(14));
    await rename(join(copy, 'diffusion_pytorch_model.safetensors'),
      join(copy, 'diffusion_pytorch_model.bin'));
    await assert.rejects(loadModel(copy, TinyModel, { variant: 'fp16' }), fails([copy,
      'diffusion_pytorch_model.safetensors.index.fp16.json',
      'diffusion_pytorch_model.safetensors.fp16.index.json',
      'diffusion_pytorch_model.fp16.safetensors', 'has diffusion_pytorch_model.bin',
      '.bin pickles are not read']));
  });

  test('missing, unexpected and misshaped tensors name the key and both shapes', async () => {
    const copy = fresh();
    await saveModel(copy, TinyModel, config, tinyParams(15));
    const weights = join(copy, 'diffusion_pytorch_model.safetensors');
    const dict = (await readModelFolder(copy)).stateDict;
    const asInput = (m: Map<string, HostArray>) => new Map([...m].map(([k, a]) =>
      [k, { dtype: 'F32' as const, shape: a.shape, data: a.data as Float32Array }]));

    const misshaped = new Map(dict).set('proj_out.weight', HostArray.zeros([3, 4]));
    await writeSafetensors(weights, asInput(misshaped));
    await assert.rejects(loadModel(copy, TinyModel),
      fails([weights, "'proj_out.weight'", '[3, 4]', '[3, 8]'], Error));

    const missing = new Map(dict);
    missing.delete('layers.1.norm.bias');
    await writeSafetensors(weights, asInput(missing));
    await assert.rejects(loadModel(copy, TinyModel),
      fails(["missing key 'layers.1.norm.bias'", '[8]'], Error));

    const extra = new Map(dict).set('layers.3.norm.bias', HostArray.zeros([8]));
    await writeSafetensors(weights, asInput(extra));
    await assert.rejects(loadModel(copy, TinyModel),
      fails(["unexpected key 'layers.3.norm.bias'", weights], Error));
  });

  test('a weights tensor of another dtype is named as the file names it (I8 is not int32)',
    async () => {
      const copy = fresh();
      await saveModel(copy, TinyModel, config, tinyParams(17));
      const weights = join(copy, 'diffusion_pytorch_model.safetensors');
      const dict = (await readModelFolder(copy)).stateDict;
      const asInput = (name: string, other: TensorInput) => new Map<string, TensorInput>(
        [...dict].map(([k, a]) => [k, k === name ? other
          : { dtype: 'F32', shape: a.shape, data: a.data as Float32Array }]));
      const cases: [TensorInput, string][] = [
        [{ dtype: 'I8', shape: [3], data: new Int8Array(3) }, 'I8'],
        [{ dtype: 'U8', shape: [3], data: new Uint8Array(3) }, 'U8'],
        [{ dtype: 'I16', shape: [3], data: new Int16Array(3) }, 'I16'],
        [{ dtype: 'I32', shape: [3], data: new Int32Array(3) }, 'I32'],
        [{ dtype: 'I64', shape: [3], data: new BigInt64Array(3) }, 'I64'],
        [{ dtype: 'BOOL', shape: [3], data: new Uint8Array(3) }, 'BOOL'],
      ];
      for (const [input, dtype] of cases) {
        await writeSafetensors(weights, asInput('proj_out.bias', input));
        await assert.rejects(loadModel(copy, TinyModel), (e: unknown) => {
          assert.ok(e instanceof StateDictError, String(e));
          assert.equal(e.message, `key 'proj_out.bias' in ${weights} is ${dtype}, expected ` +
            'F32, F16, BF16, F64 (parameters are read as float32)');
          return true;
        });
      }
    });

  test('a legacy name and its new name in one file are refused, not last-one-wins', async () => {
    const copy = fresh();
    await saveModel(copy, TinyModel, config, tinyParams(18));
    const weights = join(copy, 'diffusion_pytorch_model.safetensors');
    const dict = (await readModelFolder(copy)).stateDict;
    const both = new Map([...dict].map(([k, a]) =>
      [k, { dtype: 'F32' as const, shape: a.shape, data: a.data as Float32Array }]));
    both.set('layers.0.query.bias', both.get('layers.0.to_q.bias')!);
    await writeSafetensors(weights, both);
    await assert.rejects(loadModel(copy, TinyModel), fails([weights, "'layers.0.to_q.bias'",
      "'layers.0.query.bias'", "both load parameter 'layers.0.to_q.bias'"], StateDictError));
  });

  test('headers are checked against the model before any tensor data is read', async () => {
    // A 2 GiB tensor the model does not have, over a sparse file: rejected from the header
    // alone, without a read of any tensor (the spy) and in well under a second.
    const copy = fresh();
    await saveModel(copy, TinyModel, config, tinyParams(19));
    const weights = join(copy, 'diffusion_pytorch_model.safetensors');
    const saved = await SafetensorsFile.open(weights);
    const tensorCount = saved.entries.size;
    await saved.close();
    const original = await readFile(weights);
    const oldHeader = Number(original.readBigUInt64LE(0));
    const header = JSON.parse(original.subarray(8, 8 + oldHeader).toString('utf8'));
    const dataLength = original.length - 8 - oldHeader;
    const huge = 2 ** 31;
    const withHuge = (name: string) => {
      const h = { ...header, [name]: { dtype: 'F32', shape: [huge / 4],
        data_offsets: [dataLength, dataLength + huge] } };
      const json = Buffer.from(JSON.stringify(h), 'utf8');
      const prefix = Buffer.alloc(8);
      prefix.writeBigUInt64LE(BigInt(json.length));
      return { bytes: Buffer.concat([prefix, json, original.subarray(8 + oldHeader)]),
        length: 8 + json.length + dataLength + huge };
    };
    const reads: string[] = [];
    const read = SafetensorsFile.prototype.read;
    SafetensorsFile.prototype.read = function (this: SafetensorsFile, name, opts) {
      reads.push(name);
      return read.call(this, name, opts);
    };
    try {
      const file = withHuge('unknown.weight');
      await writeFile(weights, file.bytes);
      await truncate(weights, file.length); // sparse: no disk, no memory
      const t0 = performance.now();
      await assert.rejects(loadModel(copy, TinyModel), fails([
        `unexpected key 'unknown.weight' in ${weights} (F32 [${huge / 4}])`,
        'the model has no such parameter'], StateDictError));
      assert.ok(performance.now() - t0 < 1000, `took ${performance.now() - t0} ms`);
      assert.equal(reads.length, 0, `read ${reads.join(', ')}`);

      // A tensor the model drops (rename -> null) is not read either.
      const dropping = { ...TinyModel,
        rename: (n: string) => (n.startsWith('unknown.') ? null : TinyModel.rename!(n)) };
      const loaded = await loadModel(copy, dropping);
      assertSameParams(loaded.params, tinyParams(19));
      assert.equal(reads.length, tensorCount);
      assert.ok(!reads.includes('unknown.weight'));
    } finally {
      SafetensorsFile.prototype.read = read;
      await rm(weights);
    }
  });

  test('a weights or config path that is a folder or a FIFO says so, and never blocks',
    { skip: process.platform === 'win32' && 'no mkfifo', timeout: 5000 }, async () => {
      const copy = fresh();
      await saveModel(copy, TinyModel, config, tinyParams(20));
      const weights = join(copy, 'diffusion_pytorch_model.safetensors');
      await rm(weights);
      await mkdir(weights);
      await assert.rejects(loadModel(copy, TinyModel), fails([`${weights}: not a regular file ` +
        '(a folder): expected a .safetensors file']));
      await assert.rejects(readModelFolder(copy), fails([`${weights}: not a regular file`]));
      await rm(weights, { recursive: true });
      execFileSync('mkfifo', [weights]);
      await assert.rejects(loadModel(copy, TinyModel), fails([`${weights}: not a regular file ` +
        '(a FIFO): expected a .safetensors file']));

      const configPath = join(copy, 'config.json');
      await rm(configPath);
      execFileSync('mkfifo', [configPath]);
      await assert.rejects(loadModel(copy, TinyModel), fails([`${configPath}: not a regular ` +
        'file (a FIFO): expected a JSON file']));
      await rm(configPath);
      await mkdir(configPath);
      await assert.rejects(loadModel(copy, TinyModel), fails([`${configPath}: not a regular ` +
        'file (a folder): expected a JSON file']));
      execFileSync('mkfifo', [join(copy, 'scheduler_config.json')]);
      await assert.rejects(readSchedulerConfig(copy, { subfolder: '' }), fails([
        `${join(copy, 'scheduler_config.json')}: not a regular file (a FIFO)`]));

      const index = join(copy, 'diffusion_pytorch_model.safetensors.index.json');
      await mkdir(index);
      await rm(configPath, { recursive: true });
      await writeFile(configPath, '{}');
      await assert.rejects(loadModel(copy, TinyModel), fails([`${index}: not a regular file ` +
        '(a folder): expected a JSON index file']));
      // The weights file given where the folder is expected.
      await assert.rejects(loadModel(configPath, TinyModel), fails([`${configPath}: not a ` +
        'folder (a file): expected a folder holding config.json']));
    });

  test('a corrupt weights file names the file and the safetensors rule', async () => {
    const copy = fresh();
    await saveModel(copy, TinyModel, config, tinyParams(16));
    const weights = join(copy, 'diffusion_pytorch_model.safetensors');
    const bytes = await readFile(weights);
    await writeFile(weights, bytes.subarray(0, bytes.length - 4));
    await assert.rejects(loadModel(copy, TinyModel), fails([weights, 'file-length-mismatch']));
  });

  test('params that do not match the config are refused before anything is written', async () => {
    const target = fresh();
    const other = new Tiny({ ...config, num_layers: 2 }).init(RngKey.fromSeed(0));
    // Sound for the test: a deliberately wrong tree, which saveModel must reject at run time.
    await assert.rejects(saveModel(target, TinyModel, config,
      other as unknown as ParamsOf<Tiny, HostArray>), fails(["missing key 'layers.2.norm.weight'",
      'saveModel'], Error));
    await assert.rejects(readdir(target), { code: 'ENOENT' });
  });
});

// ---- crashes during a save ----

describe('a save that fails half-way', () => {
  /** `params` with one array whose data cannot be read (as a failing device read would). */
  function poisoned(seed: number, name: string) {
    const params = tinyParams(seed);
    const dict = stateDict(params);
    const victim = dict.get(name)!;
    const broken = Object.create(HostArray.prototype, {
      shape: { value: victim.shape }, dtype: { value: 'float32' },
      data: { get() { throw new Error('device lost while reading ' + name); } },
    }) as HostArray;
    const path = name.split('.');
    let node: Record<string, unknown> = params as unknown as Record<string, unknown>;
    for (const part of path.slice(0, -1)) node = node[part] as Record<string, unknown>;
    node[path.at(-1)!] = broken;
    return params;
  }

  test('keeps the previous save intact and leaves nothing that loads', async () => {
    const dir = fresh();
    await saveModel(dir, TinyModel, config, tinyParams(20), { maxShardSize: 400 });
    await writeModelIndex(dir, 'TinyPipeline', { unet: ['diffusers', 'TinyModel'] });
    const before = await sorted(dir);
    // The fourth of five shards fails: three shards are written by then.
    await assert.rejects(saveModel(dir, TinyModel, config, poisoned(21, 'layers.2.to_q.weight'),
      { maxShardSize: 400 }), /device lost while reading layers\.2\.to_q\.weight/);
    assert.deepEqual(await sorted(dir), before);
    assertSameParams((await loadModel(dir, TinyModel)).params, tinyParams(20));
    assert.deepEqual(await sorted(scratch), (await sorted(scratch)).filter((n) =>
      !n.includes('.tmp-') && !n.includes('.old-')));

    const none = fresh();
    await assert.rejects(saveModel(none, TinyModel, config, poisoned(22, 'proj_out.bias')));
    await assert.rejects(loadModel(none, TinyModel), fails([`no ${join(none, 'config.json')}`]));
    assert.ok(!(await readdir(scratch)).some((n) => n.includes('.tmp-')));
  });

  test('an interrupted swap is named when the folder is looked for', async () => {
    const dir = fresh();
    await saveModel(dir, TinyModel, config, tinyParams(23));
    await rename(dir, `${dir}.old-1-0123456789ab`); // as if killed between the two renames
    await assert.rejects(loadModel(dir, TinyModel), fails(['interrupted save left',
      '.old-1-0123456789ab']));
  });

  test('saving over a repo-root pipeline keeps its other files', async () => {
    const dir = fresh();
    await writeModelIndex(dir, 'DDPMPipeline', { unet: ['diffusers', 'TinyModel'],
      scheduler: ['diffusers', 'DDPMScheduler'] });
    await writeSchedulerConfig(dir, 'DDPMScheduler', { num_train_timesteps: 1000 });
    await writeSchedulerConfig(dir, 'DDPMScheduler', { num_train_timesteps: 10 },
      { subfolder: 'scheduler' });
    await saveModel(dir, TinyModel, config, tinyParams(24));
    await saveModel(dir, TinyModel, config, tinyParams(25));
    assert.deepEqual(await sorted(dir), ['config.json', 'diffusion_pytorch_model.safetensors',
      'model_index.json', 'scheduler', 'scheduler_config.json']);
    assert.equal((await readSchedulerConfig(dir)).config.num_train_timesteps, 10);
    assert.equal((await readModelIndex(dir)).pipelineClass, 'DDPMPipeline');
    assertSameParams((await loadModel(dir, TinyModel)).params, tinyParams(25));
  });
});

// ---- schedulers, pipelines, JSON ----

describe('scheduler_config.json and model_index.json', () => {
  test('scheduler config round trip, subfolder or root, class check', async () => {
    const dir = fresh();
    const path = await writeSchedulerConfig(dir, 'DPMSolverMultistepScheduler',
      { beta_schedule: 'linear', lambda_min_clipped: -Infinity, trained_betas: null },
      { subfolder: 'scheduler' });
    assert.equal(path, join(dir, 'scheduler', 'scheduler_config.json'));
    assert.match(await readFile(path, 'utf8'), /"lambda_min_clipped": -Infinity,/);
    const read = await readSchedulerConfig(dir);
    assert.equal(read.className, 'DPMSolverMultistepScheduler');
    assert.deepEqual(read.config, { _class_name: 'DPMSolverMultistepScheduler',
      _diffusers_version: '0.31.0', beta_schedule: 'linear', lambda_min_clipped: -Infinity,
      trained_betas: null });
    await readSchedulerConfig(dir, { expect: ['DDIMScheduler', 'DPMSolverMultistepScheduler'] });
    await assert.rejects(readSchedulerConfig(dir, { expect: 'DDIMScheduler' }),
      fails([path, "'DPMSolverMultistepScheduler'", "expected 'DDIMScheduler'"]));
    const root = await readSchedulerConfig(join(dir, 'scheduler'));
    assert.equal(root.path, path);
    await assert.rejects(readSchedulerConfig(fresh()), fails(['scheduler_config.json']));
  });

  test('model_index.json round trip: components, optional ones, other entries', async () => {
    const dir = fresh();
    const path = await writeModelIndex(dir, 'StableDiffusionPipeline',
      { unet: ['diffusers', 'UNet2DConditionModel'], safety_checker: [null, null] },
      { requires_safety_checker: false, _tool_note: { made_by: 'diffuse' } });
    assert.equal(await readFile(path, 'utf8'), ['{',
      '  "_class_name": "StableDiffusionPipeline",', '  "_diffusers_version": "0.31.0",',
      '  "_tool_note": {', '    "made_by": "diffuse"', '  },', '  "requires_safety_checker": false,', '  "safety_checker": [', '    null,', '    null',
      '  ],', '  "unet": [', '    "diffusers",', '    "UNet2DConditionModel"', '  ]', '}', '']
      .join('\n'));
    const read = await readModelIndex(dir);
    assert.deepEqual(read, { path, pipelineClass: 'StableDiffusionPipeline',
      diffusersVersion: '0.31.0', options: { requires_safety_checker: false },
      privateEntries: { _tool_note: { made_by: 'diffuse' } }, components: { unet: ['diffusers', 'UNet2DConditionModel'], safety_checker: [null, null] } });
    await writeFile(path, JSON.stringify({ _class_name: ['my_module', 'MyPipeline'] }));
    await assert.rejects(readModelIndex(dir), fails([path, 'custom pipelines']));
    await assert.rejects(writeModelIndex(dir, 'P', { unet: ['diffusers', null] as never }),
      fails(["component 'unet'"]));
  });

  test('JSON as Python json.dumps(indent=2, sort_keys=True) writes it, and reads back', () => {
    const value = {
      b: [1e-5, 0.0001, 1e16, 1.5, 123456789.125, -2.5e-7, 1e300, -Infinity, NaN],
      a: { x: [], y: {}, 'é': 'snow \u2603 \u007f "q" \n' }, _c: null, Z: true,
    };
    const text = toPythonJson(value);
    assert.equal(text, String.raw`{
  "Z": true,
  "_c": null,
  "a": {
    "x": [],
    "y": {},
    "\u00e9": "snow \u2603 \u007f \"q\" \n"
  },
  "b": [
    1e-05,
    0.0001,
    1e+16,
    1.5,
    123456789.125,
    -2.5e-07,
    1e+300,
    -Infinity,
    NaN
  ]
}`);
  });
});
