/** compileTrainStep trains an MLP and a small CNN to a target loss; the CNN exports to a
 *  standalone .onnx that a fresh InferenceSession runs to the same outputs. */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import ort from 'onnxruntime-node';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile, exportOnnx } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { mapTree, type Tree } from '../engine/tree.js';
import { Conv2d, Linear } from './layers.js';
import { Module, type ParamsOf } from './module.js';
import { adamw } from './optim.js';
import { compileTrainStep } from './train.js';

class Mlp extends Module {
  readonly l1 = new Linear(2, 64);
  readonly l2 = new Linear(64, 64);
  readonly out = new Linear(64, 1);
  forward(p: ParamsOf<Mlp>, x: Tensor): Tensor {
    const h = ops.silu(this.l1.forward(p.l1, x)); // [B, 64]
    return this.out.forward(p.out, ops.silu(this.l2.forward(p.l2, h))); // [B, 1]
  }
}

class SmallCnn extends Module {
  readonly conv1 = new Conv2d(1, 8, 3, { padding: 1 });
  readonly conv2 = new Conv2d(8, 16, 3, { padding: 1, stride: 2 });
  readonly head = new Linear(16, 2);
  forward(p: ParamsOf<SmallCnn>, x: Tensor): Tensor {
    const h = ops.silu(this.conv1.forward(p.conv1, x)); // [B, 8, 8, 8]
    const h2 = ops.silu(this.conv2.forward(p.conv2, h)); // [B, 16, 4, 4]
    return this.head.forward(p.head, ops.mean(h2, [2, 3])); // [B, 2]
  }
}

function crossEntropy(logits: Tensor, labels: Tensor): Tensor {
  const logp = ops.logSoftmax(logits, -1);
  const onehot = ops.cast(ops.equal(ops.reshape(labels, [-1, 1]), ops.arange(logits.shape[1] as number)),
    'float32');
  return ops.neg(ops.mean(ops.sum(ops.mul(logp, onehot), -1)));
}

/** Horizontal (label 0) or vertical (label 1) bars on 8x8 images, plus noise. */
function barsBatch(key: RngKey, n: number): { x: HostArray; y: HostArray } {
  const [kl, kp, kn] = key.split(3);
  const labels = kl!.uniformInt(n, 2);
  const pos = kp!.uniformInt(n, 8);
  const x = kn!.normal(n * 64);
  for (let i = 0; i < x.length; i++) x[i]! *= 0.3;
  for (let b = 0; b < n; b++) {
    for (let k = 0; k < 8; k++) {
      const [r, c] = labels[b] ? [k, pos[b]!] : [pos[b]!, k];
      x[b * 64 + r * 8 + c]! += 1;
    }
  }
  return { x: new HostArray(x, [n, 1, 8, 8]), y: new HostArray(BigInt64Array.from(labels, BigInt), [n], 'int64') };
}

test('an MLP trained with compileTrainStep fits a smooth 2-D function', async () => {
  const model = new Mlp();
  const key = RngKey.fromSeed(7);
  const n = 256;
  const xs = key.fold(1).uniform(2 * n).map((u) => 4 * u - 2);
  const ys = new Float32Array(n).map((_, i) => Math.sin(2 * xs[2 * i]!) * xs[2 * i + 1]!);
  const batch = { x: new HostArray(xs, [n, 2]), y: new HostArray(ys, [n, 1]) };
  const loss = (p: Tree<Tensor>, b: Tree<Tensor>) => {
    const { x, y } = b as { x: Tensor; y: Tensor };
    return ops.mean(ops.square(ops.sub(model.forward(p as ParamsOf<Mlp>, x), y)));
  };
  const trainer = compileTrainStep(loss, adamw({ lr: 3e-3, weightDecay: 0 }), { clipGradNorm: 10 });
  let state = trainer.init(model.init(key.fold(2)));
  const losses: number[] = [];
  for (let i = 0; i < 400; i++) {
    const r = await trainer.step(state, batch);
    state = r.state;
    losses.push(r.metrics.loss);
  }
  await trainer.dispose();
  const variance = ys.reduce((s, v) => s + v * v, 0) / n;
  assert.equal(state.step, 400);
  assert.ok(losses[0]! > 0.5 * variance, `initial loss ${losses[0]} should be near the variance ${variance}`);
  assert.ok(losses.at(-1)! < 0.02, `final MSE ${losses.at(-1)} (variance ${variance.toFixed(3)})`);
});

test('a small CNN learns a bar classifier; its exported .onnx reproduces its outputs', async () => {
  const model = new SmallCnn();
  const key = RngKey.fromSeed(11);
  const loss = (p: Tree<Tensor>, b: Tree<Tensor>) => {
    const { x, y } = b as { x: Tensor; y: Tensor };
    return crossEntropy(model.forward(p as ParamsOf<SmallCnn>, x), y);
  };
  const trainer = compileTrainStep(loss, adamw({ lr: 1e-2 }), { ema: { maxDecay: 0.9 } });
  let state = trainer.init(model.init(key.fold(0)));
  const losses: number[] = [];
  for (let i = 0; i < 150; i++) {
    const r = await trainer.step(state, barsBatch(key.fold(100 + i), 64));
    state = r.state;
    losses.push(r.metrics.loss);
  }
  await trainer.dispose();
  const last = losses.slice(-10).reduce((a, b) => a + b, 0) / 10;
  assert.ok(losses[0]! > 0.5, `initial loss ${losses[0]} should be near ln 2`);
  assert.ok(last < 0.1, `final cross-entropy ${last}`);
  assert.ok(state.ema, 'EMA parameters are kept');

  // Inference graph with the weights baked in, exported with a dynamic batch dimension.
  const params = state.params as ParamsOf<SmallCnn, HostArray>;
  const consts = mapTree(params as Tree<HostArray>, (x): x is HostArray => x instanceof HostArray,
    (a) => ops.constant(a)) as ParamsOf<SmallCnn>;
  const infer = (x: Tensor) => model.forward(consts, x);
  const dir = await mkdtemp(join(tmpdir(), 'diffuse-'));
  try {
    const path = join(dir, 'cnn.onnx');
    await exportOnnx(infer, [{ shape: ['batch', 1, 8, 8] }], path);
    const test = barsBatch(key.fold(999), 5);
    const ours = (await compile(infer)(test.x)) as HostArray;
    const session = await ort.InferenceSession.create(path);
    const theirs = await session.run({ x: new ort.Tensor('float32', test.x.data as Float32Array, [5, 1, 8, 8]) });
    const out = theirs.out as ort.Tensor;
    assert.deepEqual(out.dims, [5, 2]);
    const data = out.data as Float32Array;
    for (let i = 0; i < 10; i++) assert.ok(Math.abs(data[i]! - (ours.data[i] as number)) < 1e-5);
    const predicted = [0, 1, 2, 3, 4].map((b) => (data[2 * b + 1]! > data[2 * b]! ? 1 : 0));
    assert.deepEqual(predicted, Array.from(test.y.data, Number));
    await session.release();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
