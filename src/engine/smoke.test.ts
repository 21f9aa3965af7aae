import assert from 'node:assert/strict';
import { test } from 'node:test';
import { compile, grad, HostArray, printGraph, trace, type Tensor } from './index.js';
import * as ops from './ops.js';

test('smoke: compile, grad', async () => {
  const f = (x: Tensor, w: Tensor) => ops.sum(ops.tanh(ops.matmul(x, w)));
  const g = compile((x: Tensor, w: Tensor) => ({ y: f(x, w), dw: grad(f, { argnums: 1 })(x, w) as Tensor }));
  const x = HostArray.fromNested([[1, 2], [3, 4]]);
  const w = HostArray.fromNested([[0.1, -0.2], [0.3, 0.05]]);
  const r = await g(x, w);
  console.log(r.y.toString(), r.dw.toString());
  console.log(printGraph(trace((a: Tensor) => ops.mul(ops.add(a, 1), a), [{ shape: [2] }])));
  assert.ok(true);
});
