/** The video pipeline: a few training steps on fresh moving-MNIST clips write a pipeline that
 *  loads back and samples clips of its shape; a resumed run ends where a straight one does. */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { withTempDir } from '../../test/support/temp-dir.js';
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
