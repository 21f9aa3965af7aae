/**
 * @file Image datasets in memory and the seeded batch order every training run uses: an
 * epoch's order is a permutation drawn from the run's key folded with the epoch number, so a
 * resumed run sees exactly the batches an uninterrupted one would.
 */
import { HostArray } from '../engine/host.js';
import type { RngKey } from '../engine/random/philox.js';

/** Images [N, C, H, W] in [-1, 1] with optional int labels. */
export interface ImageDataset {
  readonly images: HostArray<'float32'>;
  readonly labels?: Int32Array;
  /** Names of the label values (e.g. digits, or sub-folder names). */
  readonly classNames?: readonly string[];
  /** Where each image came from (a folder's files, relative to it), when it came from files. */
  readonly files?: readonly string[];
}

export function datasetSize(d: ImageDataset): number {
  return d.images.shape[0]!;
}

/** The rows `indices` of a dataset, as a new dataset. */
export function subset(d: ImageDataset, indices: ArrayLike<number>): ImageDataset {
  const [, c, h, w] = d.images.shape as [number, number, number, number];
  const per = c * h * w;
  const out = new Float32Array(indices.length * per);
  const src = d.images.data;
  for (let i = 0; i < indices.length; i++) out.set(src.subarray(indices[i]! * per, (indices[i]! + 1) * per), i * per);
  return {
    images: new HostArray(out, [indices.length, c, h, w]),
    ...(d.labels ? { labels: Int32Array.from(indices, (i) => d.labels![i]!) } : {}),
    ...(d.classNames ? { classNames: d.classNames } : {}),
    ...(d.files ? { files: Array.from(indices, (i) => d.files![i]!) } : {}),
  };
}

export interface Batch {
  images: HostArray<'float32'>;
  /** int64 labels [B], when the dataset has labels. */
  labels?: HostArray<'int64'>;
  /** Which images of the dataset these are (e.g. to look up per-image targets). */
  rows: Int32Array;
}

/**
 * The batch for global step `step` (0-based) of a run: epochs are consecutive permutations
 * (drop-last), each from `key.fold(epoch)`. A pure function of (dataset, key, step), which
 * is what makes resuming exact.
 */
export function batchAt(d: ImageDataset, key: RngKey, step: number, batchSize: number): Batch {
  const n = datasetSize(d);
  const perEpoch = Math.floor(n / batchSize);
  if (perEpoch < 1) throw new RangeError(`batch size ${batchSize} is larger than the dataset (${n} images)`);
  const epoch = Math.floor(step / perEpoch);
  const order = key.fold(epoch).permutation(n);
  const rows = order.subarray((step % perEpoch) * batchSize, (step % perEpoch + 1) * batchSize);
  const s = subset(d, rows);
  return {
    images: s.images, rows: Int32Array.from(rows),
    ...(s.labels ? { labels: new HostArray(BigInt64Array.from(s.labels, (v) => BigInt(v)), [batchSize], 'int64') } : {}),
  };
}
