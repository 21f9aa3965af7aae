import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HostArray } from './host.js';
import { largestIntermediate, largestPerRow, rowsWithinCache } from './memory.js';
import * as ops from './ops.js';
import type { Tensor } from './tensor.js';
import { trace } from './trace.js';

test('largestPerRow skips what the batch does not scale; largestIntermediate does not', () => {
  const w = ops.constant(new HostArray(new Float32Array(512 * 256).fill(0.5), [512, 256]));
  // relu keeps the transposed weight an intermediate of its own, not folded into the product.
  const f = (x: Tensor) => ops.matmul(x, ops.relu(ops.transpose(w)));
  const at = (n: number) => trace(f as never, [{ shape: [n, 256] }]);
  assert.deepEqual(largestIntermediate(at(1)), { bytes: 512 * 256 * 4, shape: [256, 512], prim: 'transpose' });
  assert.deepEqual(largestPerRow(at(1), at(2)), { bytes: 512 * 4, shape: [2, 512], prim: 'matmul' });
});

test('rowsWithinCache: what fits in the cache, in a power of two of rows, at least one', () => {
  assert.equal(rowsWithinCache(2 ** 20, 32 * 2 ** 20), 32);
  assert.equal(rowsWithinCache(393216, 32 * 2 ** 20), 64); // 85.3 rows fit
  assert.equal(rowsWithinCache(2048, 2 ** 20), 512);
  assert.equal(rowsWithinCache(64 * 2 ** 20, 32 * 2 ** 20), 1);
  assert.throws(() => rowsWithinCache(0, 2 ** 20), /expected positive sizes, got 0 bytes a row/);
});
