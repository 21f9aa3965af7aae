/**
 * @file The training images a pipeline is asked for by name: `mnist` (its fixed 9,000-digit
 * train split; data/mnist.ts), `mnist-bold` (the same digits dilated by a pixel: a second
 * domain for translation; data/transforms.ts), either narrowed to some classes (`mnist:0-4`;
 * data/digit-spec.ts), or a folder of PNGs (labels from sub-folder names; data/image-folder.ts).
 */
import type { ImageDataset } from '../data/dataset.js';
import { keepClasses, parseDigitSpec, type DigitSpec } from '../data/digit-spec.js';
import { loadImageFolder } from '../data/image-folder.js';
import { mnistSplits } from '../data/mnist.js';
import { boldDataset } from '../data/transforms.js';

export type { ImageDataset };
export { mnistSplits };

/** The train and held-out splits a digit spec names. */
export function digitSplits(s: DigitSpec): { train: ImageDataset; heldOut: ImageDataset } {
  const splits = mnistSplits();
  const domain = (d: ImageDataset) => (s.domain === 'mnist-bold' ? boldDataset(d) : d);
  const classes = (d: ImageDataset) => (s.digits ? keepClasses(d, s.digits) : d);
  return { train: classes(domain(splits.train)), heldOut: classes(domain(splits.heldOut)) };
}

/** The dataset `diffuse train --data` names: 'mnist', 'mnist-bold' (either optionally with
 *  ':DIGITS') or a folder of PNGs. */
export async function loadTrainingData(spec: string): Promise<ImageDataset> {
  const digits = parseDigitSpec(spec);
  if (digits) return digitSplits(digits).train;
  return loadImageFolder(spec);
}
