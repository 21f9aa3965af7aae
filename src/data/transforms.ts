/**
 * @file Image transforms that make a second domain out of MNIST, for translation between two
 * diffusion models (CycleDiffusion: `diffuse translate --from A --to B`): B is trained on the
 * transformed digits by `diffuse train --data mnist-bold`.
 */
import { HostArray } from '../engine/host.js';
import type { ImageDataset } from './dataset.js';

/**
 * Grey-scale dilation: each pixel becomes the maximum of its (2r + 1) x (2r + 1) neighbourhood
 * (pixels outside the image ignored), thickening bright strokes on a dark background by r
 * pixels on each side: bold digits.
 */
export function dilate(images: HostArray<'float32'>, radius = 1): HostArray<'float32'> {
  const [n, c, h, w] = images.shape as [number, number, number, number];
  if (!(Number.isInteger(radius) && radius >= 0)) {
    throw new RangeError(`dilate: radius must be an integer >= 0, got ${radius}`);
  }
  const src = images.data;
  const out = new Float32Array(src.length);
  for (let p = 0; p < n * c; p++) {
    const base = p * h * w;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        let m = -Infinity;
        for (let dy = Math.max(0, y - radius); dy <= Math.min(h - 1, y + radius); dy++) {
          for (let dx = Math.max(0, x - radius); dx <= Math.min(w - 1, x + radius); dx++) {
            m = Math.max(m, src[base + dy * w + dx]!);
          }
        }
        out[base + y * w + x] = m;
      }
    }
  }
  return new HostArray(out, images.shape);
}

/** A dataset with every image dilated (labels kept). */
export function boldDataset(d: ImageDataset, radius = 1): ImageDataset {
  return { ...d, images: dilate(d.images, radius) };
}
