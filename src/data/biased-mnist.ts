/**
 * @file A spurious attribute correlated with the class, for bias-mitigation experiments
 * (InvDiff: methods/invdiff.ts): stroke thickness. `biasedDataset` dilates a chosen share of
 * each class's images by a pixel (transforms.ts `dilate`: bold digits), the rows picked by a
 * seeded permutation so that the shares are exact, not drawn; `splitBoldShares` gives the
 * usual split (the first half of the classes bold with probability p, the rest with 1 - p).
 *
 * The measure: `strokeWidth`, the mean width of an image's strokes (2 x ink area / ink
 * boundary), thresholded (`boldFlags`) at the cut `realThreshold` fits between real digits
 * and the same digits dilated; and `biasReport`, the share of bold images per class and two
 * summaries of how far that is from independence of class and thickness.
 */
import { HostArray } from '../engine/host.js';
import { RngKey } from '../engine/random/philox.js';
import type { ImageDataset } from './dataset.js';
import { dilate } from './transforms.js';

/**
 * Bold share per class: classes [0, ceil(K/2)) get `aligned`, the others 1 - aligned. The
 * experiment's biased MNIST is `splitBoldShares(10, 0.95)` (0-4 bold, 5-9 thin, 5% exceptions);
 * `splitBoldShares(10, 0.5)` is the unbiased set.
 */
export function splitBoldShares(classes: number, aligned: number): number[] {
  if (!(Number.isInteger(classes) && classes >= 2)) {
    throw new RangeError(`splitBoldShares: classes must be an integer >= 2, got ${classes}`);
  }
  if (!(aligned >= 0 && aligned <= 1)) {
    throw new RangeError(`splitBoldShares: aligned must be a share in [0, 1], got ${aligned}`);
  }
  const half = Math.ceil(classes / 2);
  return Array.from({ length: classes }, (_, c) => (c < half ? aligned : 1 - aligned));
}

/** A dataset with the attribute put in, and the attribute itself (for measurement only: a
 *  method under test must not read it). */
export interface BiasedDataset {
  data: ImageDataset;
  /** 1 where the image was dilated. */
  bold: Uint8Array;
}

/**
 * Dilates (by `radius` pixels) exactly round(shares[c] x n_c) of the n_c images of each class
 * c, chosen by a permutation drawn from `seed` and the class; images and labels keep their
 * order.
 */
export function biasedDataset(d: ImageDataset, shares: readonly number[], seed: number,
  radius = 1): BiasedDataset {
  const labels = d.labels;
  if (!labels) throw new RangeError('biasedDataset: the dataset has no labels');
  const k = Math.max(...labels) + 1;
  if (shares.length < k) {
    throw new RangeError(`biasedDataset: ${shares.length} bold shares for ${k} classes`);
  }
  for (const [c, s] of shares.entries()) {
    if (!(s >= 0 && s <= 1)) {
      throw new RangeError(`biasedDataset: class ${c}'s bold share ${s} is not in [0, 1]`);
    }
  }
  const bold = new Uint8Array(labels.length);
  const key = RngKey.fromSeed(seed);
  for (let c = 0; c < k; c++) {
    const rows = Array.from(labels.keys()).filter((i) => labels[i] === c);
    const order = key.fold(c).permutation(rows.length);
    const count = Math.round(shares[c]! * rows.length);
    for (let j = 0; j < count; j++) bold[rows[order[j]!]!] = 1;
  }
  const thick = dilate(d.images, radius).data;
  const per = d.images.size / labels.length;
  const out = Float32Array.from(d.images.data);
  for (let i = 0; i < labels.length; i++) {
    if (bold[i]) out.set(thick.subarray(i * per, (i + 1) * per), i * per);
  }
  return { data: { ...d, images: new HostArray(out, d.images.shape) }, bold };
}

/**
 * The mean stroke width of each image [N, C, H, W] (C = 1), in pixels: 2 A / P, where A is
 * the number of ink pixels (above `level`; 0 is the middle of [-1, 1]) and P the number of
 * ink-to-background edges between 4-neighbours, the image border counting as background. A
 * stroke of width w and length L >> w has A = w L and P ~ 2 L, so the ratio is w whatever the
 * digit's length: unlike the amount of ink, it does not depend on the class. 0 without ink.
 */
export function strokeWidth(images: HostArray, level = 0): Float64Array {
  const [n, c, h, w] = images.shape as [number, number, number, number];
  if (images.shape.length !== 4 || c !== 1) {
    throw new RangeError('strokeWidth: expected grey images [N, 1, H, W], got ' +
      `[${images.shape.join(', ')}]`);
  }
  const x = images.data;
  const out = new Float64Array(n);
  const ink = (b: number, y: number, xx: number): boolean =>
    y >= 0 && y < h && xx >= 0 && xx < w && Number(x[b * h * w + y * w + xx]) > level;
  for (let b = 0; b < n; b++) {
    let [area, edges] = [0, 0];
    for (let y = 0; y < h; y++) {
      for (let xx = 0; xx < w; xx++) {
        if (!ink(b, y, xx)) continue;
        area++;
        edges += +!ink(b, y - 1, xx) + +!ink(b, y + 1, xx) + +!ink(b, y, xx - 1) +
          +!ink(b, y, xx + 1);
      }
    }
    out[b] = area ? (2 * area) / edges : 0;
  }
  return out;
}

/**
 * The threshold on a thickness score that best separates `thin` from `bold` examples (both
 * labelled: real digits and the same digits dilated): the midpoint between two adjacent
 * sorted scores that maximises the balanced accuracy of `score > threshold` meaning bold.
 */
export function thicknessThreshold(thin: ArrayLike<number>, bold: ArrayLike<number>): number {
  if (thin.length === 0 || bold.length === 0) {
    throw new RangeError('thicknessThreshold: needs thin and bold examples, got ' +
      `${thin.length} and ${bold.length}`);
  }
  const all = [...Array.from(thin, (v) => [v, 0] as const),
    ...Array.from(bold, (v) => [v, 1] as const)].sort((a, b) => a[0] - b[0]);
  // Scanning up: below the cut everything is called thin. Balanced accuracy =
  // (thin below / |thin| + bold above / |bold|) / 2.
  let [thinBelow, boldBelow] = [0, 0];
  let best = { acc: 0.5 * (0 + 1), at: all[0]![0] - 1 }; // everything bold
  for (let i = 0; i < all.length; i++) {
    if (all[i]![1] === 0) thinBelow++;
    else boldBelow++;
    const next = all[i + 1]?.[0];
    if (next !== undefined && next === all[i]![0]) continue; // cut only between distinct values
    const acc = 0.5 * (thinBelow / thin.length + (bold.length - boldBelow) / bold.length);
    if (acc > best.acc) {
      best = { acc, at: next === undefined ? all[i]![0] + 1 : (all[i]![0] + next) / 2 };
    }
  }
  return best.at;
}

/** The stroke-width threshold separating real images from the same images dilated by
 *  `radius` (MNIST held-out digits: 3.16 px, 97% balanced accuracy). */
export function realThreshold(real: ImageDataset, radius = 1): number {
  return thicknessThreshold(strokeWidth(real.images), strokeWidth(dilate(real.images, radius)));
}

/** 1 where an image's stroke width is above `threshold`. */
export function boldFlags(images: HostArray, threshold: number): Uint8Array {
  return Uint8Array.from(strokeWidth(images), (v) => (v > threshold ? 1 : 0));
}

/** How the attribute is spread over the classes. */
export interface BiasReport {
  /** Images per class. */
  count: number[];
  /** Share of bold images per class (NaN for a class without images). */
  boldShare: number[];
  /** Mean over the classes present of |boldShare - 1/2|: 0 when every class is half bold,
   *  0.45 for the 95% / 5% split. */
  bias: number;
  /** Pearson correlation of "class in the first half" (0 .. ceil(K/2) - 1) with "bold": 0.9
   *  for the 95% / 5% split, 0 when thickness is independent of the class group (NaN when
   *  either is constant). */
  correlation: number;
}

export function biasReport(bold: ArrayLike<number | boolean>, labels: ArrayLike<number>,
  classes: number): BiasReport {
  if (bold.length !== labels.length) {
    throw new RangeError(`biasReport: ${bold.length} attribute values for ${labels.length} labels`);
  }
  const count = new Array<number>(classes).fill(0);
  const boldCount = new Array<number>(classes).fill(0);
  const half = Math.ceil(classes / 2);
  let [sa, sb, sab, n] = [0, 0, 0, 0];
  for (let i = 0; i < labels.length; i++) {
    const c = Number(labels[i]);
    if (!(Number.isInteger(c) && c >= 0 && c < classes)) {
      throw new RangeError(`biasReport: label ${c} is not a class of ${classes}`);
    }
    const b = Number(bold[i]) ? 1 : 0;
    const a = c < half ? 1 : 0;
    count[c]!++;
    boldCount[c]! += b;
    [sa, sb, sab, n] = [sa + a, sb + b, sab + a * b, n + 1];
  }
  const boldShare = count.map((m, c) => (m ? boldCount[c]! / m : NaN));
  const present = boldShare.filter((s) => !Number.isNaN(s));
  const bias = present.reduce((s, v) => s + Math.abs(v - 0.5), 0) / present.length;
  // Pearson of two 0/1 variables (the phi coefficient).
  const [ma, mb] = [sa / n, sb / n];
  const correlation = (sab / n - ma * mb) / Math.sqrt(ma * (1 - ma) * mb * (1 - mb));
  return { count, boldShare, bias, correlation };
}
