/** What the pipelines read and write on the CLI's behalf: training data by name, sampled
 *  images as a grid or one PNG each, the toy picture, a sweep's CSV and plot. */
import assert from 'node:assert/strict';
import { mkdir, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import { readPng, writePng } from '../io/png.js';
import { loadTrainingData } from './data.js';
import { CSV_COLUMNS, writeSweep } from './eval.js';
import { writeSamples } from './sample.js';
import { TOY_SAMPLERS, writeToyPicture } from './toy.js';
import { withTempDir } from '../../test/support/temp-dir.js';

const withDir = (fn: (dir: string) => Promise<void>): Promise<void> => withTempDir('files', fn);

test('loadTrainingData: mnist is its 9,000-digit train split; a folder comes with labels', () =>
  withDir(async (dir) => {
    const mnist = await loadTrainingData('mnist');
    assert.deepEqual(mnist.images.shape, [9000, 1, 32, 32]);
    assert.equal(mnist.labels?.length, 9000);
    for (const [k, name] of ['a', 'b'].entries()) {
      await mkdir(join(dir, name));
      const v = 50 + 100 * k;
      await writePng(join(dir, name, 'x.png'), { width: 2, height: 2, channels: 1,
        data: new Uint8Array(4).fill(v) });
    }
    const folder = await loadTrainingData(dir);
    assert.deepEqual(folder.images.shape, [2, 1, 2, 2]);
    assert.deepEqual([...folder.labels!], [0, 1]);
    assert.deepEqual(folder.classNames, ['a', 'b']);
    await assert.rejects(loadTrainingData(join(dir, 'none')),
      /image folder '.*none' does not exist/);
  }));

test('writeSamples: one padded grid, or one unpadded PNG per image in order', () =>
  withDir(async (dir) => {
    // Three 1x2x3 images, each a constant: -1, 0, 1 (bytes 0, 128, 255).
    const images = new HostArray<'float32'>(
      Float32Array.from({ length: 18 }, (_, i) => Math.floor(i / 6) - 1), [3, 1, 2, 3], 'float32');
    const grid1 = join(dir, 'grid.png');
    assert.deepEqual(await writeSamples(images, { out: grid1 }), [grid1]);
    const grid = await readPng(join(dir, 'grid.png'));
    assert.deepEqual([grid.width, grid.height], [2 * (3 + 2) + 2, 2 * (2 + 2) + 2],
      '2 x 2 cells, pad 2');
    const files = await writeSamples(images, { outDir: join(dir, 'each') });
    const names = ['000000.png', '000001.png', '000002.png'];
    assert.deepEqual(files, names.map((f) => join(dir, 'each', f)));
    assert.deepEqual((await readdir(join(dir, 'each'))).sort(), names);
    const firstPixels = await Promise.all(files.map(async (f) => {
      const img = await readPng(f);
      assert.deepEqual([img.width, img.height], [3, 2]);
      return img.data[0];
    }));
    assert.deepEqual(firstPixels, [0, 128, 255]);
  }));

test('the toy picture and the sweep files are written; toy samplers exclude flow samplers', () =>
  withDir(async (dir) => {
    assert.ok(TOY_SAMPLERS.includes('ddim') && TOY_SAMPLERS.includes('dpm++2m'));
    assert.ok(!TOY_SAMPLERS.some((s) => s.startsWith('flow')), TOY_SAMPLERS.join());
    const points = Float64Array.of(0, 0, 1, 1, -1, 0.5);
    await writeToyPicture(join(dir, 'toy.png'), { data: 'moons', heldOut: points, samples: points,
      sampler: 'ddim', steps: 10 });
    const toy = await readPng(join(dir, 'toy.png'));
    assert.ok(toy.width > toy.height, `two panels side by side: ${toy.width}x${toy.height}`);
    const row = { sampler: 'ddim', steps: 10, n: 4, fid: 12.5, accuracy: null, seconds: 2,
      secondsPerImage: 0.5 };
    await writeSweep([row, { ...row, steps: 20, fid: 8, seconds: 4, secondsPerImage: 1 }], 3,
      { csv: join(dir, 's.csv'), plot: join(dir, 's.png') });
    assert.equal(await readFile(join(dir, 's.csv'), 'utf8'),
      `${CSV_COLUMNS.join(',')}\nddim,10,4,12.5000,,0.5000,2.000,,\nddim,20,4,8.0000,,1.000,4.000,,\n`);
    assert.ok((await readPng(join(dir, 's.png'))).width > 0);
  }));
