/** Dilation against a hand-worked 5x5 example. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import { dilate } from './transforms.js';

test('dilate: a bright pixel grows to its 3x3 neighbourhood, clipped at the border', () => {
  const x = new Float32Array(2 * 25).fill(-1);
  x[12] = 1; // centre of image 0
  x[25] = 0.5; // corner of image 1
  const y = dilate(new HostArray(x, [2, 1, 5, 5])).data;
  const grid = (k: number) => Array.from({ length: 5 }, (_, r) =>
    Array.from(y.subarray(25 * k + 5 * r, 25 * k + 5 * r + 5)).map((v) => (v > 0 ? 1 : v === 0.5 ? 5 : 0)).join(''));
  assert.deepEqual(grid(0), ['00000', '01110', '01110', '01110', '00000']);
  assert.equal(y[25], 0.5);
  assert.equal(y[26], 0.5);
  assert.equal(y[31], 0.5);
  assert.equal(y[27], -1);
  assert.deepEqual(dilate(new HostArray(x, [2, 1, 5, 5]), 0).data, x);
});
