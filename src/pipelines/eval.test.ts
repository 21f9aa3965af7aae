/** diffuse eval: the floor, sweeps over sampler:steps runs (table, CSV, plot) with a stand-in
 *  image source whose quality improves with steps, and one run through a real pipeline. */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { HostArray } from '../engine/host.js';
import { RngKey } from '../engine/random/philox.js';
import type { Tree } from '../engine/tree.js';
import { subset } from '../data/dataset.js';
import { mnistSplits } from '../data/mnist.js';
import { readPng, writePng } from '../io/png.js';
import { exportPipeline } from './checkpoint.js';
import {
  CSV_COLUMNS, evaluateRuns, parseRuns, pipelineSource, prepareMnistFid, resultsCsv,
  resultsTable, speedQualityPlot, type ImageSource, type MnistFid,
} from './eval.js';
import { createImageModel } from './image-models.js';
import { loadPipeline } from './sample.js';
import { trainingScheduler } from '../diffusion/training.js';

test('parseRuns: sampler:steps lists, and errors that show the expected form', () => {
  assert.deepEqual(parseRuns('ddim:10, dpm++2m:25,'), [
    { sampler: 'ddim', steps: 10 }, { sampler: 'dpm++2m', steps: 25 }]);
  assert.deepEqual(parseRuns('ddim:50+deepcache:5,nonuniform,branch=1,ddim:17'), [
    { sampler: 'ddim', steps: 50, accel: { spec: 'deepcache:5,nonuniform,branch=1',
      options: { method: 'deepcache', interval: 5, nonUniform: true, branch: 1 } } },
    { sampler: 'ddim', steps: 17 }]);
  assert.throws(() => parseRuns('ddim:50+deepcache:x'), /sweep entry 'ddim:50\+deepcache:x': 'deepcache:x': unknown acceleration; expected deepcache:N/);
  assert.throws(() => parseRuns('ddim'), /'ddim': expected sampler:steps/);
  assert.throws(() => parseRuns('ddim:0'), /expected sampler:steps/);
  assert.throws(() => parseRuns('nope:10'), /unknown sampler 'nope'/);
  assert.throws(() => parseRuns(''), /expected sampler:steps entries/);
});

describe('diffuse eval', () => {
  const n = 200;
  let m: MnistFid;
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'diffuse-eval-'));
    m = await prepareMnistFid({ n, cacheDir: join(dir, 'cache') });
  });
  after(async () => {
    await m.dispose();
    await rm(dir, { recursive: true, force: true });
  });

  test('the floor: held-out digits against the training split', () => {
    console.log(`floor: MNIST-FID ${m.floor.toFixed(3)} for ${m.floorN} held-out digits; ` +
      `classifier accuracy ${m.heldOutAccuracy}`);
    assert.equal(m.floorN, n);
    assert.equal(m.train.stats.n, 9000);
    assert.ok(m.floor > 0 && m.floor < 5, `floor ${m.floor}`);
    assert.ok(m.heldOutAccuracy > 0.95);
  });

  test('a sweep: one CSV row per sampler:steps, quality improving with steps, a PNG plot',
    async () => {
      // Held-out digits plus noise of std 4 / steps; "slow" takes twice the time per step.
      const rows0 = RngKey.fromSeed(9).permutation(1000).subarray(0, n);
      const held = subset(mnistSplits().heldOut, rows0);
      const source: ImageSource = async (run) => {
        const z = RngKey.fromSeed(run.steps).normal(held.images.size);
        const x = Float32Array.from(held.images.data, (v, i) =>
          Math.max(-1, Math.min(1, v + (4 / run.steps) * z[i]!)));
        return { images: new HostArray(x, held.images.shape), labels: Array.from(held.labels!),
          seconds: run.steps * (run.sampler === 'slow' ? 0.02 : 0.01) };
      };
      const runs = parseRuns('fast:2,fast:8,fast:32,slow:4,slow:16', true);
      const rows = await evaluateRuns(m, runs, source);
      console.log(resultsTable(rows, m));
      const csv = resultsCsv(rows).trim().split('\n').map((l) => l.split(','));
      assert.deepEqual(csv[0], [...CSV_COLUMNS]);
      assert.deepEqual(csv.slice(1).map((r) => `${r[0]}:${r[1]}`), runs.map((r) =>
        `${r.sampler}:${r.steps}`));
      for (const r of csv.slice(1)) {
        assert.equal(r.length, CSV_COLUMNS.length);
        assert.equal(r[2], String(n));
        assert.ok(Number(r[5]) > 0 && Number(r[4]) >= 0 && Number(r[4]) <= 1, r.join(','));
      }
      const fid = (s: string, k: number) => rows.find((r) => r.sampler === s && r.steps === k)!.fid;
      assert.ok(fid('fast', 2) > fid('fast', 8) && fid('fast', 8) > fid('fast', 32));
      assert.ok(fid('fast', 32) < 3 * m.floor + 1, `${fid('fast', 32)} vs floor ${m.floor}`);
      assert.ok(rows.find((r) => r.steps === 32)!.accuracy! > 0.95);
      assert.equal(rows[0]!.secondsPerImage, 0.02 / n);

      const path = join(dir, 'sweep.png');
      await writePng(path, speedQualityPlot(rows, m.floor));
      const img = await readPng(path);
      assert.deepEqual([img.width, img.height], [640, 420]);
      const colours = new Set<number>();
      for (let i = 0; i < img.data.length; i += 4) {
        colours.add((img.data[i]! << 16) | (img.data[i + 1]! << 8) | img.data[i + 2]!);
      }
      assert.ok(colours.size >= 4, 'two lines, ink and background at least');
      await writeFile(join(dir, 'sweep.csv'), resultsCsv(rows));
      const header = (await readFile(join(dir, 'sweep.csv'), 'utf8')).split('\n')[0];
      assert.equal(header, CSV_COLUMNS.join(','));
    });

  test('accelerated runs: MSE to the same sampler and steps without acceleration, and the ' +
    'speed-up, whichever comes first', async () => {
    const held = subset(mnistSplits().heldOut, RngKey.fromSeed(9).permutation(1000).subarray(0, n));
    const source: ImageSource = async (run) => ({
      images: new HostArray(Float32Array.from(held.images.data, (v) =>
        (run.accel ? 0.9 * v + 0.05 : v)), held.images.shape),
      labels: Array.from(held.labels!), seconds: run.accel ? 1 : 3 });
    const runs = parseRuns('ddim:8+faster,serial,ddim:8,ddim:8+ras:0.5,random,ddim:4+deepcache:2', true);
    assert.deepEqual(runs.map((r) => r.accel?.spec), ['faster,serial', undefined, 'ras:0.5,random',
      'deepcache:2']);
    const rows = await evaluateRuns(m, runs, source);
    let expected = 0;
    held.images.data.forEach((v) => { expected += (0.05 - 0.1 * v) ** 2; });
    expected /= held.images.size;
    for (const r of [rows[0]!, rows[2]!]) {
      assert.ok(Math.abs(r.mseToFull! - expected) < 1e-6 * expected, `${r.mseToFull} vs ${expected}`);
      assert.equal(r.speedup, 3);
    }
    assert.equal(rows[1]!.mseToFull, undefined);
    assert.equal(rows[3]!.mseToFull, undefined); // no plain ddim:4 in the sweep
    // A name with a comma is quoted, so every row keeps its columns.
    const line = resultsCsv(rows).split('\n')[1]!;
    assert.match(line, /^"ddim\+faster,serial",8,/);
    assert.equal(Number(line.split(',').at(-1)), 3);
    assert.match(resultsTable(rows, m), /3\.00x/);
  });

  test('a conditional pipeline: classes cycled, accuracy scored', async () => {
    const model = createImageModel('unet', 'tiny', 10, [1, 32, 32]);
    const params = model.module.init(RngKey.fromSeed(3)) as Tree<HostArray>;
    await exportPipeline(join(dir, 'pipe'), { model, scheduler: trainingScheduler('eps') }, params);
    const p = await loadPipeline(join(dir, 'pipe'));
    const source = pipelineSource(p, { n: 20, seed: 1 });
    const s = await source({ sampler: 'ddim', steps: 2 });
    assert.deepEqual(s.labels, Array.from({ length: 20 }, (_, i) => i % 10));
    assert.deepEqual(s.images.shape, [20, 1, 32, 32]);
    const [row] = await evaluateRuns(m, [{ sampler: 'ddim', steps: 2 }], async () => s);
    assert.ok(row!.accuracy !== null && row!.accuracy >= 0 && row!.accuracy <= 1);
    assert.ok(row!.fid > m.floor, 'an untrained model is worse than held-out digits');
    // A reference of some digits samples only those, cycled.
    const some = await pipelineSource(p, { n: 6, seed: 1, classes: [5, 7] })({ sampler: 'ddim', steps: 1 });
    assert.deepEqual(some.labels, [5, 7, 5, 7, 5, 7]);
    assert.throws(() => pipelineSource(p, { n: 6, seed: 1, classes: [3, 10] }),
      /classes 3,10: the model has 10 classes/);
  });

  test('a reference of some digits: its own statistics and floor, and the classes to sample',
    async () => {
      const some = await prepareMnistFid({ n, reference: 'mnist:7,5-6', cacheDir: join(dir, 'cache') });
      try {
        assert.deepEqual(some.digits, [5, 6, 7]);
        assert.match(some.train.path, /mnist_5-7-train/);
        assert.ok(some.train.stats.n > 2000 && some.train.stats.n < 3500, `${some.train.stats.n} images`);
        assert.notDeepEqual(some.train.stats.mu, m.train.stats.mu);
        assert.ok(some.floor > 0 && some.floor < 5, `floor ${some.floor}`);
      } finally {
        await some.dispose();
      }
      assert.equal(m.digits, undefined, 'the whole set samples every class');
      await assert.rejects(prepareMnistFid({ n, reference: 'fashion' }), /reference 'fashion': expected mnist/);
    });
});
