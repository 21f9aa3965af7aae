/** The video pipeline: a few training steps on fresh moving-MNIST clips write a pipeline that
 *  loads back and samples clips of its shape; a resumed run ends where a straight one does. */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { withTempDir } from '../../test/support/temp-dir.js';
import { VIDEO_UNET_PRESETS } from '../models/video-unet.js';
import { packageRoot } from '../util/package-root.js';
import { loadVideoPipeline, sampleVideos, trainVideo, type VideoTrainOptions } from './video.js';

const options = (out: string): VideoTrainOptions => ({
  size: 'tiny', objective: 'flow', clips: { frames: 4, size: 24, digits: 1 }, batchSize: 2, steps: 4,
  lr: 1e-3, lrSchedule: 'constant', warmupSteps: 0, gradClip: 1, emaDecay: 0.9, seed: 3, out,
  logEvery: 1, sampleEvery: 4, checkpointEvery: 2,
});

test('a video model trains, resumes exactly, loads back and samples clips of its shape', async () => {
  await withTempDir('video', async (dir) => {
    const straight = options(join(dir, 'a'));
    const r = await trainVideo(straight, false);
    assert.equal(r.state.step, 4);
    assert.ok(r.losses.every(Number.isFinite));
    const stop = new AbortController();
    const resumed = options(join(dir, 'b'));
    await trainVideo(resumed, false, { signal: stop.signal, onStep: (s) => s.step === 2 && stop.abort() });
    await trainVideo(resumed, true);
    const weights = (o: VideoTrainOptions) => readFile(join(o.out, 'model', 'unet', 'diffusion_pytorch_model.safetensors'));
    assert.ok((await weights(straight)).equals(await weights(resumed)), 'the resumed run differs');
    const p = await loadVideoPipeline(join(straight.out, 'model'));
    assert.equal(p.model.config.num_frames, 4);
    const v = await sampleVideos(p, { n: 2, steps: 2, seed: 0 });
    assert.deepEqual(v.shape, [2, 1, 4, 24, 24]);
    assert.ok(Array.from(v.data).every((x) => x >= -1 && x <= 1));
    const longer = await sampleVideos(p, { n: 1, steps: 2, seed: 0, frames: 6 });
    assert.deepEqual(longer.shape, [1, 1, 6, 24, 24]);
    await assert.rejects(loadVideoPipeline(join(dir, 'a', 'missing')), /model_index\.json/);
  });
});

test('the shipped video model (float16 weights) loads and samples clips of moving digits', async () => {
  const p = await loadVideoPipeline(join(packageRoot(), 'models', 'mnist-video'));
  assert.deepEqual(p.model.config.block_out_channels, VIDEO_UNET_PRESETS.xs!.block_out_channels);
  assert.equal(p.scheduler.family, 'flow');
  const v = await sampleVideos(p, { n: 1, steps: 10, seed: 0, frames: 8 });
  assert.deepEqual(v.shape, [1, 1, 8, 32, 32]);
  // Mostly background (-1) with bright strokes, and frames that differ (the digits move).
  const mean = v.data.reduce((a, b) => a + b, 0) / v.size;
  assert.ok(mean > -0.98 && mean < -0.5, `mean pixel ${mean}`);
  const per = 32 * 32;
  let change = 0;
  for (let i = 0; i < per; i++) change += Math.abs(v.data[per + i]! - v.data[i]!);
  assert.ok(change / per > 0.01, `frame-to-frame change ${change / per}`);
});
