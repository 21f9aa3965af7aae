/** @file A tiny labelled image set for training tests: fast, and learnable in a few steps. */
import { HostArray } from '../../src/engine/host.js';
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
