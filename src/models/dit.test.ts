/** DiTTransformer2DModel: config, parameter names and counts, the sin-cos table and a forward
 *  against diffusers' golden files (golden/dit), the token-subset path with a key/value
 *  source (RAS), learned sigma, determinism and a few training steps. */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { grad } from '../engine/autodiff.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import type { Tree } from '../engine/tree.js';
import { SafetensorsFile } from '../io/safetensors.js';
import { MultiHeadAttention } from '../nn/attention.js';
import type { ParamsOf } from '../nn/module.js';
import { adamw } from '../nn/optim.js';
import { loadStateDict } from '../nn/state.js';
import { compileTrainStep } from '../nn/train.js';
import { randint, randn } from '../../test/support/gradcheck.js';
import { goldenModelFolder, leading } from '../../test/support/golden.js';
import { goldenDir } from '../../test/support/paths.js';
import { maxAbsDiff } from '../../test/support/reference.js';
import {
  DIT_DEFAULTS, ditClass, ditCond, ditInitialize, ditPreset, dropClassLabels, sincosPosEmbed2d,
  splitLearnedSigma, DiTTransformer2DModel, type DiTConfig,
} from './dit.js';
import { selfAttention } from './dit-blocks.js';

const dir = join(goldenDir, 'dit');
type P = ParamsOf<DiTTransformer2DModel>;

async function readTensors(path: string): Promise<Map<string, HostArray>> {
  const file = await SafetensorsFile.open(path);
  try {
    const out = new Map<string, HostArray>();
    for (const [name, t] of await file.readAll({ widen: true })) {
      if (t.dtype === 'F32' || t.dtype === 'I64') out.set(name, new HostArray(t.data, t.shape));
    }
    return out;
  } finally {
    await file.close();
  }
}

/** A tiny DiT: 8 x 8 x 2 images, patch 2 (16 tokens), width 16, 2 blocks, 4 classes. */
const TINY: Partial<DiTConfig> = {
  sample_size: 8, in_channels: 2, patch_size: 2, num_layers: 2, num_attention_heads: 2,
  attention_head_dim: 8, num_embeds_ada_norm: 4,
};
const tinyConfig = (over: Partial<DiTConfig> = {}): DiTConfig =>
  ({ ...DIT_DEFAULTS, ...TINY, ...over });

test('selfAttention equals attention with every bias, in value and gradients, though it drops the keys\' bias and moves the values\'', async () => {
  for (const dh of [8, 32]) { // the attention primitive and the composite
    const [heads, n, t] = [2, 2, 5];
    const dim = heads * dh;
    const attn = new MultiHeadAttention(dim, { heads, bias: true });
    type AP = ParamsOf<MultiHeadAttention>;
    const params = attn.init(RngKey.fromSeed(dh)) as unknown as Tree<HostArray>;
    const x = randn([n, t, dim], 5);
    const r = randn([n, t, dim], 6);
    /** q, k, v and the output each as x W^T + b, heads split by transposes (diffusers' form). */
    const textbook = (p: AP, xs: Tensor): Tensor => attn.forward(p, xs);
    type Result = { out: HostArray; grads: unknown };
    const run = async (f: (p: AP, xs: Tensor) => Tensor): Promise<Result> => {
      const step = compile((p: Tree<Tensor>, xs: Tensor, rs: Tensor) => {
        const loss = (q: Tree<Tensor>, xx: Tensor) => ops.sum(ops.mul(f(q as unknown as AP, xx), rs));
        return [f(p as unknown as AP, xs), grad(loss, { argnums: [0, 1] })(p, xs)] as unknown as Tensor[];
      }) as unknown as (...a: unknown[]) => Promise<[HostArray, unknown]>;
      const [out, grads] = await step(params, x, r);
      return { out, grads };
    };
    const ours = await run((p, xs) => selfAttention(attn, p, xs));
    const ref = await run(textbook);
    assert.ok(maxAbsDiff(ours.out, ref.out) < 1e-5, `dh ${dh}: outputs differ by ${maxAbsDiff(ours.out, ref.out)}`);
    const [gp, gx] = ours.grads as [Record<string, Tree<HostArray>>, HostArray];
    const [rp, rx] = ref.grads as [Record<string, Tree<HostArray>>, HostArray];
    assert.ok(maxAbsDiff(gx, rx) < 1e-5, `dh ${dh}: input gradients differ`);
    for (const name of ['to_q', 'to_k', 'to_v'] as const) {
      for (const leaf of ['weight', 'bias'] as const) {
        const a = (gp[name] as Record<string, HostArray>)[leaf]!;
        const b = (rp[name] as Record<string, HostArray>)[leaf]!;
        assert.ok(maxAbsDiff(a, b) < 1e-5, `dh ${dh}: ${name}.${leaf} gradients differ by ${maxAbsDiff(a, b)}`);
      }
    }
    // Softmax drops the keys' bias: its gradient is zero, exactly here and up to rounding there.
    const gkb = ((gp.to_k as Record<string, HostArray>).bias!).data;
    assert.ok(gkb.every((v) => v === 0));
    const gob = ((gp.to_out as HostArray[][])[0] as unknown as Record<string, HostArray>).bias!;
    const rob = ((rp.to_out as HostArray[][])[0] as unknown as Record<string, HostArray>).bias!;
    assert.ok(maxAbsDiff(gob, rob) < 1e-5);
  }
});

test('config: golden config.json reads as the DiT-S/2-mnist preset and round-trips', async () => {
  const text = await readFile(join(dir, 'config.json'), 'utf8');
  const raw = JSON.parse(text) as Record<string, unknown>;
  const c = ditClass.readConfig(raw);
  assert.deepEqual(c, ditPreset('DiT-S/2-mnist'));
  assert.deepEqual(ditClass.readConfig(ditClass.toConfig(c)), c);
  assert.equal(ditClass.toConfig(c)._class_name, 'DiTTransformer2DModel');
  // Hub checkpoints carry the older class name.
  assert.equal(ditClass.readConfig({ ...raw, _class_name: 'Transformer2DModel' }).num_layers, 6);
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ norm_type: 'ada_norm' }, /'norm_type' must be 'ada_norm_zero', got "ada_norm"/],
    [{ activation_fn: 'relu' }, /'activation_fn' must be one of gelu, .*got "relu"/],
    [{ num_embeds_ada_norm: null }, /'num_embeds_ada_norm' must be a number, got null/],
    [{ sample_size: 31 }, /'sample_size' must be a multiple of patch_size 2, got 31/],
    [{ _class_name: 'UNet2DModel' }, /config is for UNet2DModel/],
  ];
  for (const [over, msg] of bad) {
    assert.throws(() => ditClass.readConfig({ ...raw, ...over }), msg);
  }
});

test('parameter names and shapes are diffusers\'; counts match diffusers\'', async () => {
  const prov = JSON.parse(await readFile(join(dir, 'weights_provenance.json'), 'utf8')) as
    { num_params: number; state_dict_keys_and_shapes: Record<string, number[]> };
  const model = ditClass.create(ditPreset('DiT-S/2-mnist'));
  assert.deepEqual([...model.parameterShapes()], Object.entries(prov.state_dict_keys_and_shapes));
  assert.equal(model.numParams(), prov.num_params);
  assert.equal(model.numParams(), 2_880_388);
  // the benchmark's latent DiT, and 760,320 fewer with 10 classes instead of 1000.
  assert.equal(ditClass.create(ditPreset('DiT-S/2-latent')).numParams(), 2_883_472);
  const ten = ditPreset('DiT-S/2-mnist', { num_embeds_ada_norm: 10 });
  assert.equal(ditClass.create(ten).numParams(), 2_880_388 - 760_320);
  // Counted with diffusers 0.31.0:
  // sum(p.numel() for p in DiTTransformer2DModel(**cfg).parameters()).
  const sigma = ditPreset('DiT-S/2-mnist', { out_channels: 2 });
  assert.equal(ditClass.create(sigma).numParams(), 2_880_904);
  const swiglu = ditPreset('DiT-S/2-mnist', { activation_fn: 'swiglu' });
  assert.equal(ditClass.create(swiglu).numParams(), 3_276_676);
  assert.equal(ditClass.create(ditPreset('DiT-XL/2-256')).numParams(), 749_826_464);
});

test('the sin-cos table equals diffusers\' pos_embed.pos_embed buffer', async () => {
  const inter = await readTensors(join(dir, 'intermediates.safetensors'));
  const ours = ditClass.create(ditPreset('DiT-S/2-mnist')).posTable;
  const err = maxAbsDiff(ours, inter.get('pos_embed.pos_embed(buffer)')!);
  console.log(`sin-cos table: max abs error ${err.toExponential(2)}`);
  assert.ok(err <= 1e-6, `table error ${err}`);
  // Non-square grids: column features first, then row features, as diffusers lays them out.
  const t = sincosPosEmbed2d(8, 2, 3, 2);
  assert.deepEqual(t.shape, [1, 6, 8]);
  const at = (m: number, i: number) => t.data[m * 8 + i] as number;
  assert.ok(Math.abs(at(5, 0) - Math.sin(Math.fround(2 / 1.5))) < 1e-6); // row 1, col 2
  assert.ok(Math.abs(at(5, 4) - Math.sin(1)) < 1e-6);
});

test('golden: forward and intermediates match diffusers within 1e-4', async () => {
  const weights = await readTensors(
    join(await goldenModelFolder('dit'), 'diffusion_pytorch_model.safetensors'));
  const io = await readTensors(join(dir, 'io.safetensors'));
  const inter = await readTensors(join(dir, 'intermediates.safetensors'));
  const model = ditClass.create(ditPreset('DiT-S/2-mnist'));
  const params = loadStateDict(model, weights, { source: 'golden/dit' });
  const all = [0, 1, 2, 3, 4, 5];
  const f = compile((p: P, x: Tensor, t: Tensor, y: Tensor) => {
    const c = ditCond(t, y);
    const emb0 = model.transformer_blocks[0]!.norm1.emb
      .forward(p.transformer_blocks[0]!.norm1.emb, c); // [N, D]
    const { sample, hidden } = model.forwardWithHidden(p, x, t, y, all);
    return {
      out: sample, pos_embed: model.embed(p, x), emb0, hidden,
      proj_out_1: model.proj_out_1.forward(p.proj_out_1, ops.silu(emb0)),
      proj_out_2: model.finalLayer(p, hidden[5]!, c),
    };
  });
  const r = await f(params, io.get('x')!, io.get('t')!, io.get('class_labels')!);
  await f.dispose();
  // the stored token sequences keep batch element 0 (test/data/golden/README.md)
  const vs = (ours: HostArray, name: string) => {
    const want = inter.get(name)!;
    return maxAbsDiff(leading(ours, want.shape[0]!), want);
  };
  const errs: Record<string, number> = {
    out: maxAbsDiff(r.out, io.get('out')!),
    pos_embed: vs(r.pos_embed, 'pos_embed'),
    'transformer_blocks.0.norm1.emb': vs(r.emb0, 'transformer_blocks.0.norm1.emb'),
    proj_out_1: vs(r.proj_out_1, 'proj_out_1'),
    proj_out_2: vs(r.proj_out_2, 'proj_out_2'),
  };
  all.forEach((i) => (errs[`transformer_blocks.${i}`] =
    vs(r.hidden[i]!, `transformer_blocks.${i}`)));
  console.log('DiT golden max abs errors:', Object.entries(errs)
    .map(([k, v]) => `${k} ${v.toExponential(2)}`).join(', '));
  for (const [k, v] of Object.entries(errs)) assert.ok(v <= 1e-4, `${k}: max abs error ${v}`);
});

test('token subset: all indices equal forward; a kv source restores full attention', async () => {
  const model = ditClass.create(tinyConfig());
  const params = model.init(RngKey.fromSeed(1));
  const [n, tTokens, sub] = [2, 16, 6];
  const x = randn([n, 2, 8, 8], 2);
  const ids = (v: number[], shape: number[]) =>
    new HostArray(BigInt64Array.from(v, BigInt), shape);
  const t = ids([3, 900], [2]);
  const y = ids([1, 4], [2]); // 4 = the null class
  const all = ids([...Array(tTokens).keys()], [tTokens]);
  const idx = ids([13, 0, 7, 2, 11, 5], [sub]);
  const perSample = ids([1, 2, 3, 4, 5, 6, 15, 14, 13, 12, 11, 10], [n, sub]);
  type Args = [P, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor];
  const f = compile((...[p, xx, tt, yy, a, i, ps]: Args) => {
    const kvs: { k: Tensor; v: Tensor }[] = [];
    const full = model.forwardSubset(p, xx, tt, yy, a, {
      kv: (k, v, b) => (kvs[b] = { k, v }),
    }); // [N, T, p * p * C]
    return {
      forward: model.forward(p, xx, tt, yy),
      viaSubset: model.unpatchify(full, 4, 4),
      fullAtIdx: ops.gather(full, i, 1),
      cached: model.forwardSubset(p, xx, tt, yy, i, { kv: (_k, _v, b) => kvs[b]! }),
      alone: model.forwardSubset(p, xx, tt, yy, i),
      perSample: model.forwardSubset(p, xx, tt, yy, ps),
      tokens: model.forwardTokens(p, model.embed(p, xx, i), tt, yy),
      roundTrip: model.unpatchify(model.patchify(xx), 4, 4),
    };
  });
  const r = await f(params, x, t, y, all, idx, perSample);
  await f.dispose();
  assert.ok(maxAbsDiff(r.viaSubset, r.forward) <= 1e-6);
  assert.equal(maxAbsDiff(r.roundTrip, x), 0); // patchify inverts unpatchify
  assert.deepEqual(r.cached.shape, [n, sub, 8]);
  assert.deepEqual(r.perSample.shape, [n, sub, 8]);
  assert.deepEqual(r.tokens.shape, [n, sub, 16]);
  // Queries of the subset over the full keys/values reproduce the full model at those tokens;
  // attending only among themselves does not.
  assert.ok(maxAbsDiff(r.cached, r.fullAtIdx) <= 1e-5, `${maxAbsDiff(r.cached, r.fullAtIdx)}`);
  assert.ok(maxAbsDiff(r.alone, r.fullAtIdx) > 1e-3);
});

test('learned sigma: 2C output channels, split into prediction and sigma', async () => {
  const model = ditClass.create(tinyConfig({ out_channels: 4 }));
  const params = model.init(RngKey.fromSeed(3));
  const f = compile((p: P, x: Tensor, t: Tensor, y: Tensor) => {
    const out = model.forward(p, x, t, y);
    return { out, ...splitLearnedSigma(out, 2) };
  });
  const t = new HostArray(new Float32Array([0.5, 250.25]), [2]); // float timesteps work too
  const r = await f(params, randn([2, 2, 8, 8], 4), t, randint([2], 4, 5));
  await f.dispose();
  assert.deepEqual(r.out.shape, [2, 4, 8, 8]);
  assert.deepEqual(r.pred.shape, [2, 2, 8, 8]);
  assert.deepEqual(r.sigma.shape, [2, 2, 8, 8]);
  assert.equal(r.pred.data[64], r.out.data[64]); // sample 0, channel 1
  assert.equal(r.sigma.data[0], r.out.data[128]); // sample 0, channel 2
});

test('DiT init starts at zero output; training is deterministic and lowers the loss', async () => {
  const model = ditClass.create(tinyConfig());
  const key = RngKey.fromSeed(9);
  const params = ditInitialize(model.init(key), key.fold(1));
  const zero = compile((p: P, x: Tensor, t: Tensor, y: Tensor) => model.forward(p, x, t, y));
  const z = await zero(params, randn([2, 2, 8, 8], 6), randint([2], 1000, 7), randint([2], 4, 8));
  await zero.dispose();
  assert.ok(z.data.every((v) => v === 0), 'adaLN-Zero and the zeroed output layer give 0');

  // eps-prediction on one batch: x_t = sqrt(ab) x0 + sqrt(1 - ab) eps at fixed levels.
  const n = 8;
  const x0 = randn([n, 2, 8, 8], 10);
  const eps = randn([n, 2, 8, 8], 11);
  const ab = Float32Array.from({ length: n }, (_, i) => 1 - (i + 1) / (n + 1));
  const xt = x0.data.map((v, i) => {
    const a = ab[Math.floor(i / 128)]!;
    return Math.sqrt(a) * (v as number) + Math.sqrt(1 - a) * (eps.data[i] as number);
  }) as Float32Array;
  const labels = dropClassLabels(randint([n], 4, 12), key.fold(2), 0.25, 4);
  const batch = {
    x: new HostArray(xt, [n, 2, 8, 8]), eps,
    t: new HostArray(BigInt64Array.from({ length: n }, (_, i) => BigInt(100 * i + 50)), [n]),
    y: labels,
  };
  const loss = (p: Tree<Tensor>, b: Tree<Tensor>) => {
    const { x, t, y, eps: e } = b as Record<string, Tensor>;
    return ops.mean(ops.square(ops.sub(model.forward(p as P, x!, t!, y!), e!)));
  };
  const trainer = compileTrainStep(loss, adamw({ lr: 3e-3, weightDecay: 0 }));
  const run = async (steps: number): Promise<number[]> => {
    let state = trainer.init(params as Tree<HostArray>);
    const losses: number[] = [];
    for (let i = 0; i < steps; i++) {
      const r = await trainer.step(state, batch);
      state = r.state;
      losses.push(r.metrics.loss);
    }
    return losses;
  };
  const a = await run(25);
  const b = await run(25);
  await trainer.dispose();
  assert.deepEqual(a, b);
  assert.ok(Math.abs(a[0]! - 1) < 0.2, `initial loss ${a[0]} should be near E[eps^2] = 1`);
  assert.ok(a.at(-1)! < 0.85 * a[0]!, `loss ${a[0]} -> ${a.at(-1)}`);
});
