/**
 * The primitive table's tests (docs/architecture.md, convention 7): one line per op with its inputs;
 * one harness checks the forward value against a plain-TypeScript reference and the VJP
 * against central finite differences along a random direction.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import onnxProto from 'onnx-proto';
import { grad } from './autodiff.js';
import { HostArray } from './host.js';
import { compile } from './runtime.js';
import type { Tensor } from './tensor.js';
import * as ops from './ops.js';
import * as ref from '../../test/support/reference.js';
import { checkGrad, randint, randn, type GradCheckOptions } from '../../test/support/gradcheck.js';

interface Case {
  name: string;
  fn: (...xs: Tensor[]) => Tensor;
  inputs: HostArray[];
  ref?: (...xs: HostArray[]) => HostArray;
  /** false: not differentiable; otherwise options for the gradient check. */
  grad?: false | GradCheckOptions;
  tol?: number;
}

const r = (shape: number[], seed: number, scale = 1) => randn(shape, seed, scale);
/** Values kept away from 0 (for log, sqrt, div, pow). */
const pos = (shape: number[], seed: number) => {
  const a = randn(shape, seed);
  for (let i = 0; i < a.size; i++) a.data[i] = 0.5 + Math.abs(a.data[i]!);
  return a;
};
const conv = (stride: [number, number], pads: [number, number, number, number],
  dilation: [number, number], groups: number) => ({ stride, pads, dilation, groups });

const cases: Case[] = [
  // elementwise unary
  { name: 'neg', fn: ops.neg, inputs: [r([3, 4], 1)], ref: (x) => ref.unary(x, (v) => -v) },
  { name: 'exp', fn: ops.exp, inputs: [r([3, 4], 2)], ref: (x) => ref.unary(x, Math.exp) },
  { name: 'log', fn: ops.log, inputs: [pos([3, 4], 3)], ref: (x) => ref.unary(x, Math.log) },
  { name: 'sqrt', fn: ops.sqrt, inputs: [pos([3, 4], 4)], ref: (x) => ref.unary(x, Math.sqrt) },
  { name: 'rsqrt', fn: ops.rsqrt, inputs: [pos([5], 5)], ref: (x) => ref.unary(x, (v) => 1 / Math.sqrt(v)) },
  { name: 'sin', fn: ops.sin, inputs: [r([6], 6)], ref: (x) => ref.unary(x, Math.sin) },
  { name: 'cos', fn: ops.cos, inputs: [r([6], 7)], ref: (x) => ref.unary(x, Math.cos) },
  { name: 'tanh', fn: ops.tanh, inputs: [r([2, 5], 8)], ref: (x) => ref.unary(x, Math.tanh) },
  { name: 'sigmoid', fn: ops.sigmoid, inputs: [r([2, 5], 9)],
    ref: (x) => ref.unary(x, (v) => 1 / (1 + Math.exp(-v))) },
  { name: 'erf', fn: ops.erf, inputs: [r([2, 5], 10)], ref: (x) => ref.unary(x, ref.erf) },
  { name: 'abs', fn: ops.abs, inputs: [pos([4], 11)], ref: (x) => ref.unary(x, Math.abs) },
  { name: 'gelu', fn: (x) => ops.gelu(x), inputs: [r([2, 5], 12)], ref: (x) => ref.gelu(x, 'none') },
  { name: 'gelu tanh', fn: (x) => ops.gelu(x, 'tanh'), inputs: [r([2, 5], 13)],
    ref: (x) => ref.gelu(x, 'tanh') },
  { name: 'gelu tanh, tails', fn: (x) => ops.gelu(x, 'tanh'), inputs: [r([3, 4], 17, 4)],
    ref: (x) => ref.gelu(x, 'tanh') },
  { name: 'silu', fn: ops.silu, inputs: [r([2, 5], 14)], ref: (x) => ref.unary(x, (v) => v / (1 + Math.exp(-v))) },
  { name: 'sign', fn: ops.sign, inputs: [r([5], 15)], ref: (x) => ref.unary(x, Math.sign), grad: false },
  { name: 'floor', fn: ops.floor, inputs: [r([5], 16, 3)], ref: (x) => ref.unary(x, Math.floor), grad: false },
  // broadcasting binary
  { name: 'add broadcast', fn: ops.add, inputs: [r([2, 3, 4], 20), r([3, 1], 21)],
    ref: (a, b) => ref.binary(a, b, (x, y) => x + y) },
  { name: 'sub broadcast', fn: ops.sub, inputs: [r([4], 22), r([2, 3, 4], 23)],
    ref: (a, b) => ref.binary(a, b, (x, y) => x - y) },
  { name: 'mul broadcast', fn: ops.mul, inputs: [r([2, 1, 4], 24), r([3, 1], 25)],
    ref: (a, b) => ref.binary(a, b, (x, y) => x * y) },
  { name: 'div broadcast', fn: ops.div, inputs: [r([2, 3], 26), pos([3], 27)],
    ref: (a, b) => ref.binary(a, b, (x, y) => x / y) },
  { name: 'pow', fn: ops.pow, inputs: [pos([2, 3], 28), r([3], 29)],
    ref: (a, b) => ref.binary(a, b, Math.pow) },
  { name: 'maximum', fn: ops.maximum, inputs: [r([3, 4], 30), r([4], 31)],
    ref: (a, b) => ref.binary(a, b, Math.max) },
  { name: 'minimum', fn: ops.minimum, inputs: [r([3, 4], 32), r([3, 1], 33)],
    ref: (a, b) => ref.binary(a, b, Math.min) },
  { name: 'less', fn: ops.less, inputs: [r([3, 4], 34), r([4], 35)],
    ref: (a, b) => ref.binary(a, b, (x, y) => Number(x < y), 'bool'), grad: false },
  { name: 'where', fn: (c, a, b) => ops.where(ops.greater(c, 0), a, b),
    inputs: [r([3, 1], 36), r([3, 4], 37), r([4], 38)], grad: { wrt: [1, 2] },
    ref: (c, a, b) => ref.where(ref.binary(c, HostArray.scalar(0), (x, y) => Number(x > y), 'bool'), a, b) },
  { name: 'cast int64 round trip', fn: (x) => ops.cast(ops.cast(x, 'int64'), 'float32'),
    inputs: [r([5], 39, 4)], ref: (x) => ref.cast(ref.cast(x, 'int64'), 'float32'), grad: false },
  // reductions and normalisations
  { name: 'sum axes', fn: (x) => ops.sum(x, [0, 2]), inputs: [r([2, 3, 4], 40)],
    ref: (x) => ref.reduce(x, [0, 2], false, 'sum') },
  { name: 'mean keepDims', fn: (x) => ops.mean(x, -1, true), inputs: [r([2, 3, 4], 41)],
    ref: (x) => ref.reduce(x, [2], true, 'mean') },
  { name: 'max', fn: (x) => ops.max(x, 1), inputs: [r([3, 5], 42)], ref: (x) => ref.reduce(x, [1], false, 'max') },
  { name: 'argmax', fn: (x) => ops.argmax(x, 1), inputs: [r([3, 5], 43)], ref: (x) => ref.argmax(x, 1, false),
    grad: false },
  { name: 'topk values', fn: (x) => ops.topk(x, 2, -1).values, inputs: [r([3, 5], 44)],
    ref: (x) => ref.topk(x, 2, 1, true).values },
  { name: 'topk indices', fn: (x) => ops.topk(x, 2, 0).indices, inputs: [r([4, 3], 45)],
    ref: (x) => ref.topk(x, 2, 0, true).indices, grad: false },
  { name: 'softmax', fn: (x) => ops.softmax(x, 1), inputs: [r([2, 4, 3], 46)], ref: (x) => ref.softmax(x, 1) },
  // softmax(q k^T) v with T >= 2D and T >= 16D: the softmax VJP's attention forms
  // (attentionShiftedGrad: row sums from O; the subtraction inside the product too)
  ...[[2, 6, 3], [2, 32, 2]].map((shape, i) => ({ name: `attention softmax ${shape.join('x')}`,
    inputs: [r(shape, 58 + 3 * i), r(shape, 59 + 3 * i), r(shape, 60 + 3 * i)],
    fn: (q: Tensor, k: Tensor, v: Tensor) => ops.matmul(ops.softmax(ops.matmul(q, ops.transpose(k, [0, 2, 1])), -1), v),
    ref: (q: HostArray, k: HostArray, v: HostArray) => ref.matmul(ref.softmax(ref.matmul(q, ref.transpose(k, [0, 2, 1])), 2), v) })),
  { name: 'logSoftmax', fn: (x) => ops.logSoftmax(x), inputs: [r([3, 6], 47)], ref: (x) => ref.logSoftmax(x, 1) },
  { name: 'layerNorm affine', fn: (x, s, b) => ops.layerNorm(x, { scale: s, bias: b, eps: 1e-5 }),
    inputs: [r([2, 3, 8], 48), r([8], 49), r([8], 50)], ref: (x, s, b) => ref.layerNorm(x, 2, 1e-5, s, b) },
  { name: 'layerNorm two axes', fn: (x) => ops.layerNorm(x, { axis: 1 }), inputs: [r([2, 3, 4], 51)],
    ref: (x) => ref.layerNorm(x, 1, 1e-5) },
  { name: 'groupNorm', fn: (x, s, b) => ops.groupNorm(x, 2, { scale: s, bias: b, eps: 1e-5 }),
    inputs: [r([2, 4, 3, 3], 52), r([4], 53), r([4], 54)], ref: (x, s, b) => ref.groupNorm(x, 2, 1e-5, s, b) },
  { name: 'groupNorm without affine', fn: (x) => ops.groupNorm(x, 3, { eps: 1e-5 }),
    inputs: [r([2, 6, 5], 55, 3)], ref: (x) => ref.groupNorm(x, 3, 1e-5) },
  { name: 'groupNorm one group, scale only', fn: (x, s) => ops.groupNorm(x, 1, { scale: s, eps: 1e-3 }),
    inputs: [r([3, 4, 2, 2], 56), r([4], 57)], ref: (x, s) => ref.groupNorm(x, 1, 1e-3, s) },
  // linear algebra
  { name: 'matmul', fn: ops.matmul, inputs: [r([3, 4], 60), r([4, 5], 61)], ref: ref.matmul },
  { name: 'matmul batch broadcast', fn: ops.matmul, inputs: [r([2, 1, 3, 4], 62), r([3, 4, 2], 63)],
    ref: ref.matmul },
  { name: 'conv2d', fn: (x, w) => ops.conv2d(x, w, { padding: 1 }), inputs: [r([2, 3, 5, 5], 64), r([4, 3, 3, 3], 65)],
    ref: (x, w) => ref.conv2d(x, w, undefined, [1, 1], [1, 1, 1, 1], [1, 1], 1) },
  // same-size convs: the weight gradient shifts x (fewer input channels) or gy (fewer outputs)
  { name: 'conv2d narrowing', fn: (x, w) => ops.conv2d(x, w, { padding: 1 }), inputs: [r([2, 4, 5, 5], 75), r([2, 4, 3, 3], 76)],
    ref: (x, w) => ref.conv2d(x, w, undefined, [1, 1], [1, 1, 1, 1], [1, 1], 1) },
  { name: 'conv2d 3x1 widening', fn: (x, w) => ops.conv2d(x, w, { padding: [1, 0] }), inputs: [r([2, 2, 4, 5], 77), r([3, 2, 3, 1], 78)],
    ref: (x, w) => ref.conv2d(x, w, undefined, [1, 1], [1, 0, 1, 0], [1, 1], 1) },
  { name: 'conv2d bias strided', fn: (x, w, b) => ops.conv2d(x, w, { stride: 2, padding: [1, 0], bias: b }),
    inputs: [r([2, 2, 7, 6], 66), r([3, 2, 3, 3], 67), r([3], 68)],
    ref: (x, w, b) => ref.conv2d(x, w, b, [2, 2], [1, 0, 1, 0], [1, 1], 1) },
  { name: 'conv2d asymmetric pad dilated', fn: (x, w) => ops.conv2d(x, w, { padding: [0, 1, 1, 2], dilation: 2 }),
    inputs: [r([1, 2, 7, 7], 69), r([2, 2, 3, 2], 70)],
    ref: (x, w) => ref.conv2d(x, w, undefined, [1, 1], [0, 1, 1, 2], [2, 2], 1) },
  { name: 'conv2d grouped', fn: (x, w) => ops.conv2d(x, w, { padding: 1, groups: 2 }),
    inputs: [r([2, 4, 5, 5], 71), r([6, 2, 3, 3], 72)],
    ref: (x, w) => ref.conv2d(x, w, undefined, [1, 1], [1, 1, 1, 1], [1, 1], 2) },
  { name: 'conv2d 1x1', fn: (x, w) => ops.conv2d(x, w), inputs: [r([2, 3, 4, 4], 73), r([5, 3, 1, 1], 74)],
    ref: (x, w) => ref.conv2d(x, w, undefined, [1, 1], [0, 0, 0, 0], [1, 1], 1) },
  { name: 'convTranspose2d', fn: (x, w, b) => ops.convTranspose2d(x, w, { stride: 2, padding: 1, outputPadding: 1, bias: b }),
    inputs: [r([2, 3, 4, 4], 75), r([3, 2, 3, 3], 76), r([2], 77)],
    ref: (x, w, b) => ref.convTranspose2d(x, w, b, [2, 2], [1, 1, 1, 1], [1, 1], 1, [1, 1]) },
  { name: 'convTranspose2d grouped dilated', fn: (x, w) => ops.convTranspose2d(x, w, { groups: 2, dilation: 2 }),
    inputs: [r([1, 4, 3, 3], 78), r([4, 1, 2, 2], 79)],
    ref: (x, w) => ref.convTranspose2d(x, w, undefined, [1, 1], [0, 0, 0, 0], [2, 2], 2, [0, 0]) },
  // attention: [B, H, T, D] and [B, H, D, T] with narrow heads (the primitive), wide heads
  // (the composite)
  { name: 'attention', fn: (q, k, v) => ops.attention(q, k, v, { scale: 0.7 }),
    inputs: [r([2, 2, 5, 4], 96), r([2, 2, 6, 4], 97), r([2, 2, 6, 3], 98)],
    ref: (q, k, v) => ref.attention(q, k, v, 0.7, 'tokens') },
  { name: 'attention channels', fn: (q, k, v) => ops.attention(q, k, v, { layout: 'channels' }),
    inputs: [r([2, 3, 4, 5], 99), r([2, 3, 4, 5], 100), r([2, 3, 2, 5], 101)],
    ref: (q, k, v) => ref.attention(q, k, v, 0.5, 'channels') },
  { name: 'attention wide heads', fn: (q, k, v) => ops.attention(q, k, v, { layout: 'channels' }),
    inputs: [r([1, 2, 17, 3], 102, 0.5), r([1, 2, 17, 4], 103, 0.5), r([1, 2, 17, 4], 104)],
    ref: (q, k, v) => ref.attention(q, k, v, 1 / Math.sqrt(17), 'channels') },
  // movement
  { name: 'reshape', fn: (x) => ops.reshape(x, [4, -1]), inputs: [r([2, 3, 4], 80)], ref: (x) => ref.reshape(x, [4, 6]) },
  { name: 'transpose', fn: (x) => ops.transpose(x, [2, 0, 1]), inputs: [r([2, 3, 4], 81)],
    ref: (x) => ref.transpose(x, [2, 0, 1]) },
  { name: 'slice strided', fn: (x) => ops.slice(x, [null, [1, 6, 2], [-3, 4]]), inputs: [r([2, 7, 5], 82)],
    ref: (x) => ref.slice(x, [0, 1, 2], [1, 2, 1], [2, 3, 2]) },
  { name: 'concat', fn: (a, b) => ops.concat([a, b, a], 1), inputs: [r([2, 2, 3], 83), r([2, 1, 3], 84)],
    ref: (a, b) => ref.concat([a, b, a], 1) },
  { name: 'split', fn: (x) => ops.split(x, [1, 3], 1)[1]!, inputs: [r([2, 4], 85)],
    ref: (x) => ref.slice(x, [0, 1], [1, 1], [2, 3]) },
  { name: 'pad', fn: (x) => ops.pad(x, [[0, 0], [1, 2], [2, 0]], 0.5), inputs: [r([2, 3, 2], 86)],
    ref: (x) => ref.pad(x, [0, 1, 2, 0, 2, 0], 0.5) },
  { name: 'broadcastTo', fn: (x) => ops.broadcastTo(x, [2, 3, 4]), inputs: [r([3, 1], 87)],
    ref: (x) => ref.expand(x, [2, 3, 4]) },
  { name: 'gather axis 0', fn: (x, i) => ops.gather(x, i, 0), inputs: [r([5, 3], 88), randint([2, 4], 5, 89)],
    ref: (x, i) => ref.gather(x, i, 0) },
  { name: 'gather axis 1', fn: (x, i) => ops.gather(x, i, 1), inputs: [r([2, 5, 3], 90), randint([4], 5, 91)],
    ref: (x, i) => ref.gather(x, i, 1) },
  { name: 'scatterAdd', fn: (t, i, u) => ops.scatterAdd(t, i, u),
    inputs: [r([4, 3], 92), randint([6], 4, 93), r([6, 3], 94)], ref: ref.scatterAdd },
  { name: 'upsampleNearest2x', fn: ops.upsampleNearest2x, inputs: [r([1, 2, 3, 2], 95)], ref: ref.upsampleNearest2x },
];

describe('primitives: forward against the reference', () => {
  for (const c of cases) {
    if (!c.ref) continue;
    test(c.name, async () => {
      const f = compile(c.fn);
      const got = (await f(...(c.inputs as never[]))) as unknown as HostArray;
      const want = c.ref!(...c.inputs);
      assert.deepEqual(got.shape, want.shape, `${c.name}: shape`);
      if (got.dtype === 'float32') {
        const err = ref.maxAbsDiff(got, want);
        assert.ok(err <= (c.tol ?? 1e-5), `${c.name}: max abs error ${err}`);
      } else {
        assert.deepEqual(Array.from(got.data as ArrayLike<unknown>), Array.from(want.data as ArrayLike<unknown>));
      }
      await f.dispose();
    });
  }
});

describe('primitives: VJP against finite differences', () => {
  for (const c of cases) {
    if (c.grad === false) continue;
    test(c.name, async () => {
      await checkGrad(c.name, c.fn, c.inputs, c.grad || {});
    });
  }
});

test('gelu tanh is one FastGelu node forward, and its gradient reads no Tanh', () => {
  const x = randn([4, 8], 31);
  const opTypes = (bytes: Uint8Array) =>
    onnxProto.onnx.ModelProto.decode(bytes).graph!.node!.map((n) => n.opType);
  const fwd = opTypes(compile((t: Tensor) => ops.gelu(t, 'tanh')).onnx(x));
  assert.deepEqual(fwd, ['FastGelu']);
  const bwd = opTypes(compile(grad((t: Tensor) => ops.sum(ops.gelu(t, 'tanh')))).onnx(x));
  assert.equal(bwd.filter((o) => o === 'FastGelu').length, 1, bwd.join(' '));
  assert.ok(!bwd.includes('Tanh') && bwd.includes('Sigmoid'), bwd.join(' '));
});

describe('attention in batch chunks', () => {
  const opTypes = (bytes: Uint8Array) =>
    onnxProto.onnx.ModelProto.decode(bytes).graph!.node!.map((n) => n.opType);
  const swap = (t: Tensor) => ops.transpose(t, [0, 1, 3, 2]);
  /** The composite the primitive replaces, differentiated by autodiff. */
  const composite = (q: Tensor, k: Tensor, v: Tensor) =>
    ops.matmul(ops.softmax(ops.matmul(ops.mul(q, 0.5), swap(k)), -1), v);
  // 2 MB of scores per image: two images per 4 MB chunk, two chunks.
  const [q, k, v, w] = [1, 2, 3, 4].map((s) => randn([4, 2, 512, 4], 110 + s));

  test('runs each chunk alone forward and recomputes its probabilities backward', () => {
    const fwd = opTypes(compile((a: Tensor, b: Tensor, c: Tensor) => ops.attention(a, b, c)).onnx(q!, k!, v!));
    assert.equal(fwd.filter((o) => o === 'Softmax').length, 2, fwd.join(' '));
    const loss = (a: Tensor, b: Tensor, c: Tensor, d: Tensor) => ops.sum(ops.mul(ops.attention(a, b, c), d));
    const bwd = opTypes(compile(grad(loss, { argnums: [0, 1, 2] })).onnx(q!, k!, v!, w!));
    assert.equal(bwd.filter((o) => o === 'Softmax').length, 4, bwd.join(' '));
  });

  test('runs as one chunk outside the CPU provider', () => {
    const f = (a: Tensor, b: Tensor, c: Tensor) => ops.attention(a, b, c);
    for (const provider of ['cuda', 'webgpu'] as const) {
      const ops1 = opTypes(compile(f, { provider }).onnx(q!, k!, v!));
      assert.equal(ops1.filter((o) => o === 'Softmax').length, 1, `${provider}: ${ops1.join(' ')}`);
      assert.ok(!ops1.includes('Split'), ops1.join(' '));
    }
  });

  test('matches the composite and its gradients', async () => {
    const both = compile((a: Tensor, b: Tensor, c: Tensor, d: Tensor): Tensor[] => {
      const loss = (f: typeof composite) => (x: Tensor, y: Tensor, z: Tensor) => ops.sum(ops.mul(f(x, y, z), d));
      const g = grad(loss((x, y, z) => ops.attention(x, y, z)), { argnums: [0, 1, 2] })(a, b, c) as Tensor[];
      const gRef = grad(loss(composite), { argnums: [0, 1, 2] })(a, b, c) as Tensor[];
      return [composite(a, b, c), ops.attention(a, b, c), ops.attention(a, b, c, { layout: 'tokens', scale: 0.5 }),
        ...g, ...gRef];
    });
    const outs = (await both(q!, k!, v!, w!)) as unknown as HostArray[];
    const [oRef, o, oScaled] = outs;
    assert.ok(ref.maxAbsDiff(o!, oRef!) < 1e-5, `output ${ref.maxAbsDiff(o!, oRef!)}`);
    assert.ok(ref.maxAbsDiff(oScaled!, oRef!) < 1e-5);
    for (let i = 0; i < 3; i++) {
      const err = ref.maxAbsDiff(outs[3 + i]!, outs[6 + i]!);
      assert.ok(err < 1e-5, `gradient ${i}: max abs error ${err}`);
    }
    await both.dispose();
  });

  test('refuses operands that disagree, naming the forms it takes', () => {
    const bad = randn([4, 2, 512, 5], 120);
    assert.throws(() => compile((a: Tensor, b: Tensor, c: Tensor) => ops.attention(a, b, c)).onnx(q!, bad, v!),
      /attention: q, k and v must be \[B, H, T, D\].*\[4, 2, 512, 5\]/);
  });
});
