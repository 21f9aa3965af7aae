/** DiT-MoE: config, names and counts; one expert with k = 1 equals a dense SwiGLU block; the
 *  routed and dense forms agree; the balance loss and loads against a hand computation;
 *  gradients reach the router; the model trains deterministically. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { mapTree, type Tree } from '../engine/tree.js';
import { stateDict, type ParamsOf } from '../nn/module.js';
import { adamw } from '../nn/optim.js';
import { loadStateDict } from '../nn/state.js';
import { compileTrainStep } from '../nn/train.js';
import { checkGrad, randint, randn } from '../../test/support/gradcheck.js';
import { maxAbsDiff } from '../../test/support/reference.js';
import {
  DIT_MOE_DEFAULTS, DiTMoEBlock, ditMoEClass, ditMoEPreset, SparseMoeBlock,
  type DiTMoEConfig, type DiTMoETransformer2DModel, type MoeRouting,
} from './dit-moe.js';
import { ditCond, DiTBlock, DIT_PRESETS, type DiTConfig } from './dit.js';

const TINY: Partial<DiTMoEConfig> = {
  sample_size: 8, in_channels: 2, patch_size: 2, num_layers: 2, num_attention_heads: 2,
  attention_head_dim: 8, num_embeds_ada_norm: 4,
};
const tiny = (over: Partial<DiTMoEConfig> = {}): DiTMoEConfig =>
  ({ ...DIT_MOE_DEFAULTS, ...TINY, ...over });
const isHost = (x: unknown): x is HostArray => x instanceof HostArray;
const ROUTED: MoeRouting = { kind: 'routed' };

test('config, parameter names (DiT-MoE\'s inside diffusers\' blocks) and counts', () => {
  const c = ditMoEPreset('DiT-MoE-S/2-mnist-8E2A');
  assert.deepEqual(ditMoEClass.readConfig(ditMoEClass.toConfig(c)), c);
  const shapes = ditMoEClass.create(c).parameterShapes();
  assert.deepEqual(shapes.get('transformer_blocks.5.ff.experts.7.down_proj.weight'), [128, 512]);
  assert.deepEqual(shapes.get('transformer_blocks.0.ff.experts.0.gate_proj.weight'), [512, 128]);
  assert.deepEqual(shapes.get('transformer_blocks.0.ff.gate.weight'), [8, 128]);
  const shared = 'transformer_blocks.0.ff.shared_experts.up_proj.weight';
  assert.deepEqual(shapes.get(shared), [256, 128]);
  assert.ok(!shapes.has('transformer_blocks.0.ff.net.2.weight'));
  // Dense DiT-S/2-mnist (2,880,388) with each block's GELU MLP (D 4D + 4D + 4D D + D) replaced
  // by 8 SwiGLU experts (3 D 4D each, no bias), the router (8 D) and a 2D-wide shared expert.
  const d = 128;
  const perBlock = 8 * 3 * d * 4 * d + 8 * d + 3 * d * 2 * d - (8 * d * d + 5 * d);
  assert.equal(ditMoEClass.create(c).numParams(), 2_880_388 + 6 * perBlock);
  assert.equal(ditMoEClass.create(c).numParams(), 12_123_268);

  const some = ditMoEClass.create(tiny({ moe_layers: [1] }));
  const names = [...some.parameterShapes().keys()];
  assert.ok(names.includes('transformer_blocks.0.ff.net.0.proj.weight'));
  assert.ok(names.includes('transformer_blocks.1.ff.experts.7.up_proj.weight'));
  assert.deepEqual(some.moeLayers, [1]);
  // A state dict mixing both kinds of block loads back by name.
  const dict = stateDict(some.init(RngKey.fromSeed(0)) as Tree<HostArray>);
  assert.deepEqual([...stateDict(loadStateDict(some, dict) as Tree<HostArray>).keys()], names);

  const raw = ditMoEClass.toConfig(c) as Record<string, unknown>;
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ num_experts_per_tok: 9 },
      /'num_experts_per_tok' must be an integer in \[1, num_experts = 8\]/],
    [{ moe_layers: [0, 6] }, /'moe_layers' must be null or distinct block indices in \[0, 6\)/],
    [{ moe_layers: [1, 1] }, /'moe_layers' must be null or distinct/],
    [{ num_shared_experts: -1 }, /'num_shared_experts' must be an integer >= 0/],
  ];
  for (const [over, msg] of bad) {
    assert.throws(() => ditMoEClass.readConfig({ ...raw, ...over }), msg);
  }
  assert.equal(DIT_PRESETS['DiT-S/2-mnist'].num_layers, c.num_layers);
});

test('one expert, k = 1, no shared expert: a MoE block equals a dense SwiGLU block', async () => {
  const dense = new DiTBlock({ ...tiny(), activation_fn: 'swiglu' } as DiTConfig);
  const moe = new DiTMoEBlock(
    tiny({ num_experts: 1, num_experts_per_tok: 1, num_shared_experts: 0 }));
  const pm = moe.init(RngKey.fromSeed(2));
  const ex = pm.ff.experts[0]!;
  // diffusers' SwiGLU: proj rows = [hidden (up), gate]; out = hidden * silu(gate); zero biases.
  const proj = new HostArray(new Float32Array([...ex.up_proj.weight.data as Float32Array,
    ...ex.gate_proj.weight.data as Float32Array]), [128, 16]);
  const pd: ParamsOf<DiTBlock, HostArray> = {
    norm1: pm.norm1, attn1: pm.attn1,
    ff: { net: [{ proj: { weight: proj, bias: HostArray.zeros([128]) } }, {},
      { weight: ex.down_proj.weight, bias: HostArray.zeros([16]) }] },
  };
  type PM = ParamsOf<DiTMoEBlock>;
  const f = compile((a: PM, b: ParamsOf<DiTBlock>, x: Tensor, t: Tensor, y: Tensor) => {
    const c = ditCond(t, y);
    const m = moe.forward(a, x, c, 0);
    return { dense: dense.forward(b, x, c, 0), moe: m.out, load: m.load, loss: m.balanceLoss,
      routed: moe.forward(a, x, c, 0, { routing: ROUTED }).out };
  });
  const r = await f(pm, pd, randn([2, 16, 16], 3), randint([2], 1000, 4), randint([2], 5, 5));
  await f.dispose();
  const [e1, e2] = [maxAbsDiff(r.moe, r.dense), maxAbsDiff(r.routed, r.dense)];
  console.log(`1 expert vs dense SwiGLU block: dense form ${e1.toExponential(2)}, ` +
    `routed ${e2.toExponential(2)}`);
  assert.ok(e1 <= 1e-5 && e2 <= 1e-5, `${e1}, ${e2}`);
  assert.deepEqual(Array.from(r.load.data as Float32Array), [1]);
  assert.ok(Math.abs((r.loss.data[0] as number) - 0.01) < 1e-9); // alpha * E * P * f = 0.01
});

/** A small mixture: width 8, 4 experts of width 16, top 2, an 8-wide shared expert. */
function smallMoe(): { moe: SparseMoeBlock; p: ParamsOf<SparseMoeBlock, HostArray> } {
  const moe = new SparseMoeBlock(8, 4, 2, 16, 8, 0.01);
  return { moe, p: moe.init(RngKey.fromSeed(6)) };
}

test('the routed form (gather / scatter-add) agrees with the dense-masked form', async () => {
  const { moe, p } = smallMoe();
  type PS = ParamsOf<SparseMoeBlock>;
  const f = compile((q: PS, x: Tensor) => {
    const d = moe.forward(q, x);
    const r = moe.forward(q, x, ROUTED);
    return { d: d.out, r: r.out, dl: d.load, rl: r.load, db: d.balanceLoss, rb: r.balanceLoss,
      full: moe.forward(q, x, { kind: 'routed', capacityFactor: 2 }).out, // 2 k M / E = M
      small: moe.forward(q, x, { kind: 'routed', capacityFactor: 0.5 }).out };
  });
  const r = await f(p, randn([2, 10, 8], 7));
  await f.dispose();
  const err = maxAbsDiff(r.r, r.d);
  console.log(`routed vs dense MoE: max abs difference ${err.toExponential(2)}`);
  assert.ok(err <= 1e-5);
  assert.ok(maxAbsDiff(r.full, r.d) <= 1e-5);
  assert.deepEqual(r.rl.data, r.dl.data);
  assert.equal(r.rb.data[0], r.db.data[0]);
  // 5 slots per expert for 10 routed tokens on average: overflow is dropped.
  assert.ok(maxAbsDiff(r.small, r.d) > 1e-3);
});

test('balance loss and loads equal a hand computation', async () => {
  const { moe, p } = smallMoe();
  const x = randn([1, 7, 8], 8);
  const f = compile((q: ParamsOf<SparseMoeBlock>, xx: Tensor) => {
    const o = moe.forward(q, xx);
    return { loss: o.balanceLoss, load: o.load };
  });
  const r = await f(p, x);
  await f.dispose();
  // By hand: softmax(x W^T) per token, top 2, P_i = mean prob, f_i = E * share of picks.
  const [m, e, k, d] = [7, 4, 2, 8];
  const w = p.gate.weight.data as Float32Array;
  const probSum = new Array<number>(e).fill(0);
  const picks = new Array<number>(e).fill(0);
  for (let i = 0; i < m; i++) {
    const logits = Array.from({ length: e }, (_, j) => {
      let s = 0;
      for (let c = 0; c < d; c++) s += (x.data[i * d + c] as number) * w[j * d + c]!;
      return s;
    });
    const mx = Math.max(...logits);
    const ex = logits.map((v) => Math.exp(v - mx));
    const z = ex.reduce((a, b) => a + b);
    ex.forEach((v, j) => (probSum[j]! += v / z));
    const order = [...ex.keys()].sort((a, b) => ex[b]! - ex[a]!);
    order.slice(0, k).forEach((j) => picks[j]!++);
  }
  const share = picks.map((c) => (e * c) / (m * k)); // f_i
  const loss = 0.01 * probSum.reduce((s, pSum, j) => s + (pSum / m) * share[j]!, 0);
  assert.ok(Math.abs((r.loss.data[0] as number) - loss) < 1e-7, `${r.loss.data[0]} vs ${loss}`);
  const load = Array.from(r.load.data as Float32Array);
  load.forEach((v, j) => assert.ok(Math.abs(v - picks[j]! / m) < 1e-7));
  assert.ok(Math.abs(load.reduce((a, b) => a + b) - k) < 1e-6);
});

test('gradients reach the router (finite differences; both forms, balance loss)', async () => {
  const { moe, p } = smallMoe();
  const consts = () => mapTree(p as Tree<HostArray>, isHost, (a) => ops.constant(a)) as
    ParamsOf<SparseMoeBlock>;
  const x = randn([1, 6, 8], 9);
  for (const routing of [{ kind: 'dense' }, ROUTED] as MoeRouting[]) {
    await checkGrad(`MoE ${routing.kind} output wrt x and router`, (xx, gw) =>
      moe.forward({ ...consts(), gate: { weight: gw! } }, xx!, routing).out, [x, p.gate.weight]);
  }
  const r = await checkGrad('balance loss wrt router', (xx, gw) =>
    moe.forward({ ...consts(), gate: { weight: gw! } }, xx!).balanceLoss, [x, p.gate.weight],
  { wrt: [1] });
  assert.ok(Math.abs(r.analytic) > 1e-6, 'the balance loss moves the router');
});

test('DiT-MoE model: loads, hidden states, deterministic training lowers the loss', async () => {
  const model = ditMoEClass.create(tiny({ moe_layers: [1], num_experts: 4, num_shared_experts: 1,
    expert_intermediate_size: 16 }));
  type P = ParamsOf<DiTMoETransformer2DModel>;
  const params = model.init(RngKey.fromSeed(11));
  const n = 8;
  const x0 = randn([n, 2, 8, 8], 12);
  const eps = randn([n, 2, 8, 8], 13);
  const xt = x0.data.map((v, i) => 0.8 * (v as number) + 0.6 * (eps.data[i] as number));
  const batch = { x: new HostArray(xt as Float32Array, [n, 2, 8, 8]), eps,
    t: randint([n], 1000, 14), y: randint([n], 5, 15) };
  const f = compile((q: P, xx: Tensor, t: Tensor, y: Tensor) =>
    model.forward(q, xx, t, y, { hidden: [0, 1] }));
  const r = await f(params, batch.x, batch.t, batch.y);
  await f.dispose();
  assert.deepEqual(r.sample.shape, [n, 2, 8, 8]);
  assert.deepEqual(r.load.shape, [1, 4]);
  assert.ok(Math.abs(Array.from(r.load.data as Float32Array).reduce((a, b) => a + b) - 2) < 1e-6);
  assert.deepEqual(r.hidden.map((h) => h.shape), [[n, 16, 16], [n, 16, 16]]);

  const loss = (p: Tree<Tensor>, b: Tree<Tensor>) => {
    const { x, t, y, eps: e } = b as Record<string, Tensor>;
    const o = model.forward(p as P, x!, t!, y!);
    return ops.add(ops.mean(ops.square(ops.sub(o.sample, e!))), o.balanceLoss);
  };
  const trainer = compileTrainStep(loss, adamw({ lr: 3e-3, weightDecay: 0 }));
  const run = async (steps: number): Promise<number[]> => {
    let state = trainer.init(params as Tree<HostArray>);
    const losses: number[] = [];
    for (let i = 0; i < steps; i++) {
      const s = await trainer.step(state, batch);
      state = s.state;
      losses.push(s.metrics.loss);
    }
    return losses;
  };
  const a = await run(25);
  const b = await run(25);
  await trainer.dispose();
  assert.deepEqual(a, b);
  assert.ok(a.at(-1)! < 0.7 * a[0]!, `loss ${a[0]} -> ${a.at(-1)}`);
});
