/** The biased-dataset builder (exact shares, seeded, only the chosen rows dilated) and the
 *  thickness measure (stroke width on drawn shapes, the threshold, the bias summaries, and the
 *  bold / thin split of real held-out digits). */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import { RngKey } from '../engine/random/philox.js';
import {
  biasedDataset, biasReport, boldFlags, realThreshold, splitBoldShares, strokeWidth,
  thicknessThreshold,
} from './biased-mnist.js';
import type { ImageDataset } from './dataset.js';
import { mnistSplits } from './mnist.js';
import { dilate } from './transforms.js';

/** 100 labelled 8x8 images (classes 0, 1, 2 with 37, 50, 13 images), random pixels. */
function labelled(): ImageDataset {
  const counts = [37, 50, 13];
  const labels = Int32Array.from(counts.flatMap((n, c) => new Array<number>(n).fill(c)));
  const order = RngKey.fromSeed(5).permutation(labels.length);
  const x = Float32Array.from(RngKey.fromSeed(6).uniform(labels.length * 64), (u) => 2 * u - 1);
  return { images: new HostArray(x, [labels.length, 1, 8, 8]),
    labels: Int32Array.from(order, (i) => labels[i]!) };
}

test('splitBoldShares: the first half of the classes gets p, the rest 1 - p', () => {
  assert.deepEqual(splitBoldShares(4, 0.9).map((v) => +v.toFixed(9)), [0.9, 0.9, 0.1, 0.1]);
  assert.deepEqual(splitBoldShares(10, 0.95).map((v) => +v.toFixed(9)),
    [0.95, 0.95, 0.95, 0.95, 0.95, 0.05, 0.05, 0.05, 0.05, 0.05]);
  assert.deepEqual(splitBoldShares(3, 1), [1, 1, 0]);
  assert.throws(() => splitBoldShares(1, 0.5), /classes must be an integer >= 2/);
  assert.throws(() => splitBoldShares(10, 1.5), /share in \[0, 1\]/);
});

test('biasedDataset dilates exactly round(share x n_c) images per class, seeded', () => {
  const d = labelled();
  const shares = [0.95, 0.05, 0.5];
  const { data, bold } = biasedDataset(d, shares, 3);
  const thick = dilate(d.images).data;
  const per = 64;
  const boldPerClass = [0, 0, 0];
  for (let i = 0; i < d.labels!.length; i++) {
    boldPerClass[d.labels![i]!]! += bold[i]!;
    const want = bold[i] ? thick : d.images.data;
    const got = data.images.data.subarray(i * per, (i + 1) * per);
    assert.deepEqual(Array.from(got), Array.from(want.subarray(i * per, (i + 1) * per)),
      `image ${i}`);
  }
  // 0.95 x 37 = 35.15, 0.05 x 50 = 2.5 (rounds up), 0.5 x 13 = 6.5 (rounds up).
  assert.deepEqual(boldPerClass, [35, 3, 7]);
  assert.deepEqual(Array.from(data.labels!), Array.from(d.labels!));
  const rows = (seed: number) => Array.from(biasedDataset(d, shares, seed).bold);
  assert.deepEqual(rows(3), Array.from(bold), 'same seed, same rows');
  assert.notDeepEqual(rows(4), Array.from(bold), 'another seed');
  assert.throws(() => biasedDataset(d, [0.5, 0.5], 0), /2 bold shares for 3 classes/);
});

/** One image [1, 1, h, w]: background -1, ink 1 where `ink(y, x)`. */
function drawn(h: number, w: number, ink: (y: number, x: number) => boolean): HostArray<'float32'> {
  return new HostArray(Float32Array.from({ length: h * w }, (_, i) =>
    (ink(Math.floor(i / w), i % w) ? 1 : -1)), [1, 1, h, w]);
}

test('strokeWidth is 2 x area / boundary: the width of a long stroke, 0 without ink', () => {
  // A 1 x 10 line: area 10, boundary 2 x 10 + 2 = 22.
  const line = strokeWidth(drawn(16, 16, (y, x) => y === 5 && x >= 3 && x < 13))[0]!;
  assert.ok(Math.abs(line - 20 / 22) < 1e-12, `${line}`);
  // A 3 x 10 bar: area 30, boundary 2 x 10 + 2 x 3 = 26.
  const bar = strokeWidth(drawn(16, 16, (y, x) => y >= 4 && y < 7 && x >= 3 && x < 13))[0]!;
  assert.ok(Math.abs(bar - 60 / 26) < 1e-12, `${bar}`);
  // Ink at the border: the edge of the image counts as background (a full row: 2 x 16 / 34).
  const edge = strokeWidth(drawn(16, 16, (y) => y === 0))[0]!;
  assert.ok(Math.abs(edge - 32 / 34) < 1e-12, `${edge}`);
  assert.equal(strokeWidth(drawn(8, 8, () => false))[0], 0);
  // Dilating the line by a pixel gives the 3-wide bar, 2 longer.
  const dilated = strokeWidth(dilate(drawn(16, 16, (y, x) => y === 5 && x >= 3 && x < 13)))[0]!;
  assert.ok(Math.abs(dilated - (2 * 36) / (2 * 12 + 2 * 3)) < 1e-12, `${dilated}`);
  assert.throws(() => strokeWidth(new HostArray(new Float32Array(12), [1, 3, 2, 2])),
    /grey images/);
});

test('thicknessThreshold is the cut of best balanced accuracy, between distinct scores', () => {
  assert.equal(thicknessThreshold([1, 2, 3], [5, 6, 7]), 4);
  // One thin outlier at 6: the best cut still is between 3 and 5 (5 of 6 right either side).
  assert.equal(thicknessThreshold([1, 2, 3, 6], [5, 7, 8]), 4);
  // Ties are not split: 2 appears in both sets, so the cut is below or above all of them.
  assert.equal(thicknessThreshold([1, 2, 2], [2, 3]), 2.5);
  assert.throws(() => thicknessThreshold([], [1]), /needs thin and bold/);
});

test('biasReport: 0.45 and 0.9 for the 95% / 5% split, 0 and 0 for 50 / 50', () => {
  const labels = Int32Array.from({ length: 400 }, (_, i) => i % 4);
  // Classes 0, 1 (first half): 95 of 100 bold; classes 2, 3: 5 of 100 bold.
  const rank = (i: number) => Math.floor(i / 4);
  const biased = Array.from(labels, (c, i) => (c < 2 ? rank(i) < 95 : rank(i) < 5));
  const r = biasReport(biased, labels, 4);
  assert.deepEqual(r.count, [100, 100, 100, 100]);
  assert.deepEqual(r.boldShare, [0.95, 0.95, 0.05, 0.05]);
  assert.ok(Math.abs(r.bias - 0.45) < 1e-12);
  assert.ok(Math.abs(r.correlation - 0.9) < 1e-12, `${r.correlation}`);
  const even = biasReport(Array.from(labels, (_, i) => rank(i) % 2 === 0), labels, 4);
  assert.equal(even.bias, 0);
  assert.equal(even.correlation, 0);
  // Reversed: the same bias, the opposite correlation; an empty class is NaN and left out.
  const flipped = biasReport(biased.map((b) => !b), labels, 4);
  assert.ok(Math.abs(flipped.bias - 0.45) < 1e-12 && Math.abs(flipped.correlation + 0.9) < 1e-12);
  const gap = biasReport([1, 0, 1, 1], [0, 0, 1, 1], 4);
  assert.deepEqual(gap.boldShare.slice(0, 2), [0.5, 1]);
  assert.ok(Number.isNaN(gap.boldShare[2]!) && Number.isNaN(gap.boldShare[3]!));
  assert.equal(gap.bias, 0.25);
});

test('on real held-out digits the fitted threshold tells thin from dilated 95% of the time', () => {
  const held = mnistSplits().heldOut;
  const thin = strokeWidth(held.images);
  const bold = strokeWidth(dilate(held.images));
  const t = thicknessThreshold(thin, bold);
  let right = 0;
  for (let i = 0; i < thin.length; i++) right += +(thin[i]! <= t) + +(bold[i]! > t);
  const accuracy = right / (2 * thin.length);
  // Measured: 97.0%, threshold 3.16 px (thin digits: median 1.96 px, dilated: 4.09 px).
  assert.ok(accuracy > 0.95, `accuracy ${accuracy}`);
  assert.ok(t > 2.5 && t < 3.8, `threshold ${t}`);
  assert.equal(realThreshold(held), t);
  const flags = boldFlags(dilate(held.images), t);
  assert.equal(flags.reduce((s, v) => s + v, 0), Array.from(bold).filter((v) => v > t).length);
});
