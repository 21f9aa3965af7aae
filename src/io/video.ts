/**
 * @file Video output: animated GIFs (through `gifenc`, pure JavaScript) and still frame
 * strips and grids as PNG. Videos come from models as float32 in [-1, 1], a clip as frames
 * [F, C, H, W] and a batch as [N, C, F, H, W] (C = 1 or 3).
 *
 * Greyscale GIFs use a fixed 256-level grey palette, so every byte value survives as is; RGB
 * GIFs share one palette quantised over all frames (so colours do not flicker from frame to
 * frame). MP4 is not supported: no well-kept pure-JavaScript encoder exists that does not need
 * native binaries (ffmpeg), and this package installs none.
 */
import { extname } from 'node:path';
import gifenc from 'gifenc';
import { HostArray } from '../engine/host.js';
import { imageGrid, toByte, writeFileAtomic, writePng, type Image } from './png.js';

export interface GifOptions {
  /** Frames per second (default 8), at most 50: GIF delays are whole centiseconds and
   *  browsers slow any delay under 2 cs down to 10 cs. */
  fps?: number;
  /** Integer pixel upscaling, nearest neighbour (default 1); a .png strip is scaled too. */
  scale?: number;
  /** Loop forever (default true), or play once. */
  loop?: boolean;
}

export interface VideoOptions extends GifOptions {
  /** Frames per row of a .png frame strip (default all in one row). */
  cols?: number;
}

const MAX_FPS = 50;

/** The shape [F, C, H, W] of a float32 clip, checked (so its data may be read as float32). */
function clipShape(frames: HostArray, op: string): [number, number, number, number] {
  const [f, c, h, w] = frames.shape as [number, number, number, number];
  if (frames.shape.length !== 4 || (c !== 1 && c !== 3) || f < 1 || frames.dtype !== 'float32') {
    throw new RangeError(`${op}: expected float32 frames [F >= 1, C = 1 or 3, H, W], got ` +
      `${frames.dtype} [${frames.shape.join(', ')}]`);
  }
  return [f, c, h, w];
}

/** A checked clip [F, C, H, W] with each pixel repeated into a `scale` x `scale` block. */
function upscale(frames: HostArray, scale: number, op: string): HostArray {
  const [f, c, h, w] = clipShape(frames, op);
  if (!Number.isInteger(scale) || scale < 1) {
    throw new RangeError(`${op}: scale must be an integer >= 1, got ${scale}`);
  }
  if (scale === 1) return frames;
  const src = frames.data as Float32Array;
  const out = new Float32Array(f * c * h * w * scale * scale);
  const width = w * scale;
  for (let p = 0; p < f * c; p++) { // each plane (frame, channel)
    for (let y = 0; y < h * scale; y++) {
      const row = (p * h + Math.floor(y / scale)) * w;
      const at = (p * h * scale + y) * width;
      for (let x = 0; x < width; x++) out[at + x] = src[row + Math.floor(x / scale)]!;
    }
  }
  return new HostArray(out, [f, c, h * scale, width]);
}

/** Frame `f` of a checked clip as 8-bit pixels, interleaved. */
function frameBytes(frames: HostArray, f: number): Image {
  const [, c, h, w] = frames.shape as [number, number, number, number];
  const src = frames.data as Float32Array;
  const data = new Uint8Array(h * w * c);
  for (let i = 0; i < h * w; i++) {
    for (let k = 0; k < c; k++) data[i * c + k] = toByte(src[(f * c + k) * h * w + i]!);
  }
  return { width: w, height: h, channels: c as 1 | 3, data };
}

/** The bytes of a GIF of a clip [F, C, H, W] in [-1, 1] (C = 1 or 3). */
export function encodeGif(frames: HostArray, opts: GifOptions = {}): Uint8Array {
  const { fps = 8, scale = 1, loop = true } = opts;
  if (!(fps > 0 && fps <= MAX_FPS)) {
    throw new RangeError(`encodeGif: fps must be in (0, ${MAX_FPS}], got ${fps}`);
  }
  const clip = upscale(frames, scale, 'encodeGif');
  const [count, c, height, width] = clip.shape as [number, number, number, number];
  const centiseconds = Math.min(0xffff, Math.round(100 / fps));
  const images = Array.from({ length: count }, (_, f) => frameBytes(clip, f));
  let indices: Uint8Array[];
  let palette: number[][];
  if (c === 1) {
    palette = Array.from({ length: 256 }, (_, v) => [v, v, v]);
    indices = images.map((im) => im.data); // a grey byte is its own palette index
  } else {
    // One palette for all frames. gifenc reads RGBA through the whole buffer: a fresh array.
    const px = width * height;
    const rgba = new Uint8Array(count * px * 4).fill(255);
    images.forEach((im, f) => {
      for (let i = 0; i < px; i++) {
        for (let k = 0; k < 3; k++) rgba[(f * px + i) * 4 + k] = im.data[i * 3 + k]!;
      }
    });
    palette = gifenc.quantize(rgba, 256);
    const all = gifenc.applyPalette(rgba, palette);
    indices = images.map((_, f) => all.subarray(f * px, (f + 1) * px));
  }
  const gif = gifenc.GIFEncoder();
  indices.forEach((index, f) => {
    // The palette on the first frame only: it becomes the global table, shared by all frames.
    const first = f === 0 ? { palette, repeat: loop ? 0 : -1 } : {};
    gif.writeFrame(index, width, height, { delay: centiseconds * 10, ...first });
  });
  gif.finish();
  return gif.bytes();
}

/** Writes a clip [F, C, H, W] in [-1, 1] as an animated GIF, atomically. */
export async function writeGif(path: string, frames: HostArray, opts: GifOptions = {}):
  Promise<void> {
  await writeFileAtomic(path, encodeGif(frames, opts));
}

/** The frames of a clip [F, C, H, W] left to right, wrapping after `cols` (default all). */
export function frameStrip(frames: HostArray, opts: { cols?: number; pad?: number } = {}): Image {
  const [f] = clipShape(frames, 'frameStrip');
  return imageGrid(frames, { cols: opts.cols ?? f, pad: opts.pad });
}

/** The shape [N, C, F, H, W] of a float32 batch of videos, checked. */
function batchShape(videos: HostArray, op: string): [number, number, number, number, number] {
  if (videos.shape.length !== 5 || videos.dtype !== 'float32') {
    throw new RangeError(`${op}: expected float32 videos [N, C, F, H, W], got ` +
      `${videos.dtype} [${videos.shape.join(', ')}]`);
  }
  return videos.shape as [number, number, number, number, number];
}

/** Video `i` of a float32 batch [N, C, F, H, W], as a clip [F, C, H, W]. */
export function videoFrames(videos: HostArray, i: number): HostArray<'float32'> {
  const [n, c, f, h, w] = batchShape(videos, 'videoFrames');
  if (!Number.isInteger(i) || i < 0 || i >= n) {
    throw new RangeError(`videoFrames: video index must be an integer in [0, ${n}), got ${i}`);
  }
  const src = videos.data as Float32Array;
  const out = new Float32Array(f * c * h * w);
  const hw = h * w;
  for (let t = 0; t < f; t++) {
    for (let k = 0; k < c; k++) {
      const from = ((i * c + k) * f + t) * hw; // [i, k, t] -> [t, k]
      out.set(src.subarray(from, from + hw), (t * c + k) * hw);
    }
  }
  return new HostArray(out, [f, c, h, w]);
}

/** The frames of a batch of videos [N, C, F, H, W] as images [N F, C, H, W], video by video. */
export function allFrames(videos: HostArray): HostArray<'float32'> {
  const [n, c, f, h, w] = batchShape(videos, 'allFrames');
  const per = f * c * h * w;
  const all = new Float32Array(n * per);
  for (let i = 0; i < n; i++) all.set(videoFrames(videos, i).data, i * per);
  return new HostArray(all, [n * f, c, h, w]);
}

/** A batch of videos [N, C, F, H, W] as one image: a row per video, a column per frame. */
export function videoGrid(videos: HostArray, opts: { pad?: number } = {}): Image {
  return imageGrid(allFrames(videos), { cols: batchShape(videos, 'videoGrid')[2], pad: opts.pad });
}

/**
 * Writes a clip [F, C, H, W] by the path's extension: .gif an animated GIF, .png a frame strip
 * (`cols` per row; fps and loop do not apply). Anything else is an error; MP4 in particular is
 * not supported (see above).
 */
export async function writeVideo(path: string, frames: HostArray, opts: VideoOptions = {}):
  Promise<void> {
  const ext = extname(path).toLowerCase();
  if (ext === '.gif') return writeGif(path, frames, opts);
  if (ext === '.png') {
    const clip = upscale(frames, opts.scale ?? 1, 'writeVideo');
    return writePng(path, frameStrip(clip, { cols: opts.cols }));
  }
  const mp4 = ext === '.mp4' ? '; MP4 would need a native encoder and is not supported' : '';
  throw new RangeError(`writeVideo: cannot write '${ext || '(no extension)'}' (${path}): ` +
    `supported are .gif (animated) and .png (frame strip)${mp4}`);
}
