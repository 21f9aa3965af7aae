/** Digit specs: parsing, canonical names, refusals, and the class filter on real MNIST. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import { digitSpecName, keepClasses, parseDigitSpec } from './digit-spec.js';
import { mnistSplits } from './mnist.js';

test('parseDigitSpec: domains, ranges and lists, sorted and de-duplicated', () => {
  assert.deepEqual(parseDigitSpec('mnist'), { domain: 'mnist' });
  assert.deepEqual(parseDigitSpec('mnist-bold'), { domain: 'mnist-bold' });
  assert.deepEqual(parseDigitSpec('mnist:0-4'), { domain: 'mnist', digits: [0, 1, 2, 3, 4] });
  assert.deepEqual(parseDigitSpec('mnist-bold:9,5,7-8,5'),
    { domain: 'mnist-bold', digits: [5, 7, 8, 9] });
  assert.equal(parseDigitSpec('runs/pngs'), undefined, 'a folder is not a digit spec');
  assert.equal(parseDigitSpec('mnist-boldish:1'), undefined);
});

test('parseDigitSpec: refuses what is not a digit or a forward range, naming it', () => {
  assert.throws(() => parseDigitSpec('mnist:'), /mnist:: '' is not a digit/);
  assert.throws(() => parseDigitSpec('mnist:0-12'), /'0-12' is not a digit/);
  assert.throws(() => parseDigitSpec('mnist:4-2'), /4-2 runs backwards/);
  assert.throws(() => parseDigitSpec('mnist:a'), /'a' is not a digit/);
});

test('digitSpecName: ranges folded, so equal sets share a cache name', () => {
  assert.equal(digitSpecName(parseDigitSpec('mnist:4,3,2')!), 'mnist:2-4');
  assert.equal(digitSpecName(parseDigitSpec('mnist-bold:0,2-3,9')!), 'mnist-bold:0,2-3,9');
  assert.equal(digitSpecName(parseDigitSpec('mnist')!), 'mnist');
});

test('keepClasses: exactly the rows of the kept labels, in order, pixels intact', () => {
  const { train } = mnistSplits();
  const d = keepClasses(train, [5, 6, 7, 8, 9]);
  const want: number[] = [];
  train.labels!.forEach((l, i) => { if (l >= 5) want.push(i); });
  assert.equal(d.images.shape[0], want.length);
  assert.ok(want.length > 3000 && want.length < 6000, `${want.length} images of 5-9`);
  assert.ok(d.labels!.every((l) => l >= 5));
  const per = 32 * 32;
  for (const j of [0, 17, want.length - 1]) {
    assert.deepEqual(d.images.data.subarray(j * per, (j + 1) * per),
      train.images.data.subarray(want[j]! * per, (want[j]! + 1) * per));
  }
  assert.equal(d.classNames?.length, 10, 'the class table stays whole: labels keep their meaning');
  assert.throws(() => keepClasses({ images: new HostArray(new Float32Array(4), [1, 1, 2, 2]) }, [0]),
    /no labels/);
});
