/** Optimizers, schedules and EMA against hand-computed values. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { emaDecay, emaUpdate } from './ema.js';
import { adamw, clipGradNorm, sgd } from './optim.js';
import { cosineLr, warmupLr } from './schedules.js';

const close = (got: ArrayLike<number>, want: number[], tol = 1e-6) =>
  want.forEach((w, i) => assert.ok(Math.abs(got[i]! - w) <= tol * Math.max(1, Math.abs(w)),
    `[${i}] got ${got[i]}, want ${w}`));

function runUpdate(opt: ReturnType<typeof adamw>, p: number[], g: number[], steps: number) {
  const params: { w: HostArray } = { w: HostArray.fromNested(p) };
  const f = compile((pp: { w: Tensor }, gg: { w: Tensor }, st: { m: { w: Tensor }; v: { w: Tensor } }, t: Tensor) => {
    const u = opt.update(pp, gg, st, t);
    return { params: u.params as { w: Tensor }, state: u.state as typeof st };
  });
  return async () => {
    let state = opt.init(params) as { m: { w: HostArray }; v: { w: HostArray } };
    let cur = params;
    for (let t = 1; t <= steps; t++) {
      const out = await f(cur, { w: HostArray.fromNested(g) }, state, HostArray.scalar(t));
      cur = out.params;
      state = out.state;
    }
    return { params: cur, state };
  };
}

test('one AdamW step equals the hand-computed step', async () => {
  const lr = 0.1, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.01;
  const { params, state } = await runUpdate(adamw({ lr, betas: [b1, b2], eps, weightDecay: wd }),
    [1, -2], [0.5, 0.25], 1)();
  // m = 0.1 g, v = 0.001 g^2; mhat = g, vhat = g^2: p <- p (1 - lr wd) - lr g / (|g| + eps)
  const want = [1, -2].map((p, i) => {
    const g = [0.5, 0.25][i]!;
    return p * (1 - lr * wd) - lr * g / (Math.abs(g) + eps);
  });
  close(params.w.data as Float32Array, want);
  close(state.m.w.data as Float32Array, [0.05, 0.025]);
  close(state.v.w.data as Float32Array, [0.00025, 0.0000625]);
});

test('AdamW over three steps matches the textbook recursion', async () => {
  const lr = 0.01, b1 = 0.8, b2 = 0.9, eps = 1e-6, wd = 0.1;
  const g = 0.3;
  const { params } = await runUpdate(adamw({ lr, betas: [b1, b2], eps, weightDecay: wd }), [2], [g], 3)();
  let p = 2, m = 0, v = 0;
  for (let t = 1; t <= 3; t++) {
    p *= 1 - lr * wd;
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g * g;
    p -= (lr / (1 - b1 ** t)) * m / (Math.sqrt(v) / Math.sqrt(1 - b2 ** t) + eps);
  }
  close(params.w.data as Float32Array, [p], 1e-6);
});

test('SGD with momentum follows torch (buffer = mu b + g)', async () => {
  const opt = sgd({ lr: 0.5, momentum: 0.9 });
  const f = compile((p: Tensor[], g: Tensor[], st: { momentum: Tensor[] }, t: Tensor) => {
    const u = opt.update(p, g, st, t);
    return { p: u.params as Tensor[], st: u.state as typeof st };
  });
  let p: HostArray[] = [HostArray.fromNested([1])];
  let st = opt.init(p) as { momentum: HostArray[] };
  for (let t = 1; t <= 2; t++) ({ p, st } = await f(p, [HostArray.fromNested([2])], st, HostArray.scalar(t)));
  // b1 = 2, p = 1 - 1 = 0; b2 = 0.9*2 + 2 = 3.8, p = 0 - 1.9 = -1.9
  close(p[0]!.data as Float32Array, [-1.9]);
});

test('global-norm clipping scales to the max norm and reports the norm', async () => {
  const f = compile((a: Tensor, b: Tensor) => {
    const r = clipGradNorm({ a, b }, 1);
    return { ...(r.grads as { a: Tensor; b: Tensor }), norm: r.norm };
  });
  const r = await f(HostArray.fromNested([3]), HostArray.fromNested([0, 4]));
  close(r.norm.data as Float32Array, [5]);
  close(r.a.data as Float32Array, [0.6], 1e-5);
  close(r.b.data as Float32Array, [0, 0.8], 1e-5);
});

test('EMA decay warm-up and update equal their formulas', async () => {
  const f = compile((t: Tensor, e: Tensor, p: Tensor) => {
    const d = emaDecay(t, { maxDecay: 0.999 });
    const dw = emaDecay(t, { warmup: { invGamma: 1, power: 0.75 } });
    return { d, dw, e2: emaUpdate(e, p, d) as Tensor };
  });
  for (const step of [1, 2, 5, 100000]) {
    const r = await f(HostArray.scalar(step), HostArray.fromNested([1, 2]), HostArray.fromNested([3, 0]));
    const s = step - 1;
    const d = s <= 0 ? 0 : Math.min(0.999, (1 + s) / (10 + s));
    const dw = s <= 0 ? 0 : Math.min(0.9999, 1 - (1 + s) ** -0.75);
    close(r.d.data as Float32Array, [d]);
    close(r.dw.data as Float32Array, [dw], 1e-5);
    close(r.e2.data as Float32Array, [1 - (1 - d) * (1 - 3), 2 - (1 - d) * 2], 1e-5);
  }
});

test('learning-rate schedules: warm-up and cosine', async () => {
  const f = compile((t: Tensor) => ({ w: warmupLr(1, 10)(t), c: cosineLr(1, 110, 10, 0.1)(t) }));
  const at = async (t: number) => f(HostArray.scalar(t));
  close((await at(5)).w.data as Float32Array, [0.5]);
  close((await at(20)).w.data as Float32Array, [1]);
  close((await at(5)).c.data as Float32Array, [0.5]);
  close((await at(60)).c.data as Float32Array, [0.55], 1e-5);
  close((await at(110)).c.data as Float32Array, [0.1], 1e-5);
});
