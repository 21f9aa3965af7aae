/** REPA: the alignment loss against a plain-number projector and cosine, with the encoder's
 *  finer grid pooled onto the tokens; the default depth follows the paper's 8 of 28. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import type { ParamsOf } from '../nn/module.js';
import { RepaProjector, repaDepth, repaLoss } from './repa.js';

const silu = (v: number) => v / (1 + Math.exp(-v));

/** y = W x + b for a row-major W [out, in]. */
function linear(w: HostArray, b: HostArray, x: number[]): number[] {
  const [out, inn] = w.shape as [number, number];
  return Array.from({ length: out }, (_, o) =>
    x.reduce((s, v, i) => s + (w.data[o * inn + i] as number) * v, b.data[o] as number));
}

test('repaLoss is -mean cos(projector(h), z) over tokens and batch, z pooled to the token grid', async () => {
  const [B, D, H, Z] = [2, 3, 5, 4];
  const proj = new RepaProjector(D, H, Z);
  const p = proj.init(RngKey.fromSeed(1)) as unknown as Record<'linear1' | 'linear2' | 'linear3', { weight: HostArray; bias: HostArray }>;
  const key = RngKey.fromSeed(2);
  const hidden = new HostArray(key.fold(0).normal(B * D * 2 * 2), [B, D, 2, 2]); // 2 x 2 tokens
  const target = new HostArray(key.fold(1).normal(B * Z * 4 * 4), [B, Z, 4, 4]); // pooled 2x
  const f = compile((h: Tensor, z: Tensor) => repaLoss(proj, ops.constantTree(p as never) as ParamsOf<RepaProjector>, h, z));
  try {
    const got = ((await f(hidden, target)) as HostArray).data[0] as number;
    let total = 0;
    for (let b = 0; b < B; b++) {
      for (let r = 0; r < 2; r++) {
        for (let c = 0; c < 2; c++) {
          const h = Array.from({ length: D }, (_, d) => hidden.data[((b * D + d) * 2 + r) * 2 + c] as number);
          const l1 = linear(p.linear1.weight, p.linear1.bias, h).map(silu);
          const l2 = linear(p.linear2.weight, p.linear2.bias, l1).map(silu);
          const y = linear(p.linear3.weight, p.linear3.bias, l2);
          const z = Array.from({ length: Z }, (_, k) => {
            let s = 0;
            for (let i = 0; i < 2; i++) for (let j = 0; j < 2; j++) s += target.data[((b * Z + k) * 4 + 2 * r + i) * 4 + 2 * c + j] as number;
            return s / 4;
          });
          const dot = y.reduce((s, v, i) => s + v * z[i]!, 0);
          const norm = (v: number[]) => Math.sqrt(v.reduce((s, x) => s + x * x, 0));
          total += dot / (norm(y) * norm(z));
        }
      }
    }
    const want = -total / (B * 4);
    assert.ok(Math.abs(got - want) < 1e-5, `${got} vs ${want}`);
    assert.ok(got > -1 && got < 1);
  } finally {
    await f.dispose();
  }
});

test('repaLoss pools a finer model grid onto the encoder\'s, and refuses grids that do not nest', async () => {
  const proj = new RepaProjector(3, 4, 2);
  const p = ops.constantTree(proj.init(RngKey.fromSeed(1)) as never) as ParamsOf<RepaProjector>;
  assert.throws(() => repaLoss(proj, p, ops.zeros([1, 3, 4, 4]), ops.zeros([1, 2, 6, 6])),
    /encoder's 6x6 grid does not pool onto 4x4/);
  assert.throws(() => repaLoss(proj, p, ops.zeros([1, 3, 6, 6]), ops.zeros([1, 2, 4, 4])),
    /model's 6x6 grid does not pool onto 4x4/);
  // A 4x4 model grid against a 2x2 target: projected tokens averaged in 2x2 blocks. With a
  // target constant over the grid, the loss is -cos(mean of the block's projections, target).
  const f = compile((h: Tensor, z: Tensor) => [repaLoss(proj, p, h, z), proj.forward(p, ops.transpose(ops.reshape(h, [1, 3, 16]), [0, 2, 1]))]);
  try {
    const h = new HostArray(RngKey.fromSeed(4).normal(48), [1, 3, 4, 4]);
    const z = new HostArray(Float32Array.from([1, 1, 1, 1, -1, -1, -1, -1]), [1, 2, 2, 2]);
    const [loss, tokens] = (await f(h, z)) as HostArray[];
    const t = tokens!.data as Float32Array; // [16 tokens, 2]
    let total = 0;
    for (let br = 0; br < 2; br++) {
      for (let bc = 0; bc < 2; bc++) {
        const m = [0, 1].map((k) => [0, 1, 4, 5].reduce((s, o) => s + t[2 * (br * 8 + bc * 2 + o) + k]!, 0) / 4);
        total += (m[0]! - m[1]!) / (Math.hypot(m[0]!, m[1]!) * Math.SQRT2);
      }
    }
    assert.ok(Math.abs((loss!.data[0] as number) + total / 4) < 1e-5);
  } finally {
    await f.dispose();
  }
});

test('the default alignment depth is the paper\'s 8 of 28 blocks, scaled', () => {
  assert.equal(repaDepth(28), 8);
  assert.equal(repaDepth(12), 3);
  assert.equal(repaDepth(6), 2);
  assert.equal(repaDepth(4), 1);
  assert.equal(repaDepth(1), 1);
});
