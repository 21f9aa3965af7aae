/** DeepCache: the schedules, the partial graph's size, and exactness when nothing is cached. */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { mapTree, type Tree } from '../engine/tree.js';
import { trainingScheduler } from '../diffusion/training.js';
import { UNET2D_PRESETS, UNet2DModel } from '../models/unet2d.js';
import type { ParamsOf } from '../nn/module.js';
import { exportPipeline } from '../pipelines/checkpoint.js';
import { createImageModel } from '../pipelines/image-models.js';
import { loadPipeline, sampleImages } from '../pipelines/sample.js';
import { deepCacheDenoiser, deepCacheSchedule, nonUniformPoints } from './deepcache.js';

test('uniform schedule: a full call every N; N = 1 is every call', () => {
  const at = (s: boolean[]) => s.flatMap((f, j) => (f ? [j] : []));
  assert.deepEqual(at(deepCacheSchedule(10, { interval: 3 })), [0, 3, 6, 9]);
  assert.deepEqual(at(deepCacheSchedule(4, { interval: 1 })), [0, 1, 2, 3]);
  assert.throws(() => deepCacheSchedule(4, { interval: 0 }), /interval must be an integer >= 1/);
});

test('non-uniform schedule: floor(T/N) full steps from 0, denser around the center', () => {
  const pts = nonUniformPoints(50, 10, 15, 1.4);
  assert.equal(pts.length, 10);
  assert.equal(pts[0], 0);
  assert.ok(pts.every((p, i) => i === 0 || p > pts[i - 1]!), `increasing: ${pts}`);
  assert.ok(pts.every((p) => p < 50));
  const gaps = pts.slice(1).map((p, i) => p - pts[i]!);
  const nearCenter = gaps[pts.findIndex((p) => p >= 15) - 1]!;
  assert.ok(nearCenter < Math.max(...gaps), `gaps ${gaps}: smallest near 15`);
  const s = deepCacheSchedule(50, { interval: 5, nonUniform: true });
  assert.equal(s.filter(Boolean).length, 10);
  // sign(u)|u|^pow, not NaN from a negative base: the points left of the center exist.
  assert.ok(pts.some((p) => p > 0 && p < 15), `points before the center: ${pts}`);
});

test('the partial step is a smaller graph: the MNIST U-Net at its shallowest branch', () => {
  const unet = new UNet2DModel(UNET2D_PRESETS['mnist-s-cond']);
  const params = mapTree(unet.init(RngKey.fromSeed(0)) as Tree<HostArray>,
    (x): x is HostArray => x instanceof HostArray, (a) => ops.constant(a));
  const d = deepCacheDenoiser(unet, params as ParamsOf<UNet2DModel>, 'eps',
    { interval: 3, conditional: true, rows: 4, isFull: () => true });
  const shallow = d.partialFlops([1, 1, 32, 32]);
  const deeper = deepCacheDenoiser(unet, params as ParamsOf<UNet2DModel>, 'eps',
    { interval: 3, branch: 1, conditional: true, rows: 4, isFull: () => true })
    .partialFlops([1, 1, 32, 32]);
  assert.ok(shallow > 0 && shallow < 0.5, `branch 2: ${shallow.toFixed(3)} of the full FLOPs`);
  assert.ok(deeper > shallow && deeper < 1, `branch 1: ${deeper.toFixed(3)}`);
});

test('with guidance: N = 1 is the plain sampler bit for bit; N = 3 runs a third full', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'diffuse-deepcache-'));
  try {
    const model = createImageModel('unet', 'tiny', 3, [1, 8, 8]);
    const params = model.module.init(RngKey.fromSeed(7)) as Tree<HostArray>;
    await exportPipeline(dir, { model, scheduler: trainingScheduler('eps') }, params);
    const p = await loadPipeline(dir);
    const o = { sampler: 'ddim', steps: 6, n: 5, seed: 3, guidance: 2, batchSize: 4 } as const;
    const plain = await sampleImages(p, o);
    const one = await sampleImages(p, { ...o, accel: { method: 'deepcache', interval: 1 } });
    assert.deepEqual(one.images.data, plain.images.data);
    const three = await sampleImages(p, { ...o, accel: { method: 'deepcache', interval: 3 } });
    assert.notDeepEqual(three.images.data, plain.images.data);
    let mse = 0;
    plain.images.data.forEach((v, i) => { mse += (v - three.images.data[i]!) ** 2; });
    assert.ok(mse / plain.images.data.length < 0.05, `close to the full sample: ${mse}`);
    await assert.rejects(sampleImages(p, { ...o, sampler: 'heun',
      accel: { method: 'deepcache', interval: 3, nonUniform: true } }), /one model call per step/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
