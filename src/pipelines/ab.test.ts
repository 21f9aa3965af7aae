/** `diffuse ab`'s harness: every arm gets the same seeds and budget, evaluations land at the
 *  same steps, an interrupted comparison resumes to the same results, and the summary is the
 *  mean, spread and extremes over seeds. The evaluator is a stand-in (tiny 8x8 images have no
 *  MNIST-FID): the mean squared prediction at fixed inputs, a function of the weights. */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import { RngKey } from '../engine/random/philox.js';
import type { ImageDataset } from '../data/dataset.js';
import { withTempDir } from '../../test/support/temp-dir.js';
import { runAb, summarize, type AbRow, type Arm, type Evaluator } from './ab.js';
import { sampleImages } from './sample.js';
import { METHOD_DEFAULTS, type TrainOptions } from './train.js';

function tinyData(): ImageDataset {
  const n = 32;
  const labels = Int32Array.from({ length: n }, (_, i) => i % 2);
  const z = RngKey.fromSeed(3).normal(n * 64);
  const x = Float32Array.from(z, (v, j) => 0.2 * v + (labels[Math.floor(j / 64)] ? 0.5 : -0.5));
  return { images: new HostArray(x, [n, 1, 8, 8]), labels, classNames: ['a', 'b'] };
}

const options = (over: Partial<TrainOptions> = {}): Arm['options'] => ({
  model: 'dit', size: 'tiny', objective: 'flow', weighting: 'uniform', minSnrGamma: 5, conditional: true,
  labelDropout: 0.1, batchSize: 8, steps: 4, lr: 1e-3, lrSchedule: 'cosine', warmupSteps: 1, gradClip: 1,
  emaDecay: 0.9, logEvery: 1, sampleEvery: 0, checkpointEvery: 0, ...METHOD_DEFAULTS, ...over,
});

/** The mean pixel of 4 one-step samples from fixed noise: changes with every weight update. */
const standIn: Evaluator = async (p) => {
  const r = await sampleImages(p, { sampler: 'flow-euler', steps: 1, n: 4, seed: 1, classes: [0, 1, 0, 1] });
  const d = r.images.data as Float32Array;
  return { fid: d.reduce((a, v) => a + v, 0) / d.length + 10, accuracy: null };
};

test('every arm and seed is evaluated at the same steps; an interrupted comparison resumes to the same rows', () =>
  withTempDir('ab', async (dir) => {
    const data = tinyData();
    const arms: Arm[] = [{ name: 'base', options: options(), data },
      { name: 'cep', options: options({ cep: 'uniform' }), data }];
    const o = { seeds: 2, evalEvery: 2 };
    const whole = await runAb(arms, { ...o, out: join(dir, 'a') }, standIn);
    assert.equal(whole.interrupted, false);
    const key = (r: AbRow) => `${r.arm}/${r.seed}/${r.step}`;
    assert.deepEqual(whole.rows.map(key), ['base/0/2', 'base/0/4', 'base/1/2', 'base/1/4',
      'cep/0/2', 'cep/0/4', 'cep/1/2', 'cep/1/4']);
    assert.ok(whole.rows.every((r) => r.images === r.step * 8));
    // Seeds differ, and so do the arms at the same seed (CEP changes training).
    const fid = (arm: string, seed: number, step: number) =>
      whole.rows.find((r) => r.arm === arm && r.seed === seed && r.step === step)!.fid;
    assert.notEqual(fid('base', 0, 4), fid('base', 1, 4));
    assert.notEqual(fid('base', 0, 4), fid('cep', 0, 4));

    // Stop during the second arm's first seed, after its first evaluation; then resume.
    const stop = new AbortController();
    const first = await runAb(arms, { ...o, out: join(dir, 'b') }, standIn, {
      train: (arm, seed) => ({ signal: stop.signal,
        onStep: (s) => { if (arm === 'cep' && seed === 0 && s.step === 3) stop.abort(); } }) });
    assert.equal(first.interrupted, true);
    assert.deepEqual(first.rows.map(key), ['base/0/2', 'base/0/4', 'cep/0/2']);
    const starts: string[] = [];
    const rest = await runAb(arms, { ...o, out: join(dir, 'b') }, standIn,
      { onRunStart: (arm, seed, resumed) => starts.push(`${arm}/${seed}${resumed ? ' resumed' : ''}`) });
    assert.deepEqual(starts, ['cep/0 resumed', 'base/1', 'cep/1']);
    assert.deepEqual(rest.rows.map((r) => [key(r), r.fid]), whole.rows.map((r) => [key(r), r.fid]));
    const csv = (await readFile(join(dir, 'b', 'ab.csv'), 'utf8')).trim().split('\n');
    assert.equal(csv[0], 'arm,seed,step,images,mnist_fid,class_accuracy,images_per_s');
    assert.equal(csv.length, 9);
    await assert.rejects(runAb([arms[0]!, { ...arms[1]!, options: options({ steps: 6 }) }],
      { ...o, out: join(dir, 'c') }, standIn), /arm 'cep' has steps 6, arm 'base' 4: .*equal compute/);
  }));

test('the summary is the mean, sample std, min and max over the seeds of each arm and step', () => {
  const row = (arm: string, seed: number, step: number, fid: number, accuracy: number): AbRow =>
    ({ arm, seed, step, images: step * 10, fid, accuracy, imagesPerSecond: 1 });
  const s = summarize([row('a', 0, 5, 2, 0.5), row('a', 1, 5, 4, 0.7), row('a', 2, 5, 6, 0.9), row('b', 0, 5, 1, 1)]);
  assert.deepEqual(s.map((r) => [r.arm, r.seeds, r.fidMean, r.fidMin, r.fidMax]), [['a', 3, 4, 2, 6], ['b', 1, 1, 1, 1]]);
  assert.ok(Math.abs(s[0]!.fidStd - 2) < 1e-12);
  assert.ok(Math.abs(s[0]!.accuracyMean! - 0.7) < 1e-12);
});
