/**
 * @file The playground's sampling (web/sampling.ts) without a browser: driven by
 * onnxruntime-node over an exported file, it gives the image `sampleImages` (what `diffuse
 * sample --n 1` writes) gives for the same seed, class, sampler, steps and guidance; a graph
 * exported at a fixed batch is fed in padded chunks; bad sidecars and requests are named.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import ort from 'onnxruntime-node';
import { exportDenoiser } from '../../src/pipelines/export.js';
import { sampleImages, type Pipeline } from '../../src/pipelines/sample.js';
import { withTempDir } from '../support/temp-dir.js';
import { withTinyPipeline } from '../support/tiny-pipeline.js';
import { readMeta, sampleDigit, sessionDenoiser, type DenoiserMeta } from '../../web/sampling.js';

const tensor = (type: 'float32' | 'int64', data: Float32Array | BigInt64Array, dims: readonly number[]) =>
  new ort.Tensor(type, data, dims);

interface Case { sampler: string; steps: number; label: number | null; guidance: number; seed: number }

/** The page's image and the pipeline's for each case, from one export. */
async function agree(p: Pipeline, dir: string, cases: Case[], batch?: number): Promise<void> {
  const file = join(dir, 'model.onnx');
  const r = await exportDenoiser(p, file, batch === undefined ? {} : { batch });
  const meta = readMeta(JSON.parse(JSON.stringify(r.meta satisfies DenoiserMeta)));
  const session = await ort.InferenceSession.create(file);
  try {
    for (const c of cases) {
      const denoiser = sessionDenoiser(session, tensor, meta);
      const steps: number[] = [];
      const page = await sampleDigit(denoiser, meta, { ...c, onStep: (s) => steps.push(s.index) });
      // `diffuse sample`'s spelling of the page's "unconditional": guidance 0 (the null label).
      const how = c.label !== null ? { classes: [c.label], guidance: c.guidance }
        : { guidance: meta.numClasses ? 0 : 1 };
      const own = await sampleImages(p, { sampler: c.sampler, steps: c.steps, n: 1, seed: c.seed, ...how });
      let diff = 0;
      own.images.data.forEach((v, i) => (diff = Math.max(diff, Math.abs(v - page[i]!))));
      // Steps compound the two sessions' float rounding (seen: up to 2e-6).
      assert.ok(diff <= 1e-4, `${JSON.stringify(c)}: the page's image differs by ${diff}`);
      assert.deepEqual(steps, Array.from({ length: steps.length }, (_, i) => i));
      const guided = c.label !== null && c.guidance !== 1 && c.guidance !== 0;
      const chunks = batch ? Math.ceil((guided ? 2 : 1) / batch) : 1;
      assert.equal(denoiser.stats.rows, denoiser.stats.calls * (batch ?? (guided ? 2 : 1)));
      assert.ok(denoiser.stats.calls >= c.steps * chunks);
    }
  } finally {
    await session.release();
  }
}

test('page sampling: a class-conditional U-Net gives the pipeline\'s images (CFG, no guidance, ' +
  'unconditional, stochastic)', async () => {
  await withTinyPipeline('unet', 'eps', (p) => withTempDir('page', (dir) => agree(p, dir, [
    { sampler: 'ddim', steps: 6, label: 2, guidance: 1.5, seed: 3 },
    { sampler: 'dpm++2m', steps: 5, label: 0, guidance: 1, seed: 4 },
    { sampler: 'euler-a', steps: 4, label: null, guidance: 2, seed: 5 },
  ])));
});

test('page sampling: a graph exported at batch 1 takes CFG\'s two rows in two calls', async () => {
  await withTinyPipeline('unet', 'v', (p) => withTempDir('page', (dir) => agree(p, dir, [
    { sampler: 'ddim', steps: 4, label: 1, guidance: 3, seed: 0 },
  ], 1)));
});

test('page sampling: an unconditional flow DiT with flow-euler', async () => {
  await withTinyPipeline('dit', 'flow', (p) => withTempDir('page', (dir) => agree(p, dir, [
    { sampler: 'flow-euler', steps: 5, label: null, guidance: 1, seed: 9 },
  ])), undefined, 0);
});

test('page sampling: sidecars and requests that do not fit are named', async () => {
  const good = { format: 'diffuse-denoiser', version: 1, modelClass: 'UNet2DModel', prediction: 'eps',
    sampleShape: [1, 8, 8], batch: null, numClasses: 3, nullClass: 3,
    scheduler: { _class_name: 'DDPMScheduler', prediction_type: 'epsilon' } };
  const meta = readMeta(good);
  assert.deepEqual(meta.samplers, ['ddim', 'ddpm', 'euler', 'euler-a', 'heun', 'dpm++2m', 'dpm++3m', 'unipc']);
  assert.throws(() => readMeta({ ...good, format: 'x' }),
    /model\.json: 'format' must be 'diffuse-denoiser' \(written by diffuse export\), got "x"/);
  assert.throws(() => readMeta({ ...good, sampleShape: [1, 8] }), /'sampleShape' must be \[C, H, W\]/);
  assert.throws(() => readMeta({ ...good, prediction: 'flow' }),
    /'prediction' must be the scheduler config's 'eps', got "flow"/);
  assert.throws(() => readMeta({ ...good, scheduler: { _class_name: 'Nope' } }), /Nope/);
  const d = { prediction: 'eps' as const, predict: () => Promise.reject(new Error('not called')) };
  const req = { sampler: 'ddim', steps: 2, label: 1, guidance: 1, seed: 0 };
  await Promise.all([
    assert.rejects(sampleDigit(d, meta, { ...req, sampler: 'flow-euler' }),
      /sampler 'flow-euler' does not fit this DDPMScheduler model: expected one of ddim, ddpm/),
    assert.rejects(sampleDigit(d, meta, { ...req, label: 3 }),
      /class 3 is out of range: expected 0\.\.2 or unconditional/),
    assert.rejects(sampleDigit(d, meta, { ...req, steps: 0 }), /steps must be an integer from 1 to 1000, got 0/),
  ]);
});
