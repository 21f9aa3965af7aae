/** DiffuseVAE: form 2's shifted chain is DDPM's on y_t = x_t - x̂; the denoiser's input; a
 *  refiner trained, saved, loaded and sampled; the interpolation path. */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { latentCoder } from '../pipelines/latent.js';
import { loadDiffuseVae, sampleDiffuseVae, slerpLatents, trainDiffuseVae } from '../pipelines/diffusevae.js';
import { trainVae } from '../pipelines/vae.js';
import { withTempDir } from '../../test/support/temp-dir.js';
import { twoClassImages } from '../../test/support/tiny-images.js';
import { conditionedInput, form2PosteriorMean } from './diffusevae.js';

test('form 2: the official shifted posterior mean is DDPM\'s on y_t = x_t - x̂, plus x̂', () => {
  const r = RngKey.fromSeed(1).normal(40);
  for (let i = 0; i < 10; i++) {
    const [y, xhat, eps] = [r[4 * i]!, r[4 * i + 1]!, r[4 * i + 2]!];
    const abar = 0.05 + 0.9 * Math.abs(Math.tanh(r[4 * i + 3]!));
    const beta = 0.02 * (i + 1) / 10;
    const abarPrev = abar / (1 - beta);
    // DDPM on y: x0 from eps, then beta sqrt(abar') / (1 - abar) x0 + sqrt(alpha) (1 - abar') / (1 - abar) y
    const x0 = y / Math.sqrt(abar) - Math.sqrt(1 / abar - 1) * eps;
    const plain = (beta * Math.sqrt(abarPrev) / (1 - abar)) * x0 + (Math.sqrt(1 - beta) * (1 - abarPrev) / (1 - abar)) * y;
    const official = form2PosteriorMean(y + xhat, xhat, eps, { beta, abar, abarPrev });
    assert.ok(Math.abs(official - (plain + xhat)) < 1e-12, `${official} vs ${plain + xhat}`);
  }
});

test('the denoiser sees [y_t, x̂] (form 1) or [y_t + x̂, x̂] (form 2) on the channel axis', async () => {
  const y = new HostArray(Float32Array.from([1, 2, 3, 4]), [1, 1, 2, 2]);
  const xhat = new HostArray(Float32Array.from([10, 20, 30, 40]), [1, 1, 2, 2]);
  for (const [form, first] of [[1, [1, 2, 3, 4]], [2, [11, 22, 33, 44]]] as const) {
    const f = compile((a: Tensor, b: Tensor) => conditionedInput(form, a, b));
    const out = await f(y, xhat);
    assert.deepEqual(out.shape, [1, 2, 2, 2]);
    assert.deepEqual(Array.from(out.data as Float32Array), [...first, 10, 20, 30, 40]);
    await f.dispose();
  }
});

test('slerpLatents: the path starts and ends at the draws and keeps their norm', () => {
  const a = Float32Array.from([3, 0, 0, 4]);
  const b = Float32Array.from([0, 5, 0, 0]);
  const path = slerpLatents(a, b, 5, [1, 2, 2]);
  assert.deepEqual(path.shape, [5, 1, 2, 2]);
  const rows = Array.from({ length: 5 }, (_, k) => Array.from(path.data.subarray(4 * k, 4 * k + 4) as Float32Array));
  assert.deepEqual(rows[0], [3, 0, 0, 4]);
  rows[4]!.forEach((v, i) => assert.ok(Math.abs(v - b[i]!) < 1e-6));
  for (const row of rows) assert.ok(Math.abs(Math.hypot(...row) - 5) < 1e-5);
});

test('a DiffuseVAE refiner: trained on the VAE\'s reconstructions, saved with the form, sampled from the prior', () =>
  withTempDir('diffusevae', async (dir) => {
    const data = twoClassImages();
    const vaeRun = join(dir, 'vae');
    await trainVae({ size: 'tiny', klWeight: 0.1, reconstruction: 'l1', batchSize: 8, steps: 4, lr: 3e-3,
      lrSchedule: 'constant', warmupSteps: 0, gradClip: 1000, seed: 0, out: vaeRun, logEvery: 10, sampleEvery: 0,
      checkpointEvery: 0, latentChannels: 2 }, data, data, false);
    const out = join(dir, 'refiner');
    const r = await trainDiffuseVae({ vae: vaeRun, form: 2, size: 'tiny', batchSize: 8, steps: 3, lr: 1e-3,
      lrSchedule: 'constant', warmupSteps: 0, gradClip: 1, emaDecay: 0, seed: 0, out, logEvery: 1, sampleEvery: 0,
      checkpointEvery: 0 }, data, false);
    assert.equal(r.losses.length, 3);
    const p = await loadDiffuseVae(out); // the run folder: its model/
    assert.equal(p.form, 2);
    assert.deepEqual([p.model.sampleShape[0], (p.model.config as { out_channels: number }).out_channels], [2, 1]);
    const s = await sampleDiffuseVae(p, { n: 3, steps: 3, sampler: 'ddim', seed: 4 });
    assert.deepEqual([s.vae.shape, s.images.shape, s.z.shape], [[3, 1, 8, 8], [3, 1, 8, 8], [3, 2, 4, 4]]);
    // x̂ is the VAE's decoding of the prior draw z.
    const coder = latentCoder(p.vae);
    assert.deepEqual(Array.from((await coder.decode(s.z)).data), Array.from(s.vae.data));
    await coder.dispose();
    // With the refiner's noise shared, equal latents give equal images; other latents others.
    const z = new HostArray<'float32'>(Float32Array.from({ length: 3 * 32 }, (_, i) => (i < 64 ? s.z.data[i % 32]! : 0.5)), [3, 2, 4, 4], 'float32');
    const t = await sampleDiffuseVae(p, { n: 3, steps: 3, sampler: 'ddim', seed: 4, z, sharedNoise: true });
    const img = (k: number) => Array.from(t.images.data.subarray(64 * k, 64 * k + 64) as Float32Array);
    assert.deepEqual(img(0), img(1));
    assert.notDeepEqual(img(0), img(2));
  }));
