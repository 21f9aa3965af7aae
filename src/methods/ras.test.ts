/** RAS: scores, selection with starvation, the sparse pass's exactness, and sampling. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { mapTree, type Tree } from '../engine/tree.js';
import { DiTTransformer2DModel } from '../models/dit.js';
import type { DiTMoETransformer2DModel } from '../models/dit-moe.js';
import { createImageModel } from '../pipelines/image-models.js';
import { sampleImages } from '../pipelines/sample.js';
import { withTinyPipeline } from '../../test/support/tiny-pipeline.js';
import { rasDenseSteps, rasDenoiser, rasPasses, selectTokens, tokenScores } from './ras.js';

/** Random adaLN and output weights: DiT's init makes every block the identity and the output 0. */
const randomized = (params: Tree<HostArray>) => mapTree(params,
  (x): x is HostArray => x instanceof HostArray, (a, path) => (/norm1\.linear|proj_out/.test(path)
    ? new HostArray(RngKey.fromSeed(path.length).normal(a.size).map((v) => v * 0.05), a.shape)
    : a));

const maxDiff = (a: ArrayLike<number>, b: ArrayLike<number>) =>
  Array.from(a).reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);

test('dense steps: the first 4 and the error resets 12 and 22 of 30; ratio 1 is all dense', () => {
  const at = (s: boolean[]) => s.flatMap((d, j) => (d ? [j] : []));
  assert.deepEqual(at(rasDenseSteps(30, { ratio: 0.5 })), [0, 1, 2, 3, 12, 22]);
  assert.deepEqual(at(rasDenseSteps(15, { ratio: 0.5 })), [0, 1, 2, 3, 6, 11]);
  assert.equal(at(rasDenseSteps(10, { ratio: 1 })).length, 10);
  assert.throws(() => rasDenseSteps(10, { ratio: 0 }), /ratio must be in \(0, 1\]/);
});

test('token scores: std over channels (unbiased) or L2 norm, averaged over the patch', () => {
  // One image, 2 channels, 2 x 4 pixels, patch 2 -> 2 tokens.
  const c0 = [1, 3, 0, 0, 1, 3, 0, 0];
  const c1 = [3, 1, 0, 0, 3, 1, 4, 0];
  const v = [...c0, ...c1];
  const std = tokenScores(v, [1, 2, 2, 4], 2, 'std');
  // Left token: every pixel's pair differs by 2 -> std sqrt(2); right: one pixel (0, 4).
  assert.ok(Math.abs(std[0]! - Math.SQRT2) < 1e-12);
  assert.ok(Math.abs(std[1]! - Math.sqrt(8) / 4) < 1e-12);
  const l2 = tokenScores(v, [1, 2, 2, 4], 2, 'l2norm');
  assert.ok(Math.abs(l2[0]! - Math.sqrt(10)) < 1e-12);
  assert.ok(Math.abs(l2[1]! - 1) < 1e-12);
  assert.throws(() => tokenScores([1, 2, 3, 4], [1, 1, 2, 2], 2, 'std'), /needs C >= 2/);
});

test('selection: the highest scores are cached; the starvation sign decides who starves', () => {
  const score = [5, 1, 4, 2, 3, 6];
  const dropped = new Float64Array(6);
  // 3 active of 6: cache the top 3 (5, 4, 6 -> tokens 0, 2, 5).
  assert.deepEqual(Array.from(selectTokens(score, dropped, 3, { starvation: 0 })), [1, 3, 4]);
  assert.deepEqual(Array.from(dropped), [1, 0, 1, 0, 0, 1]);
  assert.deepEqual(Array.from(selectTokens(score, new Float64Array(6), 3, { cache: 'low' })), [0, 2, 5]);
  // Nearly equal scores: with the official positive scale a cached token gains score and is
  // cached again; with a negative scale it loses score and is refreshed.
  const even = [1.01, 1, 1.02, 1, 1, 1];
  const pos = new Float64Array(6);
  selectTokens(even, pos, 4, { starvation: 0.5 }); // caches 0 and 2
  assert.deepEqual(Array.from(selectTokens(even, pos, 4, { starvation: 0.5 })), [1, 3, 4, 5]);
  const neg = new Float64Array(6);
  selectTokens(even, neg, 4, { starvation: -0.5 });
  const again = Array.from(selectTokens(even, neg, 4, { starvation: -0.5 }));
  assert.ok(again.includes(0) && again.includes(2), `starved tokens come back: ${again}`);
});

type Caches = { out: HostArray; k: HostArray[]; v: HostArray[] };

/** Compiles both passes of a tiny model of `family` with random weights, runs the dense pass
 *  on two images of `channels` x 8 x 8 and the sparse one on its caches: the sparse pass must
 *  reproduce it. Returns what the caller checks further. */
async function sparseOnDenseCaches(family: 'dit' | 'dit-moe', channels: number, seed: number) {
  const model = createImageModel(family, 'tiny', 3, [channels, 8, 8]).module as
    DiTTransformer2DModel | DiTMoETransformer2DModel;
  const params = mapTree(randomized(model.init(RngKey.fromSeed(seed)) as Tree<HostArray>),
    (x): x is HostArray => x instanceof HostArray, (a) => ops.constant(a));
  const { dense, sparse } = rasPasses(model, params);
  const x = new HostArray(RngKey.fromSeed(seed + 1).normal(2 * channels * 64), [2, channels, 8, 8],
    'float32');
  const t = new HostArray(Float32Array.from([300, 800]), [2]);
  const y = new HostArray(BigInt64Array.from([1n, 3n]), [2], 'int64');
  const idx = new HostArray(BigInt64Array.from([0n, 5n, 9n, 15n, 1n, 2n, 3n, 4n]), [2, 4], 'int64');
  const d = compile((a: Tensor, b: Tensor, c: Tensor) => dense(a, b, c));
  const s = compile((a: Tensor, b: Tensor, c: Tensor, i: Tensor, prev: Tensor, k: Tensor[],
    v: Tensor[]) => sparse(a, b, c, i, prev, k, v));
  const r = (await d(x, t, y)) as Caches;
  const again = (await s(x, t, y, idx, r.out, r.k, r.v)) as Caches;
  assert.ok(maxDiff(again.out.data as Float32Array, r.out.data as Float32Array) < 1e-5);
  r.k.forEach((k, b) => assert.ok(maxDiff(again.k[b]!.data as Float32Array, k.data as Float32Array) < 1e-5));
  const on = async (x2: HostArray) => (await s(x2, t, y, idx, r.out, r.k, r.v)) as Caches;
  return { model, params, dense: r, on, dispose: () => Promise.all([d.dispose(), s.dispose()]) };
}

test('the sparse pass on the same step\'s caches reproduces the dense pass', async () => {
  const c = await sparseOnDenseCaches('dit', 2, 1);
  // On another input the refreshed tokens change and the cached ones keep the old output.
  const moved = await c.on(new HostArray(RngKey.fromSeed(3).normal(2 * 128), [2, 2, 8, 8], 'float32'));
  const patchOf = (data: Float32Array, img: number, tok: number) => {
    const [gy, gx] = [Math.floor(tok / 4), tok % 4];
    return [0, 1].flatMap((ch) => [0, 1].flatMap((py) => [0, 1].map((px) =>
      data[img * 128 + ch * 64 + (gy * 2 + py) * 8 + gx * 2 + px]!)));
  };
  const [o1, o2] = [c.dense.out.data as Float32Array, moved.out.data as Float32Array];
  assert.deepEqual(patchOf(o2, 0, 7), patchOf(o1, 0, 7)); // cached
  assert.ok(maxDiff(patchOf(o2, 0, 5), patchOf(o1, 0, 5)) > 1e-4); // refreshed
  await c.dispose();
  const ras = rasDenoiser(c.model, c.params, 'flow', { ratio: 0.5, steps: 10, rows: 4,
    nullClass: 10, conditional: true });
  const share = ras.sparseFlops([1, 2, 8, 8]);
  assert.ok(share > 0.3 && share < 0.75, `RAS step ${share.toFixed(3)} of the dense FLOPs`);
});

test('DiT-MoE: the sparse pass on the same step\'s caches reproduces the dense pass', async () => {
  await (await sparseOnDenseCaches('dit-moe', 1, 4)).dispose();
});

test('sampling a flow DiT: ratio 1 is the plain sampler bit for bit; ratio 0.5 and the ' +
  'random control run sparse steps and stay close', () =>
  withTinyPipeline('dit', 'flow', async (p) => {
    const o = { sampler: 'flow-euler', steps: 10, n: 5, seed: 3, guidance: 2, batchSize: 4 } as const;
    const plain = await sampleImages(p, o);
    const all = await sampleImages(p, { ...o, accel: { method: 'ras', ratio: 1 } });
    assert.deepEqual(all.images.data, plain.images.data);
    const half = await sampleImages(p, { ...o, accel: { method: 'ras', ratio: 0.5 } });
    const random = await sampleImages(p, { ...o, accel: { method: 'ras', ratio: 0.5,
      selection: 'random' } });
    for (const r of [half, random]) {
      const d = maxDiff(r.images.data, plain.images.data);
      assert.ok(d > 1e-5 && d < 1, `max difference to the full sample ${d}`);
    }
    assert.ok(maxDiff(half.images.data, random.images.data) > 1e-5);
    // 5 images, CFG inside: 2 per call of 4 rows -> 3 calls a step, 10 steps.
    assert.equal(half.modelCalls, 30);
    await assert.rejects(sampleImages(p, { ...o, sampler: 'flow-heun',
      accel: { method: 'ras', ratio: 0.5 } }), /one model call per step, not flow-heun/);
    await assert.rejects(sampleImages(p, { ...o, accel: { method: 'deepcache', interval: 2 } }),
      /caches U-Net features, so it needs a UNet2DModel; this model is a DiTTransformer2DModel/);
  }, randomized));
