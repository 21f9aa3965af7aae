/** DivControl: the factorised layer against a plain W x, the SVD start against the base's
 *  matrices, the gate's routing and balancing, the zero-initialised branch leaving the base
 *  unchanged, adaptation training only the adapter, the MNIST conditions; tiny sizes. */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { valueAndGrad } from '../engine/autodiff.js';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import type { Tree } from '../engine/tree.js';
import { mnistSplits } from '../data/mnist.js';
import { trainingScheduler } from '../diffusion/training.js';
import { loadModel } from '../io/diffusers.js';
import { ditClass, DiTTransformer2DModel, type DiTConfig } from '../models/dit.js';
import type { ParamsOf } from '../nn/module.js';
import { exportPipeline } from '../pipelines/checkpoint.js';
import { adaptDivControl, loadDivControl, trainDivControl } from '../pipelines/divcontrol.js';
import { createImageModel } from '../pipelines/image-models.js';
import { withTempDir } from '../../test/support/temp-dir.js';
import {
  adapterFor, adapterInitialize, balanceTerm, BIAS_RATE, composeWeight, composeWeightHost, controlledForward,
  divControlConfigFor, divControlInitialize, DivControlNet, PROJECTIONS, svdHost, tailorWeights,
  type DiTParams, type SvdParts,
} from './divcontrol.js';
import { conditionImages, conditionMse, CONDITION_KINDS } from './divcontrol-conditions.js';

const host = (shape: number[], key: RngKey) =>
  new HostArray<'float32'>(key.normal(shape.reduce((a, b) => a * b)), shape, 'float32');
const maxAbs = (a: ArrayLike<number>, b: ArrayLike<number>): number =>
  Array.from(a).reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);

test('the factorised layer: x W~^T with W~ = sum_i u_i s_i v_i^T equals a plain matrix product', async () => {
  const k = RngKey.fromSeed(1);
  const parts: SvdParts<HostArray>[] = [
    { u: host([5, 3], k.fold(0)), s: host([3], k.fold(1)), v: host([4, 3], k.fold(2)) },
    { u: host([5, 2], k.fold(3)), s: host([2], k.fold(4)), v: host([4, 2], k.fold(5)) },
  ];
  const x = host([6, 4], k.fold(6));
  const f = compile((xx: Tensor, u1: Tensor, s1: Tensor, v1: Tensor, u2: Tensor, s2: Tensor, v2: Tensor) =>
    ops.linear(xx, composeWeight([{ u: u1, s: s1, v: v1 }, { u: u2, s: s2, v: v2 }])));
  const [p1, p2] = parts as [SvdParts<HostArray>, SvdParts<HostArray>];
  const y = (await f(x, p1.u, p1.s, p1.v, p2.u, p2.s, p2.v)).data as Float32Array;
  await f.dispose();
  const w = composeWeightHost(parts); // [5, 4], float64
  const want = Array.from({ length: 30 }, (_, e) => {
    const [r, c] = [Math.floor(e / 5), e % 5];
    let s = 0;
    for (let j = 0; j < 4; j++) s += (x.data as Float32Array)[r * 4 + j]! * w[c * 4 + j]!;
    return s;
  });
  assert.ok(maxAbs(y, want) < 1e-5, `max error ${maxAbs(y, want)}`);
});

test('svdHost: orthonormal singular vectors, s descending, and U diag(s) V^T = W (tall and wide)', () => {
  for (const [rows, cols] of [[7, 4], [3, 6]] as const) {
    const w = RngKey.fromSeed(rows).normal(rows * cols);
    const { u, s, v } = svdHost(w, rows, cols);
    const r = Math.min(rows, cols);
    for (let i = 1; i < r; i++) assert.ok(s[i - 1]! >= s[i]!, 'descending');
    for (const [m, n] of [[u, rows], [v, cols]] as const) {
      for (let a = 0; a < r; a++) {
        for (let b = 0; b < r; b++) {
          let d = 0;
          for (let i = 0; i < n; i++) d += m[i * r + a]! * m[i * r + b]!;
          assert.ok(Math.abs(d - (a === b ? 1 : 0)) < 1e-9, `orthonormal: ${d}`);
        }
      }
    }
    const back = composeWeightHost([{ u: new HostArray(Float32Array.from(u), [rows, r]),
      s: new HostArray(Float32Array.from(s), [r]), v: new HostArray(Float32Array.from(v), [cols, r]) }]);
    assert.ok(maxAbs(back, w) < 1e-5, `reconstruction error ${maxAbs(back, w)}`);
  }
});

/** A tiny DiT with every weight non-zero (torch's defaults, not adaLN-Zero), so its blocks act. */
function tinyBase(): { base: DiTTransformer2DModel; params: ParamsOf<DiTTransformer2DModel, HostArray> } {
  const config = createImageModel('dit', 'tiny', 3, [1, 8, 8]).config as DiTConfig;
  const base = new DiTTransformer2DModel(config);
  return { base, params: base.init(RngKey.fromSeed(5)) };
}

test('the SVD start reproduces each base block\'s matrices (tailor weights 1), learngenes largest', () => {
  const { base, params } = tinyBase();
  const net = new DivControlNet(divControlConfigFor(base.config, { control_blocks: 2, learngenes: 10,
    tailors: 6, active_tailors: 3 }));
  const p = divControlInitialize(net, net.init(RngKey.fromSeed(0)), params);
  for (const [j, blk] of p.control_blocks.entries()) {
    const b = params.transformer_blocks[j]!;
    const net0 = b.ff.net as unknown as [{ proj: { weight: HostArray } }, unknown, { weight: HostArray }];
    const want = { to_q: b.attn1.to_q.weight, to_k: b.attn1.to_k.weight, to_v: b.attn1.to_v.weight,
      to_out: b.attn1.to_out[0]!.weight, ff_in: net0[0].proj.weight, ff_out: net0[2].weight };
    for (const k of PROJECTIONS) {
      const l = blk[k];
      // Tailor weights of 1: the components as they are.
      const got = composeWeightHost([{ u: l.learngene_u, s: l.learngene_s, v: l.learngene_v },
        { u: l.tailor_u, s: l.tailor_s, v: l.tailor_v }]);
      const w = want[k].data as Float32Array;
      assert.ok(maxAbs(got, w) < 1e-5, `${k} of block ${j}: ${maxAbs(got, w)}`);
      // The learngenes are the largest components.
      const [kept, gated] = [l.learngene_s.data as Float32Array, l.tailor_s.data as Float32Array];
      assert.ok(Math.min(...kept) >= Math.max(...gated));
    }
  }
});

test('the gate: softmax of G e (eq. 3), the top K of alpha + b kept, weights N_T alpha on them', async () => {
  // G maps descriptor [1, 0] to tailor scores 3, 2, 1, 0 and [0, 1] to the reverse.
  const gate = { weight: new HostArray(Float32Array.from([3, 0, 2, 1, 1, 2, 0, 3]), [4, 2]),
    bias: HostArray.zeros([4]) };
  const f = compile((w: Tensor, b: Tensor, bias: Tensor, e: Tensor) => {
    const g = tailorWeights({ weight: w, bias: b }, bias, e, 2);
    return [g.weights, g.kept];
  });
  const run = async (e: number[], bias = [0, 0, 0, 0]) => (await f(gate.weight, gate.bias,
    new HostArray(Float32Array.from(bias), [4]), new HostArray(Float32Array.from(e), [2]))).map((a) =>
    Array.from(a.data as Float32Array));
  const soft = (s: number[]) => s.map((v) => Math.exp(v) / s.reduce((a, x) => a + Math.exp(x), 0));
  const [w1, kept1] = await run([1, 0]);
  assert.deepEqual(kept1, [1, 1, 0, 0]);
  const a1 = soft([3, 2, 1, 0]);
  assert.ok(maxAbs(w1!, [4 * a1[0]!, 4 * a1[1]!, 0, 0]) < 1e-6);
  const [, kept2] = await run([0, 1]);
  assert.deepEqual(kept2, [0, 0, 1, 1], 'the other descriptor routes to the other tailors');
  // A balancing bias against an overused tailor moves the selection, not the kept weights.
  const [w3, kept3] = await run([1, 0], [0, -1 / BIAS_RATE, 0, 0]);
  assert.deepEqual(kept3, [1, 0, 1, 0]);
  assert.ok(Math.abs(w3![2]! - 4 * a1[2]!) < 1e-6);
  await f.dispose();
});

test('the balancing term is 0 and its gradient in b is the usage excess (times its scale)', async () => {
  const f = compile((b: Tensor, kept: Tensor) => {
    const [value, grad] = valueAndGrad((bb: Tensor) => balanceTerm(bb, kept, 1))(b);
    return [value, grad as Tensor];
  });
  const [value, grad] = await f(new HostArray(Float32Array.from([0.3, -2, 1, 5]), [4]),
    new HostArray(Float32Array.from([1, 1, 0, 0]), [4]));
  assert.equal(value!.data[0], 0);
  assert.deepEqual(Array.from(grad!.data as Float32Array), [0.125, 0.125, -0.125, -0.125]); // (kept - 1/2) / 4
  await f.dispose();
});

/** The base's prediction and the controlled one for the same inputs. */
async function bothForwards(base: DiTTransformer2DModel, baseP: ParamsOf<DiTTransformer2DModel, HostArray>,
  net: DivControlNet, netP: ParamsOf<DivControlNet, HostArray>): Promise<[Float32Array, Float32Array]> {
  const k = RngKey.fromSeed(9);
  const x = host([3, 1, 8, 8], k.fold(0));
  const cond = host([3, 1, 8, 8], k.fold(1));
  const t = new HostArray(Float32Array.from([10, 500, 990]), [3]);
  const y = new HostArray(BigInt64Array.from([0n, 1n, 3n]), [3], 'int64');
  const e = new HostArray(Float32Array.from([1, 0, 1, 0]), [4]);
  const bp = ops.constantTree(baseP as unknown as Tree<HostArray>) as unknown as DiTParams;
  const np = ops.constantTree(netP as unknown as Tree<HostArray>) as unknown as ParamsOf<DivControlNet>;
  const f = compile((xx: Tensor, tt: Tensor, yy: Tensor, cc: Tensor, ee: Tensor) => [
    base.forward(bp, xx, tt, yy),
    controlledForward(base, bp, xx, tt, yy, { net, params: np, cond: cc, descriptor: ee }).sample]);
  const [a, b] = await f(x, t, y, cond, e);
  await f.dispose();
  return [a!.data as Float32Array, b!.data as Float32Array];
}

test('a zero-initialised control branch leaves the base\'s prediction unchanged; an open one not', async () => {
  const { base, params } = tinyBase();
  const net = new DivControlNet(divControlConfigFor(base.config, { control_blocks: 2, learngenes: 10,
    tailors: 6, active_tailors: 3 }));
  const p = divControlInitialize(net, net.init(RngKey.fromSeed(0)), params);
  const [plain, controlled] = await bothForwards(base, params, net, p);
  assert.ok(maxAbs(plain, controlled) < 1e-6, `changed by ${maxAbs(plain, controlled)}`);
  const opened = { ...p, zero_proj: p.zero_proj.map((z, j) => ({ ...z,
    weight: host([...z.weight.shape], RngKey.fromSeed(20 + j)) })) };
  const [plain2, controlled2] = await bothForwards(base, params, net, opened);
  assert.ok(maxAbs(plain2, controlled2) > 1e-3, 'an open branch changes the prediction');
});

test('an adapter starts as the zero-shot model (its new tailors have s = 0)', async () => {
  const { base, params } = tinyBase();
  const net = new DivControlNet(divControlConfigFor(base.config, { control_blocks: 1, learngenes: 8,
    tailors: 8, active_tailors: 4 }));
  const p = divControlInitialize(net, net.init(RngKey.fromSeed(0)), params);
  const netP = { ...p, zero_proj: p.zero_proj.map((z) => ({ ...z,
    weight: host([...z.weight.shape], RngKey.fromSeed(3)) })) };
  const adapter = adapterFor(net, 3);
  const descriptor = [0, 0.5, 1, 0];
  const ap = adapterInitialize(adapter, RngKey.fromSeed(4), descriptor);
  const k = RngKey.fromSeed(11);
  const x = host([2, 1, 8, 8], k.fold(0));
  const cond = host([2, 1, 8, 8], k.fold(1));
  const t = new HostArray(Float32Array.from([100, 700]), [2]);
  const y = new HostArray(BigInt64Array.from([3n, 3n]), [2], 'int64');
  const c = <T>(v: unknown) => ops.constantTree(v as Tree<HostArray>) as unknown as T;
  const f = compile((xx: Tensor, tt: Tensor, yy: Tensor, cc: Tensor, ee: Tensor) => {
    const ctl = { net, params: c<ParamsOf<DivControlNet>>(netP), cond: cc, descriptor: ee };
    const bp = c<DiTParams>(params);
    return [controlledForward(base, bp, xx, tt, yy, ctl).sample,
      controlledForward(base, bp, xx, tt, yy, { ...ctl, adapter: { module: adapter, params: c(ap) } }).sample];
  });
  const [zeroShot, adapted] = await f(x, t, y, cond, new HostArray(Float32Array.from(descriptor), [4]));
  await f.dispose();
  assert.ok(maxAbs(zeroShot!.data as Float32Array, adapted!.data as Float32Array) < 1e-6);
  assert.equal(adapter.numParams(), 4 + 4 * 3 * (16 + 16 + 1) + 3 * (64 + 16 + 1) + 3 * (16 + 64 + 1));
});

test('MNIST conditions: each operator reproduces its own condition (MSE 0), and they differ', () => {
  const held = mnistSplits().heldOut.images;
  const x = new HostArray<'float32'>(held.data.slice(0, 4 * 1024), [4, 1, 32, 32], 'float32');
  const conds = CONDITION_KINDS.map((k) => conditionImages(k, x));
  CONDITION_KINDS.forEach((k, i) => {
    assert.deepEqual(Array.from(conditionMse(k, x, conds[i]!)), [0, 0, 0, 0]);
    const c = conds[i]!.data;
    assert.ok(Math.min(...c) >= -1 - 1e-6 && Math.max(...c) <= 1 + 1e-6, `${k} in [-1, 1]`);
  });
  // Lowres keeps each 4x4 block's mean; the silhouette is binary; the edge map is dark inside strokes.
  const block = (a: Float32Array, by: number, bx: number) => {
    let s = 0;
    for (let r = by; r < by + 4; r++) for (let q = bx; q < bx + 4; q++) s += a[r * 32 + q]!;
    return s / 16;
  };
  const [low, src] = [conds[1]!.data as Float32Array, x.data as Float32Array];
  assert.ok(Math.abs(block(low, 12, 12) - block(src, 12, 12)) < 1e-6);
  assert.ok(Array.from(conds[2]!.data).every((v) => v === 1 || v === -1));
  for (let i = 0; i < 3; i++) {
    for (let j = i + 1; j < 4; j++) assert.ok(maxAbs(conds[i]!.data, conds[j]!.data) > 0.5);
  }
});

test('train, then adapt: the adapter trains, the control branch and the base are saved unchanged', () =>
  withTempDir('divcontrol', async (dir) => {
    const model = createImageModel('dit', 'tiny', 10, [1, 32, 32]);
    const baseDir = join(dir, 'base');
    await exportPipeline(baseDir, { model, scheduler: trainingScheduler('flow') },
      model.module.init(RngKey.fromSeed(7)) as Tree<HostArray>);
    const loop = { batchSize: 4, lr: 1e-3, lrSchedule: 'constant' as const, warmupSteps: 0, gradClip: 1,
      emaDecay: 0.9, seed: 0, logEvery: 1, sampleEvery: 0, checkpointEvery: 0 };
    await trainDivControl({ ...loop, base: baseDir, conditions: ['edge', 'lowres'], images: 16,
      controlBlocks: 1,
      learngenes: 8, tailors: 8, activeTailors: 4, repaWeight: 0, repaEncoder: '', steps: 2,
      out: join(dir, 'multi') }, false);
    const multi = await loadDivControl(join(dir, 'multi'));
    assert.deepEqual(multi.record.conditions, ['edge', 'lowres']);
    await adaptDivControl({ ...loop, control: join(dir, 'multi'), condition: 'blur', images: 8, newTailors: 2,
      steps: 2, out: join(dir, 'adapt') }, false);
    const adapted = await loadDivControl(join(dir, 'adapt'));
    assert.equal(adapted.record.adapted, 'blur');
    const sv = (p: typeof multi) =>
      Array.from(p.netParams.control_blocks[0]!.to_q.tailor_s.data as Float32Array);
    assert.deepEqual(sv(adapted), sv(multi), 'the control branch is frozen');
    const base = await loadModel(join(baseDir, 'transformer'), ditClass);
    assert.deepEqual(Array.from(adapted.baseParams.proj_out_2.weight.data as Float32Array),
      Array.from(base.params.proj_out_2.weight.data as Float32Array), 'the base is frozen');
    const s = adapted.adapter!.params.control_blocks[0]!.to_q.s.data as Float32Array;
    assert.ok(Array.from(s).some((v) => v !== 0), 'the new tailors moved off s = 0');
    const e = Array.from(adapted.adapter!.params.descriptor.data as Float32Array);
    assert.ok(maxAbs(e, [0, 0.5, 1, 0]) > 0, 'the gate input trained');
  }));
