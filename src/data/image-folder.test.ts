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
    assert.deepEqual(d.files, [join('cats', 'a.png'), join('dogs', 'b.png'), join('dogs', 'c.png')]);
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

const rgba = (w: number, h: number, px: [number, number, number, number]) => encodePng({
  width: w, height: h, channels: 4,
  data: Uint8Array.from({ length: w * h * 4 }, (_, i) => px[i % 4]!) });
const rgb = (w: number, h: number, px: [number, number, number]) => encodePng({
  width: w, height: h, channels: 3, data: Uint8Array.from({ length: w * h * 3 }, (_, i) => px[i % 3]!) });

test('channels: opaque alpha is dropped, transparency and grey-colour mixes are errors', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'diffuse-folder-'));
  try {
    // An opaque RGBA grey image is grey: the alpha channel does not make the set colour.
    await writeFile(join(dir, 'a.png'), grey(2, 2, 0));
    await writeFile(join(dir, 'b.png'), rgba(2, 2, [255, 255, 255, 255]));
    const d = await loadImageFolder(dir);
    assert.deepEqual(d.images.shape, [2, 1, 2, 2]);
    assert.deepEqual(Array.from(d.images.data.subarray(4)), [1, 1, 1, 1]);

    const c = join(dir, 'c.png');
    await writeFile(c, rgba(2, 2, [255, 255, 255, 254]));
    await assert.rejects(loadImageFolder(dir), {
      name: 'DatasetError',
      message: `${c} has transparent pixels (alpha < 255, first at 0, 0); flatten it onto a ` +
        'background first' });
    await rm(c);

    const colour = join(dir, 'd.png');
    await writeFile(colour, rgba(2, 2, [255, 0, 0, 255]));
    await assert.rejects(loadImageFolder(dir), {
      name: 'DatasetError',
      message: `image folder '${dir}' mixes grey and colour images (grey: ${join(dir, 'a.png')}, ` +
        `colour: ${colour}): convert them to one kind, or load with channels 1 or 3` });
    // Asked for, 3 channels repeat the grey images; colour alone is 3 channels by itself.
    const three = await loadImageFolder(dir, { channels: 3 });
    assert.deepEqual(three.images.shape, [3, 3, 2, 2]);
    assert.deepEqual(Array.from(three.images.data.subarray(0, 12)), Array(12).fill(-1));
    await rm(join(dir, 'a.png'));
    await rm(join(dir, 'b.png'));
    await writeFile(join(dir, 'e.png'), rgb(2, 2, [0, 255, 0]));
    assert.deepEqual((await loadImageFolder(dir)).images.shape, [2, 3, 2, 2]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a class sub-folder without .png images is an error naming it', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'diffuse-folder-'));
  try {
    await mkdir(join(dir, 'cats'));
    await mkdir(join(dir, 'dogs'));
    await writeFile(join(dir, 'cats', 'a.png'), grey(2, 2, 0));
    await assert.rejects(loadImageFolder(dir), {
      name: 'DatasetError',
      message: `class folder '${join(dir, 'dogs')}' has no .png images: every sub-folder of an ` +
        'image folder is a class; add images or remove the folder' });
    await writeFile(join(dir, 'dogs', 'b.jpg'), '');
    await assert.rejects(loadImageFolder(dir), {
      message: `class folder '${join(dir, 'dogs')}' has no .png images (it has 1 other file, ` +
        'e.g. b.jpg; only .png is read): every sub-folder of an image folder is a class; add ' +
        'images or remove the folder' });
    await writeFile(join(dir, 'dogs', 'b.png'), grey(2, 2, 255));
    assert.deepEqual((await loadImageFolder(dir)).classNames, ['cats', 'dogs']);
    await assert.rejects(loadImageFolder(join(dir, 'dogs', 'b.png')),
      /image folder '.*b\.png' is not a folder/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
