/** The guides' examples run, and the guides show exactly the files the tests run: the engine
 *  guide (docs/engine.md) and the library API guide (docs/api.md). */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import ort from 'onnxruntime-node';
import { parseScheduler } from 'diffuse/diffusion';
import { decodePng } from 'diffuse/io';
import { denoiserTour } from '../docs/examples/api-denoiser.js';
import { pipelineTour } from '../docs/examples/api-pipeline.js';
import { vaeTour } from '../docs/examples/api-vae.js';
import { tour } from '../docs/examples/engine-tour.js';
import { repoRoot } from './support/paths.js';

test('docs/engine.md embeds docs/examples/engine-tour.ts verbatim', () => {
  const guide = readFileSync(join(repoRoot, 'docs', 'engine.md'), 'utf8');
  const example = readFileSync(join(repoRoot, 'docs', 'examples', 'engine-tour.ts'), 'utf8');
  assert.ok(guide.includes(example.trim()), 'docs/engine.md is out of date with its example');
});

test('the engine tour trains a line and exports a loadable model', async () => {
  const r = await tour();
  try {
    assert.ok(Math.abs(r.w - 3) < 1e-3 && Math.abs(r.b + 1) < 1e-3, `w ${r.w}, b ${r.b}`);
    assert.match(r.graph, /%2 = add\(%0, %1\) : float32\[3\]/);
    const s = await ort.InferenceSession.create(r.onnxPath);
    const out = await s.run({ x: new ort.Tensor('float32', Float32Array.of(2, 10), [2]) });
    const y = out.out!.data as Float32Array;
    assert.ok(Math.abs(y[0]! - 5) < 1e-2 && Math.abs(y[1]! - 29) < 1e-2, `predictions ${y}`);
    await s.release();
  } finally {
    await rm(r.onnxPath, { force: true });
  }
});

// ---- docs/api.md: the library API through the package's entry points ----

const API_EXAMPLES = ['api-pipeline.ts', 'api-denoiser.ts', 'api-vae.ts'];

test('docs/api.md embeds its examples verbatim; they import only entry points', () => {
  const guide = readFileSync(join(repoRoot, 'docs', 'api.md'), 'utf8');
  const entries = Object.keys((JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as
    { exports: Record<string, unknown> }).exports).map((k) => k.replace(/^\./, 'diffuse'));
  for (const name of ['engine-tour.ts', ...API_EXAMPLES]) {
    const example = readFileSync(join(repoRoot, 'docs', 'examples', name), 'utf8');
    if (name !== 'engine-tour.ts') {
      assert.ok(guide.includes(example.trim()), `docs/api.md is out of date with ${name}`);
    }
    for (const [, from] of example.matchAll(/\bfrom '([^']+)';$/gm)) {
      assert.ok(from!.startsWith('node:') || entries.includes(from!), `${name} imports ${from}`);
    }
  }
});

test('api-pipeline: the shipped U-Net folder, loaded whole and piece by piece', async () => {
  const r = await pipelineTour(join(repoRoot, 'models', 'mnist-unet'));
  assert.deepEqual(r.shape, [4, 1, 32, 32]);
  assert.deepEqual(r.components, ['scheduler', 'unet']);
  assert.equal(r.parameters, 1_114_209); // README, "Shipped models"
  assert.equal(r.classes, 11); // ten digits and the null class of classifier-free guidance
  assert.deepEqual(r.warnings, []); // clip_sample is off in the shipped scheduler config
  assert.equal(r.scheduler.className, 'DDPMScheduler');
  assert.equal(r.scheduler.prediction, 'eps');
  assert.ok(r.samplers.includes('dpm++2m'));
  const png = decodePng(r.png);
  assert.deepEqual([png.width, png.height], [4 * 32 + 5 * 2, 32 + 2 * 2]); // imageGrid pads 2
  // The default folder is found through 'diffuse/package.json', here the repository itself.
  assert.deepEqual((await pipelineTour()).png, r.png);
});

test('api-denoiser: samplers over the exact denoiser of N(2, 0.5^2)', async () => {
  const dpm = await denoiserTour();
  assert.deepEqual(dpm.shape, [1000, 4]);
  // 4,000 draws: the standard error of the mean is 0.008, of the std about 0.006.
  assert.ok(Math.abs(dpm.mean - 2) < 0.03 && Math.abs(dpm.std - 0.5) < 0.03, JSON.stringify(dpm));
  // The figures docs/api.md quotes (the sampling is deterministic under the seed).
  assert.deepEqual([dpm.mean.toFixed(3), dpm.std.toFixed(3)], ['1.995', '0.483']);
  const ddim = await denoiserTour(undefined, 'ddim');
  assert.equal(ddim.std.toFixed(3), '0.436'); // first order: 20 steps under-spread the data
  // The folder's scheduler_config.json is the same process: the same samples.
  const folder = parseScheduler(JSON.parse(readFileSync(join(repoRoot, 'models', 'mnist-unet',
    'scheduler', 'scheduler_config.json'), 'utf8')) as Record<string, unknown>);
  assert.deepEqual(await denoiserTour(folder), dpm);
});

test('api-vae: decode(encode(x)) has the shape of x', async () => {
  const r = await vaeTour();
  assert.deepEqual(r.images, [2, 3, 16, 16]);
  assert.deepEqual(r.latent, [2, 2, 8, 8]);
  assert.deepEqual(r.decoded, r.images);
  assert.ok(r.finite);
  assert.equal(r.parameters, 42_777);
});
