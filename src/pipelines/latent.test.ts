/** Latent pipelines: the VAE's loss against a plain-TypeScript sum, the scaling factor,
 *  training on latents, and sampling that decodes with the pipeline's VAE. */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import type { Tree } from '../engine/tree.js';
import { subset } from '../data/dataset.js';
import { AUTOENCODER_KL_DEFAULTS, AutoencoderKL, type AutoencoderKLConfig } from '../models/autoencoder-kl.js';
import type { ParamsOf } from '../nn/module.js';
import { withTempDir } from '../../test/support/temp-dir.js';
import { twoClassImages } from '../../test/support/tiny-images.js';
import { packageRoot } from '../util/package-root.js';
import { latentCoder, loadVae } from './latent.js';
import { classAccuracy, featureExtractor, loadMetricClassifier } from './metrics.js';
import { classifyImages } from './classify.js';
import { loadPipeline, sampleImages } from './sample.js';
import { train, type TrainOptions } from './train.js';
import { trainVae, vaeLoss, type VaeTrainOptions } from './vae.js';

/** 1 x 8 x 8 images <-> 2 x 4 x 4 latents, a few thousand weights. */
const TINY: AutoencoderKLConfig = { ...AUTOENCODER_KL_DEFAULTS, in_channels: 1, out_channels: 1,
  block_out_channels: [8, 8], down_block_types: ['DownEncoderBlock2D', 'DownEncoderBlock2D'],
  up_block_types: ['UpDecoderBlock2D', 'UpDecoderBlock2D'], norm_num_groups: 4, latent_channels: 2,
  sample_size: 8, scaling_factor: 0.5 };

test('the VAE loss: L1 (or L2) summed per image plus kl_weight x KL, averaged over the batch', async () => {
  const vae = new AutoencoderKL(TINY);
  const params = vae.init(RngKey.fromSeed(3)) as Tree<HostArray>;
  const p = ops.constantTree(params) as unknown as ParamsOf<AutoencoderKL>;
  const x = subset(twoClassImages(), [0, 1, 2]).images;
  const noise = new HostArray(RngKey.fromSeed(4).normal(3 * 2 * 16), [3, 2, 4, 4]);
  const parts = compile((xs: Tensor, n: Tensor) => {
    const q = vae.encode(p, xs);
    return { mean: q.mean, logvar: q.logvar, recon: vae.decode(p, vae.sample(q, n)) };
  });
  const out = await parts(x, noise);
  const r = { recon: out.recon.data as Float32Array, mean: out.mean.data as Float32Array,
    logvar: out.logvar.data as Float32Array };
  const xs = x.data as Float32Array;
  for (const reconstruction of ['l1', 'l2'] as const) {
    const loss = compile((xs: Tensor, n: Tensor) => vaeLoss(vae, p, xs, n, { klWeight: 0.3, reconstruction }));
    const got = (await loss(x, noise)).data[0] as number;
    let rec = 0;
    for (let i = 0; i < x.size; i++) {
      const d = r.recon[i]! - xs[i]!;
      rec += reconstruction === 'l1' ? Math.abs(d) : d * d;
    }
    let kl = 0;
    for (let i = 0; i < r.mean.length; i++) {
      const [m, lv] = [r.mean[i]!, r.logvar[i]!];
      kl += 0.5 * (m * m + Math.exp(lv) - 1 - lv);
    }
    const want = rec / 3 + 0.3 * (kl / 3);
    assert.ok(Math.abs(got - want) < 1e-4 * Math.abs(want), `${reconstruction}: ${got} vs ${want}`);
    await loss.dispose();
  }
  await parts.dispose();
});

const vaeOptions = (out: string): VaeTrainOptions => ({ size: 'tiny', klWeight: 1e-3, reconstruction: 'l1',
  batchSize: 8, steps: 30, lr: 3e-3, lrSchedule: 'constant', warmupSteps: 0, gradClip: 1000, seed: 0, out,
  logEvery: 10, sampleEvery: 0, checkpointEvery: 0, latentChannels: 2 });

test('train-vae: the loss falls, the scaling factor is 1 / std of the posterior samples, saved in config.json', () =>
  withTempDir('vae', async (dir) => {
    const data = twoClassImages();
    const out = join(dir, 'vae');
    const r = await trainVae(vaeOptions(out), data, twoClassImages(), false);
    assert.ok(r.losses.at(-1)! < 0.5 * r.losses[0]!, `loss ${r.losses[0]} -> ${r.losses.at(-1)}`);
    const config = JSON.parse(await readFile(join(out, 'model', 'vae', 'config.json'), 'utf8'));
    assert.equal(config._class_name, 'AutoencoderKL');
    assert.equal(config.scaling_factor, r.scalingFactor);
    // The factor from the saved weights: 1 / std of mean + std * noise (same key as the run's).
    const vae = await loadVae(out);
    const coder = latentCoder(vae);
    const { mean, std } = await coder.encode(data.images);
    await coder.dispose();
    const noise = RngKey.fromSeed(0).fold(3).normal(mean.size);
    const z = Array.from(mean.data, (m, i) => m + std.data[i]! * noise[i]!);
    const mu = z.reduce((a, b) => a + b, 0) / z.length;
    const sd = Math.sqrt(z.reduce((a, b) => a + (b - mu) ** 2, 0) / z.length);
    assert.ok(Math.abs(r.scalingFactor! - 1 / sd) < 1e-4 / sd, `${r.scalingFactor} vs ${1 / sd}`);
    assert.ok(r.heldOutMse! > 0 && r.heldOutMse! < 0.64, `held-out MSE ${r.heldOutMse}`);
  }));

test('a latent pipeline: trained on VAE latents, saved with vae/, sampled into decoded images', () =>
  withTempDir('latent', async (dir) => {
    const data = twoClassImages();
    const vaeRun = join(dir, 'vae');
    await trainVae(vaeOptions(vaeRun), data, data, false);
    const o: TrainOptions = { model: 'unet', size: 'tiny', objective: 'eps', weighting: 'uniform', minSnrGamma: 5,
      conditional: true, labelDropout: 0.1, batchSize: 8, steps: 3, lr: 1e-3, lrSchedule: 'constant',
      warmupSteps: 0, gradClip: 1, emaDecay: 0, seed: 0, out: join(dir, 'ldm'), logEvery: 1, sampleEvery: 0,
      checkpointEvery: 0, cep: 'none', cepGamma: 1, repa: 0, repaEncoder: '', dtrBeta: 0.8, latent: vaeRun };
    const r = await train(o, data, false);
    assert.deepEqual(r.model.sampleShape, [2, 4, 4]);
    const index = JSON.parse(await readFile(join(dir, 'ldm', 'model', 'model_index.json'), 'utf8'));
    assert.deepEqual([index._class_name, index.vae, index.unet[1]],
      ['DiffuseLatentPipeline', ['diffusers', 'AutoencoderKL'], 'UNet2DModel']);
    const p = await loadPipeline(join(dir, 'ldm', 'model'));
    assert.ok(p.vae);
    const how = { sampler: 'ddim', steps: 4, n: 3, seed: 5, classes: [0, 1] };
    const images = await sampleImages(p, how);
    assert.deepEqual(images.images.shape, [3, 1, 8, 8]);
    // The latents the model samples, decoded by the VAE, are the images.
    const latents = (await sampleImages(p, { ...how, latents: true })).images;
    assert.deepEqual(latents.shape, [3, 2, 4, 4]);
    assert.ok(latents.data.some((v) => Math.abs(v) > 1), 'latents are not clamped to [-1, 1]');
    const coder = latentCoder(p.vae);
    const decoded = await coder.decodeLatents(latents);
    // encodeLatents scales as decodeLatents unscales: both round trips decode the same images.
    const viaLatents = await coder.decodeLatents(await coder.encodeLatents(data.images));
    const viaMeans = await coder.decode(await coder.encodeMean(data.images));
    viaLatents.data.forEach((v, i) => assert.ok(Math.abs(v - viaMeans.data[i]!) < 1e-5, `pixel ${i}: ${v} vs ${viaMeans.data[i]}`));
    await coder.dispose();
    assert.deepEqual(Array.from(decoded.data), Array.from(images.images.data));
    // Methods that read pixels refuse a latent pipeline.
    await assert.rejects(classifyImages(p, images.images, undefined),
      /is part of a latent pipeline \(it has a vae\/\): the Diffusion Classifier works on pixel-space models/);
  }));

test('the shipped latent pipeline (float16 weights) draws the digits asked for', async () => {
  const p = await loadPipeline(join(packageRoot(), 'models', 'mnist-latent'));
  assert.deepEqual(p.model.sampleShape, [4, 8, 8]);
  assert.ok(Math.abs(p.vae!.model.config.scaling_factor - 0.4247) < 1e-4);
  const classes = Array.from({ length: 20 }, (_, i) => i % 10);
  const r = await sampleImages(p, { sampler: 'dpm++2m', steps: 10, n: 20, seed: 3, guidance: 1.5, classes });
  assert.deepEqual(r.images.shape, [20, 1, 32, 32]);
  const judge = featureExtractor(await loadMetricClassifier());
  try {
    const accuracy = classAccuracy(await judge.outputs(r.images), classes);
    assert.ok(accuracy >= 0.9, `class accuracy ${accuracy}`);
  } finally {
    await judge.dispose();
  }
});
