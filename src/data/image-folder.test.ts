/** Image folders: labels from sub-folders, grey detection, and clear errors. */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { encodePng } from '../io/png.js';
import { loadImageFolder } from './image-folder.js';

const grey = (w: number, h: number, v: number) => encodePng({ width: w, height: h, channels: 1, data: new Uint8Array(w * h).fill(v) });

test('labelled sub-folders, values in [-1, 1], and the errors users hit', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'diffuse-folder-'));
  try {
    await mkdir(join(dir, 'cats'));
    await mkdir(join(dir, 'dogs'));
    await writeFile(join(dir, 'cats', 'a.png'), grey(4, 4, 0));
    await writeFile(join(dir, 'dogs', 'b.png'), grey(4, 4, 255));
    await writeFile(join(dir, 'dogs', 'c.png'), grey(4, 4, 255));
    const d = await loadImageFolder(dir);
    assert.deepEqual(d.images.shape, [3, 1, 4, 4]);
    assert.deepEqual(Array.from(d.labels!), [0, 1, 1]);
    assert.deepEqual(d.classNames, ['cats', 'dogs']);
    assert.equal(d.images.data[0], -1);
    assert.equal(d.images.data[16], 1);
    await writeFile(join(dir, 'dogs', 'big.png'), grey(5, 4, 0));
    await assert.rejects(loadImageFolder(dir), /big.png is 5x4, the first image is 4x4/);
    const empty = join(dir, 'empty');
    await mkdir(empty);
    await assert.rejects(loadImageFolder(empty), /has no .png images/);
    await assert.rejects(loadImageFolder(join(dir, 'missing')), /does not exist/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
