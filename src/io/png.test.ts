/** PNG encode/decode round trip, grids of batches, deterministic bytes, scatter panels. */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import { decodePng, encodePng, imageGrid, readPng, toByte } from './png.js';
import { linePlot, scatterPanels } from './plot.js';

test('grey and RGB images round-trip through PNG bytes', () => {
  const grey = { width: 3, height: 2, channels: 1 as const, data: Uint8Array.of(0, 50, 100, 150, 200, 255) };
  const back = decodePng(encodePng(grey));
  assert.equal(back.width, 3);
  assert.deepEqual(Array.from(back.data.filter((_, i) => i % 4 === 0)), [0, 50, 100, 150, 200, 255]);
  const rgb = { width: 1, height: 2, channels: 3 as const, data: Uint8Array.of(1, 2, 3, 4, 5, 6) };
  assert.deepEqual(Array.from(decodePng(encodePng(rgb)).data), [1, 2, 3, 255, 4, 5, 6, 255]);
  assert.deepEqual(encodePng(rgb), encodePng(rgb));
  assert.throws(() => decodePng(Uint8Array.of(1, 2, 3)), /not a readable PNG/);
});

test('imageGrid lays out a [-1, 1] batch with padding', () => {
  const batch = new HostArray(Float32Array.from({ length: 3 * 4 }, (_, i) => (i < 4 ? -1 : i < 8 ? 0 : 1)), [3, 1, 2, 2]);
  const img = imageGrid(batch, { cols: 2, pad: 1 });
  assert.deepEqual([img.width, img.height, img.channels], [7, 7, 1]);
  assert.equal(img.data[1 * 7 + 1], 0); // image 0, pixel (0, 0): -1 -> 0
  assert.equal(img.data[1 * 7 + 4], 128); // image 1: 0 -> 128 (127.5 rounds up)
  assert.equal(img.data[4 * 7 + 1], 255); // image 2 on the second row: 1 -> 255
  assert.equal(img.data[0], 0); // padding
  assert.equal(toByte(3), 255);
  assert.throws(() => imageGrid(new HostArray(new Float32Array(4), [2, 2])), /expected \[N, 1 or 3, H, W\]/);
});

test('scatter panels draw points inside their own panel', () => {
  const img = scatterPanels([{ title: 'data', points: [0, 0, 1, 1] }, { title: 'samples', points: [0.5, 0.5] }],
    { size: 100, bounds: [0, 1] });
  assert.equal(img.width, 2 * 112 + 12);
  const px = (x: number, y: number) => Array.from(img.data.slice(3 * (y * img.width + x), 3 * (y * img.width + x) + 3));
  assert.deepEqual(px(12, 24 + 99), [31, 119, 180]); // (0, 0) of panel 1 at its bottom-left
  assert.deepEqual(px(12 + 112 + 49, 24 + 49), [255, 127, 14]); // (0.5, 0.5) of panel 2
});

test('a line plot widens its legend column for long labels, keeping the plot area', () => {
  const plot = (label: string) => linePlot([{ label, points: [0, 1, 1, 2] }],
    { title: 't', xLabel: 'x', yLabel: 'y' });
  assert.equal(plot('ddim').width, 640);
  const long = plot('ddim+deepcache:5,nonuniform'); // 27 characters
  assert.equal(long.width, 640 + 50 + 8 * 27 - 180);
  // The legend text reaches past where the short image ends.
  let inkPast = false;
  for (let y = 0; y < long.height; y++) {
    for (let x = 641; x < long.width; x++) inkPast ||= long.data[(y * long.width + x) * 3]! < 128;
  }
  assert.ok(inkPast, 'legend ink beyond x = 640');
});

test('readPng names a folder or a FIFO for what it is, without blocking on the FIFO',
  { skip: process.platform === 'win32' && 'no mkfifo', timeout: 5000 }, async () => {
    const dir = await mkdtemp(join(tmpdir(), 'diffuse-png-'));
    try {
      await mkdir(join(dir, 'a.png'));
      await assert.rejects(readPng(join(dir, 'a.png')), { name: 'FileKindError',
        message: `${join(dir, 'a.png')}: not a regular file (a folder): expected a .png file` });
      execFileSync('mkfifo', [join(dir, 'b.png')]);
      await assert.rejects(readPng(join(dir, 'b.png')), { name: 'FileKindError',
        message: `${join(dir, 'b.png')}: not a regular file (a FIFO): expected a .png file` });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
