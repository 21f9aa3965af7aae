/** Moving MNIST: clips are pure functions of (key, index); digits keep their mass, move, bounce. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RngKey } from '../engine/random/philox.js';
import {
  MOVING_MNIST_MAX_SPEED, movingMnistBatch, movingMnistClip, movingMnistGlyphSide, movingMnistSet,
  type MovingMnistOptions,
} from './moving-mnist.js';

const key = RngKey.fromSeed(7);

interface Ink { mass: number; cx: number; cy: number }

/** Per frame of a [1, F, S, S] clip: ink mass (sum of (x + 1) / 2) and its centre (x, y). */
function inkPerFrame(video: Float32Array, frames: number, size: number): Ink[] {
  return Array.from({ length: frames }, (_, f) => {
    let mass = 0, sx = 0, sy = 0;
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        const m = (video[(f * size + y) * size + x]! + 1) / 2;
        mass += m; sx += m * x; sy += m * y;
      }
    }
    return { mass, cx: sx / mass, cy: sy / mass };
  });
}

test('a clip is a pure function of (key, index); other indices and keys give other clips', () => {
  const a = movingMnistClip(3, key);
  assert.deepEqual(movingMnistClip(3, key), a);
  assert.equal(a.video.length, 16 * 32 * 32);
  assert.equal(a.digits.length, 2);
  for (const d of a.digits) assert.ok(Number.isInteger(d) && d >= 0 && d <= 9);
  assert.notDeepEqual(movingMnistClip(4, key).video, a.video);
  assert.notDeepEqual(movingMnistClip(3, RngKey.fromSeed(8)).video, a.video);
  // The held-out split is other digits.
  assert.notDeepEqual(movingMnistClip(3, key, { split: 'heldOut' }).video, a.video);
});

test('pixels lie in [-1, 1] with a -1 background, and every frame has ink', () => {
  for (const size of [32, 64]) {
    const { video } = movingMnistClip(0, key, { size, frames: 8 });
    let lo = Infinity, hi = -Infinity, background = 0;
    for (const v of video) {
      (lo = Math.min(lo, v), hi = Math.max(hi, v), background += v === -1 ? 1 : 0);
    }
    assert.equal(lo, -1);
    assert.ok(hi <= 1 && hi > 0.9, `brightest pixel ${hi}`);
    assert.ok(background > video.length / 2, `${background} of ${video.length} are background`);
    for (const f of inkPerFrame(video, 8, size)) assert.ok(f.mass > 5, `frame mass ${f.mass}`);
  }
});

test('one digit keeps its mass in every frame; two lose mass only where they overlap', () => {
  for (const size of [32, 64]) {
    for (let i = 0; i < 4; i++) {
      const ink = inkPerFrame(movingMnistClip(i, key, { size, digits: 1 }).video, 16, size);
      for (const f of ink) {
        assert.ok(Math.abs(f.mass - ink[0]!.mass) < 1e-3, `size ${size} clip ${i}: ${f.mass}`);
      }
    }
  }
  // Digit 0 of a clip does not depend on how many digits it has, so a one-digit clip gives
  // the first digit's mass alone.
  assert.deepEqual(movingMnistClip(9, key, { digits: 1 }).digits,
    movingMnistClip(9, key, { digits: 3 }).digits.slice(0, 1));
  const massOf = (i: number, digits: number) =>
    inkPerFrame(movingMnistClip(i, key, { size: 64, digits }).video, 16, 64).map((f) => f.mass);
  // Clip 24 (found by search): the two digits never meet, so every frame holds both in full.
  const apart = massOf(24, 2), first = massOf(24, 1)[0]!;
  for (const m of apart) assert.ok(Math.abs(m - apart[0]!) < 1e-3, `clip 24: ${m} vs ${apart[0]}`);
  assert.ok(apart[0]! > first + 20, `second digit adds ${apart[0]! - first}`);
  // Clip 0: the digits cross. Where they overlap the max keeps the larger value, so a frame
  // has less than both in full but at least either one alone.
  const crossing = massOf(0, 2), alone = massOf(0, 1)[0]!;
  const both = Math.max(...crossing);
  assert.ok(Math.min(...crossing) < both - 5, 'the digits overlap somewhere');
  for (const m of crossing) {
    assert.ok(m <= both + 1e-3 && m >= Math.max(alone, both - alone) - 1e-3, `mass ${m}`);
  }
});

test('where two digits overlap, a pixel is one digit\'s value (max), not their sum', () => {
  // Size 32, clip 0: its 16 px glyphs are area-averaged, so their values are nearly all
  // distinct and a sum of two of them is almost never a value of either.
  const two = movingMnistClip(0, key).video, one = movingMnistClip(0, key, { digits: 1 }).video;
  const frame = 32 * 32;
  const mass = inkPerFrame(two, 16, 32).map((f) => f.mass);
  const full = Math.max(...mass);
  // In frames where the ink does not overlap, the pixels digit 0 leaves dark are digit 1's.
  const second = new Set<number>();
  mass.forEach((m, f) => {
    if (m < full - 1e-3) return;
    for (let i = f * frame; i < (f + 1) * frame; i++) if (one[i] === -1) second.add(two[i]!);
  });
  let overlaps = 0;
  for (let i = 0; i < two.length; i++) {
    if (two[i] === one[i]) continue;
    assert.ok(two[i]! > one[i]!, `pixel ${i}: ${two[i]} < digit 0's ${one[i]}`);
    assert.ok(second.has(two[i]!), `pixel ${i}: ${two[i]} is neither digit's value`);
    if (one[i]! > -1) overlaps++;
  }
  assert.ok(overlaps > 10, `${overlaps} pixels where both digits have ink`);
});

test('digits move at most the top speed per frame, stay in their room, and bounce', () => {
  for (const size of [32, 64]) {
    const room = size - movingMnistGlyphSide(size);
    let bounced = 0;
    for (let i = 0; i < 6; i++) {
      const clip = movingMnistClip(i, key, { size, frames: 64, digits: 1 });
      const ink = inkPerFrame(clip.video, 64, size);
      const signs: number[][] = [[], []];
      for (let f = 1; f < 64; f++) {
        const step = [ink[f]!.cx - ink[f - 1]!.cx, ink[f]!.cy - ink[f - 1]!.cy];
        // Positions are rounded per frame, so each axis moves by whole pixels, at most 3.
        for (const d of step) {
          assert.ok(Math.abs(d) <= MOVING_MNIST_MAX_SPEED + 1e-3, `size ${size} clip ${i}: ${d}`);
        }
        assert.ok(Math.hypot(step[0]!, step[1]!) <= MOVING_MNIST_MAX_SPEED + Math.SQRT2);
        step.forEach((d, a) => { if (Math.abs(d) > 1e-3) signs[a]!.push(Math.sign(d)); });
      }
      // The glyph's corner stays in [0, room], so its centre of ink sweeps at most the room.
      for (const axis of ['cx', 'cy'] as const) {
        const c = ink.map((f) => f[axis]);
        assert.ok(Math.max(...c) - Math.min(...c) <= room + 1e-3, `size ${size} clip ${i} ${axis}`);
      }
      const moved = signs[0]!.length + signs[1]!.length;
      assert.ok(moved >= 32, `clip ${i} moved in only ${moved} axis-steps`);
      if (signs.some((s) => s.some((v, k) => k > 0 && v !== s[k - 1]))) bounced++;
    }
    // Speed >= 1 takes the faster axis >= 44 px in 63 steps, more than the room (<= 36 px).
    assert.equal(bounced, 6, `size ${size}: ${bounced} of 6 clips bounced`);
  }
});

test('batches: shapes, labels, a pure function of (key, step), fresh clips each step', () => {
  const b = movingMnistBatch(key, 5, 3, { frames: 4 });
  assert.deepEqual(b.videos.shape, [3, 1, 4, 32, 32]);
  assert.equal(b.digits.length, 6);
  assert.deepEqual(movingMnistBatch(key, 5, 3, { frames: 4 }), b);
  const one = movingMnistClip(1, key.fold(5), { frames: 4 });
  assert.deepEqual(b.videos.data.subarray(4 * 1024, 8 * 1024), one.video);
  assert.deepEqual(Array.from(b.digits.subarray(2, 4)), one.digits);
  assert.notDeepEqual(movingMnistBatch(key, 6, 3, { frames: 4 }).videos.data, b.videos.data);
  const set = movingMnistSet(2, key, { size: 64, digits: 3, frames: 2, split: 'heldOut' });
  assert.deepEqual(set.videos.shape, [2, 1, 2, 64, 64]);
  assert.equal(set.digits.length, 6);
  assert.deepEqual(set.videos.data.subarray(0, 2 * 64 * 64),
    movingMnistClip(0, key, { size: 64, digits: 3, frames: 2, split: 'heldOut' }).video);
});

test('bad options are RangeErrors naming the option and the expected form', () => {
  const clip = (o: MovingMnistOptions) => () => movingMnistClip(0, key, o);
  assert.throws(clip({ frames: 1 }), /frames must be an integer >= 2, got 1/);
  assert.throws(clip({ size: 19 }), /size must be 32, 64 or another integer >= 20.*got 19/);
  assert.throws(clip({ size: 32.5 }), /size must be/);
  assert.equal(movingMnistClip(0, key, { size: 20, frames: 2 }).video.length, 2 * 400);
  assert.throws(clip({ digits: 0 }), /digits must be an integer in 1..4, got 0/);
  assert.throws(clip({ digits: 5 }), /digits must be an integer in 1..4/);
  assert.throws(clip({ split: 'test' as 'train' }), /split must be 'train' or 'heldOut'/);
  assert.throws(() => movingMnistClip(-1, key), /index must be a safe integer >= 0/);
  assert.throws(() => movingMnistBatch(key, 0, 0), /batchSize must be an integer >= 1/);
  assert.throws(() => movingMnistBatch(key, -1, 2), /step must be a safe integer >= 0/);
  assert.throws(() => movingMnistSet(0, key), /n must be an integer >= 1/);
  assert.throws(clip({ frames: 1 }), RangeError);
});
