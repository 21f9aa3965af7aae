/** @file A tiny labelled image set for training tests: fast, and learnable in a few steps. */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { HostArray } from '../../src/engine/host.js';
import { writePng } from '../../src/io/png.js';
import { RngKey } from '../../src/engine/random/philox.js';
import type { ImageDataset } from '../../src/data/dataset.js';

/** 48 labelled 8x8 images: class 0 a bright top half, class 1 a bright left half, plus noise. */
export function twoClassImages(): ImageDataset {
  const n = 48;
  const z = RngKey.fromSeed(3).normal(n * 64);
  const labels = Int32Array.from({ length: n }, (_, i) => i % 2);
  const x = Float32Array.from(z, (v, j) => {
    const i = Math.floor(j / 64), r = Math.floor((j % 64) / 8), c = j % 8;
    return 0.2 * v + ((labels[i] ? c < 4 : r < 4) ? 0.8 : -0.8);
  });
  return { images: new HostArray(x, [n, 1, 8, 8]), labels, classNames: ['top', 'left'] };
}

/** Writes a labelled dataset as a folder of PNGs, a sub-folder per class (what `--data DIR`
 *  reads). */
export async function writeImageFolder(dir: string, d: ImageDataset): Promise<void> {
  const [n, c, h, w] = d.images.shape as [number, number, number, number];
  const names = d.classNames ?? ['all'];
  for (const name of names) await mkdir(join(dir, name), { recursive: true });
  for (let i = 0; i < n; i++) {
    const pixels = d.images.data.subarray(i * c * h * w, (i + 1) * c * h * w);
    const data = Uint8Array.from({ length: h * w * c }, (_, j) => {
      const [p, ch] = [Math.floor(j / c), j % c]; // interleaved channels
      const v = pixels[ch * h * w + p]!;
      return Math.round(Math.min(255, Math.max(0, (v + 1) * 127.5)));
    });
    await writePng(join(dir, names[d.labels?.[i] ?? 0]!, `${i}.png`), { width: w, height: h, channels: c as 1 | 3, data });
  }
}
