/** DiffDis (methods/diffdis.ts): the task split and its coefficients, the loss against a host
 *  computation, the classification rule, and a tiny end-to-end run whose discriminative path
 *  classifies held-out images of two classes. */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import type { Batch } from '../diffusion/denoiser.js';
import { trainingScheduler } from '../diffusion/training.js';
import { stateDict } from '../nn/module.js';
import {
  classifyDiffDis, loadDiffDisPipeline, trainDiffDis, type DiffDisTrainOptions,
} from '../pipelines/diffdis.js';
import { agreement } from '../pipelines/multi-task.js';
import {
  classifyByDenoising, classTable, diffdisLoss, diffdisTerms, nearestClass, taskCoefficients,
  taskRows, type DiffDisBatch,
} from './diffdis.js';
import type { JointDenoiser } from './multi-task.js';
import { withTempDir } from '../../test/support/temp-dir.js';
import { twoClassImages } from '../../test/support/tiny-images.js';

const f32 = (data: Float32Array, shape: number[]) =>
  new HostArray<'float32'>(data, shape, 'float32');

test('taskRows: the first round(n f) rows discriminate, both tasks kept when 0 < f < 1', () => {
  assert.deepEqual([...taskRows(5, 0.4)], [1, 1, 0, 0, 0]);
  assert.deepEqual([...taskRows(4, 0.5)], [1, 1, 0, 0]);
  assert.deepEqual([...taskRows(4, 0.01)], [1, 0, 0, 0], 'at least one discriminative row');
  assert.deepEqual([...taskRows(4, 0.99)], [1, 1, 1, 0], 'at least one generative row');
  assert.deepEqual([...taskRows(3, 0)], [0, 0, 0]);
  assert.deepEqual([...taskRows(3, 1)], [1, 1, 1]);
  assert.throws(() => taskRows(3, 1.5), /discFraction must be in \[0, 1\], got 1.5/);
});

test('taskCoefficients: the noised modality at the row\'s point, the other clean, and each ' +
  'term a mean over its own rows', () => {
  const pts = { t: Float32Array.from([100, 500, 900]), alpha: Float32Array.from([0.9, 0.5, 0.1]),
    sigma: Float32Array.from([0.1, 0.5, 0.9]) };
  const c = taskCoefficients(pts, Uint8Array.from([1, 0, 0]));
  const near = (a: Float32Array, b: number[]) =>
    assert.deepEqual([...a].map((v) => Math.round(v * 1e6) / 1e6), b);
  near(c.imageAlpha, [1, 0.5, 0.1]);
  near(c.imageSigma, [0, 0.5, 0.9]);
  near(c.labelAlpha, [0.9, 1, 1]);
  near(c.labelSigma, [0.1, 0, 0]);
  near(c.imageWeight, [0, 0.5, 0.5]);
  near(c.labelWeight, [1, 0, 0]);
});

/** Rows of a [K * E] array of norm `norm`, up to float32. */
function assertRowNorms(table: ArrayLike<number>, dim: number, norm: number): void {
  for (let k = 0; k < table.length / dim; k++) {
    let q = 0;
    for (let j = 0; j < dim; j++) q += table[k * dim + j]! ** 2;
    assert.ok(Math.abs(Math.sqrt(q) - norm) < 1e-5 * norm, `row ${k}: norm ${Math.sqrt(q)}`);
  }
}

test('diffdisTerms and diffdisLoss equal a host computation of the three terms', async () => {
  const [n, c, h, w, K, E] = [4, 1, 2, 2, 3, 5];
  const per = c * h * w;
  const key = RngKey.fromSeed(17);
  const raw = key.fold(0).normal(K * E);
  const scale = 0.7;
  const x0 = key.fold(1).normal(n * per);
  const ex = key.fold(2).normal(n * per);
  const ey = key.fold(3).normal(n * E);
  const labels = [2, 0, 1, 2];
  const onehot = new Float32Array(n * K);
  labels.forEach((k, i) => (onehot[i * K + k] = 1));
  const s = Float32Array.from([0.2, 0.6, 0.3, 0.8]);
  const t = s.map((v) => 1000 * v);
  const disc = taskRows(n, 0.5); // rows 0, 1 discriminate; 2, 3 generate
  const co = taskCoefficients({ t, alpha: s.map((v) => 1 - v), sigma: s }, disc);
  const [temperature, itaWeight, denoiseWeight] = [0.3, 0.8, 1.7];
  // A stand-in model with a known output: u_x = 0.5 x_in, u_y = 2 y_in + 0.001 t.
  const predict = (x: Tensor, y: Tensor, tt: Tensor) => ({ image: ops.mul(x, 0.5),
    label: ops.add(ops.mul(y, 2), ops.mul(ops.reshape(tt, [n, 1]), 0.001)) });
  const f = compile((wRaw: Tensor, b: DiffDisBatch<Tensor>) => {
    const table = classTable(wRaw, scale);
    const terms = diffdisTerms(predict, table, b, temperature);
    return { ...terms, table,
      loss: diffdisLoss(predict, table, b, { temperature, itaWeight, denoiseWeight }) };
  });
  const col = (v: Float32Array) => f32(v, [n]);
  const got = await f(f32(raw, [K, E]), { x0: f32(x0, [n, c, h, w]), onehot: f32(onehot, [n, K]),
    epsImage: f32(ex, [n, c, h, w]), epsLabel: f32(ey, [n, E]), t: col(t),
    imageAlpha: col(co.imageAlpha), imageSigma: col(co.imageSigma),
    labelAlpha: col(co.labelAlpha), labelSigma: col(co.labelSigma),
    imageWeight: col(co.imageWeight), labelWeight: col(co.labelWeight) });
  await f.dispose();

  // The table: raw rows rescaled to norm scale sqrt(E), directions kept.
  const table = got.table.data as Float32Array;
  assertRowNorms(table, E, scale * Math.sqrt(E));
  for (let k = 0; k < K; k++) {
    const ratio = table[k * E]! / raw[k * E]!;
    for (let j = 1; j < E; j++) {
      assert.ok(Math.abs(table[k * E + j]! - ratio * raw[k * E + j]!) < 1e-5, `row ${k}`);
    }
  }
  // The three terms, by the formulas of the header, from the rows' tasks alone.
  const cos = (a: number[], b: number[]) => {
    const dot = a.reduce((q, v, j) => q + v * b[j]!, 0);
    return dot / Math.hypot(...a) / Math.hypot(...b);
  };
  const rows = Array.from({ length: K }, (_, k) => Array.from(table.subarray(k * E, (k + 1) * E)));
  let [image, denoise, ita] = [0, 0, 0];
  const nDisc = disc.reduce((a, v) => a + v, 0);
  for (let i = 0; i < n; i++) {
    const si = s[i]!;
    if (!disc[i]) {
      let err = 0;
      for (let j = 0; j < per; j++) {
        const q = i * per + j;
        const xt = (1 - si) * x0[q]! + si * ex[q]!;
        err += (0.5 * xt - (ex[q]! - x0[q]!)) ** 2;
      }
      image += err / per / (n - nDisc);
    } else {
      const e0 = rows[labels[i]!]!;
      const yt = e0.map((v, j) => (1 - si) * v + si * ey[i * E + j]!);
      const u = yt.map((v) => 2 * v + 0.001 * t[i]!);
      denoise += u.reduce((a, v, j) => a + (v - (ey[i * E + j]! - e0[j]!)) ** 2, 0) / E / nDisc;
      const e0Hat = yt.map((v, j) => v - si * u[j]!);
      const logits = rows.map((r) => cos(e0Hat, r) / temperature);
      const lse = Math.log(logits.reduce((a, v) => a + Math.exp(v), 0));
      ita += (lse - logits[labels[i]!]!) / nDisc;
    }
  }
  const close = (name: string, v: number, want: number) =>
    assert.ok(Math.abs(v - want) < 1e-4 * Math.max(1, Math.abs(want)),
      `${name} ${v}, host ${want}`);
  close('image', got.image.data[0] as number, image);
  close('denoise', got.denoise.data[0] as number, denoise);
  close('ita', got.ita.data[0] as number, ita);
  close('loss', got.loss.data[0] as number, image + denoiseWeight * denoise + itaWeight * ita);
});

test('nearestClass takes the largest cosine, not the smallest distance', () => {
  const table = [10, 0, /**/ 0, 1, /**/ -1, -1];
  // (1, 0.5) is nearer to (0, 1) in distance (1.1 against 9.0) but nearer to (10, 0) in angle.
  assert.deepEqual([...nearestClass([1, 0.5, /**/ 0.1, 5, /**/ -3, -2.5], table, 2)], [0, 1, 2]);
  assert.throws(() => nearestClass([1, 2, 3], table, 2), /not rows of 2/);
});

test('classifyByDenoising: the exact velocity of each class row, given the image, ends on ' +
  'that row and names its class', async () => {
  const [K, E, n] = [3, 4, 6];
  const table = RngKey.fromSeed(5).normal(K * E);
  const truth = [0, 1, 2, 2, 1, 0];
  // "Images" [n, 1, 1, 1] holding their class; the net's label velocity is the flow velocity
  // of a point mass at the class row, u = (e_s - e0) / s, and it sees nothing else.
  const images: Batch = { data: Float32Array.from(truth), shape: [n, 1, 1, 1] };
  const seen: number[] = [];
  const net: JointDenoiser = {
    async predict(image, label, t) {
      seen.push(t[0]!);
      const u = new Float32Array(label.data.length);
      for (let i = 0; i < n; i++) {
        const [k, s] = [image.data[i]!, t[i]! / 1000];
        for (let j = 0; j < E; j++) u[i * E + j] = (label.data[i * E + j]! - table[k * E + j]!) / s;
      }
      return { image, label: { data: u, shape: label.shape } };
    },
  };
  const start = f32(RngKey.fromSeed(6).normal(n * E), [n, E]);
  const r = await classifyByDenoising(net, images, start, table, trainingScheduler('flow'), 4);
  assert.equal(seen.length, 4, 'one model call per step');
  assert.deepEqual([...r.labels], truth);
  for (let q = 0; q < n * E; q++) {
    const want = table[truth[Math.floor(q / E)]! * E + (q % E)]!;
    assert.ok(Math.abs(r.embeddings.data[q]! - want) < 1e-4, `entry ${q}`);
  }
});

// ---- end to end ----

const tinyOptions = (out: string, over: Partial<DiffDisTrainOptions> = {}):
  DiffDisTrainOptions => ({
  size: 'tiny', embedDim: 8, labelScale: 1, discFraction: 0.5, itaWeight: 1, denoiseWeight: 1,
  temperature: 0.1, batchSize: 16, steps: 200, lr: 2e-3, lrSchedule: 'constant', warmupSteps: 5,
  gradClip: 1, emaDecay: 0.9, seed: 3, out, logEvery: 10, sampleEvery: 0, checkpointEvery: 0,
  ...over,
});

/** Accuracy of a run's saved model on the training images with fresh noise on top (none of
 *  them seen), and how many it calls class 1. */
async function heldOutAccuracy(run: string): Promise<{ accuracy: number; ones: number }> {
  const data = twoClassImages();
  const z = RngKey.fromSeed(99).normal(data.images.size);
  const images = f32(Float32Array.from(data.images.data, (v, q) => v + 0.2 * z[q]!),
    [...data.images.shape]);
  const c = await classifyDiffDis(await loadDiffDisPipeline(run), images, { steps: 5, seed: 1 });
  return { accuracy: agreement(c.labels, data.labels!),
    ones: c.labels.reduce((a, v) => a + v, 0) };
}

test('a tiny DiffDis run on two classes: its saved model classifies fresh images of both ' +
  'classes by denoising the class embedding; without the discriminative task, at chance',
() => withTempDir('diffdis', async (dir) => {
  const data = twoClassImages();
  const out = join(dir, 'run');
  const r = await trainDiffDis(tinyOptions(out), data, false);
  assert.equal(r.losses.length, 200);
  const config = JSON.parse(await readFile(join(out, 'model', 'transformer', 'config.json'),
    'utf8'));
  assert.equal(config._class_name, 'DiffDisModel');
  assert.deepEqual([config.label_dim, config.num_classes], [8, 2]);
  const p = await loadDiffDisPipeline(out);
  assert.deepEqual(stateDict(p.params), stateDict(r.state.ema!), 'model/ holds the EMA weights');
  const trained = await heldOutAccuracy(out);
  assert.ok(trained.accuracy >= 0.85, `held-out accuracy ${trained.accuracy} (chance 0.5)`);
  assert.ok(trained.ones > 0 && trained.ones < 48, 'both classes are named');
  // The same run with every row generating: the label head never trained, one class for all.
  const genOnly = join(dir, 'gen-only');
  await trainDiffDis(tinyOptions(genOnly, { discFraction: 0 }), data, false);
  const control = await heldOutAccuracy(genOnly);
  assert.ok(control.accuracy <= 0.6, `generation only: ${control.accuracy}`);
}));

test('a DiffDis run interrupted and resumed equals an uninterrupted one', () =>
  withTempDir('diffdis-resume', async (dir) => {
    const data = twoClassImages();
    const base = (out: string) => tinyOptions(join(dir, out), { steps: 5, checkpointEvery: 2 });
    const full = await trainDiffDis(base('a'), data, false);
    const stop = new AbortController();
    const first = await trainDiffDis(base('b'), data, false,
      { signal: stop.signal, onStep: (s) => s.step === 3 && stop.abort() });
    assert.equal(first.state.step, 3);
    await assert.rejects(trainDiffDis({ ...base('b'), discFraction: 0.25 }, data, true),
      /discFraction = 0.5, this run asks for 0.25/);
    const rest = await trainDiffDis(base('b'), data, true);
    assert.deepEqual([...first.losses, ...rest.losses], full.losses);
    assert.deepEqual(stateDict(rest.state.ema!), stateDict(full.state.ema!));
  }));
