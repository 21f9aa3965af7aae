/** Diffusion Classifier: the official timestep grid and round subsets, errors against a
 *  plain-TypeScript reference, shared noise, elimination, and the exact denoiser of a
 *  class-conditional Gaussian classifying its own samples. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RngKey } from '../engine/random/philox.js';
import {
  checkRounds, classifyBatch, DIFFUSION_CLASSIFIER_DEFAULTS as D, philoxNoise, roundIndices,
  rowError, rowsPerImage, timestepGrid, type EpsModel, type NoiseLevels,
} from './diffusion-classifier.js';

/** range(start, stop, step) as Python writes it. */
const pyRange = (start: number, stop: number, step: number): number[] => {
  const out = [];
  for (let i = start; i < stop; i += step) out.push(i);
  return out;
};

/** A linear-beta DDPM table, T = 1000 (the official code's SD scheduler has its own betas;
 *  the grid does not depend on them). */
const LEVELS: NoiseLevels = (() => {
  const T = 1000;
  const abar: number[] = [];
  let a = 1;
  for (let t = 0; t < T; t++) {
    a *= 1 - (1e-4 + ((0.02 - 1e-4) * t) / (T - 1));
    abar.push(a);
  }
  return { T, coefficients: (t) => ({ alpha: Math.sqrt(abar[t]!), sigma: Math.sqrt(1 - abar[t]!) }) };
})();

test('timestepGrid and roundIndices follow eval_prob_adaptive.py', () => {
  assert.deepEqual(timestepGrid(1000, 50), pyRange(10, 1000, 20));
  assert.deepEqual(timestepGrid(1000, 10), pyRange(50, 1000, 100));
  assert.deepEqual(timestepGrid(1000, 1), [500]);
  assert.deepEqual(timestepGrid(1000, 300).length, 300); // stride 3 from 1: [:300] cuts 333
  assert.equal(timestepGrid(1000, 300).at(-1), 1 + 3 * 299);
  // Round 1 of [10, 50]: grid[50 // 10 // 2 :: 50 // 10][:10], the 10-point grid's timesteps.
  const grid = timestepGrid(1000, 50);
  const first = roundIndices(50, 10, new Set());
  assert.deepEqual(first, pyRange(2, 50, 5));
  assert.deepEqual(first.map((i) => grid[i]), timestepGrid(1000, 10));
  // Round 2 scores the other 40.
  const second = roundIndices(50, 50, new Set(first));
  assert.equal(second.length, 40);
  assert.ok(second.every((i) => !first.includes(i)));
  assert.throws(() => timestepGrid(1000, 0), /samples is not an integer in \[1, 1000\]/);
});

test('rowsPerImage: 10 classes x 10 points, then 3 classes x 40 new points', () => {
  assert.equal(rowsPerImage(10, 1000, D), 10 * 10 + 3 * 40);
  assert.equal(rowsPerImage(10, 1000, { ...D, samples: [5], keep: [1], trials: 4 }), 10 * 5 * 4);
});

test('checkRounds names the bad entry', () => {
  assert.throws(() => checkRounds({ ...D, keep: [3] }, 10, 1000), /one entry per round/);
  assert.throws(() => checkRounds({ ...D, keep: [3, 2] }, 10, 1000), /last round must keep 1/);
  assert.throws(() => checkRounds({ ...D, keep: [12, 1] }, 10, 1000), /keep\[0\] = 12 .* \[1, 10\]/);
  assert.throws(() => checkRounds({ ...D, samples: [10, 2000] }, 10, 1000), /\[1, 1000\], got 2000/);
  assert.throws(() => checkRounds({ ...D, trials: 0 }, 10, 1000), /trials/);
});

test('rowError: L2, L1 and Huber (delta 1) means over a row', () => {
  const a = Float32Array.from([0, 0, 0, 9, 9]);
  const b = Float32Array.from([0.5, -2, 0, 9, 9]);
  assert.equal(rowError(a, b, 0, 3, 'l2'), (0.25 + 4) / 3);
  assert.equal(rowError(a, b, 0, 3, 'l1'), 2.5 / 3);
  assert.equal(rowError(a, b, 0, 3, 'huber'), (0.125 + 1.5) / 3);
  assert.equal(rowError(a, b, 3, 2, 'l2'), 0);
});

/** A model whose prediction for class c is x_t * (1 + c) / 10: its rows are recorded. */
function recordingModel(calls: { x: Float32Array; t: Float64Array; y: Int32Array }[]): EpsModel {
  return async (x, t, y) => {
    calls.push({ x: x.slice(), t: t.slice(), y: y.slice() });
    return Float32Array.from(x, (v, i) => v * (1 + y[Math.floor(i / (x.length / t.length))]!) / 10);
  };
}

test('one round: every class scored on the same (t, eps); errors equal a plain reference', async () => {
  const per = 6;
  const x0 = RngKey.fromSeed(1).normal(2 * per);
  const o = { ...D, samples: [4], keep: [1], trials: 2 };
  const noise = philoxNoise(7, 0, per);
  const calls: { x: Float32Array; t: Float64Array; y: Int32Array }[] = [];
  const r = await classifyBatch(recordingModel(calls), LEVELS, x0, per, 3, o, noise);
  assert.equal(calls.length, 1);
  assert.equal(r.rows, 2 * 3 * 4 * 2);
  const grid = timestepGrid(1000, 4);
  for (let b = 0; b < 2; b++) {
    const expected = [0, 1, 2].map((c) => {
      let sum = 0;
      for (let g = 0; g < 4; g++) {
        for (let k = 0; k < 2; k++) {
          const e = noise(b, g * 2 + k);
          const { alpha, sigma } = LEVELS.coefficients(grid[g]!);
          let s = 0;
          for (let i = 0; i < per; i++) {
            const xt = Math.fround(alpha * x0[b * per + i]! + sigma * e[i]!);
            const d = e[i]! - Math.fround(xt * (1 + c) / 10);
            s += d * d;
          }
          sum += s / per;
        }
      }
      return sum / 8;
    });
    expected.forEach((v, c) => assert.ok(Math.abs(r.images[b]!.meanError[c]! - v) < 1e-5 * v,
      `image ${b} class ${c}: ${r.images[b]!.meanError[c]} vs ${v}`));
    const best = expected.indexOf(Math.min(...expected));
    assert.equal(r.images[b]!.prediction, best);
  }
  // Shared noise: rows of classes 0 and 1 at the same (image, t, trial) have the same x_t.
  const { x } = calls[0]!;
  const row = (b: number, c: number, j: number) => x.subarray(((b * 3 + c) * 8 + j) * per,
    ((b * 3 + c) * 8 + j + 1) * per);
  assert.deepEqual(row(1, 0, 5), row(1, 2, 5));
  assert.notDeepEqual(row(1, 0, 5), row(1, 0, 4));
  const indep: typeof calls = [];
  await classifyBatch(recordingModel(indep), LEVELS, x0, per, 3, { ...o, sharedNoise: false }, noise);
  const x2 = indep[0]!.x;
  assert.notDeepEqual(x2.subarray(0, per), x2.subarray(8 * per, 9 * per));
});

test('rounds: eliminated classes keep their round-1 count; survivors see every point', async () => {
  const per = 4;
  // Class c's error is (c - 2)^2 + 1 whatever x: class 2 is best, then 1 and 3.
  const model: EpsModel = async (x, t, y) => {
    const out = new Float32Array(x.length);
    for (let j = 0; j < t.length; j++) {
      // eps + sqrt((c-2)^2 + 1) in every pixel, recovered from x_t = alpha x0 + sigma eps with x0 = 0.
      const { sigma } = LEVELS.coefficients(t[j]!);
      for (let i = 0; i < per; i++) out[j * per + i] = x[j * per + i]! / sigma + Math.sqrt((y[j]! - 2) ** 2 + 1);
    }
    return out;
  };
  const r = await classifyBatch(model, LEVELS, new Float32Array(per), per, 5,
    { ...D, samples: [10, 50], keep: [3, 1] }, philoxNoise(0, 0, per));
  const v = r.images[0]!;
  assert.equal(v.prediction, 2);
  assert.deepEqual([...v.trials], [10, 50, 50, 50, 10]);
  v.meanError.forEach((e, c) => assert.ok(Math.abs(e - ((c - 2) ** 2 + 1)) < 1e-4, `class ${c}: ${e}`));
  assert.equal(r.rows, 5 * 10 + 3 * 40);
});

test('the exact denoiser of a class-conditional Gaussian classifies its own samples', async () => {
  // Class c: x0 ~ N(mu_c, s^2 I); E[eps | x_t, c] = sigma (x_t - alpha mu_c) / (alpha^2 s^2 + sigma^2).
  const [per, classes, s] = [16, 4, 0.5];
  const key = RngKey.fromSeed(3);
  const mu = Array.from({ length: classes }, (_, c) => key.fold(c).normal(per));
  const exact: EpsModel = async (x, t, y) => {
    const out = new Float32Array(x.length);
    for (let j = 0; j < t.length; j++) {
      const { alpha, sigma } = LEVELS.coefficients(t[j]!);
      const k = sigma / (alpha * alpha * s * s + sigma * sigma);
      for (let i = 0; i < per; i++) out[j * per + i] = k * (x[j * per + i]! - alpha * mu[y[j]!]![i]!);
    }
    return out;
  };
  const n = 24;
  const labels = Array.from({ length: n }, (_, i) => i % classes);
  const z = key.fold(99).normal(n * per);
  const x0 = Float32Array.from(z, (v, i) => mu[labels[Math.floor(i / per)]!]![i % per]! + s * v);
  const r = await classifyBatch(exact, LEVELS, x0, per, classes, { ...D, samples: [10, 20], keep: [2, 1] },
    philoxNoise(5, 0, per));
  assert.deepEqual(r.images.map((v) => v.prediction), labels);
});
