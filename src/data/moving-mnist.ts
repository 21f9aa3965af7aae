/**
 * @file Moving MNIST, generated on the fly (after Srivastava et al. 2015, "Unsupervised
 * Learning of Video Representations using LSTMs"): a few MNIST digits fly across a black
 * canvas in straight lines, bouncing off its edges, and overlapping digits combine by per-pixel
 * max. A clip is a pure function of (key, index), so a training stream is endless yet exactly
 * reproducible, and a resumed run sees the clips an uninterrupted one would.
 *
 * Glyph size. The digits are MNIST's 28x28 glyphs: the 2-pixel padding `mnist.ts` adds is
 * cropped off again, so a glyph's box is the digit's own box and a digit bounces when that box
 * touches the edge (the padded 32x32 glyph would bounce 2 px early and lose 4 px of room). On
 * the original 64x64 canvas that leaves 36 px of room.
 * On a 32x32 canvas a 28x28 glyph could move only 4 px, so for canvases under 64 the glyph is
 * area-averaged down to 16x16, which leaves 16 px of room on 32x32.
 *
 * Clips come from MNIST's fixed split (`mnistSplits`): train on 'train', evaluate on
 * 'heldOut', so held-out clips hold digits that training never saw.
 */
import { HostArray } from '../engine/host.js';
import { portableSinCos2Pi, type RngKey } from '../engine/random/philox.js';
import type { ImageDataset } from './dataset.js';
import { mnistSplits } from './mnist.js';

export interface MovingMnistOptions {
  /** Frames per clip (>= 2; default 16). */
  frames?: number;
  /** The canvas side in pixels (default 32; 64 is the original dataset's). Glyphs are 16 px
   *  under 64 and 28 px from 64 up; the canvas must leave 4 px of room: side >= glyph + 4. */
  size?: number;
  /** Digits per clip, 1..4 (default 2). */
  digits?: number;
  /** Which MNIST split the digits come from (default 'train'). */
  split?: 'train' | 'heldOut';
}

/** One clip: `video` is [C = 1, F, H, W] in [-1, 1] (background -1); `digits` its labels. */
export interface MovingMnistClip {
  video: Float32Array;
  digits: number[];
}

/** A batch of clips: `videos` [B, 1, F, H, W] in [-1, 1], `digits` [B, digits] row-major. */
export interface MovingMnistBatch {
  videos: HostArray<'float32'>;
  digits: Int32Array;
}

/** MNIST's own glyph side, and the side it is shrunk to on canvases under 64. */
const MNIST_SIDE = 28;
const SMALL_GLYPH = 16;
/** Speeds are uniform in [MIN_SPEED, MAX_SPEED) pixels per frame, in a uniform direction. */
export const MOVING_MNIST_MIN_SPEED = 1;
export const MOVING_MNIST_MAX_SPEED = 3;

interface Resolved {
  frames: number;
  size: number;
  digits: number;
  split: 'train' | 'heldOut';
  glyph: number;
}

/** The glyph side used on a canvas of side `size`: 28 from 64 up, 16 below. */
export function movingMnistGlyphSide(size: number): number {
  return size >= 64 ? MNIST_SIDE : SMALL_GLYPH;
}

function resolve(o: MovingMnistOptions): Resolved {
  const frames = o.frames ?? 16;
  const size = o.size ?? 32;
  const digits = o.digits ?? 2;
  const split = o.split ?? 'train';
  if (!Number.isInteger(frames) || frames < 2) {
    throw new RangeError(`movingMnist: frames must be an integer >= 2, got ${frames}`);
  }
  const glyph = movingMnistGlyphSide(size);
  if (!Number.isInteger(size) || size < glyph + 4) {
    throw new RangeError(`movingMnist: size must be 32, 64 or another integer >= ` +
      `${SMALL_GLYPH + 4} (glyphs are ${SMALL_GLYPH} px under 64 and ${MNIST_SIDE} px from 64 ` +
      `up, and need 4 px of room), got ${size}`);
  }
  if (!Number.isInteger(digits) || digits < 1 || digits > 4) {
    throw new RangeError(`movingMnist: digits must be an integer in 1..4, got ${digits}`);
  }
  if (split !== 'train' && split !== 'heldOut') {
    throw new RangeError(`movingMnist: split must be 'train' or 'heldOut', got '${String(split)}'`);
  }
  return { frames, size, digits, split, glyph };
}

// mnistSplits copies 10,000 images each call; a stream of clips needs it once.
let splits: { train: ImageDataset; heldOut: ImageDataset } | undefined;
function splitData(split: 'train' | 'heldOut'): ImageDataset {
  splits ??= mnistSplits();
  return splits[split];
}

/** Row `row` of the split as a 28x28 glyph in [0, 1] (the 2-px padding cropped off). */
function mnistGlyph(d: ImageDataset, row: number): Float32Array {
  const padded = d.images.shape[3]!;
  const off = (padded - MNIST_SIDE) / 2;
  const src = d.images.data;
  const out = new Float32Array(MNIST_SIDE * MNIST_SIDE);
  for (let y = 0; y < MNIST_SIDE; y++) {
    const at = (row * padded + y + off) * padded + off;
    for (let x = 0; x < MNIST_SIDE; x++) out[y * MNIST_SIDE + x] = (src[at + x]! + 1) / 2;
  }
  return out;
}

/** weights[o * from + i]: the share of output cell o covered by input cell i (rows sum to 1). */
function areaWeights(from: number, to: number): Float64Array {
  const w = new Float64Array(to * from);
  const r = from / to;
  for (let o = 0; o < to; o++) {
    for (let i = Math.floor(o * r); i < Math.min(from, Math.ceil((o + 1) * r)); i++) {
      w[o * from + i] = (Math.min(i + 1, (o + 1) * r) - Math.max(i, o * r)) / r;
    }
  }
  return w;
}

/** Box (area-average) downsampling of a square glyph, separably: rows, then columns. */
function areaResize(src: Float32Array, from: number, to: number): Float32Array {
  if (from === to) return src;
  const w = areaWeights(from, to);
  const rows = new Float64Array(to * from); // [to, from]: rows resized
  for (let o = 0; o < to; o++) {
    for (let i = 0; i < from; i++) {
      const a = w[o * from + i]!;
      if (a !== 0) for (let x = 0; x < from; x++) rows[o * from + x]! += a * src[i * from + x]!;
    }
  }
  const out = new Float32Array(to * to);
  for (let y = 0; y < to; y++) {
    for (let o = 0; o < to; o++) {
      let s = 0;
      for (let i = 0; i < from; i++) s += w[o * from + i]! * rows[y * from + i]!;
      out[y * to + o] = s;
    }
  }
  return out;
}

/**
 * Integer top-left corners [frames, 2] (x, y) of one digit: a start uniform in the room
 * [0, room]^2, then straight steps of the velocity, reflected at the walls. The path is kept in
 * floats and only each frame's corner is rounded, so slow digits still move in a straight line.
 */
function trajectory(u: Float32Array, frames: number, room: number): Int32Array {
  const sc = new Float64Array(2);
  portableSinCos2Pi(u[3]!, sc); // not Math.sin/cos: their last bits differ across platforms
  const speed = MOVING_MNIST_MIN_SPEED + (MOVING_MNIST_MAX_SPEED - MOVING_MNIST_MIN_SPEED) * u[2]!;
  const p = Float64Array.of(u[0]! * room, u[1]! * room); // (x, y)
  const v = Float64Array.of(speed * sc[1]!, speed * sc[0]!);
  const out = new Int32Array(frames * 2);
  for (let f = 0; f < frames; f++) {
    for (let a = 0; f > 0 && a < 2; a++) {
      p[a] += v[a]!;
      // One reflection is enough: a step (< 3 px) is shorter than the room (>= 4 px).
      if (p[a]! < 0 || p[a]! > room) {
        p[a] = p[a]! < 0 ? -p[a]! : 2 * room - p[a]!;
        v[a] = -v[a]!;
      }
    }
    out[2 * f] = Math.round(p[0]!);
    out[2 * f + 1] = Math.round(p[1]!);
  }
  return out;
}

/** Renders clip `index` of `key` into `video` ([1, F, H, W], filled here); returns its labels. */
function renderClip(index: number, key: RngKey, o: Resolved, video: Float32Array): number[] {
  if (!Number.isSafeInteger(index) || index < 0) {
    throw new RangeError(`movingMnistClip: index must be a safe integer >= 0, got ${index}`);
  }
  const data = splitData(o.split);
  const n = data.images.shape[0]!;
  const [pickKey, motionKey] = key.fold(index).split(2) as [RngKey, RngKey];
  const rows = pickKey.uniformInt(o.digits, n);
  const u = motionKey.uniform(4 * o.digits); // per digit: x0, y0, speed, direction
  const { frames, size, glyph } = o;
  const room = size - glyph;
  const canvas = video.fill(0); // [0, 1] while the digits are combined by max
  const labels: number[] = [];
  for (let d = 0; d < o.digits; d++) {
    labels.push(data.labels![rows[d]!]!);
    const g = areaResize(mnistGlyph(data, rows[d]!), MNIST_SIDE, glyph);
    const path = trajectory(u.subarray(4 * d, 4 * d + 4), frames, room);
    for (let f = 0; f < frames; f++) {
      const x0 = path[2 * f]!, y0 = path[2 * f + 1]!;
      for (let y = 0; y < glyph; y++) {
        const at = (f * size + y0 + y) * size + x0;
        for (let x = 0; x < glyph; x++) {
          canvas[at + x] = Math.max(canvas[at + x]!, g[y * glyph + x]!);
        }
      }
    }
  }
  for (let i = 0; i < canvas.length; i++) canvas[i] = 2 * canvas[i]! - 1;
  return labels;
}

/**
 * Clip `index` of the stream of `key`: a pure function of (key, index, options). The digits
 * are rows of the split drawn uniformly (with replacement) from `key.fold(index)`, and so are
 * their starts, speeds and directions. Digit d's draws come before digit d+1's, so the first k
 * digits of a clip are the same whatever `digits` is (>= k).
 */
export function movingMnistClip(index: number, key: RngKey, o: MovingMnistOptions = {}):
  MovingMnistClip {
  const r = resolve(o);
  const video = new Float32Array(r.frames * r.size * r.size);
  return { video, digits: renderClip(index, key, r, video) };
}

/** Clips 0..n-1 of `key`, as a batch: a fixed evaluation set (use a key training never uses). */
export function movingMnistSet(n: number, key: RngKey, o: MovingMnistOptions = {}):
  MovingMnistBatch {
  const r = resolve(o);
  if (!Number.isInteger(n) || n < 1) {
    throw new RangeError(`movingMnistSet: n must be an integer >= 1, got ${n}`);
  }
  const per = r.frames * r.size * r.size;
  const videos = new Float32Array(n * per);
  const digits = new Int32Array(n * r.digits);
  for (let i = 0; i < n; i++) {
    digits.set(renderClip(i, key, r, videos.subarray(i * per, (i + 1) * per)), i * r.digits);
  }
  return { videos: new HostArray(videos, [n, 1, r.frames, r.size, r.size]), digits };
}

/**
 * The batch of training step `step`: clips 0..batchSize-1 of `key.fold(step)`. Every step sees
 * fresh clips (the stream never repeats an epoch), and a pure function of (key, step) is what
 * makes resuming exact.
 */
export function movingMnistBatch(
  key: RngKey, step: number, batchSize: number, o: MovingMnistOptions = {},
): MovingMnistBatch {
  if (!Number.isSafeInteger(step) || step < 0) {
    throw new RangeError(`movingMnistBatch: step must be a safe integer >= 0, got ${step}`);
  }
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new RangeError(`movingMnistBatch: batchSize must be an integer >= 1, got ${batchSize}`);
  }
  return movingMnistSet(batchSize, key.fold(step), o);
}
