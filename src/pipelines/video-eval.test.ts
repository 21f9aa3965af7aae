/** Video consistency measures: frame jumps at clip boundaries, digit agreement across clips,
 *  and the comparison of ways to make a long video (real clips as the reference). */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import { RngKey } from '../engine/random/philox.js';
import type { Tree } from '../engine/tree.js';
import { trainingScheduler } from '../diffusion/training.js';
import { VIDEO_UNET_PRESETS } from '../models/video-unet.js';
import { featureExtractor, loadMetricClassifier, type FeatureExtractor } from './metrics.js';
import { videoModel, type VideoPipeline } from './video.js';
import { compareCsv, compareLongVideos, frameJumps, identityAgreement, segmentDigits } from './video-eval.js';

/** One video [1, 1, F, 2, 2] whose frame t is all values[t]. */
const flatVideo = (values: number[]) => new HostArray(Float32Array.from(values.flatMap((v) => [v, v, v, v])),
  [1, 1, values.length, 2, 2]);

test('frameJumps separates the change at segment boundaries from the change inside them', () => {
  const j = frameJumps(flatVideo([0, 0.1, 0.2, 0.3, 1, 1.1, 1.2, 1.3]), 4);
  assert.ok(Math.abs(j.inside - 0.1) < 1e-6, `inside ${j.inside}`);
  assert.ok(Math.abs(j.boundary - 0.7) < 1e-6, `boundary ${j.boundary}`);
  assert.ok(Math.abs(j.ratio - 7) < 1e-4);
  assert.throws(() => frameJumps(flatVideo([0, 1, 2, 3, 4, 5]), 4), /segment length must divide the 6 frames/);
  assert.throws(() => frameJumps(flatVideo([0, 1, 2, 3]), 4), /at least two/);
});

test('identityAgreement is the share of digits consecutive segments have in common', () => {
  assert.equal(identityAgreement([[[3, 5], [5, 3], [5, 7]]]), 0.75); // (1 + 0.5) / 2
  assert.equal(identityAgreement([[[1, 2], [3, 4]], [[0, 9], [9, 0]]]), 0.5);
});

test('segmentDigits takes the top classes of each segment\'s mean softmax', async () => {
  // A stand-in classifier: a frame of value v favours class round(10 v) and, less, class 0.
  const fake = {
    async outputs(images: HostArray) {
      const n = images.shape[0]!;
      const logits = new Float32Array(n * 10);
      for (let i = 0; i < n; i++) {
        logits[i * 10 + Math.round(10 * Number(images.data[i * 4]))] = 5;
        logits[i * 10] += 3;
      }
      return { n, dim: 1, classes: 10, features: new Float32Array(n), logits };
    },
  } as unknown as FeatureExtractor;
  const digits = await segmentDigits(fake, flatVideo([0.3, 0.3, 0.3, 0.7, 0.7, 0.7]), 3);
  assert.deepEqual(digits, [[[3, 0], [7, 0]]]);
  assert.equal(identityAgreement(digits), 0.5);
});

test('compareLongVideos: real clips hold together across boundaries, unrelated real clips do not', async () => {
  const model = videoModel({ ...VIDEO_UNET_PRESETS.tiny!, sample_size: 32 });
  const p: VideoPipeline = { model, params: model.module.init(RngKey.fromSeed(1)) as Tree<HostArray>,
    scheduler: trainingScheduler('flow') };
  const extractor = featureExtractor(await loadMetricClassifier());
  try {
    const seen: string[] = [];
    const rows = await compareLongVideos(p, extractor, { clips: 4, clipFrames: 4, steps: 1, videos: 6,
      modes: ['real', 'real-unrelated'], onVideo: (m, k) => seen.push(`${m} ${k}`) });
    assert.deepEqual(rows.map((r) => [r.mode, r.videos, r.frames]), [['real', 6, 16], ['real-unrelated', 6, 16]]);
    assert.equal(seen.length, 12);
    const [real, unrelated] = rows as [typeof rows[0], typeof rows[0]];
    // Moving digits change a frame by about 0.14 a pixel; an unrelated scene by about half as much again.
    assert.ok(real.ratio < 1.2, `a real video has no seams: ratio ${real.ratio}`);
    assert.ok(unrelated.ratio > 1.3, `unrelated clips jump at the boundaries: ratio ${unrelated.ratio}`);
    assert.ok(real.identity! > unrelated.identity! + 0.25, `identity ${real.identity} vs ${unrelated.identity}`);
    assert.equal(real.secondsPerVideo, 0);
    assert.match(compareCsv(rows), /^mode,videos,frames,boundary_jump,.*\nreal,6,16,/);
    const sampled = await compareLongVideos(p, undefined, { clips: 2, clipFrames: 4, steps: 1, videos: 1,
      modes: ['one-pass', 'independent'] });
    assert.deepEqual(sampled.map((r) => [r.mode, r.frames, r.identity]), [['one-pass', 8, undefined], ['independent', 8, undefined]]);
    assert.ok(sampled.every((r) => r.secondsPerVideo > 0 && r.boundary > 0));
  } finally {
    await extractor.dispose();
  }
});
