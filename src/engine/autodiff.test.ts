/** grad / valueAndGrad / vjp semantics: trees, aux, stopGradient, closures, higher order. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { grad, valueAndGrad, vjp } from './autodiff.js';
import { HostArray } from './host.js';
import * as ops from './ops.js';
import { compile } from './runtime.js';
import type { Tensor } from './tensor.js';

const close = (a: ArrayLike<number>, b: number[], tol = 1e-5) =>
  b.forEach((v, i) => assert.ok(Math.abs(a[i]! - v) <= tol, `[${i}] ${a[i]} vs ${v}`));

test('grad of a nested parameter tree has the same structure', async () => {
  type P = { layers: { w: Tensor; b: Tensor }[] };
  const loss = (p: P, x: Tensor) =>
    ops.sum(ops.square(p.layers.reduce((h, l) => ops.add(ops.mul(h, l.w), l.b), x)));
  const f = compile((p: P, x: Tensor) => grad(loss)(p, x) as P);
  const p = { layers: [{ w: HostArray.fromNested([2]), b: HostArray.fromNested([1]) },
    { w: HostArray.fromNested([3]), b: HostArray.fromNested([0]) }] };
  const g = await f(p, HostArray.fromNested([1]));
  // y = 3 (2x + 1) = 9 at x = 1; L = y^2: dL/dw1 = 2y*3*x = 54, dL/db1 = 54/x... = 54,
  // dL/dw2 = 2y*(2x+1) = 54, dL/db2 = 2y = 18.
  close(g.layers[0]!.w.data as Float32Array, [54]);
  close(g.layers[0]!.b.data as Float32Array, [54]);
  close(g.layers[1]!.w.data as Float32Array, [54]);
  close(g.layers[1]!.b.data as Float32Array, [18]);
});

test('valueAndGrad with hasAux and several argnums', async () => {
  const fn = (a: Tensor, b: Tensor) => [ops.sum(ops.mul(a, b)), ops.mul(a, 2)] as [Tensor, Tensor];
  const f = compile((a: Tensor, b: Tensor) => {
    const [[v, aux], gs] = valueAndGrad(fn, { argnums: [0, 1], hasAux: true })(a, b);
    return { v, aux, ga: (gs as Tensor[])[0]!, gb: (gs as Tensor[])[1]! };
  });
  const r = await f(HostArray.fromNested([1, 2]), HostArray.fromNested([3, 4]));
  close(r.v.data as Float32Array, [11]);
  close(r.aux.data as Float32Array, [2, 4]);
  close(r.ga.data as Float32Array, [3, 4]);
  close(r.gb.data as Float32Array, [1, 2]);
});

test('stopGradient and captured tensors are constants', async () => {
  const f = compile((x: Tensor) => {
    const captured = ops.mul(x, x); // outside the differentiated function: a constant there
    const g1 = grad((y: Tensor) => ops.sum(ops.mul(y, captured)))(x) as Tensor;
    const g2 = grad((y: Tensor) => ops.sum(ops.mul(y, ops.stopGradient(y))))(x) as Tensor;
    return { g1, g2 };
  });
  const r = await f(HostArray.fromNested([3]));
  close(r.g1.data as Float32Array, [9]);
  close(r.g2.data as Float32Array, [3]);
});

test('gradient of a gradient (second derivative of x^3 is 6x)', async () => {
  const f = compile((x: Tensor) => {
    const d1 = (y: Tensor) => ops.sum(grad((z: Tensor) => ops.sum(ops.mul(ops.mul(z, z), z)))(y) as Tensor);
    return grad(d1)(x) as Tensor;
  });
  const r = await f(HostArray.fromNested([2, -1]));
  close(r.data as Float32Array, [12, -6]);
});

test('integer outputs carry no gradient; an unreached argument gets zeros', async () => {
  const f = compile((x: Tensor, unused: Tensor) => {
    const g = grad((a: Tensor, _b: Tensor) => {
      const idx = ops.argmax(a, 0, true); // int64: no gradient flows through it
      return ops.sum(ops.mul(ops.gather(a, idx, 0), 1));
    }, { argnums: [0, 1] })(x, unused) as Tensor[];
    return g;
  });
  const [ga, gb] = await f(HostArray.fromNested([1, 5, 2]), HostArray.fromNested([7, 7]));
  close(ga!.data as Float32Array, [0, 1, 0]);
  close(gb!.data as Float32Array, [0, 0]);
});

test('grad rejects a non-scalar loss and an integer argument, naming them', () => {
  const x = { shape: [2], dtype: 'float32' as const };
  assert.throws(() => compile((a: Tensor) => grad((y: Tensor) => ops.mul(y, 2))(a) as Tensor).trace(x),
    /float scalar \(shape \[\]\), got float32\[2\]/);
  assert.throws(() => compile((a: Tensor) => grad((y: Tensor) => ops.sum(ops.cast(y, 'float32')))(a) as Tensor)
    .trace({ shape: [2], dtype: 'int64' }), /'<arg>' is int64/);
});

test('vjp pulls back a given cotangent', async () => {
  const f = compile((x: Tensor, ct: Tensor) => {
    const [, pull] = vjp((y: Tensor) => ops.mul(y, y), x);
    return pull(ct)[0] as Tensor;
  });
  const r = await f(HostArray.fromNested([1, 2, 3]), HostArray.fromNested([1, 0, -1]));
  close(r.data as Float32Array, [2, 0, -6]);
});

test('cotangents of slices that tile a tensor join by one concat; gaps are zeros', async () => {
  const x = HostArray.fromNested([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]]);
  const w = HostArray.fromNested([[1, -1], [2, -2]]);
  const cases: [string, (t: Tensor) => Tensor[], number[]][] = [
    // q, k, v = split(x): gradient = [w, 2w, 3w] along axis 1 (w's rows: 1 and 2 times [1, -1])
    ['split', (t) => ops.split(t, 3, 1), [1, -1, 2, -2, 3, -3, 2, -2, 4, -4, 6, -6]],
    // only the first and last pieces used: zeros between
    ['gap', (t) => [ops.sliceAxis(t, 1, 0, 2), ops.sliceAxis(t, 1, 6, 6), ops.sliceAxis(t, 1, 4, 6)],
      [1, -1, 0, 0, 2, -2, 2, -2, 0, 0, 4, -4]],
    // overlapping pieces are summed
    ['overlap', (t) => [ops.sliceAxis(t, 1, 0, 2), ops.sliceAxis(t, 1, 1, 3), ops.sliceAxis(t, 1, 4, 6)],
      [1, 1, -2, 0, 3, -3, 2, 2, -4, 0, 6, -6]],
  ];
  for (const [name, pieces, want] of cases) {
    const loss = (t: Tensor) => pieces(t).filter((p) => p.shape[1] === 2)
      .reduce((acc, p, i) => ops.add(acc, ops.sum(ops.mul(p, ops.mul(ops.constant(w), i + 1)))), ops.scalarLike(0, 'float32'));
    const f = compile(grad(loss) as (t: Tensor) => Tensor);
    const g = await f(x) as HostArray;
    close(g.data as Float32Array, want);
    const ops_ = (await import('onnx-proto')).default.onnx.ModelProto.decode(f.onnx(x)).graph!.node!.map((n) => n.opType);
    if (name !== 'overlap') assert.ok(ops_.includes('Concat') && !ops_.includes('Pad'), `${name}: ${ops_.join(' ')}`);
    else assert.ok(ops_.includes('Pad'), `${name}: ${ops_.join(' ')}`);
  }
});
