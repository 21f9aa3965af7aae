/** Video output: GIFs decoded back with omggif, frame strips and grids, the extension check. */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { GifReader } from 'omggif';
import { HostArray } from '../engine/host.js';
import { readPng } from './png.js';
import { encodeGif, frameStrip, videoFrames, videoGrid, writeVideo } from './video.js';

/** A clip [F, C, H, W] whose values sweep [-1, 1], shuffled so neighbours differ. */
function sweep(f: number, c: number, h: number, w: number): HostArray<'float32'> {
  const n = f * c * h * w; // 37 is prime to every n used here, so i * 37 % n is a permutation
  const data = Float32Array.from({ length: n }, (_, i) => -1 + (2 * ((i * 37) % n)) / (n - 1));
  return new HostArray(data, [f, c, h, w]);
}

/** Every frame of a GIF as RGBA bytes. */
function decodeFrames(gif: GifReader): Uint8Array[] {
  return Array.from({ length: gif.numFrames() }, (_, f) => {
    const px = new Uint8Array(gif.width * gif.height * 4);
    gif.decodeAndBlitFrameRGBA(f, px);
    return px;
  });
}

async function inTempDir(body: (dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'diffuse-video-'));
  try {
    await body(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('a grey GIF decodes back: frames, size, delay, loop, pixels within 1/255', () =>
  inTempDir(async (dir) => {
    const clip = sweep(5, 1, 6, 7); // 210 values: most grey levels
    const path = join(dir, 'clip.gif');
    await writeVideo(path, clip, { fps: 8, scale: 3 });
    const gif = new GifReader(new Uint8Array(await readFile(path)));
    assert.equal(gif.numFrames(), 5);
    assert.deepEqual([gif.width, gif.height], [21, 18]);
    assert.equal(gif.loopCount(), 0); // forever
    for (let f = 0; f < 5; f++) assert.equal(gif.frameInfo(f).delay, 13); // 100 / 8 = 12.5 cs
    decodeFrames(gif).forEach((px, f) => {
      for (let y = 0; y < 18; y++) {
        for (let x = 0; x < 21; x++) {
          const want = clip.data[(f * 6 + Math.floor(y / 3)) * 7 + Math.floor(x / 3)]!;
          const at = (y * 21 + x) * 4;
          assert.equal(px[at], px[at + 2]); // grey
          const got = px[at]! / 127.5 - 1;
          assert.ok(Math.abs(got - want) <= 1 / 255 + 1e-6, `frame ${f} (${x}, ${y})`);
        }
      }
    });
    const once = new GifReader(encodeGif(clip, { fps: 25, loop: false }));
    assert.equal(once.loopCount(), null);
    assert.equal(once.frameInfo(0).delay, 4);
  }));

test('an RGB GIF keeps a few colours through the shared palette', () => {
  const colours = [[-1, -1, -1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, 1]];
  const f = 3, h = 4, w = 5;
  const colourAt = (t: number, i: number) => colours[(t + i) % colours.length]!;
  const data = new Float32Array(f * 3 * h * w);
  for (let t = 0; t < f; t++) {
    for (let i = 0; i < h * w; i++) {
      for (let k = 0; k < 3; k++) data[(t * 3 + k) * h * w + i] = colourAt(t, i)[k]!;
    }
  }
  const gif = new GifReader(encodeGif(new HostArray(data, [f, 3, h, w])));
  assert.equal(gif.numFrames(), 3);
  decodeFrames(gif).forEach((px, t) => {
    for (let i = 0; i < h * w; i++) {
      for (let k = 0; k < 3; k++) {
        const want = (colourAt(t, i)[k]! + 1) * 127.5;
        assert.ok(Math.abs(px[i * 4 + k]! - want) <= 8, `frame ${t} pixel ${i}`);
      }
    }
  });
});

test('frame strips and video grids: sizes and where each frame lands', () =>
  inTempDir(async (dir) => {
    const clip = sweep(6, 1, 4, 5);
    const strip = frameStrip(clip);
    assert.deepEqual([strip.width, strip.height, strip.channels], [6 * 7 + 2, 4 + 4, 1]);
    const wrapped = frameStrip(clip, { cols: 4 });
    assert.deepEqual([wrapped.width, wrapped.height], [4 * 7 + 2, 2 * 6 + 2]);
    // [N = 2, C = 1, F = 3, H = 2, W = 2]: video n, frame t holds the value n - 0.5 t.
    const values = Float32Array.from({ length: 24 },
      (_, i) => Math.floor(i / 12) - 0.5 * Math.floor((i % 12) / 4));
    const videos = new HostArray(values, [2, 1, 3, 2, 2]);
    assert.deepEqual(Array.from(videoFrames(videos, 1).data.subarray(4, 8)), [0.5, 0.5, 0.5, 0.5]);
    const grid = videoGrid(videos, { pad: 1 });
    assert.deepEqual([grid.width, grid.height], [3 * 3 + 1, 2 * 3 + 1]);
    const at = (n: number, t: number) => grid.data[(1 + 3 * n) * grid.width + 1 + 3 * t];
    assert.deepEqual([at(0, 0), at(0, 2), at(1, 0), at(1, 1)], [128, 0, 255, 191]);
    await writeVideo(join(dir, 'strip.PNG'), clip, { cols: 3, scale: 2 });
    const png = await readPng(join(dir, 'strip.PNG'));
    assert.deepEqual([png.width, png.height], [3 * 12 + 2, 2 * 10 + 2]);
  }));

test('unsupported extensions and bad clips are errors that say what is supported', async () => {
  const clip = sweep(2, 1, 2, 2);
  await assert.rejects(writeVideo('out.mp4', clip), /'\.mp4'.*supported are \.gif.*\.png.*MP4/);
  await assert.rejects(writeVideo('out', clip), /\(no extension\).*\.gif.*\.png/);
  assert.throws(() => encodeGif(new HostArray(new Float32Array(8), [2, 2, 2])),
    /expected float32 frames \[F >= 1, C = 1 or 3, H, W\], got float32 \[2, 2, 2\]/);
  assert.throws(() => encodeGif(sweep(1, 2, 2, 2)), /C = 1 or 3/);
  assert.throws(() => encodeGif(clip, { scale: 1.5 }), /scale must be an integer >= 1/);
  assert.throws(() => encodeGif(clip, { fps: 60 }), /fps must be in \(0, 50\]/);
  assert.throws(() => videoGrid(clip), /expected float32 videos \[N, C, F, H, W\]/);
  assert.throws(() => videoFrames(new HostArray(new Float32Array(8), [1, 1, 2, 2, 2]), 1),
    /video index must be an integer in \[0, 1\), got 1/);
});
