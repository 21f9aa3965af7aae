/** InvDiff (methods/invdiff.ts): the objective against plain TypeScript (value and gradient),
 *  the max step against brute force and on a synthetic biased set with a known answer, and a
 *  tiny end-to-end run on 8x8 images (pipelines/invdiff.ts) where the module's guidance must
 *  lower the measured bias of plain CFG sampling. */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { grad } from '../engine/autodiff.js';
import { HostArray } from '../engine/host.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import {
  biasedDataset, biasReport, boldFlags, realThreshold, splitBoldShares,
} from '../data/biased-mnist.js';
import type { ImageDataset } from '../data/dataset.js';
import {
  imageLosses, invariantPipeline, sampleArm, trainedPipeline, trainModule,
} from '../pipelines/invdiff.js';
import { withTempDir } from '../../test/support/temp-dir.js';
import {
  environmentAgreement, environmentRows, inferEnvironments, invariantObjective, twoGaussianSplit,
} from './invdiff.js';

/** mean_e R_e + lambda Var_e R_e, the environments with no weight left out, in plain TS. */
function objective(l: readonly number[], w: readonly number[][], lambda: number): number {
  const g = w[0]!.length;
  const means: number[] = [];
  for (let e = 0; e < g; e++) {
    const count = w.reduce((s, row) => s + row[e]!, 0);
    if (count > 0) means.push(w.reduce((s, row, b) => s + row[e]! * l[b]!, 0) / count);
  }
  const mean = means.reduce((a, b) => a + b, 0) / means.length;
  const variance = means.length > 1
    ? means.reduce((s, m) => s + (m - mean) ** 2, 0) / (means.length - 1) : 0;
  return mean + lambda * variance;
}

const LOSSES = [0.3, 1.7, 0.25, 0.9, 2.2, 0.05];
const CASES: { name: string; w: number[][]; lambda: number }[] = [
  { name: 'soft weights, an empty third environment', lambda: 0.7, w: [
    [1, 0, 0], [0.2, 0.8, 0], [0.5, 0.5, 0], [0, 1, 0], [0.9, 0.1, 0], [0.3, 0.7, 0]] },
  { name: 'one-hot, three environments', lambda: 2.5, w: [
    [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 0], [0, 0, 1], [1, 0, 0]] },
  { name: 'one environment present: the mean alone', lambda: 10, w: [
    [0, 1], [0, 1], [0, 1], [0, 1], [0, 1], [0, 1]] },
];

test('the objective equals plain TypeScript, value and gradient in the losses', async () => {
  for (const c of CASES) {
    const g = c.w[0]!.length;
    const l = new HostArray(Float32Array.from(LOSSES), [6]);
    const w = new HostArray(Float32Array.from(c.w.flat()), [6, g]);
    const f = (x: Tensor, ww: Tensor) => invariantObjective(x, ww, c.lambda);
    const value = compile(f);
    const gradient = compile((x: Tensor, ww: Tensor) =>
      grad((xx: Tensor) => f(xx, ww))(x) as Tensor);
    const got = ((await value(l, w)).data as Float32Array)[0]!;
    const want = objective(LOSSES, c.w, c.lambda);
    assert.ok(Math.abs(got - want) < 1e-5 * Math.max(1, Math.abs(want)),
      `${c.name}: ${got} vs ${want}`);
    const dg = (await gradient(l, w)).data as Float32Array;
    const h = 1e-4;
    for (let b = 0; b < 6; b++) {
      const at = (d: number) =>
        objective(LOSSES.map((v, i) => (i === b ? v + d : v)), c.w, c.lambda);
      const numeric = (at(h) - at(-h)) / (2 * h);
      assert.ok(Math.abs(dg[b]! - numeric) < 1e-4 * Math.max(1, Math.abs(numeric)),
        `${c.name}, d/dl[${b}]: engine ${dg[b]} vs ${numeric}`);
    }
    await Promise.all([value.dispose(), gradient.dispose()]);
  }
  // The variance term is there: lambda moves the value of a case with unequal means.
  assert.notEqual(objective(LOSSES, CASES[1]!.w, 0), objective(LOSSES, CASES[1]!.w, 2.5));
});

test('the max step: the split minimising J, as a direct scan over every cut computes it', () => {
  // 60 scores: 54 around 0, 6 around 2.5 (a planted minority), and a tie.
  const z = RngKey.fromSeed(11).normal(60);
  const v = Array.from(z, (x, i) => 0.5 * x + (i % 10 === 3 ? 2.5 : 0));
  v[5] = v[6]!;
  const sorted = [...v].sort((a, b) => a - b);
  const stats = (a: number[]) => {
    const m = a.reduce((s, x) => s + x, 0) / a.length;
    const variance = a.reduce((s, x) => s + (x - m) ** 2, 0) / a.length;
    return { pi: a.length / v.length, variance };
  };
  let best = { j: Infinity, t: NaN };
  for (let k = 2; k <= v.length - 2; k++) {
    if (sorted[k] === sorted[k - 1]) continue;
    const t = (sorted[k - 1]! + sorted[k]!) / 2;
    const j = [v.filter((x) => x <= t), v.filter((x) => x > t)].map(stats)
      .reduce((s, e) => s + e.pi * (Math.log(e.variance) - 2 * Math.log(e.pi)), 0);
    if (j < best.j) best = { j, t };
  }
  const s = twoGaussianSplit(v);
  assert.ok(Math.abs(s.criterion - best.j) < 1e-9, `J ${s.criterion} vs scan ${best.j}`);
  assert.equal(s.threshold, best.t);
  assert.equal(s.high, 6, 'the planted minority');
  // At least minSize on each side: with 10, the 6 cannot be split off alone.
  assert.ok(twoGaussianSplit(v, 10).high >= 10);
  assert.equal(twoGaussianSplit([2, 2, 2]).high, 0);
});

test('environments: per class, the 5% exceptions of a synthetic biased set are found', () => {
  // Two classes of 200, each 95% N(mu_c, 0.3^2) and 5% N(mu_c + 1.5, 0.3^2): the exceptions
  // (the bias-conflicting images) lose more; class 1 loses 3 more than class 0 throughout.
  const n = 400;
  const z = RngKey.fromSeed(12).normal(n);
  const labels = Int32Array.from({ length: n }, (_, i) => i % 2);
  const truth = Uint8Array.from({ length: n }, (_, i) => +(Math.floor(i / 2) % 20 === 7));
  const scores = Float64Array.from(z, (v, i) => 3 * labels[i]! + 1.5 * truth[i]! + 0.3 * v);
  const { env, splits } = inferEnvironments(scores, labels, 2);
  assert.deepEqual(Array.from(env), Array.from(truth));
  assert.deepEqual(splits.map((s) => s!.high), [10, 10]);
  // Pooled over classes the split finds the class instead: per class is what makes it work.
  // (Otsu's criterion, the between-environment variance of the mean score, splits class 1 at
  // 66 of 200 here: it favours balanced environments.)
  const pooled = inferEnvironments(scores, new Int32Array(n), 1).env;
  const a = environmentAgreement(pooled, truth);
  assert.ok(a.precision < 0.1 && a.size > 150, `pooled: ${JSON.stringify(a)}`);
});

test('environmentRows: B/G rows from every environment, members only, fixed by the key', () => {
  const env = Uint8Array.from({ length: 50 }, (_, i) => +(i % 10 === 3));
  const rows = environmentRows(env, 2, 16, RngKey.fromSeed(1));
  assert.deepEqual(Array.from(rows.subarray(0, 8), (i) => env[i]), new Array(8).fill(0));
  assert.deepEqual(Array.from(rows.subarray(8), (i) => env[i]), new Array(8).fill(1));
  assert.deepEqual(Array.from(environmentRows(env, 2, 16, RngKey.fromSeed(1))), Array.from(rows));
  assert.throws(() => environmentRows(env, 2, 15, RngKey.fromSeed(1)), /does not split/);
  assert.throws(() => environmentRows(new Uint8Array(4), 2, 4, RngKey.fromSeed(1)),
    /environment 1 has no images/);
});

/** n 8x8 images: class 0 a vertical stroke down column 3, class 1 a horizontal one along row 3
 *  (six pixels long, one wide), plus a little noise. */
function strokes(n: number): ImageDataset {
  const z = RngKey.fromSeed(1).fold(1).normal(n * 64);
  const labels = Int32Array.from({ length: n }, (_, i) => i % 2);
  const x = new Float32Array(n * 64).fill(-1);
  for (let i = 0; i < n; i++) {
    for (let j = 1; j < 7; j++) x[i * 64 + (labels[i] ? 3 * 8 + j : j * 8 + 3)] = 1;
  }
  return { images: new HostArray(x.map((v, j) => v + 0.05 * z[j]!), [n, 1, 8, 8]), labels,
    classNames: ['vertical', 'horizontal'] };
}

test('tiny end to end: InvDiff guidance lowers the bias of plain CFG', () =>
  withTempDir('invdiff', async (dir) => {
    // Class 0 bold (dilated: three pixels wide) with probability 0.95, class 1 with 0.05.
    const real = strokes(400);
    const biased = biasedDataset(real, splitBoldShares(2, 0.95), 0);
    const base = await trainedPipeline(join(dir, 'base'), { model: 'unet', size: 'tiny',
      objective: 'eps', weighting: 'uniform', minSnrGamma: 5, conditional: true, labelDropout: 0.1,
      batchSize: 16, steps: 300, lr: 3e-3, lrSchedule: 'cosine', warmupSteps: 20, gradClip: 1,
      emaDecay: 0.99, seed: 0, logEvery: 50, sampleEvery: 0, checkpointEvery: 0, cep: 'none',
      cepGamma: 1, repa: 0, repaEncoder: '', dtrBeta: 0.8 }, biased.data);
    const losses = await imageLosses(base, biased.data, { draws: 8, seed: 0 });
    const { env } = inferEnvironments(losses, biased.data.labels!, 2);
    const conflicting = Uint8Array.from(biased.bold, (b, i) =>
      +(b !== +(biased.data.labels![i] === 0)));
    const found = environmentAgreement(env, conflicting);
    assert.ok(found.precision >= 0.8 && found.recall >= 0.8,
      `environments ${JSON.stringify(found)}`);
    const module = await trainModule(base, biased.data, env, { size: 'tiny', steps: 150,
      batchSize: 16, lr: 3e-3, lambda: 1, labelDropout: 0.1, emaDecay: 0.99, seed: 0,
      out: join(dir, 'module'), checkpointEvery: 0, sampleEvery: 0 });
    // Ancestral DDPM: the deterministic samplers (DDIM, DPM-Solver++) turn about two in five of
    // this briefly trained model's samples into speckle, which the thickness measure misreads.
    const settings = { sampler: 'ddpm', steps: 50, guidance: 1.5, perClass: 50, seed: 5 };
    const threshold = realThreshold(real);
    const measure = async (p: typeof base) => {
      const s = await sampleArm(p, settings);
      return biasReport(boldFlags(s.images, threshold), s.labels, 2);
    };
    const cfg = await measure(base);
    const inv = await measure(invariantPipeline(base, module, 1));
    // Measured: CFG bold shares 0.70 / 0.18 (bias 0.26, correlation 0.52); InvDiff 0.30 /
    // 0.48 (bias 0.11, correlation -0.19). The training set itself: 0.95 / 0.05.
    assert.ok(cfg.boldShare[0]! > cfg.boldShare[1]! + 0.3,
      `CFG follows the bias: ${cfg.boldShare}`);
    assert.ok(inv.bias < cfg.bias - 0.08, `bias: CFG ${cfg.bias}, InvDiff ${inv.bias}`);
    assert.ok(Math.abs(inv.correlation) < Math.abs(cfg.correlation) - 0.2,
      `correlation: CFG ${cfg.correlation}, InvDiff ${inv.correlation}`);
  }));
