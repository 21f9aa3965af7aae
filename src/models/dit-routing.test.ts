/** Denoising Task Routing: the mask pattern against the official formula in plain numbers, and
 *  in a DiT: inactive channels pass a block untouched, active ones are the block's output of
 *  the masked input; the config keys are saved only when routing is on. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import type { ParamsOf } from '../nn/module.js';
import { DIT_DEFAULTS, ditClass, ditCond, DiTTransformer2DModel, type DiTConfig } from './dit.js';
import { DTR_TASKS, dtrMask, dtrStart } from './dit-routing.js';

/** The official create_mask_tasks row for task i, written out: [s, s + floor(beta C)). */
function officialRow(i: number, c: number, alpha: number, beta: number): number[] {
  const k = Math.floor(c * beta);
  const s = Math.round((i / (DTR_TASKS - 1)) ** alpha * (c - k));
  return Array.from({ length: c }, (_, j) => (j >= s && j < s + k ? 1 : 0));
}

test('DTR mask: each timestep\'s window is the official [s_i, s_i + floor(beta C))', async () => {
  const c = 24;
  const r = { alpha: 4, beta: 0.8 };
  const times = [0, 1, 250, 499.7, 500, 750, 998, 999, 1000];
  const f = compile((t: Tensor) => dtrMask(t, c, r));
  try {
    const m = (await f(new HostArray(Float32Array.from(times), [times.length]))) as HostArray;
    assert.deepEqual(m.shape, [times.length, 1, c]);
    times.forEach((t, n) => {
      const task = Math.min(Math.floor(t), DTR_TASKS - 1);
      const row = Array.from(m.data.subarray(n * c, (n + 1) * c) as Float32Array);
      assert.deepEqual(row, officialRow(task, c, 4, 0.8), `t = ${t}`);
      assert.equal(row.indexOf(1), dtrStart(task, c, r));
    });
  } finally {
    await f.dispose();
  }
  // The window slides from the first channels at t = 0 to the last at t = T - 1.
  assert.equal(dtrStart(0, c, r), 0);
  assert.equal(dtrStart(DTR_TASKS - 1, c, r), c - Math.floor(c * 0.8));
});

const tiny: DiTConfig = { ...DIT_DEFAULTS, sample_size: 8, in_channels: 1, patch_size: 2,
  num_layers: 2, num_attention_heads: 2, attention_head_dim: 8, num_embeds_ada_norm: 4,
  dtr_alpha: 1, dtr_beta: 0.5 };

test('a routed DiT block is block(x m) + x (1 - m): inactive channels bypass it', async () => {
  const model = new DiTTransformer2DModel(tiny);
  const plain = new DiTTransformer2DModel({ ...tiny, dtr_alpha: null });
  // Random weights everywhere (adaLN-Zero's zeros would make every block the identity).
  const params = model.init(RngKey.fromSeed(1));
  const key = RngKey.fromSeed(2);
  const x = new HostArray(key.fold(0).normal(2 * 64), [2, 1, 8, 8]);
  const t = new HostArray(Float32Array.from([100, 900]), [2]);
  const y = new HostArray(BigInt64Array.from([1n, 3n]), [2], 'int64');
  const f = compile((xx: Tensor, tt: Tensor, yy: Tensor) => {
    const p = ops.constantTree(params as never) as ParamsOf<DiTTransformer2DModel>;
    const tokens = model.embed(p, xx); // [N, T, D]
    const routed = model.forwardWithHidden(p, xx, tt, yy, [0]).hidden[0]!;
    const mask = dtrMask(tt, 16, { alpha: 1, beta: 0.5 });
    // The reference: the plain block on the masked tokens, plus the bypass.
    const blk = plain.transformer_blocks[0]!.forward(p.transformer_blocks[0]!, ops.mul(tokens, mask), ditCond(tt, yy), 0);
    return [tokens, routed, blk, mask];
  });
  try {
    const [tokens, routed, blk, mask] = ((await f(x, t, y)) as HostArray[]).map((a) => a.data as Float32Array);
    const [T, D] = [16, 16];
    let checked = 0;
    for (let n = 0; n < 2; n++) {
      for (let i = 0; i < T; i++) {
        for (let d = 0; d < D; d++) {
          const at = (n * T + i) * D + d;
          const on = mask![n * D + d] === 1;
          const want = on ? blk![at]! : tokens![at]! + blk![at]!;
          assert.ok(Math.abs(routed![at]! - want) < 1e-5, `n ${n} token ${i} channel ${d}`);
          checked++;
        }
      }
    }
    assert.equal(checked, 2 * T * D);
    // t = 100 and t = 900 route through different windows.
    assert.notDeepEqual(Array.from(mask!.subarray(0, D)), Array.from(mask!.subarray(D)));
  } finally {
    await f.dispose();
  }
});

test('DTR keys are in config.json only when routing is on, and read back', () => {
  const on = ditClass.toConfig(tiny);
  assert.equal(on.dtr_alpha, 1);
  assert.deepEqual(ditClass.readConfig(on), tiny);
  const off = ditClass.toConfig({ ...tiny, dtr_alpha: null });
  assert.ok(!('dtr_alpha' in off) && !('dtr_beta' in off));
  assert.equal(ditClass.readConfig(off).dtr_alpha, null);
  assert.throws(() => ditClass.readConfig({ ...on, dtr_beta: 1.5 }), /'dtr_beta' must be in \(0, 1\]/);
});
