/**
 * @file PNG images: encoding and decoding (pngjs), atomic writes, and grids of image batches.
 * Images here are 8-bit RGBA or grey rasters; batches come from models as [N, C, H, W] floats
 * in [-1, 1].
 */
import { writeFileAtomic } from '../util/atomic.js';
import pngjs from 'pngjs';
import type { HostArray } from '../engine/host.js';
import { readRegularFile } from './files.js';

const { PNG } = pngjs;

/** An 8-bit raster, row-major, `channels` values per pixel (1 grey, 3 RGB, 4 RGBA). */
export interface Image {
  width: number;
  height: number;
  channels: 1 | 3 | 4;
  data: Uint8Array;
}

export function encodePng(img: Image): Buffer {
  const { width, height, channels, data } = img;
  if (data.length !== width * height * channels) {
    throw new RangeError(`encodePng: ${data.length} bytes for ${width}x${height}x${channels}`);
  }
  const png = new PNG({ width, height, colorType: channels === 1 ? 0 : channels === 3 ? 2 : 6,
    inputColorType: channels === 1 ? 0 : channels === 3 ? 2 : 6, inputHasAlpha: channels === 4 });
  png.data = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  // Fixed zlib settings, so the same pixels always give the same bytes.
  return PNG.sync.write(png, { colorType: channels === 1 ? 0 : channels === 3 ? 2 : 6,
    inputColorType: channels === 1 ? 0 : channels === 3 ? 2 : 6, inputHasAlpha: channels === 4,
    deflateLevel: 9, deflateStrategy: 3 });
}

/** Decodes any PNG to 8-bit RGBA. */
export function decodePng(bytes: Uint8Array): Image {
  let png: InstanceType<typeof PNG>;
  try {
    png = PNG.sync.read(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  } catch (e) {
    throw new Error(`not a readable PNG: ${(e as Error).message}`);
  }
  return { width: png.width, height: png.height, channels: 4, data: new Uint8Array(png.data) };
}

/** Reads a PNG file as 8-bit RGBA; a path that is not a regular file is a FileKindError. */
export async function readPng(path: string): Promise<Image> {
  const bytes = await readRegularFile(path, 'a .png file');
  try {
    return decodePng(bytes);
  } catch (e) {
    throw new Error(`${path}: ${(e as Error).message}`);
  }
}

export { writeFileAtomic };

export async function writePng(path: string, img: Image): Promise<void> {
  await writeFileAtomic(path, encodePng(img));
}

/** Maps [-1, 1] to [0, 255] with rounding and clamping, as diffusers' image processor. */
export function toByte(v: number): number {
  return Math.min(255, Math.max(0, Math.round((v + 1) * 127.5)));
}

/**
 * A grid of a batch [N, C, H, W] (C = 1 or 3, values in [-1, 1]): `cols` per row (default
 * ceil(sqrt N)), `pad` pixels of `background` between and around images.
 */
export function imageGrid(batch: HostArray, opts: { cols?: number; pad?: number; background?: number } = {}):
  Image {
  const [n, c, h, w] = batch.shape as [number, number, number, number];
  if (batch.shape.length !== 4 || (c !== 1 && c !== 3)) {
    throw new RangeError(`imageGrid: expected [N, 1 or 3, H, W], got [${batch.shape.join(', ')}]`);
  }
  const cols = opts.cols ?? Math.ceil(Math.sqrt(n));
  const rows = Math.ceil(n / cols);
  const pad = opts.pad ?? 2;
  const width = cols * (w + pad) + pad;
  const height = rows * (h + pad) + pad;
  const data = new Uint8Array(width * height * c).fill(opts.background ?? 0);
  const src = batch.data as Float32Array;
  for (let i = 0; i < n; i++) {
    const x0 = pad + (i % cols) * (w + pad);
    const y0 = pad + Math.floor(i / cols) * (h + pad);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        for (let k = 0; k < c; k++) {
          data[((y0 + y) * width + x0 + x) * c + k] = toByte(src[((i * c + k) * h + y) * w + x]!);
        }
      }
    }
  }
  return { width, height, channels: c, data };
}
