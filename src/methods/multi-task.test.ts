/** Multi-task diffusion (methods/multi-task.ts): the joint loss against a host reference, the
 *  replacement step, and joint / conditional sampling with the exact denoiser of a two-class
 *  image-label mixture. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { GaussianMixture } from '../data/analytic/mixture.js';
import type { Batch } from '../diffusion/denoiser.js';
import { rectifiedFlow } from '../diffusion/process.js';
import { samplerSchedule } from '../diffusion/sampling.js';
import { trainingScheduler } from '../diffusion/training.js';
import {
  argmaxRows, jointFlowLoss, labelVectors, renoise, sampleJointFlow, type JointDenoiser,
  type JointState,
  type JointStepRecord, type JointTrainingBatch,
} from './multi-task.js';

const f32 = (data: Float32Array, shape: number[]) =>
  new HostArray<'float32'>(data, shape, 'float32');
const flowSchedule = (steps: number) =>
  samplerSchedule('flow-euler', trainingScheduler('flow'), steps);

test('labelVectors and argmaxRows: +scale at the class, -scale elsewhere, and back', () => {
  const v = labelVectors([2, 0], 3, 0.5);
  assert.deepEqual([...v], [-0.5, -0.5, 0.5, 0.5, -0.5, -0.5]);
  assert.deepEqual([...argmaxRows(v, 3)], [2, 0]);
  assert.throws(() => labelVectors([3], 3), /label 3 of row 0 is not a class in \[0, 3\)/);
});

test('jointFlowLoss equals a host computation of both flow-matching terms', async () => {
  const [n, c, h, w, k] = [3, 1, 2, 2, 4];
  const key = RngKey.fromSeed(11);
  const arr = (shape: number[], f: Float32Array) => f32(f, shape);
  const x0 = key.fold(0).normal(n * c * h * w);
  const ex = key.fold(1).normal(x0.length);
  const y0 = labelVectors([1, 3, 0], k);
  const ey = key.fold(2).normal(y0.length);
  const s = Float32Array.from([0.1, 0.5, 0.9]);
  const alpha = s.map((v) => 1 - v);
  const t = s.map((v) => 1000 * v);
  const labelWeight = 0.7;
  // A stand-in model with a known output: u_x = 0.5 x_t, u_y = 2 y_t + 0.001 t.
  const predict = (x: Tensor, y: Tensor, tt: Tensor) => ({ image: ops.mul(x, 0.5),
    label: ops.add(ops.mul(y, 2), ops.mul(ops.reshape(tt, [n, 1]), 0.001)) });
  const f = compile((b: JointTrainingBatch<Tensor>) => jointFlowLoss(predict, b, labelWeight));
  const got = await f({ x0: arr([n, c, h, w], x0), epsImage: arr([n, c, h, w], ex),
    y0: arr([n, k], y0), epsLabel: arr([n, k], ey), t: arr([n], t), alpha: arr([n], alpha),
    sigma: arr([n], s) });
  await f.dispose();
  let want = 0;
  const per = c * h * w;
  for (let i = 0; i < n; i++) {
    let li = 0;
    for (let j = 0; j < per; j++) {
      const q = i * per + j;
      const xt = alpha[i]! * x0[q]! + s[i]! * ex[q]!;
      li += (0.5 * xt - (ex[q]! - x0[q]!)) ** 2;
    }
    let ll = 0;
    for (let j = 0; j < k; j++) {
      const q = i * k + j;
      const yt = alpha[i]! * y0[q]! + s[i]! * ey[q]!;
      ll += (2 * yt + 0.001 * t[i]! - (ey[q]! - y0[q]!)) ** 2;
    }
    want += li / per + labelWeight * ll / k;
  }
  want /= n;
  const value = got.data[0] as number;
  assert.ok(Math.abs(value - want) < 1e-5 * Math.max(1, want), `loss ${value}, reference ${want}`);
});

test('renoise takes a flow state at s\' to the forward marginal at s: mean (1 - s) x0, ' +
  'sd s', () => {
  const n = 200_000;
  const [x0, from, to] = [0.8, 0.3, 0.7];
  const key = RngKey.fromSeed(6);
  const eps = key.fold(0).normal(n);
  const at = Float32Array.from(eps, (e) => (1 - from) * x0 + from * e);
  const out = Array.from(renoise(at, key.fold(1).normal(n), from, to));
  const mean = out.reduce((a, v) => a + v, 0) / n;
  const sd = Math.sqrt(out.reduce((a, v) => a + (v - mean) ** 2, 0) / n);
  assert.ok(Math.abs(mean - (1 - to) * x0) < 0.01, `mean ${mean}`);
  assert.ok(Math.abs(sd - to) < 0.01, `sd ${sd}`);
});

/** A denoiser that returns fixed pseudo-random velocities and records what it was called on. */
function spyDenoiser(): JointDenoiser & { calls: JointStepRecord['input'][] } {
  const calls: JointState[] = [];
  return {
    calls,
    async predict(image: Batch, label: Batch, t: Float64Array): Promise<JointState> {
      calls.push({ image: { data: image.data.slice(), shape: image.shape },
        label: { data: label.data.slice(), shape: label.shape } });
      const k = RngKey.fromSeed(Math.round(t[0]!));
      return { image: { data: k.fold(0).normal(image.data.length), shape: image.shape },
        label: { data: k.fold(1).normal(label.data.length), shape: label.shape } };
    },
  };
}

test('replacement holds the known modality at (1 - s) x0 + s eps at every step and at x0 at ' +
  'the end, and generates the other', async () => {
  const key = RngKey.fromSeed(4);
  const start: JointState = {
    image: f32(key.fold(0).normal(2 * 4), [2, 1, 2, 2]),
    label: f32(key.fold(1).normal(2 * 3), [2, 3]),
  };
  const schedule = flowSchedule(6);
  for (const modality of ['image', 'label'] as const) {
    const value = modality === 'image' ? f32(key.fold(2).normal(8), [2, 1, 2, 2])
      : f32(labelVectors([2, 1], 3), [2, 3]);
    const spy = spyDenoiser();
    const out = await sampleJointFlow(spy, start, schedule, { known: { modality, value } });
    assert.equal(spy.calls.length, 6);
    const eps = start[modality].data;
    spy.calls.forEach((call, i) => {
      const s = schedule.sigmas[i]!;
      const seen = call[modality].data;
      for (let j = 0; j < seen.length; j++) {
        // float32: the forward value alpha x0 + sigma eps, rounded once per operation
        const f = Math.fround;
        const want = f(f((1 - s) * value.data[j]!) + f(s * eps[j]!));
        assert.equal(seen[j], want, `${modality} entry ${j} at step ${i} (s = ${s})`);
      }
    });
    assert.deepEqual([...out[modality].data], [...value.data], 'the known value at the end');
    const other = modality === 'image' ? 'label' : 'image';
    assert.notDeepEqual([...out[other].data], [...start[other].data], 'the other one moved');
  }
});

// ---- an exact two-class image-label problem ----

const IMG = 16; // "images" [1, 4, 4]
const K = 2;
const SEP = 1; // class means +-SEP in every pixel
const VAR = 0.25; // per-pixel variance within a class: classes 4 standard deviations apart

/** Pairs (image, label): class k has image N(+-SEP, VAR I) and label labelVectors(k, scale)
 *  exactly. */
function pairMixture(scale: number): GaussianMixture {
  const D = IMG + K;
  const means = [0, 1].map((k) => [...new Array<number>(IMG).fill(k ? -SEP : SEP),
    ...labelVectors([k], K, scale)]);
  const basis = Array.from({ length: D * IMG }, (_, q) =>
    (Math.floor(q / IMG) === q % IMG ? 1 : 0)); // [D, IMG]: the image coordinates
  return GaussianMixture.lowRank([0.5, 0.5], means, [basis, basis], [IMG, IMG], [VAR, VAR]);
}

/** The mixture's optimal flow velocity, split into the two modalities. */
function exactJointDenoiser(m: GaussianMixture): JointDenoiser {
  const d = m.denoiser(rectifiedFlow({ timeScale: 1000 }), 'flow');
  const D = IMG + K;
  return {
    async predict(image, label, t) {
      const rows = t.length;
      const z = new Float64Array(rows * D);
      for (let i = 0; i < rows; i++) {
        z.set(image.data.subarray(i * IMG, (i + 1) * IMG), i * D);
        z.set(label.data.subarray(i * K, (i + 1) * K), i * D + IMG);
      }
      const u = (await d.predict({ data: z, shape: [rows, D] }, t)).data;
      const ui = new Float32Array(rows * IMG);
      const ul = new Float32Array(rows * K);
      for (let i = 0; i < rows; i++) {
        ui.set(u.subarray(i * D, i * D + IMG), i * IMG);
        ul.set(u.subarray(i * D + IMG, (i + 1) * D), i * K);
      }
      return { image: { data: ui, shape: image.shape }, label: { data: ul, shape: label.shape } };
    },
  };
}

/** The class whose image mean is nearer (the Bayes classifier of equal-weight classes). */
const nearestClass = (img: ArrayLike<number>, i: number): number => {
  let dot = 0;
  for (let j = 0; j < IMG; j++) dot += img[i * IMG + j]!;
  return dot >= 0 ? 0 : 1;
};

const ROWS = 40;
const SHAPE = [ROWS, 1, 4, 4];

function noise(seed: number): JointState {
  const key = RngKey.fromSeed(seed);
  return { image: f32(key.fold(0).normal(ROWS * IMG), SHAPE),
    label: f32(key.fold(1).normal(ROWS * K), [ROWS, K]) };
}

const resampling = (tries: number, seed: number) =>
  ({ resample: tries, noise: (n: number, k: number) => RngKey.fromSeed(seed).fold(k).normal(n) });

/** Held-out pairs of the mixture, and a check that the Bayes classifier gets them all. */
function heldOut(m: GaussianMixture): { images: HostArray<'float32'>; labels: Int32Array } {
  const draw = m.sample(ROWS, RngKey.fromSeed(21));
  const images = f32(Float32Array.from({ length: ROWS * IMG }, (_, q) =>
    draw.x[Math.floor(q / IMG) * (IMG + K) + (q % IMG)]!), SHAPE);
  for (let i = 0; i < ROWS; i++) assert.equal(nearestClass(images.data, i), draw.labels[i]);
  return { images, labels: draw.labels };
}

/** Image-given-label samples: the fraction of the asked class. */
async function imageGivenLabel(m: GaussianMixture, scale: number, tries: number): Promise<number> {
  const asked = Int32Array.from({ length: ROWS }, (_, i) => i % 2);
  const out = await sampleJointFlow(exactJointDenoiser(m), noise(9), flowSchedule(20), {
    known: { modality: 'label', value: f32(labelVectors(asked, K, scale), [ROWS, K]) },
    ...resampling(tries, 3) });
  return asked.filter((k, i) => nearestClass(out.image.data, i) === k).length / ROWS;
}

test('label-given-image sampling with the exact denoiser classifies held-out pairs', async () => {
  for (const [scale, tries] of [[1, 1], [2, 10]] as const) {
    const m = pairMixture(scale);
    const { images, labels } = heldOut(m);
    const out = await sampleJointFlow(exactJointDenoiser(m), noise(5), flowSchedule(20),
      { known: { modality: 'image', value: images }, ...resampling(tries, 4) });
    assert.deepEqual([...argmaxRows(out.label.data, K)], [...labels], `scale ${scale}`);
    // The generated label is the class's label vector itself, not just on its side.
    const want = labelVectors(labels, K, scale);
    const worst = Array.from(out.label.data)
      .reduce((a, v, q) => Math.max(a, Math.abs(v - want[q]!)), 0);
    assert.ok(worst < 0.05 * scale, `scale ${scale}: largest label error ${worst}`);
    assert.deepEqual([...out.image.data], [...images.data]);
  }
});

test('image-given-label: plain replacement follows the stronger modality (the image), ' +
  'resampling with a larger label scale gives the asked class', async () => {
  // With label scale 1 the 16 noisy pixels settle the class before the replaced label
  // is legible: the asked class comes out little more often than chance.
  const plain = await imageGivenLabel(pairMixture(1), 1, 1);
  assert.ok(plain < 0.8, `plain replacement, scale 1: ${plain}`);
  assert.equal(await imageGivenLabel(pairMixture(2), 2, 10), 1);
});

test('joint sampling with the exact denoiser gives coherent pairs of both classes', async () => {
  const out = await sampleJointFlow(exactJointDenoiser(pairMixture(1)), noise(8), flowSchedule(20));
  const labels = argmaxRows(out.label.data, K);
  for (let i = 0; i < ROWS; i++) {
    assert.equal(nearestClass(out.image.data, i), labels[i], `pair ${i}`);
  }
  const ones = labels.reduce((a, v) => a + v, 0);
  assert.ok(ones > 8 && ones < 32, `${ones} of ${ROWS} pairs are of class 1`);
});
