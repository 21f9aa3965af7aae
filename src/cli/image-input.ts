/**
 * @file The images a command reads: `--images DIR` (a folder of PNGs, class sub-folders named
 * by class number give labels) or `--test-split` (the 1,000 held-out MNIST digits, never
 * trained on); `--n` takes a fixed random subset (the held-out split, like a class folder,
 * is ordered by class: its first N would be the first few classes only).
 */
import type { HostArray } from '../engine/host.js';
import { RngKey } from '../engine/random/philox.js';
import { subset, type ImageDataset } from '../data/dataset.js';
import { loadImageFolder } from '../data/image-folder.js';
import { mnistSplits } from '../data/mnist.js';
import { UsageError } from './errors.js';
import { flag, int, path } from './options.js';

export const IMAGE_INPUT_OPTIONS = {
  images: path({ arg: '<dir>', help: 'a folder of PNG images (in sub-folders named by class ' +
    'number, e.g. 0/ .. 9/, for labels)' }),
  testSplit: flag({ help: 'the 1,000 held-out MNIST digits (never trained on)' }),
  n: int({ min: 1, help: 'use N of the images (a fixed random subset, the same every run)' }),
};

export interface InputImages {
  images: HostArray<'float32'>;
  /** Class numbers, when the source has them. */
  labels?: Int32Array;
  /** Where they came from, for messages. */
  source: string;
  /** Each image's file (relative to the folder), for a folder. */
  files?: readonly string[];
  /** Set when the folder has sub-folders that are not class numbers. */
  note?: string;
}

/** Reads the images `--images` / `--test-split` name (exactly one of them). */
export async function readInputImages(o: { images?: string; testSplit: boolean; n?: number }):
  Promise<InputImages> {
  if ((o.images === undefined) === !o.testSplit) {
    throw new UsageError('expected exactly one of --images <dir> and --test-split' +
      (o.testSplit ? ', got both' : ''));
  }
  let data: ImageDataset;
  let source: string;
  let note: string | undefined;
  if (o.testSplit) {
    data = mnistSplits().heldOut;
    source = 'the MNIST held-out split';
  } else {
    const folder = await loadImageFolder(o.images!);
    source = o.images!;
    // Sub-folder k is label index k (sorted names); a model's classes are numbers.
    const names = folder.classNames;
    if (folder.labels && names && names.every((s) => /^\d+$/.test(s))) {
      data = { images: folder.images, labels: Int32Array.from(folder.labels, (i) => Number(names[i])),
        ...(folder.files ? { files: folder.files } : {}) };
    } else {
      data = { images: folder.images, ...(folder.files ? { files: folder.files } : {}) };
      if (names) note = `sub-folders of ${source} are not class numbers: no labels, no accuracy`;
    }
  }
  const total = data.images.shape[0]!;
  if (o.n !== undefined && o.n < total) {
    data = subset(data, RngKey.fromSeed(0).permutation(total).subarray(0, o.n));
  }
  return { images: data.images, ...(data.labels ? { labels: data.labels } : {}), source,
    ...(data.files ? { files: data.files } : {}), ...(note ? { note } : {}) };
}
