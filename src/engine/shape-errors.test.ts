/** Every op family rejects bad shapes at trace time, naming the op and the shapes. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { inputTensor } from './bind.js';
import * as ops from './ops.js';
import { ShapeError } from './shape.js';
import type { DType } from './dtype.js';

const t = (shape: number[], dtype: DType = 'float32') => inputTensor('x', shape, dtype);

function throwsShape(fn: () => unknown, ...fragments: string[]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof ShapeError || e instanceof TypeError, `not a ShapeError/TypeError: ${e}`);
    for (const f of fragments) assert.ok((e as Error).message.includes(f), `"${(e as Error).message}" lacks "${f}"`);
    return true;
  });
}

test('elementwise: broadcasting mismatch names the op and both shapes', () => {
  throwsShape(() => ops.add(t([2, 3]), t([4, 3])), 'Add', '[2, 3]', '[4, 3]');
  throwsShape(() => ops.where(ops.greater(t([2]), 0), t([3]), t([3])), 'Where', '[2]', '[3]');
});

test('elementwise: dtype mismatch and non-float input', () => {
  throwsShape(() => ops.mul(t([2]), t([2], 'int64')), 'Mul', 'float32', 'int64');
  throwsShape(() => ops.exp(t([2], 'int64')), 'Exp', 'float tensor');
});

test('reductions: axis out of range', () => {
  throwsShape(() => ops.sum(t([2, 3]), 2), 'sum', 'axis 2', 'rank 2');
  throwsShape(() => ops.topk(t([2, 3]), 4), 'TopK', 'k = 4', '[1, 3]');
  throwsShape(() => ops.layerNorm(t([2, 3]), { scale: t([4]) }), 'LayerNormalization', 'scale [4]', '[3]');
});

test('matmul: contracting dimensions and rank', () => {
  throwsShape(() => ops.matmul(t([2, 3]), t([4, 5])), 'MatMul', '[2, 3] @ [4, 5]', '3 vs 4');
  throwsShape(() => ops.matmul(t([3]), t([3, 2])), 'MatMul', 'rank >= 2');
});

test('conv: channels, groups and kernel size', () => {
  throwsShape(() => ops.conv2d(t([1, 3, 8, 8]), t([4, 2, 3, 3])), 'Conv', '3 channels', 'expects 2');
  throwsShape(() => ops.conv2d(t([1, 3, 8, 8]), t([4, 1, 3, 3]), { groups: 2 }), 'Conv', 'groups = 2');
  throwsShape(() => ops.conv2d(t([1, 1, 2, 2]), t([1, 1, 3, 3])), 'Conv', 'does not fit');
  throwsShape(() => ops.conv2d(t([1, 8, 8]), t([1, 1, 3, 3])), 'Conv', '[N, C, H, W]');
  throwsShape(() => ops.convTranspose2d(t([1, 2, 4, 4]), t([3, 1, 3, 3])), 'ConvTranspose', '2 channels');
});

test('movement: reshape, transpose, slice, concat, pad, expand, gather, scatter', () => {
  throwsShape(() => ops.reshape(t([2, 3]), [4, 2]), 'Reshape', '[2, 3]', '[4, 2]');
  throwsShape(() => ops.transpose(t([2, 3]), [0, 0]), 'Transpose', 'not a permutation');
  throwsShape(() => ops.slice(t([2, 3]), [null, [0, 2, 0]]), 'slice', 'step');
  throwsShape(() => ops.concat([t([2, 3]), t([3, 3])], 1), 'Concat', '[2, 3]', '[3, 3]');
  throwsShape(() => ops.broadcastTo(t([2, 3]), [3, 3]), 'Expand', '[2, 3]', '[3, 3]');
  throwsShape(() => ops.gather(t([4, 3]), t([2])), 'Gather', 'int64');
  throwsShape(() => ops.scatterAdd(t([4, 3]), t([2], 'int64'), t([2, 4])), 'ScatterAdd', '[2, 3]', '[2, 4]');
  throwsShape(() => ops.split(t([5]), 2), 'split', 'axis 0');
  throwsShape(() => ops.upsampleNearest2x(t([2, 3])), 'Upsample', '[N, C, H, W]');
});
