/** MNIST-FID pieces: the Fréchet distance against known answers, unbiased statistics, the
 *  shipped classifier's features (held-out digits near the training split, noise far from it),
 *  the on-disk cache of reference statistics and its key, class accuracy, and the training of
 *  the classifier itself (augmentation, determinism, its saved folder). */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { HostArray } from '../engine/host.js';
import { RngKey } from '../engine/random/philox.js';
import { mapTree, type Tree } from '../engine/tree.js';
import { subset, type ImageDataset } from '../data/dataset.js';
import { mnistSplits } from '../data/mnist.js';
import {
  CLASSIFIER_TRAIN_DEFAULTS, saveClassifier, shiftImages, trainClassifier,
} from './classifier.js';
import {
  classAccuracy, featureExtractor, frechetDistance, gaussianStats, loadMetricClassifier,
  metricClassifier, referenceKey, referenceStats, type FeatureExtractor, type GaussianStats,
} from './metrics.js';

const isHost = (x: unknown): x is HostArray => x instanceof HostArray;

/** A random symmetric positive-definite d x d matrix: A A^T / d + 0.1 I. */
function randomSpd(d: number, seed: number): Float64Array {
  const a = RngKey.fromSeed(seed).normal(d * d);
  const s = new Float64Array(d * d);
  for (let i = 0; i < d; i++) {
    for (let j = 0; j < d; j++) {
      let v = 0;
      for (let k = 0; k < d; k++) v += a[i * d + k]! * a[j * d + k]!;
      s[i * d + j] = v / d + (i === j ? 0.1 : 0);
    }
  }
  return s;
}

const stats = (mu: ArrayLike<number>, sigma: ArrayLike<number>): GaussianStats =>
  ({ n: 100, dim: mu.length, mu: Float64Array.from(mu), sigma: Float64Array.from(sigma) });
const diag = (v: number[]): number[] =>
  v.flatMap((x, i) => v.map((_, j) => (i === j ? x : 0)));

describe('Fréchet distance: known answers', () => {
  const d = 12;
  const mu = Float64Array.from(RngKey.fromSeed(1).normal(d));
  const sigma = randomSpd(d, 2);

  test('equal Gaussians: 0', () => {
    assert.ok(Math.abs(frechetDistance(stats(mu, sigma), stats(mu, sigma))) < 1e-9);
  });

  test('shifted means, same covariance: |d|^2', () => {
    const shift = RngKey.fromSeed(3).normal(d);
    const mu2 = mu.map((v, i) => v + shift[i]!);
    const want = shift.reduce((s, v) => s + v * v, 0);
    const got = frechetDistance(stats(mu, sigma), stats(mu2, sigma));
    assert.ok(Math.abs(got - want) < 1e-8 * want, `${got} vs ${want}`);
  });

  test('commuting diagonal covariances: sum (sqrt a - sqrt b)^2, and symmetric', () => {
    const a = [0.5, 1, 2, 4, 0.01, 3];
    const b = [2, 1, 0.5, 9, 0.04, 0];
    const zero = new Array(6).fill(0);
    const want = a.reduce((s, v, i) => s + (Math.sqrt(v) - Math.sqrt(b[i]!)) ** 2, 0);
    const got = frechetDistance(stats(zero, diag(a)), stats(zero, diag(b)));
    assert.ok(Math.abs(got - want) < 1e-10, `${got} vs ${want}`);
    assert.ok(Math.abs(frechetDistance(stats(zero, diag(b)), stats(zero, diag(a))) - want) < 1e-10);
  });

  test('non-commuting 2x2: tr (S1 S2)^1/2 = sqrt(tr S1 S2 + 2 sqrt(det S1 det S2))', () => {
    const s1 = [2, 0.6, 0.6, 1];
    const s2 = [1, -0.3, -0.3, 3];
    const prod = s1[0]! * s2[0]! + s1[1]! * s2[2]! + s1[2]! * s2[1]! + s1[3]! * s2[3]!; // tr(S1 S2)
    const det = (m: number[]) => m[0]! * m[3]! - m[1]! * m[2]!;
    const trSqrt = Math.sqrt(prod + 2 * Math.sqrt(det(s1) * det(s2)));
    const want = 0.25 + 1 + (2 + 1 + 1 + 3) - 2 * trSqrt; // mean difference (0.5, 1)
    const got = frechetDistance(stats([0, 0], s1), stats([0.5, 1], s2));
    assert.ok(Math.abs(got - want) < 1e-12, `${got} vs ${want}`);
  });

  test('gaussianStats: float64 mean and unbiased covariance by hand', () => {
    const s = gaussianStats([1, 2, 3, 6, 5, 10], 3, 2); // rows (1,2) (3,6) (5,10)
    assert.deepEqual(Array.from(s.mu), [3, 6]);
    assert.deepEqual(Array.from(s.sigma), [4, 8, 8, 16]); // / (n - 1)
  });
});

describe('MNIST-FID with the shipped classifier', () => {
  let ex: FeatureExtractor;
  let train: ImageDataset;
  let held: ImageDataset;
  let cacheDir: string;
  before(async () => {
    const splits = mnistSplits();
    // Random subsets (the splits are ordered by digit) keep this test to a few seconds.
    train = subset(splits.train, RngKey.fromSeed(1).permutation(9000).subarray(0, 2000));
    held = subset(splits.heldOut, RngKey.fromSeed(2).permutation(1000).subarray(0, 500));
    ex = featureExtractor(await loadMetricClassifier());
    cacheDir = await mkdtemp(join(tmpdir(), 'diffuse-fid-'));
  });
  after(async () => {
    await ex.dispose();
    await rm(cacheDir, { recursive: true, force: true });
  });

  test('the cache is written once and reused; another classifier has another key', async () => {
    const first = await referenceStats(ex, train, 'mnist-train-test', { cacheDir });
    assert.equal(first.cached, false);
    assert.ok(existsSync(first.path) && first.path.startsWith(cacheDir), first.path);
    const mtime = (await stat(first.path)).mtimeMs;
    const second = await referenceStats(ex, train, 'mnist-train-test', { cacheDir });
    assert.equal(second.cached, true);
    assert.equal(second.path, first.path);
    assert.equal((await stat(first.path)).mtimeMs, mtime, 'not rewritten');
    assert.deepEqual(second.stats, first.stats);
    assert.equal(first.stats.n, 2000);

    const c = ex.classifier;
    const bumped = mapTree(c.params as unknown as Tree<HostArray>, isHost, (a) => a.clone()) as
      unknown as typeof c.params;
    const bias = bumped.head.bias!.data as Float32Array;
    bias[0] = bias[0]! + 1e-3;
    const other = metricClassifier(c.model.config, bumped);
    assert.notEqual(other.hash, c.hash);
    assert.notEqual(referenceKey(other, train, 'mnist-train-test'),
      referenceKey(c, train, 'mnist-train-test'));
    assert.notEqual(referenceKey(c, held, 'mnist-train-test'),
      referenceKey(c, train, 'mnist-train-test'), 'the pixels are part of the key');
  });

  test('held-out digits are close to the training split, noise is far', async () => {
    const ref = (await referenceStats(ex, train, 'mnist-train-test', { cacheDir })).stats;
    const real = await ex.outputs(held.images);
    const noise = await ex.outputs(new HostArray(Float32Array.from(
      RngKey.fromSeed(4).uniform(held.images.size), (u) => 2 * u - 1), held.images.shape));
    const fidReal = frechetDistance(ref, gaussianStats(real.features, real.n, real.dim));
    const fidNoise = frechetDistance(ref, gaussianStats(noise.features, noise.n, noise.dim));
    console.log(`MNIST-FID: held-out 500 vs train 2000 ${fidReal.toFixed(3)}, ` +
      `uniform noise ${fidNoise.toFixed(3)}`);
    assert.ok(fidNoise > 20 * fidReal, `${fidNoise} vs ${fidReal}`);
  });

  test('class accuracy: high with the true labels, about 10% with shuffled ones', async () => {
    const out = await ex.outputs(held.images);
    const acc = classAccuracy(out, held.labels!);
    const perm = RngKey.fromSeed(5).permutation(500);
    const shuffled = classAccuracy(out, Array.from(perm, (i) => held.labels![i]!));
    console.log(`class accuracy: true labels ${acc}, shuffled ${shuffled}`);
    assert.ok(acc >= 0.95, `accuracy ${acc}`);
    assert.ok(shuffled > 0.04 && shuffled < 0.18, `shuffled ${shuffled}`);
  });
});

describe('training the metrics classifier (classifier.ts)', () => {
  test('shiftImages moves pixels and fills with the background', () => {
    const px = Float32Array.from({ length: 9 }, (_, i) => i);
    const img = new HostArray(px, [1, 1, 3, 3], 'float32');
    assert.deepEqual(Array.from(shiftImages(img, [1, 0]).data), [-1, 0, 1, -1, 3, 4, -1, 6, 7]);
    assert.deepEqual(Array.from(shiftImages(img, [0, -1]).data), [3, 4, 5, 6, 7, 8, -1, -1, -1]);
    assert.deepEqual(Array.from(shiftImages(img, [-2, 2]).data),
      [-1, -1, -1, -1, -1, -1, 2, -1, -1]);
  });

  test('a seed gives the same run; noise-aware runs report noisy accuracy; save and load',
    async () => {
      const splits = mnistSplits();
      const data = {
        train: subset(splits.train, RngKey.fromSeed(6).permutation(9000).subarray(0, 64)),
        heldOut: subset(splits.heldOut, RngKey.fromSeed(7).permutation(1000).subarray(0, 50)),
      };
      const o = { ...CLASSIFIER_TRAIN_DEFAULTS, preset: 'tiny', steps: 3, batchSize: 16, seed: 4 };
      const a = await trainClassifier(o, data);
      const b = await trainClassifier(o, data);
      assert.deepEqual(a.losses, b.losses);
      assert.deepEqual(a.params, b.params);
      assert.equal(a.config.noise_conditioning, false);
      const noisy = await trainClassifier({ ...o, noiseAware: true }, data);
      assert.equal(noisy.config.noise_conditioning, true);
      assert.deepEqual(noisy.noisyAccuracy.map((r) => r.t), [250, 500, 750]);
      assert.notDeepEqual(noisy.losses, a.losses);

      const dir = await mkdtemp(join(tmpdir(), 'diffuse-clf-'));
      try {
        await saveClassifier(join(dir, 'clf'), a, { command: 'test' });
        const loaded = await loadMetricClassifier(join(dir, 'clf'));
        assert.equal(loaded.hash, metricClassifier(a.config, a.params).hash);
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });
});
