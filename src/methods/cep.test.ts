/** CEP: the shifts' distributions (uniform within gamma / sqrt(d), Gaussian with that standard
 *  deviation), and a shifted label embedding is exactly the embedding plus the shift. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { CombinedTimestepLabelEmbeddings, ditCond } from '../models/dit.js';
import type { ParamsOf } from '../nn/module.js';
import { conditionShift } from './cep.js';

const stats = (a: Float32Array) => {
  const mean = a.reduce((s, v) => s + v, 0) / a.length;
  const std = Math.sqrt(a.reduce((s, v) => s + (v - mean) ** 2, 0) / a.length);
  return { mean, std, max: Math.max(...a.map(Math.abs)) };
};

test('CEP-U shifts lie in +-gamma/sqrt(d) with the uniform\'s spread; CEP-G has that std', () => {
  const [n, d, gamma] = [400, 64, 2];
  const a = gamma / Math.sqrt(d);
  const u = stats(conditionShift('uniform', gamma, n, d, RngKey.fromSeed(1)).data as Float32Array);
  assert.ok(u.max <= a && u.max > 0.99 * a, `max ${u.max} vs ${a}`);
  assert.ok(Math.abs(u.mean) < 0.01 * a && Math.abs(u.std - a / Math.sqrt(3)) < 0.01 * a);
  const g = stats(conditionShift('gaussian', gamma, n, d, RngKey.fromSeed(1)).data as Float32Array);
  assert.ok(Math.abs(g.mean) < 0.02 * a && Math.abs(g.std - a) < 0.02 * a, `std ${g.std} vs ${a}`);
  assert.deepEqual(conditionShift('uniform', 1, 3, 4, RngKey.fromSeed(5)).shape, [3, 4]);
});

test('a label shift adds to the DiT\'s label embedding and nothing else', async () => {
  const emb = new CombinedTimestepLabelEmbeddings(4, 8);
  const p = emb.init(RngKey.fromSeed(1));
  const shift = conditionShift('gaussian', 1, 2, 8, RngKey.fromSeed(2));
  const f = compile((t: Tensor, y: Tensor, s: Tensor) => {
    const pp = ops.constantTree(p as never) as ParamsOf<CombinedTimestepLabelEmbeddings>;
    return [emb.forward(pp, ditCond(t, y)), emb.forward(pp, ditCond(t, y, s))];
  });
  try {
    const [plain, shifted] = (await f(new HostArray(Float32Array.from([3, 700]), [2]),
      new HostArray(BigInt64Array.from([0n, 4n]), [2], 'int64'), shift)) as HostArray[];
    plain!.data.forEach((v, i) =>
      assert.ok(Math.abs((shifted!.data[i] as number) - (v as number) - (shift.data[i] as number)) < 1e-6));
  } finally {
    await f.dispose();
  }
});
