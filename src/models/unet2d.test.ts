/** UNet2DModel against diffusers' golden run (test/data/golden/unet2d: output and every
 *  intermediate), four more configs against diffusers (values from the script at the end),
 *  the staged pass (encode/decode splices, DeepCache, DDAE features), parameter counts,
 *  legacy attention names, config errors, determinism and a few training steps. */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { TorchGenerator } from '../engine/random/torch.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { trace } from '../engine/trace.js';
import { mapTree, type Tree } from '../engine/tree.js';
import { SafetensorsFile } from '../io/safetensors.js';
import { stateDict, type ParamsOf } from '../nn/module.js';
import { adamw } from '../nn/optim.js';
import { loadStateDict, StateDictError } from '../nn/state.js';
import { compileTrainStep } from '../nn/train.js';
import { goldenModelFolder, leading } from '../../test/support/golden.js';
import { goldenDir } from '../../test/support/paths.js';
import { maxAbsDiff } from '../../test/support/reference.js';
import { ConfigError } from './config.js';
import {
  readUNet2DConfig, renameLegacyAttention, UNET2D_CLASS, UNET2D_DEFAULTS, UNET2D_PRESETS,
  UNet2DModel, type UNet2DConfig,
} from './unet2d.js';

const dir = join(goldenDir, 'unet2d');
const isHost = (x: unknown): x is HostArray => x instanceof HostArray;
type P = ParamsOf<UNet2DModel>;
/** Bakes host parameters into a graph as constants (as inference graphs do). */
const constants = (p: Tree<HostArray>): P => mapTree(p, isHost, (a) => ops.constant(a)) as P;
const ids = (v: number[]): HostArray =>
  new HostArray(BigInt64Array.from(v.map(BigInt)), [v.length]);

async function readTensors(path: string): Promise<Map<string, HostArray>> {
  const file = await SafetensorsFile.open(path);
  try {
    const out = new Map<string, HostArray>();
    for (const [k, t] of await file.readAll({ widen: true })) {
      if (t.dtype === 'F32' || t.dtype === 'I64') out.set(k, new HostArray(t.data, t.shape));
    }
    return out; // the float64 out_f64 reference is not used
  } finally {
    await file.close();
  }
}

const goldenConfig = async (): Promise<Record<string, unknown>> =>
  JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;

async function golden(): Promise<{ model: UNet2DModel; weights: Map<string, HostArray> }> {
  const model = UNET2D_CLASS.create(UNET2D_CLASS.readConfig(await goldenConfig()));
  const folder = await goldenModelFolder('unet2d'); // weights regenerated from the seed
  const weights = await readTensors(join(folder, 'diffusion_pytorch_model.safetensors'));
  return { model, weights };
}

describe('UNet2DModel golden (diffusers 0.31, mnist-s config, seed 0)', () => {
  test('output and all 13 intermediates within 1e-4; 4,023,233 params, diffusers names',
    async (t) => {
      const { model, weights } = await golden();
      assert.equal(model.numParams(), 4_023_233);
      assert.deepEqual([...model.parameterShapes().keys()].sort(), [...weights.keys()].sort());
      const p = constants(loadStateDict(model, weights, { source: 'golden unet2d' }));
      const io = await readTensors(join(dir, 'io.safetensors'));
      const ref = await readTensors(join(dir, 'intermediates.safetensors'));
      const f = compile((x: Tensor, ts: Tensor) => {
        const r = model.intermediates(p, x, ts);
        return { out: r.sample, features: Object.fromEntries(r.features) };
      });
      const got = await f(io.get('x')!, io.get('t')!);
      const errors: Record<string, number> = { out: maxAbsDiff(got.out!, io.get('out')!) };
      // the stored intermediates keep batch element 0 (test/data/golden/README.md)
      for (const [k, v] of ref) errors[k] = maxAbsDiff(leading(got.features[k]!, v.shape[0]!), v);
      t.diagnostic(`max abs errors: ${JSON.stringify(errors)}`);
      assert.equal(Object.keys(errors).length, 14);
      for (const [k, e] of Object.entries(errors)) assert.ok(e <= 1e-4, `${k}: ${e}`);
      await f.dispose();
    });

  test('staged pass: decode(encode(x)) = forward, mid moved, blockwise, DeepCache at every k',
    async (t) => {
      const { model, weights } = await golden();
      const p = constants(loadStateDict(model, weights));
      const io = await readTensors(join(dir, 'io.safetensors'));
      const n = model.up_blocks.length;
      const f = compile((x: Tensor, ts: Tensor) => {
        const c = model.embed(p, ts, { batch: x.shape[0] });
        const enc = model.encode(p, x, c);
        const head = (h: Tensor) => model.head(p, h, c);
        let blockwise = enc;
        for (let k = 0; k < n; k++) {
          blockwise = model.decode(p, blockwise, c, { fromUpBlock: k, toUpBlock: k + 1 });
        }
        const noMid = model.encode(p, x, c, { mid: false });
        // DeepCache: the deep feature entering up block k comes from the full pass; the
        // shallow down blocks run again and give the skips that up blocks k.. consume.
        const deepCache = Array.from({ length: n + 1 }, (_, k) => {
          const cached = model.decode(p, enc, c, { toUpBlock: k }).hidden;
          const shallow = model.encode(p, x, c, { downBlocks: n - k, mid: false });
          const skips = shallow.skips.slice(0, model.skipCount(k));
          return head(model.decode(p, { hidden: cached, skips }, c, { fromUpBlock: k }).hidden);
        });
        return {
          full: model.forward(p, x, ts),
          spliced: head(model.decode(p, enc, c).hidden),
          midInDecode: head(model.decode(p, noMid, c, { mid: true }).hidden),
          blockwise: head(blockwise.hidden),
          deepCache,
        };
      });
      const r = await f(io.get('x')!, io.get('t')!);
      assert.ok(maxAbsDiff(r.full, io.get('out')!) <= 1e-4);
      const gaps = [r.spliced, r.midInDecode, r.blockwise, ...r.deepCache]
        .map((y) => maxAbsDiff(y, r.full));
      t.diagnostic(`max abs gaps to forward: ${gaps.join(', ')}`);
      for (const gap of gaps) assert.ok(gap <= 1e-5, `${gap}`); // fusion order, not splicing
      assert.equal(r.deepCache.length, 4);
      await f.dispose();
    });

  test('a DDAE feature graph holds only the blocks it reads', async () => {
    const { model, weights } = await golden();
    const p = constants(loadStateDict(model, weights));
    const convs = (node: 'down_blocks.0' | 'conv_out') => trace((x: Tensor, ts: Tensor) =>
      ops.mean(model.intermediates(p, x, ts).features.get(node)!, [2, 3]),
    [{ shape: [2, 1, 32, 32] }, { shape: [2], dtype: 'int64' }]).nodes
      .filter((nd) => nd.kind === 'prim' && nd.prim === 'conv2d').length;
    assert.equal(convs('down_blocks.0'), 6); // conv_in, 2 resnets x 2 convs, the downsampler
    // 17 resnets x 2 convs, 11 of them with a 1x1 shortcut, 2 down- and 2 upsamplers, conv_in
    // and conv_out.
    assert.equal(convs('conv_out'), 17 * 2 + 11 + 4 + 2);
  });

  test('decode and encode reject skip lists and ranges that do not fit', async () => {
    const { model, weights } = await golden();
    const p = constants(loadStateDict(model, weights));
    const err = (fn: (x: Tensor, ts: Tensor) => unknown, re: RegExp, size = 32): void =>
      assert.throws(() => trace(fn, [{ shape: [1, 1, size, size] }, { shape: [1] }]), re);
    const c = (ts: Tensor) => model.embed(p, ts);
    err((x, ts) => model.decode(p, model.encode(p, x, c(ts), { downBlocks: 2, mid: false }), c(ts),
      { fromUpBlock: 1 }),
    /up blocks 1\.\.2 take 6 skips, and nothing may be left over, but 7 were given/);
    err((x, ts) => model.encode(p, x, c(ts), { downBlocks: 4 }),
      /downBlocks must be an integer in \[0, 3\], got 4/);
    err((x, ts) => model.encode(p, x, c(ts), { downBlocks: 1, mid: true }),
      /mid needs all down blocks/);
    err((x) => model.forward(p, x, ops.zeros([1, 1])),
      /t must be \[N\] or a scalar, got \[1, 1\]/);
    err((x) => model.forward(p, x, ops.zeros([])), /multiples of 4, got \[1, 1, 34, 34\]/, 34);
  });
});

// ---------------------------------------------------------------------------------------------
// Other configs against diffusers
// ---------------------------------------------------------------------------------------------

interface Variant {
  config: Partial<UNet2DConfig>;
  x: number[];
  t: HostArray;
  labels?: HostArray | 'identity';
  params: number;
  /** out.flatten()[k * (numel - 1) // 11] for k < 12, and mean(out^2), from diffusers. */
  at: number[];
  meanSquare: number;
}

const VARIANTS: Record<string, Variant> = {
  'DDPM layout: scale_shift, labels, one head, padding 0, flip false, shift 1, mid scale': {
    config: { block_out_channels: [16, 32, 32], in_channels: 3, out_channels: 3,
      layers_per_block: 1, down_block_types: ['DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D'],
      up_block_types: ['UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'], norm_num_groups: 8,
      num_class_embeds: 5, resnet_time_scale_shift: 'scale_shift', attention_head_dim: null,
      downsample_padding: 0, flip_sin_to_cos: false, freq_shift: 1, norm_eps: 1e-6,
      mid_block_scale_factor: Math.SQRT2 },
    x: [2, 3, 16, 16], t: HostArray.fromNested([3.7, 999]), labels: ids([4, 0]), params: 300_771,
    at: [0.2985164, -0.04061202, -0.9136392, -0.09232178, 0.3294942, 0.4304623, 0.6298011,
      0.7960103, -1.028543, -0.2238907, 0.1530102, 0.3134609], meanSquare: 0.4718919,
  },
  'Fourier, timestep labels, resnet resampling, head 10 of 24, no mid attention, gelu': {
    config: { block_out_channels: [24, 48], in_channels: 2, out_channels: 2, layers_per_block: 2,
      down_block_types: ['AttnDownBlock2D', 'AttnDownBlock2D'],
      up_block_types: ['AttnUpBlock2D', 'AttnUpBlock2D'], norm_num_groups: 4,
      time_embedding_type: 'fourier', class_embed_type: 'timestep', downsample_type: 'resnet',
      upsample_type: 'resnet', attention_head_dim: 10, add_attention: false,
      center_input_sample: true, act_fn: 'gelu' },
    x: [2, 2, 8, 8], t: HostArray.fromNested([0.5, 20]), labels: HostArray.fromNested([0.25, 7]),
    params: 608_054, at: [0.5679867, 0.1715212, 1.515552, -0.2154257, -0.8360029, -0.2440314,
      0.01504961, 0.04203405, 0.01182591, 0.01450648, 0.01623904, -0.01185615],
    meanSquare: 0.6952654,
  },
  'learned time table, identity labels, 27 channels, mid attention norm 9, mish': {
    config: { block_out_channels: [27, 54], in_channels: 2, out_channels: 1, layers_per_block: 1,
      down_block_types: ['AttnDownBlock2D', 'DownBlock2D'],
      up_block_types: ['UpBlock2D', 'AttnUpBlock2D'], norm_num_groups: 3,
      time_embedding_type: 'learned', num_train_timesteps: 50, class_embed_type: 'identity',
      attention_head_dim: 8, attn_norm_num_groups: 9, mid_block_scale_factor: 2, act_fn: 'mish' },
    x: [2, 2, 8, 8], t: ids([0, 49]), labels: 'identity', params: 472_645,
    at: [0.5102679, 0.9290954, -0.1580054, 0.1112627, 0.3875968, 0.2195674, 0.2858413,
      0.1714545, 0.4153821, -0.1560151, -0.1991059, 0.3385416], meanSquare: 0.2076053,
  },
  'odd width 9 (zero-padded time features), scalar t, swish': {
    config: { block_out_channels: [9, 18], in_channels: 1, out_channels: 1, layers_per_block: 1,
      down_block_types: ['DownBlock2D', 'AttnDownBlock2D'],
      up_block_types: ['AttnUpBlock2D', 'UpBlock2D'], norm_num_groups: 3,
      attention_head_dim: null, act_fn: 'swish' },
    x: [3, 1, 8, 8], t: new HostArray(BigInt64Array.of(250n), []), params: 56_701,
    at: [-0.1553556, -0.6218361, -0.4631714, -0.8106786, -1.055263, -0.02005688, -1.346714,
      0.06363829, -0.4048178, -0.2300953, -1.22549, -0.05160506], meanSquare: 0.3019023,
  },
};

describe('UNet2DModel against diffusers on other configs (values from the script below)', () => {
  for (const [name, v] of Object.entries(VARIANTS)) {
    test(name, async () => {
      const model = new UNet2DModel({ ...UNET2D_DEFAULTS, ...v.config });
      assert.equal(model.numParams(), v.params);
      // The script's weights: torch.randn in sorted-name order, scaled by 1/sqrt(fan_in)
      // (0.1 for vectors), norm weights around 1; then x (and identity labels) from the same
      // generator.
      const g = new TorchGenerator(0);
      const dict = new Map<string, HostArray>();
      for (const [k, shape] of [...model.parameterShapes()].sort(([a], [b]) => (a < b ? -1 : 1))) {
        const fanIn = shape.slice(1).reduce((a, b) => a * b, 1);
        const s = Math.fround(shape.length > 1 ? 1 / Math.sqrt(fanIn) : 0.1);
        const one = k.includes('norm') && k.endsWith('weight') ? 1 : 0;
        dict.set(k, new HostArray(g.randn(shape).map((z) => Math.fround(z * s) + one), shape));
      }
      const p = constants(loadStateDict(model, dict));
      const x = new HostArray(g.randn(v.x), v.x);
      const labels = v.labels === 'identity'
        ? new HostArray(g.randn([v.x[0]!, 4 * v.config.block_out_channels![0]!]),
          [v.x[0]!, 4 * v.config.block_out_channels![0]!]) : v.labels;
      const f = compile((xs: Tensor, ts: Tensor, ls: Tensor[]) => model.forward(p, xs, ts, ls[0]));
      const out = (await f(x, v.t, labels ? [labels] : [])).data as Float32Array;
      const at = v.at.map((_, k) => out[Math.floor((k * (out.length - 1)) / 11)]!);
      at.forEach((y, k) => assert.ok(Math.abs(y - v.at[k]!) <= 1e-4, `${k}: ${y} vs ${v.at[k]}`));
      const ms = out.reduce((s, y) => s + y * y, 0) / out.length;
      assert.ok(Math.abs(ms - v.meanSquare) <= 1e-4, `mean square ${ms} vs ${v.meanSquare}`);
      await f.dispose();
    });
  }
});

// ---------------------------------------------------------------------------------------------
// Configs, names, counts
// ---------------------------------------------------------------------------------------------

/** A small labelled model (3 classes) for the tests that run or trace a whole model. */
const TINY: UNet2DConfig = {
  ...UNET2D_DEFAULTS, sample_size: 8, in_channels: 1, out_channels: 1, block_out_channels: [8, 16],
  down_block_types: ['DownBlock2D', 'AttnDownBlock2D'],
  up_block_types: ['AttnUpBlock2D', 'UpBlock2D'],
  layers_per_block: 1, norm_num_groups: 4, num_class_embeds: 3,
};

describe('UNet2DModel configs and checkpoints', () => {
  test('parameter counts equal diffusers\' (counted by running diffusers 0.31)', () => {
    const count = (c: UNet2DConfig) => new UNet2DModel(c).numParams();
    assert.equal(count(UNET2D_PRESETS['mnist-s']), 4_023_233);
    assert.equal(count(UNET2D_PRESETS['ddpm-cifar10']), 35_746_307);
    assert.equal(count(UNET2D_PRESETS['mnist-s-cond']), 4_024_641); // + 11 x 128 label rows
    const cond = UNET2D_PRESETS['mnist-s-cond'];
    assert.equal(count({ ...cond, resnet_time_scale_shift: 'scale_shift' }), 4_201_889);
  });

  test('legacy query/key/value/proj_attn names load to the same arrays', async () => {
    const { model, weights } = await golden();
    const legacyName = (k: string) => k.replace(/\.to_q\./, '.query.').replace(/\.to_k\./, '.key.')
      .replace(/\.to_v\./, '.value.').replace(/\.to_out\.0\./, '.proj_attn.');
    const legacy = new Map([...weights].map(([k, v]) => [legacyName(k), v]));
    assert.equal([...legacy.keys()].filter((k) => k.includes('.query.')).length, 22); // 11 x w, b
    const a = stateDict(loadStateDict(model, weights));
    const b = stateDict(loadStateDict(model, legacy, { rename: UNET2D_CLASS.rename }));
    assert.equal(a.size, b.size);
    for (const [k, v] of a) assert.equal(b.get(k), v, k);
    assert.equal(renameLegacyAttention('mid_block.attentions.0.group_norm.weight'),
      'mid_block.attentions.0.group_norm.weight');
    assert.throws(() => loadStateDict(model, legacy),
      (e: unknown) => e instanceof StateDictError
        && /'down_blocks\.1\.attentions\.0\./.test(e.message));
  });

  test('round trip through toConfig; presets construct; unknown keys warn', async () => {
    const raw = await goldenConfig();
    assert.deepEqual(UNET2D_CLASS.toConfig(readUNet2DConfig(raw)), raw);
    for (const c of Object.values(UNET2D_PRESETS)) {
      assert.deepEqual(readUNet2DConfig(UNET2D_CLASS.toConfig(c)), c);
    }
    const warnings: string[] = [];
    const warn = (m: string) => warnings.push(m);
    readUNet2DConfig({ ...raw, mid_block_type: 'UNetMidBlock2D' }, { warn });
    assert.deepEqual(warnings, ['UNet2DModel config: unknown key \'mid_block_type\' ignored']);
  });

  test('bad configs fail at load with a ConfigError naming key, value and allowed set',
    async () => {
      const raw = await goldenConfig();
      const bad = (over: Record<string, unknown>, re: RegExp, opts = {}) => assert.throws(
        () => UNET2D_CLASS.create(readUNet2DConfig({ ...raw, ...over }), opts),
        (e: unknown) => e instanceof ConfigError && re.test(e.message));
      bad({ down_block_types: ['DownBlock2D', 'CrossAttnDownBlock2D', 'AttnDownBlock2D'] },
        new RegExp('^UNet2DModel config: \'down_block_types\\[1\\]\' must be one of ' +
          'DownBlock2D, AttnDownBlock2D, got "CrossAttnDownBlock2D"$'));
      bad({ up_block_types: ['UpBlock2D', 'UpBlock2D'] },
        /'up_block_types' must be 3 entries, one per block_out_channels entry/);
      bad({ layers_per_block: '2' }, /'layers_per_block' must be a number, got "2"/);
      bad({ attention_head_dim: '8' }, /'attention_head_dim' must be a positive integer, got "8"/);
      bad({ attention_head_dim: 96 }, /'attention_head_dim' must be at most 64 \(the narrowest/);
      bad({ class_embed_type: 'projection' },
        /'class_embed_type' must be one of null, timestep, identity, got "projection"/);
      bad({ upsample_type: 'fir' }, /'upsample_type' must be one of conv, resnet, got "fir"/);
      bad({ resnet_time_scale_shift: 'spatial' }, /must be one of default, scale_shift/);
      bad({ norm_num_groups: 24 }, /'norm_num_groups' must be a divisor of 32/);
      bad({ time_embedding_type: 'learned' }, /'num_train_timesteps' must be a positive integer/);
      bad({ dropout: 0.1 }, /'dropout' must be 0 to train/, { training: true });
      assert.doesNotThrow(() => UNET2D_CLASS.create(readUNet2DConfig({ ...raw, dropout: 0.1 })));
      assert.throws(() => readUNet2DConfig({ ...raw, _class_name: 'DiTTransformer2DModel' }),
        /config is for DiTTransformer2DModel, not UNet2DModel/);
    });

  test('class labels: required by a labelled model, refused by the others', () => {
    const cond = new UNet2DModel(TINY);
    const plain = new UNet2DModel({ ...TINY, num_class_embeds: null });
    const spec = [{ shape: [2, 1, 8, 8] }, { shape: [2], dtype: 'int64' as const }];
    const run = (m: UNet2DModel, labels: boolean) => () => trace((x: Tensor, ts: Tensor) =>
      m.forward(constants(m.init(RngKey.fromSeed(0))), x, ts,
        labels ? ops.constant(ids([2, 0])) : undefined), spec);
    assert.throws(run(cond, false), /class labels are required/);
    assert.throws(run(plain, true), /class labels given, but the model has no class embedding/);
    assert.doesNotThrow(run(cond, true));
  });
});

// ---------------------------------------------------------------------------------------------
// Determinism and training
// ---------------------------------------------------------------------------------------------


describe('UNet2DModel determinism and training', () => {
  test('same params and input give identical output bytes in two sessions', async () => {
    const model = new UNet2DModel(TINY);
    const p = model.init(RngKey.fromSeed(3));
    const again = model.init(RngKey.fromSeed(3));
    for (const [k, v] of stateDict(p)) assert.deepEqual(stateDict(again).get(k)!.data, v.data);
    const x = new HostArray(RngKey.fromSeed(4).normal(2 * 64), [2, 1, 8, 8]);
    const t = HostArray.fromNested([17.5, 901]);
    const run = async () => {
      const f = compile((q: P, xs: Tensor, ts: Tensor) => model.forward(q, xs, ts,
        ops.constant(ids([2, 0]))));
      const out = await f(p, x, t);
      await f.dispose();
      return Buffer.from(out.data.buffer, out.data.byteOffset, out.data.byteLength);
    };
    const [a, b] = [await run(), await run()];
    assert.equal(a.length, 2 * 64 * 4);
    assert.ok(a.equals(b));
  });

  test('a few AdamW steps on eps-MSE over a fixed batch lower the loss', async () => {
    const model = new UNet2DModel(TINY, { training: true });
    const n = 8;
    const [kx, kn, kt] = RngKey.fromSeed(5).split(3);
    const abar = Float32Array.from(kt!.uniform(n), (u) => 0.05 + 0.9 * u);
    const batch = {
      x0: new HostArray(kx!.normal(n * 64), [n, 1, 8, 8]),
      noise: new HostArray(kn!.normal(n * 64), [n, 1, 8, 8]),
      a: new HostArray(abar.map(Math.sqrt), [n, 1, 1, 1]),
      s: new HostArray(abar.map((v) => Math.sqrt(1 - v)), [n, 1, 1, 1]),
      t: new HostArray(abar.map((v) => 1000 * (1 - v)), [n]),
      labels: ids([0, 1, 2, 0, 1, 2, 0, 1]),
    };
    const loss = (q: Tree<Tensor>, b: Tree<Tensor>) => {
      const { x0, noise, a, s, t, labels } = b as Record<keyof typeof batch, Tensor>;
      const xt = ops.add(ops.mul(x0, a), ops.mul(noise, s)); // [N, 1, 8, 8]
      const eps = model.forward(q as P, xt, t, labels);
      return ops.mean(ops.square(ops.sub(eps, noise)));
    };
    const trainer = compileTrainStep(loss, adamw({ lr: 3e-3, weightDecay: 0 }));
    let state = trainer.init(model.init(RngKey.fromSeed(6)));
    const losses: number[] = [];
    for (let i = 0; i < 8; i++) {
      const r = await trainer.step(state, batch);
      state = r.state;
      losses.push(r.metrics.loss);
    }
    await trainer.dispose();
    assert.ok(losses.every(Number.isFinite));
    assert.ok(losses.at(-1)! < 0.8 * losses[0]!, `losses ${losses.join(', ')}`);
  });
});

/* The VARIANTS values: diffusers 0.31.0 on Debian torch 1.13.1, CPU, float32 (the configs are
   those above, in Python spelling):

import math, torch
from diffusers import UNet2DModel
for cfg, xs, t, labels in variants:  # labels: None, a tensor, or 'identity'
    m = UNet2DModel(**cfg).eval()
    g = torch.Generator().manual_seed(0)
    params = dict(m.named_parameters())
    with torch.no_grad():
        for k in sorted(params):
            p = params[k]
            s = 1 / math.sqrt(p[0].numel()) if p.dim() > 1 else 0.1
            z = torch.randn(p.shape, generator=g) * s
            p.copy_(z + 1 if 'norm' in k and k.endswith('weight') else z)
        x = torch.randn(xs, generator=g)
        if labels == 'identity':
            labels = torch.randn((xs[0], 4 * cfg['block_out_channels'][0]), generator=g)
        out = m(x, t, class_labels=labels).sample.flatten()
    n = out.numel()
    print(sum(p.numel() for p in m.parameters()), [out[k * (n - 1) // 11].item()
          for k in range(12)], out.square().mean().item())
*/
