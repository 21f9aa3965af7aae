/** Clip-parallel sampling: two clips whose local context spans the video sample exactly the
 *  video one process samples whole; with global frames and the dual-scope bias it runs and is
 *  reproducible. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { HostArray } from '../engine/host.js';
import { RngKey } from '../engine/random/philox.js';
import type { Tree } from '../engine/tree.js';
import { trainingScheduler } from '../diffusion/training.js';
import { VIDEO_UNET_PRESETS } from '../models/video-unet.js';
import { withTempDir } from '../../test/support/temp-dir.js';
import { exportPipeline } from './checkpoint.js';
import {
  loadVideoPipeline, sampleVideos, VIDEO_PIPELINE_CLASS, videoModel, type VideoPipeline,
} from './video.js';
import { sampleLongVideo, sampleLongVideoThreads } from './video-infinity.js';

function tinyPipeline(): VideoPipeline {
  const model = videoModel({ ...VIDEO_UNET_PRESETS.tiny! });
  const params = model.module.init(RngKey.fromSeed(4)) as Tree<HostArray>;
  model.module.temporalLayers.forEach(({ params: of }, k) => {
    const table = of(params as never).relative_bias as unknown as HostArray<'float32'>;
    table.data.set(RngKey.fromSeed(20 + k).normal(table.data.length));
  });
  return { model, params, scheduler: trainingScheduler('flow') };
}

test('two clips exchanging all their frames sample exactly the whole video', async () => {
  const p = tinyPipeline();
  const whole = await sampleVideos(p, { n: 1, steps: 3, seed: 5, frames: 8 });
  const calls: number[] = [];
  const split = await sampleLongVideo(p, { layout: { clips: 2, clipFrames: 4, padding: 4, globalPerClip: 0 },
    steps: 3, seed: 5, scope: false, onCall: (c) => calls.push(c) });
  assert.deepEqual(split.shape, whole.shape);
  let worst = 0;
  whole.data.forEach((v, i) => (worst = Math.max(worst, Math.abs(v - split.data[i]!))));
  assert.ok(worst < 1e-4, `largest difference ${worst}`);
  assert.deepEqual(calls, [0, 1, 2]); // flow Euler: one model call per step
});

test('with global frames and the dual-scope bias, clips sample reproducibly, and differently from independent clips', async () => {
  const p = tinyPipeline();
  const layout = { clips: 3, clipFrames: 4, padding: 2, globalPerClip: 2 };
  const a = await sampleLongVideo(p, { layout, steps: 2, seed: 1 });
  const b = await sampleLongVideo(p, { layout, steps: 2, seed: 1 });
  assert.deepEqual(Array.from(a.data), Array.from(b.data));
  const alone = await sampleLongVideo(p, { layout: { ...layout, padding: 0, globalPerClip: 0 }, steps: 2, seed: 1 });
  assert.notDeepEqual(Array.from(alone.data), Array.from(a.data));
  assert.ok(Array.from(a.data).every((v) => v >= -1 && v <= 1));
});

test('clips in worker threads sample the video clips in one thread do; a failing clip stops them all', async () => {
  await withTempDir('video-infinity', async (dir) => {
    const p = tinyPipeline();
    await exportPipeline(dir, { model: p.model, scheduler: p.scheduler, pipelineClass: VIDEO_PIPELINE_CLASS }, p.params);
    const q = await loadVideoPipeline(dir);
    const layout = { clips: 2, clipFrames: 4, padding: 2, globalPerClip: 1 };
    const here = await sampleLongVideo(q, { layout, steps: 2, seed: 3 });
    const calls: number[] = [];
    const threads = await sampleLongVideoThreads(dir, q, { layout, steps: 2, seed: 3, onCall: (c) => calls.push(c) });
    let worst = 0;
    here.data.forEach((v, i) => (worst = Math.max(worst, Math.abs(v - threads.data[i]!))));
    assert.ok(worst < 1e-4, `largest difference ${worst}`);
    assert.deepEqual(calls, [0, 1]);
    const t0 = performance.now();
    await assert.rejects(sampleLongVideoThreads(`${dir}-missing`, q, { layout, steps: 2, seed: 3 }, { timeoutMs: 20_000 }),
      /clip [01]: .*model_index.json: no such file/);
    assert.ok(performance.now() - t0 < 15_000, 'a failed clip did not stop the run promptly');
  });
});
