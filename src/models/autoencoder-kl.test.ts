/** AutoencoderKL against diffusers' golden run (test/data/golden/autoencoder_kl), the KL
 *  loss and posterior sample against hand computations, legacy attention names, configs. */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { HostArray } from '../engine/host.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { mapTree, type Tree } from '../engine/tree.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { SafetensorsFile } from '../io/safetensors.js';
import { stateDict, type ParamsOf } from '../nn/module.js';
import { loadStateDict } from '../nn/state.js';
import { goldenModelFolder } from '../../test/support/golden.js';
import { goldenDir } from '../../test/support/paths.js';
import { maxAbsDiff } from '../../test/support/reference.js';
import {
  AUTOENCODER_KL_DEFAULTS, AUTOENCODER_KL_PRESETS, AutoencoderKL, autoencoderKLClass,
  readAutoencoderKLConfig, renameLegacyVaeAttention, type AutoencoderKLConfig,
} from './autoencoder-kl.js';
import { ConfigError } from './config.js';

const dir = join(goldenDir, 'autoencoder_kl');
const isHost = (x: unknown): x is HostArray => x instanceof HostArray;

async function readTensors(path: string): Promise<Map<string, HostArray>> {
  const file = await SafetensorsFile.open(path);
  try {
    const all = await file.readAll({ widen: true });
    const out = new Map<string, HostArray>();
    for (const [k, t] of all) if (t.dtype === 'F32') out.set(k, new HostArray(t.data, t.shape));
    return out; // the float64 *_f64 references are not used here
  } finally { await file.close(); }
}

type Json = Record<string, unknown>;
const goldenConfig = async (): Promise<Json> =>
  JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')) as Json;

async function goldenModel(): Promise<{ model: AutoencoderKL; weights: Map<string, HostArray> }> {
  const raw = await goldenConfig();
  const model = autoencoderKLClass.create(autoencoderKLClass.readConfig(raw, { warn: () => {} }));
  const folder = await goldenModelFolder('autoencoder_kl'); // weights regenerated from the seed
  const weights = await readTensors(join(folder, 'diffusion_pytorch_model.safetensors'));
  return { model, weights };
}

const constants = <M>(p: Tree<HostArray>) => mapTree(p, isHost, (a) => ops.constant(a)) as M;

describe('AutoencoderKL golden (diffusers 0.31, tiny config, seed 1)', () => {
  test('encode / decode match diffusers within 1e-4; 658,375 parameters', async () => {
    const { model, weights } = await goldenModel();
    assert.equal(model.numParams(), 658_375);
    const host = loadStateDict(model, weights, { source: 'golden autoencoder_kl' });
    const p = constants<ParamsOf<AutoencoderKL>>(host as Tree<HostArray>);
    const io = await readTensors(join(dir, 'io.safetensors'));
    const get = (k: string): HostArray => io.get(k)!;

    const enc = compile((x: Tensor) => {
      const post = model.encode(p, x);
      return { ...post, decoded: model.decode(p, post.mean) };
    });
    const dec = compile((z: Tensor) => model.decode(p, z));
    const e = await enc(get('x'));
    const d = await dec(get('z'));
    await Promise.all([enc.dispose(), dec.dispose()]);

    const errors = {
      latent_mean: maxAbsDiff(e.mean, get('latent_mean')),
      latent_logvar: maxAbsDiff(e.logvar, get('latent_logvar')),
      latent_std: maxAbsDiff(e.std, get('latent_std')),
      decoded_from_mean: maxAbsDiff(e.decoded, get('decoded_from_mean')),
      decoded_from_z: maxAbsDiff(d, get('decoded_from_z')),
    };
    console.log(`AutoencoderKL golden max abs errors: ${JSON.stringify(errors)}`);
    assert.deepEqual(e.mean.shape, [2, 4, 16, 16]);
    assert.deepEqual(d.shape, [2, 3, 32, 32]);
    for (const [k, err] of Object.entries(errors)) {
      assert.ok(err <= 1e-4, `${k}: max abs error ${err}`);
    }
  });

  test('legacy attention names (query/key/value/proj_attn) load to the same params', async () => {
    const { model, weights } = await goldenModel();
    const legacy = new Map<string, HostArray>();
    const old = { to_q: 'query', to_k: 'key', to_v: 'value', 'to_out.0': 'proj_attn' };
    let renamed = 0;
    for (const [k, v] of weights) {
      const m = /^(.*mid_block\.attentions\.0)\.(to_q|to_k|to_v|to_out\.0)\.(weight|bias)$/
        .exec(k);
      if (m) renamed++;
      legacy.set(m ? `${m[1]}.${old[m[2] as keyof typeof old]}.${m[3]}` : k, v);
    }
    assert.equal(renamed, 16); // 4 projections x weight/bias x encoder/decoder
    assert.throws(() => loadStateDict(model, legacy),
      /unexpected key '.*mid_block\.attentions\.0\.(query|key|value|proj_attn)\.(weight|bias)'/);
    const loaded = loadStateDict(model, legacy, { rename: renameLegacyVaeAttention });
    const a = stateDict(loaded as Tree<HostArray>);
    const b = stateDict(loadStateDict(model, weights) as Tree<HostArray>);
    assert.deepEqual([...a.keys()], [...b.keys()]);
    for (const [k, v] of b) assert.equal(a.get(k), v, k);
    assert.equal(renameLegacyVaeAttention('decoder.mid_block.attentions.0.proj_attn.bias'),
      'decoder.mid_block.attentions.0.to_out.0.bias');
    assert.equal(renameLegacyVaeAttention('encoder.conv_in.weight'), 'encoder.conv_in.weight');
  });
});

describe('posterior', () => {
  const tiny = new AutoencoderKL(AUTOENCODER_KL_PRESETS['tiny']!);
  // A [2, 1, 1, 2] posterior with logvar values inside the clamp range.
  const mean = HostArray.fromNested([[[[0.5, -1]]], [[[2, 0]]]]);
  const logvar = HostArray.fromNested([[[[0, Math.log(2)]]], [[[-1, 0.5]]]]);
  const noise = HostArray.fromNested([[[[1, -0.5]]], [[[0.25, 2]]]]);
  const run = compile((m: Tensor, lv: Tensor, n: Tensor) => {
    const post = { mean: m, logvar: lv, std: ops.exp(ops.mul(lv, 0.5)) };
    return { kl: tiny.klLoss(post), sample: tiny.sample(post, n) };
  });

  test('klLoss = 0.5 sum_CHW (mean^2 + var - 1 - logvar), averaged over the batch', async () => {
    const out = await run(mean, logvar, noise);
    // Sample 0: 0.5 ((0.25 + 1 - 1 - 0) + (1 + 2 - 1 - ln 2)) = 0.5 (2.25 - ln 2).
    // Sample 1: 0.5 ((4 + e^-1 - 1 + 1) + (0 + e^0.5 - 1 - 0.5)) = 0.5 (2.5 + e^-1 + e^0.5).
    const perSample = [0.5 * (2.25 - Math.log(2)), 0.5 * (2.5 + Math.exp(-1) + Math.exp(0.5))];
    const expected = (perSample[0]! + perSample[1]!) / 2; // the batch mean, not the sum
    assert.ok(Math.abs(out.kl.get() - expected) < 1e-6, `kl ${out.kl.get()} vs ${expected}`);
  });

  test('sample = mean + std * noise', async () => {
    const out = await run(mean, logvar, noise);
    const want = Array.from(mean.data as Float32Array, (mu, i) =>
      mu + Math.exp(0.5 * (logvar.data[i] as number)) * (noise.data[i] as number));
    assert.deepEqual(out.sample.shape, [2, 1, 1, 2]);
    want.forEach((w, i) => assert.ok(Math.abs((out.sample.data[i] as number) - w) < 1e-6));
  });

  test('encode clamps logvar to [-30, 20]', async () => {
    const model = new AutoencoderKL({ ...AUTOENCODER_KL_PRESETS['tiny']!, use_quant_conv: true });
    const host = model.init(RngKey.fromSeed(3));
    // Make quant_conv output +-1000 on the logvar half so the clamp is what decides.
    const w = host.quant_conv!.weight as HostArray<'float32'>;
    const b = host.quant_conv!.bias as HostArray<'float32'>;
    w.data.fill(0);
    b.data.set([0, 0, 0, 0, 1000, -1000, 1000, -1000]);
    const p = constants<ParamsOf<AutoencoderKL>>(host as Tree<HostArray>);
    const enc = compile((x: Tensor) => model.encode(p, x));
    const out = await enc(HostArray.zeros([1, 3, 32, 32]));
    await enc.dispose();
    const lv = out.logvar.toNested() as number[][][][];
    assert.deepEqual([lv[0]![0]![0]![0], lv[0]![1]![0]![0], lv[0]![2]![5]![7]], [20, -30, 20]);
    assert.ok(Math.abs(out.std.get(0, 1, 0, 0) - Math.exp(-15)) < 1e-12);
  });

  test('toLatent / fromLatent: scaling_factor, shift_factor, per-channel statistics', async () => {
    const base = AUTOENCODER_KL_PRESETS['tiny']!;
    const z = HostArray.fromNested([[[[1]], [[2]], [[-3]], [[4]]]]); // [1, 4, 1, 1]
    const cases: [Partial<AutoencoderKLConfig>, (v: number, c: number) => number][] = [
      [{}, (v) => v * 0.18215],
      [{ scaling_factor: 1.5, shift_factor: 0.5 }, (v) => (v - 0.5) * 1.5],
      [{ scaling_factor: 0.5, latents_mean: [0, 1, 2, 3], latents_std: [1, 2, 4, 8] },
        (v, c) => ((v - c) * 0.5) / 2 ** c],
    ];
    for (const [over, f] of cases) {
      const m = new AutoencoderKL(readAutoencoderKLConfig({ ...base, ...over }));
      const fn = compile((x: Tensor) => {
        const lat = m.toLatent(x);
        return { lat, back: m.fromLatent(lat) };
      });
      const out = await fn(z);
      await fn.dispose();
      for (let c = 0; c < 4; c++) {
        const v = z.data[c] as number;
        const got = out.lat.data[c] as number;
        assert.ok(Math.abs(got - f(v, c)) < 1e-6, `${JSON.stringify(over)} channel ${c}: ${got}`);
        assert.ok(Math.abs((out.back.data[c] as number) - v) < 1e-5);
      }
    }
  });
});

describe('config', () => {
  test('defaults, round trip through toConfig, presets are valid configs', async () => {
    const warnings: string[] = [];
    const c = readAutoencoderKLConfig({ latent_channels: 8, future_key: 1 },
      { warn: (m) => warnings.push(m) });
    assert.equal(c.latent_channels, 8);
    assert.deepEqual(c.block_out_channels, AUTOENCODER_KL_DEFAULTS.block_out_channels);
    assert.match(warnings[0]!, /unknown key 'future_key'/);
    const saved = autoencoderKLClass.toConfig(c);
    assert.equal(saved._class_name, 'AutoencoderKL');
    assert.deepEqual(readAutoencoderKLConfig(saved as Record<string, unknown>), c);
    // Every key diffusers 0.31 writes, and no other.
    const golden = await goldenConfig();
    const ours = autoencoderKLClass.toConfig(readAutoencoderKLConfig(golden));
    assert.deepEqual(Object.keys(ours).sort(), Object.keys(golden).sort());
    assert.deepEqual(readAutoencoderKLConfig(golden), AUTOENCODER_KL_PRESETS['tiny']);
    for (const [name, preset] of Object.entries(AUTOENCODER_KL_PRESETS)) {
      assert.deepEqual(readAutoencoderKLConfig({ ...preset }), preset, name);
    }
    // Stable Diffusion's VAE (sd-vae-ft-mse): 83,653,863 parameters in diffusers.
    assert.equal(new AutoencoderKL(AUTOENCODER_KL_PRESETS['sd-vae']!).numParams(), 83_653_863);
  });

  test('bad configs throw a ConfigError naming the key', () => {
    const bad: [Record<string, unknown>, RegExp][] = [
      [{ block_out_channels: '64' }, /'block_out_channels' must be an array/],
      [{ latent_channels: 'four' }, /'latent_channels' must be a number/],
      [{ down_block_types: ['CrossAttnDownBlock2D'] },
        /'down_block_types' must be 1 entries.*DownEncoderBlock2D.*CrossAttnDownBlock2D/],
      [{ up_block_types: ['UpDecoderBlock2D', 'UpDecoderBlock2D'] }, /'up_block_types'/],
      [{ block_out_channels: [48], norm_num_groups: 32 },
        /'block_out_channels' must be .*divisible/],
      [{ act_fn: 'tanh' }, /'act_fn' must be one of silu/],
      [{ layers_per_block: 0 }, /'layers_per_block' must be a positive integer/],
      [{ latents_mean: [0, 0], latents_std: [1, 1] }, /'latents_mean' must be null or 4 numbers/],
      [{ _class_name: 'UNet2DModel' }, /config is for UNet2DModel/],
    ];
    for (const [raw, re] of bad) {
      assert.throws(() => readAutoencoderKLConfig(raw), (e: unknown) =>
        e instanceof ConfigError && re.test(e.message), JSON.stringify(raw));
    }
  });
});
