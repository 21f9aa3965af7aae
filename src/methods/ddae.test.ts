/** DDAE: grid pooling against a plain-TypeScript average, block names, and the linear probe on
 *  data whose best linear classifier is known. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { mapTree, type Tree } from '../engine/tree.js';
import type { ParamsOf } from '../nn/module.js';
import { AttentionProbe } from './attention-probe.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import type { UNet2DConfig } from '../models/unet2d.js';
import { blockNode, gridPool, unetBlocks } from './ddae.js';
import { probeAccuracy, probePredict, trainLinearProbe } from './linear-probe.js';

test('gridPool: cell means of a [B, C, H, W] map, channel-major; k = 1 is the global mean', async () => {
  const [b, c, h, w] = [2, 3, 4, 6];
  const x = RngKey.fromSeed(1).normal(b * c * h * w);
  for (const k of [1, 2]) {
    const f = compile((t: Tensor) => gridPool(t, k));
    const out = (await f(new HostArray(x, [b, c, h, w]))).data as Float32Array;
    await f.dispose();
    assert.equal(out.length, b * c * k * k);
    const [ch, cw] = [h / k, w / k];
    for (let n = 0; n < b; n++) for (let q = 0; q < c; q++) for (let i = 0; i < k; i++) for (let j = 0; j < k; j++) {
      let s = 0;
      for (let y = i * ch; y < (i + 1) * ch; y++) for (let z = j * cw; z < (j + 1) * cw; z++) s += x[((n * c + q) * h + y) * w + z]!;
      const got = out[((n * c + q) * k + i) * k + j]!;
      assert.ok(Math.abs(got - s / (ch * cw)) < 1e-5, `k ${k} [${n}, ${q}, ${i}, ${j}]`);
    }
  }
  assert.throws(() => compile((t: Tensor) => gridPool(t, 4)).trace({ shape: [1, 1, 6, 6] }),
    /6x6 features to a 4x4 grid/);
});

test('U-Net blocks by their probe names', () => {
  const c: Pick<UNet2DConfig, 'down_block_types' | 'up_block_types'> = {
    down_block_types: ['DownBlock2D', 'AttnDownBlock2D'], up_block_types: ['AttnUpBlock2D', 'UpBlock2D'] };
  assert.deepEqual(unetBlocks(c), ['down.0', 'down.1', 'mid', 'up.0', 'up.1']);
  assert.equal(blockNode('up.1', c), 'up_blocks.1');
  assert.equal(blockNode('mid', c), 'mid_block');
  assert.throws(() => blockNode('up.2', c), /'up.2' is not one of this U-Net's: down.0, down.1, mid, up.0, up.1/);
});

/** n points per class around class means in `dim` dimensions, the first two dimensions
 *  carrying the class and the rest noise. */
function blobs(n: number, classes: number, dim: number, seed: number, scale = 1) {
  const key = RngKey.fromSeed(seed);
  const z = key.normal(n * classes * dim);
  const labels = Int32Array.from({ length: n * classes }, (_, i) => i % classes);
  const x = Float32Array.from(z, (v, j) => {
    const [i, d] = [Math.floor(j / dim), j % dim];
    const angle = (2 * Math.PI * labels[i]!) / classes;
    return scale * (0.3 * v + (d === 0 ? 3 * Math.cos(angle) : d === 1 ? 3 * Math.sin(angle) : 0));
  });
  return { x, labels };
}

test('linear probe: separates linearly separable classes; invariant to the features\' scale', () => {
  const train = blobs(100, 4, 8, 1);
  const held = blobs(50, 4, 8, 2);
  const { probe, losses } = trainLinearProbe(train.x, train.labels, 8, 4, { epochs: 20, batchSize: 32, lr: 0.05 });
  assert.ok(losses.at(-1)! < 0.5 * losses[0]!, `loss ${losses[0]} -> ${losses.at(-1)}`);
  assert.ok(probeAccuracy(probe, held.x, held.labels) >= 0.99);
  // Standardised inside: features 1000x larger train the same probe.
  const big = trainLinearProbe(train.x.map((v) => 1000 * v), train.labels, 8, 4,
    { epochs: 20, batchSize: 32, lr: 0.05 }).probe;
  assert.deepEqual([...probePredict(big, held.x.map((v) => 1000 * v))], [...probePredict(probe, held.x)]);
  assert.throws(() => trainLinearProbe(train.x, train.labels, 7, 4), /feature values for 400 rows of 7/);
  assert.throws(() => trainLinearProbe(train.x, Int32Array.from(train.labels, (l) => l + 1), 8, 4),
    /label 4 of row 3 is not in \[0, 4\)/);
});

test('linear probe: chance level when the labels carry no information', () => {
  const train = blobs(100, 4, 8, 3);
  const shuffled = RngKey.fromSeed(9).uniformInt(train.labels.length, 4);
  const held = blobs(100, 4, 8, 4);
  const { probe } = trainLinearProbe(train.x, shuffled, 8, 4, { epochs: 5 });
  const acc = probeAccuracy(probe, held.x, held.labels);
  assert.ok(acc < 0.45, `accuracy ${acc} with random labels`);
});

test('attention probe: logits per image; a map of another size is refused by name', async () => {
  const head = new AttentionProbe(8, 4, 3, 2);
  const params = mapTree(head.init(RngKey.fromSeed(1)) as unknown as Tree<HostArray>,
    (x): x is HostArray => x instanceof HostArray, (a) => ops.constant(a)) as unknown as ParamsOf<AttentionProbe>;
  const f = compile((x: Tensor) => head.logits(params, x));
  try {
    const out = await f(new HostArray(RngKey.fromSeed(2).normal(5 * 8 * 4), [5, 8, 2, 2]));
    assert.deepEqual(out.shape, [5, 3]);
    assert.ok([...(out.data as Float32Array)].every(Number.isFinite));
  } finally {
    await f.dispose();
  }
  assert.throws(() => compile((x: Tensor) => head.logits(params, x)).trace({ shape: [1, 8, 3, 3] }),
    /built for 8 channels x 4 tokens, got a \[1, 8, 3, 3\] feature map/);
});
