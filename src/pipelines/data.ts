/**
 * @file The training images a pipeline is asked for by name: `mnist` (its fixed 9,000-digit
 * train split; data/mnist.ts), `mnist-bold` (the same digits dilated by a pixel: a second
 * domain for translation; data/transforms.ts) or a folder of PNGs (labels from sub-folder
 * names; data/image-folder.ts).
 */
import type { ImageDataset } from '../data/dataset.js';
import { loadImageFolder } from '../data/image-folder.js';
import { mnistSplits } from '../data/mnist.js';
import { boldDataset } from '../data/transforms.js';

export type { ImageDataset };
export { mnistSplits };

/** The dataset `diffuse train --data` names: 'mnist', 'mnist-bold' or a folder of PNGs. */
export async function loadTrainingData(spec: string): Promise<ImageDataset> {
  if (spec === 'mnist') return mnistSplits().train;
  if (spec === 'mnist-bold') return boldDataset(mnistSplits().train);
  return loadImageFolder(spec);
}
