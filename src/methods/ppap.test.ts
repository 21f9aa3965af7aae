/** PPAP: expert ranges and lookup, timestep draws, and the soft-target losses against
 *  plain-TypeScript references on tiny inputs. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import {
  expertFor, expertLoss, expertRanges, softCrossEntropy, softTargets, timestepsIn,
} from './ppap.js';

const close = (got: number, want: number, tol = 1e-5, what = ''): void =>
  assert.ok(Math.abs(got - want) <= tol * Math.max(1, Math.abs(want)),
    `${what}: got ${got}, want ${want}`);

/** Row-wise log softmax in float64. */
function logSoftmaxRef(x: ArrayLike<number>, n: number, k: number): Float64Array {
  const out = new Float64Array(n * k);
  for (let i = 0; i < n; i++) {
    let m = -Infinity;
    for (let j = 0; j < k; j++) m = Math.max(m, x[i * k + j]!);
    let s = 0;
    for (let j = 0; j < k; j++) s += Math.exp(x[i * k + j]! - m);
    for (let j = 0; j < k; j++) out[i * k + j] = x[i * k + j]! - m - Math.log(s);
  }
  return out;
}

test('expertRanges: equal half-open ranges covering [0, T)', () => {
  assert.deepEqual(expertRanges(1000, 5), [[0, 200], [200, 400], [400, 600], [600, 800],
    [800, 1000]]);
  assert.deepEqual(expertRanges(10, 3), [[0, 3], [3, 6], [6, 10]]);
  assert.deepEqual(expertRanges(7, 1), [[0, 7]]);
  const r = expertRanges(1000, 7);
  r.forEach(([lo, hi], k) => {
    assert.equal(lo, k === 0 ? 0 : r[k - 1]![1]);
    assert.ok(hi - lo === 142 || hi - lo === 143);
  });
  assert.equal(r[6]![1], 1000);
  assert.throws(() => expertRanges(1000, 0), /from 1 to T = 1000, got 0/);
  assert.throws(() => expertRanges(10, 11), /from 1 to T = 10, got 11/);
  assert.throws(() => expertRanges(10, 2.5), /got 2.5/);
});

test('expertFor: the range with lo <= t < hi', () => {
  const r = expertRanges(1000, 5);
  assert.deepEqual([0, 199, 200, 599.5, 999, 999.9].map((t) => expertFor(t, r)),
    [0, 0, 1, 2, 4, 4]);
  assert.throws(() => expertFor(1000, r), /timestep 1000 is in no expert's range \[0, 1000\)/);
  assert.throws(() => expertFor(-1, r), /timestep -1/);
});

test('timestepsIn: integers in [lo, hi), the ends reached', () => {
  const u = RngKey.fromSeed(1).uniform(4000);
  const t = timestepsIn([200, 400], u);
  assert.ok(t.every((v) => Number.isInteger(v) && v >= 200 && v < 400));
  assert.equal(Math.min(...t), 200);
  assert.equal(Math.max(...t), 399);
  assert.deepEqual([...timestepsIn([3, 6], [0, 0.34, 0.67, 0.99999994])], [3, 4, 5, 5]);
});

test('softTargets, softCrossEntropy against references: the KL up to H(targets)', async () => {
  const [n, k, tau] = [3, 4, 0.25];
  const teacher = Float32Array.from([2, -1, 0.5, 0, 0.1, 0.2, 0.3, -0.4, -3, 4, 1, 0]);
  const student = RngKey.fromSeed(2).normal(n * k);
  const f = compile((t: Tensor, s: Tensor) => {
    const q = softTargets(t, tau);
    return { q, ce: softCrossEntropy(s, q), self: softCrossEntropy(ops.div(t, tau), q) };
  });
  const out = await f(new HostArray(teacher, [n, k]), new HostArray(student, [n, k]));
  await f.dispose();
  const logq = logSoftmaxRef(Float32Array.from(teacher, (v) => v / tau), n, k);
  const logp = logSoftmaxRef(student, n, k);
  let ce = 0;
  let kl = 0;
  let entropy = 0;
  for (let j = 0; j < n * k; j++) {
    const q = Math.exp(logq[j]!);
    close(out.q.data[j] as number, q, 1e-5, `q[${j}]`);
    ce -= (q * logp[j]!) / n;
    kl += (q * (logq[j]! - logp[j]!)) / n;
    entropy -= (q * logq[j]!) / n;
  }
  close(out.ce.data[0] as number, ce, 1e-5, 'soft cross-entropy');
  close(ce, kl + entropy, 1e-9, 'CE = KL + H(q)');
  // The student equal to the sharpened teacher: the cross-entropy is the entropy (KL = 0).
  close(out.self.data[0] as number, entropy, 1e-5, 'CE(q, q)');
  assert.throws(() => softTargets(undefined as unknown as Tensor, 0), /tau must be > 0/);
});

test('expertLoss: logits of x_t = alpha x0 + sigma eps against soft targets or labels', async () => {
  const [n, d, k] = [3, 4, 3]; // images [3, 1, 2, 2], a linear "classifier" of 4 pixels
  const key = RngKey.fromSeed(3);
  const [x0, eps, w] = [key.fold(0).normal(n * d), key.fold(1).normal(n * d),
    key.fold(2).normal(k * d)];
  const alpha = Float32Array.from([0.9, 0.5, 0.1]);
  const sigma = alpha.map((a) => Math.sqrt(1 - a * a));
  const soft = Float32Array.from([0.7, 0.2, 0.1, 0, 1, 0, 0.3, 0.3, 0.4]);
  const labels = [2, 0, 1];
  const W = ops.constant(new HostArray(w, [k, d]));
  const logits = (x: Tensor): Tensor => ops.linear(ops.reshape(x, [n, d]), W);
  const f = compile((a: Tensor, b: Tensor, al: Tensor, si: Tensor, q: Tensor, y: Tensor) => ({
    soft: expertLoss(logits, { x0: a, eps: b, alpha: al, sigma: si, soft: q }),
    hard: expertLoss(logits, { x0: a, eps: b, alpha: al, sigma: si, labels: y }),
  }));
  const img = [n, 1, 2, 2];
  const out = await f(new HostArray(x0, img), new HostArray(eps, img),
    new HostArray(alpha, [n, 1, 1, 1]), new HostArray(sigma, [n, 1, 1, 1]),
    new HostArray(soft, [n, k]), new HostArray(BigInt64Array.from(labels, BigInt), [n], 'int64'));
  await f.dispose();
  const s = new Float64Array(n * k);
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < k; c++) {
      for (let j = 0; j < d; j++) {
        s[i * k + c] += w[c * d + j]! * (alpha[i]! * x0[i * d + j]! + sigma[i]! * eps[i * d + j]!);
      }
    }
  }
  const logp = logSoftmaxRef(s, n, k);
  let softRef = 0;
  let hardRef = 0;
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < k; c++) softRef -= (soft[i * k + c]! * logp[i * k + c]!) / n;
    hardRef -= logp[i * k + labels[i]!]! / n;
  }
  close(out.soft.data[0] as number, softRef, 1e-5, 'soft');
  close(out.hard.data[0] as number, hardRef, 1e-5, 'labels');
});
