/** LDFaceNet's swap energy (methods/ldfacenet.ts) against plain TypeScript, its gradient
 *  through the engine against finite differences, and a guided swap on a tiny latent
 *  pipeline (pipelines/ldfacenet.ts). */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { grad } from '../engine/autodiff.js';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { subset } from '../data/dataset.js';
import { CLASSIFIER_PRESETS, DiffuseClassifier } from '../models/classifier.js';
import { withTempDir } from '../../test/support/temp-dir.js';
import { twoClassImages } from '../../test/support/tiny-images.js';
import { swapDigits } from '../pipelines/ldfacenet.js';
import { featureExtractor, metricClassifier, type MetricClassifier } from '../pipelines/metrics.js';
import { loadPipeline } from '../pipelines/sample.js';
import { train, type TrainOptions } from '../pipelines/train.js';
import { trainVae } from '../pipelines/vae.js';
import { keepMask, rowCosines, swapEnergy, type SwapEnergyOptions } from './ldfacenet.js';

/** A tiny identity network for 8x8 images (noise-conditioned, as the `tiny` preset is: the
 *  energy must give it the clean level the metrics give it). */
function tinyClassifier(seed: number): MetricClassifier {
  const config = { ...CLASSIFIER_PRESETS.tiny!, sample_size: 8, num_classes: 2 };
  const params = new DiffuseClassifier(config).init(RngKey.fromSeed(seed));
  return metricClassifier(config, params);
}

const f32 = (data: ArrayLike<number>, shape: number[]): HostArray<'float32'> =>
  new HostArray(Float32Array.from(data), shape, 'float32');

/** Fixed small inputs: 2 rows of 1x8x8, x0 in "latent" units decoded by tanh(1.5 x). */
async function fixture(): Promise<{ c: MetricClassifier; o: SwapEnergyOptions;
  x0: HostArray<'float32'>; decodeHost: (v: number) => number }> {
  const c = tinyClassifier(1);
  const x0 = f32(RngKey.fromSeed(2).normal(2 * 64), [2, 1, 8, 8]);
  const sources = f32(RngKey.fromSeed(3).normal(2 * 64).map((v) => Math.tanh(v)), [2, 1, 8, 8]);
  // Targets: background -1, a stroke of ink down column 2 (row 0) and along row 5 (row 1).
  const targets = f32(Array.from({ length: 128 }, (_, i) => {
    const [b, y, x] = [Math.floor(i / 64), Math.floor((i % 64) / 8), i % 8];
    return (b === 0 ? x === 2 : y === 5) ? 0.9 : -1;
  }), [2, 1, 8, 8]);
  const ex = featureExtractor(c);
  const sourceFeatures = f32((await ex.outputs(sources)).features, [2, 16]);
  await ex.dispose();
  const o: SwapEnergyOptions = { classifier: c.model, params: c.params,
    decode: (x) => ops.tanh(ops.mul(x, 1.5)), sourceFeatures, targets, keep: keepMask(targets, 1),
    identity: 0.7, structure: 2.5 };
  return { c, o, x0, decodeHost: (v) => Math.tanh(1.5 * v) };
}

test('the energy is w_id (1 - cos(f(D x0), f(src))) + w_struct x the keep-mask MSE', async () => {
  const { c, o, x0, decodeHost } = await fixture();
  // The keep mask: 1 - the ink dilated by one pixel (columns 1..3 of row 0; rows 4..6 of row 1).
  const keep = o.keep.data;
  for (let i = 0; i < 128; i++) {
    const [b, y, x] = [Math.floor(i / 64), Math.floor((i % 64) / 8), i % 8];
    const band = b === 0 ? Math.abs(x - 2) <= 1 : Math.abs(y - 5) <= 1;
    assert.equal(keep[i], band ? 0 : 1, `keep[${i}]`);
  }
  const energy = compile((x: Tensor) => swapEnergy(o)(x));
  const got = (await energy(x0)).data as Float32Array;
  await energy.dispose();
  // Plain TypeScript: decode, the classifier's features (the metrics' graph), cosine, mask.
  const image = f32(Array.from(x0.data, decodeHost), [2, 1, 8, 8]);
  const ex = featureExtractor(c);
  const f = (await ex.outputs(image)).features;
  await ex.dispose();
  const g = o.sourceFeatures.data;
  for (let b = 0; b < 2; b++) {
    let [fg, ff, gg] = [0, 0, 0];
    for (let k = 0; k < 16; k++) {
      fg += f[b * 16 + k]! * g[b * 16 + k]!;
      ff += f[b * 16 + k]! ** 2;
      gg += g[b * 16 + k]! ** 2;
    }
    let [se, count] = [0, 0];
    for (let i = b * 64; i < (b + 1) * 64; i++) {
      se += keep[i]! * (image.data[i]! - o.targets.data[i]!) ** 2;
      count += keep[i]!;
    }
    const want = 0.7 * (1 - fg / Math.sqrt(ff * gg)) + 2.5 * (se / count);
    assert.ok(Math.abs(got[b]! - want) < 1e-5 + 1e-4 * Math.abs(want),
      `row ${b}: ${got[b]} vs ${want}`);
  }
});

test('the gradient of the energy through the engine agrees with central differences', async () => {
  const { o, x0 } = await fixture();
  const energy = compile((x: Tensor) => ops.sum(swapEnergy(o)(x)));
  const gradient = compile((x: Tensor) =>
    grad((xx: Tensor) => ops.sum(swapEnergy(o)(xx)))(x) as Tensor);
  const g = (await gradient(x0)).data as Float32Array;
  // The two largest coordinates, and one in the keep region of row 0 (pixel (0, 6)).
  const order = Array.from(g.keys()).sort((a, b) => Math.abs(g[b]!) - Math.abs(g[a]!));
  const coords = [order[0]!, order[1]!, 6];
  const h = 1e-2;
  for (const i of coords) {
    const at = async (d: number) => {
      const x = f32(x0.data, [2, 1, 8, 8]);
      x.data[i] = x.data[i]! + d;
      return ((await energy(x)).data as Float32Array)[0]!;
    };
    const numeric = ((await at(h)) - (await at(-h))) / (2 * h);
    assert.ok(Math.abs(g[i]! - numeric) < 2e-4 + 2e-2 * Math.abs(numeric),
      `coordinate ${i}: engine ${g[i]} vs finite difference ${numeric}`);
  }
  assert.ok(Math.abs(g[order[0]!]!) > 1e-3,
    `the largest gradient is ${g[order[0]!]}: the check is empty`);
  await Promise.all([energy.dispose(), gradient.dispose()]);
});

test('a tiny latent swap: the identity term lowers the identity energy of the outputs', () =>
  withTempDir('ldfacenet', async (dir) => {
    const data = twoClassImages();
    const vaeRun = join(dir, 'vae');
    await trainVae({ size: 'tiny', klWeight: 1e-3, reconstruction: 'l1', batchSize: 8, steps: 30,
      lr: 3e-3, lrSchedule: 'constant', warmupSteps: 0, gradClip: 1000, seed: 0, out: vaeRun,
      logEvery: 10, sampleEvery: 0, checkpointEvery: 0, latentChannels: 2 }, data, data, false);
    const o: TrainOptions = { model: 'unet', size: 'tiny', objective: 'eps', weighting: 'uniform',
      minSnrGamma: 5, conditional: true, labelDropout: 0.1, batchSize: 8, steps: 3, lr: 1e-3,
      lrSchedule: 'constant', warmupSteps: 0, gradClip: 1, emaDecay: 0, seed: 0,
      out: join(dir, 'ldm'), logEvery: 1, sampleEvery: 0, checkpointEvery: 0, cep: 'none',
      cepGamma: 1, repa: 0, repaEncoder: '', dtrBeta: 0.8, latent: vaeRun };
    await train(o, data, false);
    const p = await loadPipeline(join(dir, 'ldm', 'model'));
    const classifier = tinyClassifier(4);
    // Sources of class 0 (top half bright), targets of class 1 (left half bright).
    const sources = subset(data, [0, 2, 4, 6]).images as HostArray<'float32'>;
    const targets = subset(data, [1, 3, 5, 7]).images as HostArray<'float32'>;
    const run = (identity: number) => swapDigits(p, sources, targets,
      { classifier, identity, structure: 0, t0: 600, steps: 5, seed: 1 });
    const plain = await run(0);
    const guided = await run(20);
    assert.deepEqual(guided.images.shape, [4, 1, 8, 8]);
    const ex = featureExtractor(classifier);
    const src = (await ex.outputs(sources)).features;
    const idEnergy = async (images: HostArray) =>
      Array.from(rowCosines((await ex.outputs(images)).features, src, 4), (c) => 1 - c);
    const [e0, e1] = [await idEnergy(plain.images), await idEnergy(guided.images)];
    await ex.dispose();
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    assert.ok(mean(e1) < 0.8 * mean(e0),
      `identity energy ${mean(e0)} unguided, ${mean(e1)} guided`);
    // The unguided arm is plain SDEdit: deterministic given the seed.
    assert.deepEqual(Array.from((await run(0)).images.data), Array.from(plain.images.data));
  }));
