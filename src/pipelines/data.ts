/**
 * @file The training images a pipeline is asked for by name: `mnist` (its fixed 9,000-digit
 * train split; data/mnist.ts) or a folder of PNGs (labels from sub-folder names;
 * data/image-folder.ts).
 */
import type { ImageDataset } from '../data/dataset.js';
import { loadImageFolder } from '../data/image-folder.js';
import { mnistSplits } from '../data/mnist.js';

export type { ImageDataset };
export { mnistSplits };

/** The dataset `diffuse train --data` names: 'mnist' or a folder of PNGs. */
export async function loadTrainingData(spec: string): Promise<ImageDataset> {
  return spec === 'mnist' ? mnistSplits().train : loadImageFolder(spec);
}
