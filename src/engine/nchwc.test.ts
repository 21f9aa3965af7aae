/** Blocked NCHWc convs for input weights: same values as the reference conv, emitted only
 *  where they apply, never in exported files, and their gradients unchanged. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import onnxProto from 'onnx-proto';
import { grad } from './autodiff.js';
import { HostArray } from './host.js';
import { NCHWC_DOMAIN, nchwcBlockSize } from './nchwc.js';
import * as ops from './ops.js';
import { compile } from './runtime.js';
import type { Tensor } from './tensor.js';
import { RngKey } from './random/philox.js';
import * as ref from '../../test/support/reference.js';

type Pads = [number, number, number, number];
interface Case { c: number; o: number; k: number; stride: number; pads: Pads; dilation: number; bias: boolean }

const blockedNodes = (bytes: Uint8Array) =>
  onnxProto.onnx.ModelProto.decode(bytes).graph!.node!.filter((n) => n.domain === NCHWC_DOMAIN).length;

function randn(key: RngKey, shape: number[]): HostArray {
  return new HostArray(key.normal(shape.reduce((a, b) => a * b, 1)), shape);
}

test('blocked convs match the reference wherever they apply, and stay out where they do not', async (t) => {
  const block = await nchwcBlockSize();
  if (block === 0) {
    // No blocked kernels on this CPU: the plain lowering is the only path (checked below).
    t.diagnostic('ORT has no NCHWc kernels here; checking the plain lowering only');
  }
  const b = block || 8;
  const cases: Case[] = [
    { c: b, o: 2 * b, k: 3, stride: 1, pads: [1, 1, 1, 1], dilation: 1, bias: true },
    { c: 2 * b, o: b, k: 3, stride: 2, pads: [0, 0, 1, 1], dilation: 1, bias: true }, // diffusers' Downsample2D
    { c: 2 * b, o: b, k: 1, stride: 1, pads: [0, 0, 0, 0], dilation: 1, bias: false },
    { c: b, o: b, k: 3, stride: 1, pads: [2, 2, 2, 2], dilation: 2, bias: true },
    { c: 1, o: b, k: 3, stride: 1, pads: [1, 1, 1, 1], dilation: 1, bias: true }, // fewer channels than a block
    { c: b + 4, o: b, k: 3, stride: 1, pads: [1, 1, 1, 1], dilation: 1, bias: true }, // not blockable: plain
    { c: b, o: 4, k: 3, stride: 1, pads: [1, 1, 1, 1], dilation: 1, bias: true }, // not blockable: plain
  ];
  const key = RngKey.fromSeed(11);
  for (const [i, cs] of cases.entries()) {
    const x = randn(key.fold(3 * i), [3, cs.c, 9, 9]);
    const w = randn(key.fold(3 * i + 1), [cs.o, cs.c, cs.k, cs.k]);
    const bias = randn(key.fold(3 * i + 2), [cs.o]);
    const p = { stride: [cs.stride, cs.stride] as [number, number], padding: cs.pads,
      dilation: [cs.dilation, cs.dilation] as [number, number] };
    const f = compile((xx: Tensor, ww: Tensor, bb: Tensor) =>
      ops.conv2d(xx, ww, { ...p, bias: cs.bias ? bb : undefined }));
    const got = await f(x, w, bias);
    const want = ref.conv2d(x, w, cs.bias ? bias : undefined, p.stride, cs.pads, p.dilation, 1);
    assert.deepEqual(got.shape, want.shape, `case ${i}`);
    let err = 0;
    for (let j = 0; j < want.size; j++) err = Math.max(err, Math.abs(Number(got.data[j]) - Number(want.data[j])));
    assert.ok(err < 1e-4, `case ${i} (${JSON.stringify(cs)}): max abs error ${err}`);
    const blockable = block > 0 && cs.o % block === 0 && (cs.c % block === 0 || cs.c < block);
    assert.equal(blockedNodes(f.onnx(x, w, bias)) > 0, blockable, `case ${i}: blocked lowering used`);
    await f.dispose();
  }
});

test('constant weights are left to ORT, and blockedConvs: false turns the lowering off', async () => {
  const block = await nchwcBlockSize();
  const b = block || 8;
  const w = randn(RngKey.fromSeed(3), [b, b, 3, 3]);
  const x = randn(RngKey.fromSeed(4), [2, b, 6, 6]);
  const closed = compile((xx: Tensor) => ops.conv2d(xx, ops.constant(w), { padding: 1 }));
  assert.equal(blockedNodes(closed.onnx(x)), 0);
  const off = compile((xx: Tensor, ww: Tensor) => ops.conv2d(xx, ww, { padding: 1 }), { blockedConvs: false });
  assert.equal(blockedNodes(off.onnx(x, w)), 0);
  const on = compile((xx: Tensor, ww: Tensor) => ops.conv2d(xx, ww, { padding: 1 }));
  assert.equal(blockedNodes(on.onnx(x, w)) > 0, block > 0);
  // Same values either way.
  const [a, c] = [await on(x, w), await off(x, w)];
  for (let j = 0; j < a.size; j++) assert.ok(Math.abs(Number(a.data[j]) - Number(c.data[j])) < 1e-4);
});

test('gradients through blocked convs equal those of the plain lowering', async () => {
  const block = await nchwcBlockSize();
  const b = block || 8;
  const x = randn(RngKey.fromSeed(5), [2, b, 8, 8]);
  const w1 = randn(RngKey.fromSeed(6), [b, b, 3, 3]);
  const w2 = randn(RngKey.fromSeed(7), [2 * b, b, 3, 3]);
  const loss = (xx: Tensor, a: Tensor, c: Tensor) =>
    ops.sum(ops.square(ops.conv2d(ops.tanh(ops.conv2d(xx, a, { padding: 1 })), c, { padding: 1 })));
  const g = (xx: Tensor, a: Tensor, c: Tensor) => grad(loss, { argnums: [0, 1, 2] })(xx, a, c) as Tensor[];
  const on = compile(g);
  const off = compile(g, { blockedConvs: false });
  const [ga, gb] = [await on(x, w1, w2), await off(x, w1, w2)] as HostArray[][];
  for (let k = 0; k < 3; k++) {
    let err = 0;
    let scale = 0;
    for (let j = 0; j < ga[k]!.size; j++) {
      err = Math.max(err, Math.abs(Number(ga[k]!.data[j]) - Number(gb[k]!.data[j])));
      scale = Math.max(scale, Math.abs(Number(gb[k]!.data[j])));
    }
    assert.ok(err <= 1e-4 * scale, `gradient ${k}: max abs difference ${err} (scale ${scale})`);
  }
});
