/** MNIST loading, the fixed split, and the seeded batch order. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RngKey } from '../engine/random/philox.js';
import { batchAt } from './dataset.js';
import { loadMnist, mnistSplits } from './mnist.js';

test('MNIST: 10,000 padded digits in [-1, 1] with every class', () => {
  const d = loadMnist();
  assert.deepEqual(d.images.shape, [10000, 1, 32, 32]);
  const px = d.images.data;
  let lo = Infinity, hi = -Infinity;
  for (const v of px) (lo = Math.min(lo, v), hi = Math.max(hi, v));
  assert.equal(lo, -1);
  assert.equal(hi, 1);
  // The 2-pixel border is background.
  for (let i = 0; i < 32; i++) assert.equal(px[i], -1);
  const counts = new Array(10).fill(0);
  for (const l of d.labels!) counts[l]++;
  assert.deepEqual(counts, [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]);
});

test('the held-out split is fixed, disjoint from training, and 1,000 digits', () => {
  const a = mnistSplits();
  const b = mnistSplits();
  assert.equal(a.heldOut.images.shape[0], 1000);
  assert.equal(a.train.images.shape[0], 9000);
  assert.deepEqual(a.heldOut.images.data.subarray(0, 2048), b.heldOut.images.data.subarray(0, 2048));
  const key = (d: typeof a.train, i: number) => d.images.data.subarray(i * 1024, (i + 1) * 1024).join();
  const held = new Set(Array.from({ length: 1000 }, (_, i) => key(a.heldOut, i)));
  let overlap = 0;
  for (let i = 0; i < 9000; i++) if (held.has(key(a.train, i))) overlap++;
  assert.ok(overlap <= 5, `${overlap} training digits equal a held-out digit`); // MNIST has a few duplicates
});

test('batch order is a pure function of (key, step) and covers each epoch once', () => {
  const { train } = mnistSplits();
  const key = RngKey.fromSeed(1);
  const b1 = batchAt(train, key, 37, 64);
  const b2 = batchAt(train, key, 37, 64);
  assert.deepEqual(b1.images.data, b2.images.data);
  assert.deepEqual(b1.labels!.data, b2.labels!.data);
  assert.notDeepEqual(batchAt(train, key, 38, 64).labels!.data, b1.labels!.data);
  const seen = new Set<string>();
  const perEpoch = Math.floor(9000 / 500);
  for (let s = 0; s < perEpoch; s++) {
    const b = batchAt(train, key, s, 500);
    for (let i = 0; i < 500; i++) seen.add(b.images.data.subarray(i * 1024, (i + 1) * 1024).join());
  }
  assert.ok(seen.size >= perEpoch * 500 - 10, 'an epoch visits distinct digits');
  assert.throws(() => batchAt(train, key, 0, 10000), /larger than the dataset/);
});
