/**
 * Gradient guidance on the exact oracle (Dhariwal & Nichol 2021, sec. 4: score + grad log
 * p(y | x_t) is the conditional score). For a Gaussian mixture the noisy classifier is exact:
 * p(k | x_t) is the softmax over k of log pi_k + log N(x_t; alpha mu_k, alpha^2 Sigma_k +
 * sigma^2 I), written here in engine ops, as is the exact denoiser E[x0 | x_t]. So guided
 * sampling at scale 1 must land in component y with its moments, scale 0 must keep the mixture
 * weights, and the corrections must match finite differences of host (float64) oracles.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { checkGrad, randn } from '../../test/support/gradcheck.js';
import { assignComponents, componentFrequencies, momentErrors } from '../data/analytic/metrics.js';
import { seededRandom } from '../data/analytic/random.js';
import type { Batch, Denoiser } from './denoiser.js';
import {
  classifierGuidance,
  energyGuidance,
  tracedDenoiser,
  type Releasable,
} from './gradient-guidance.js';
import { withGuidance } from './guidance.js';
import { toX0 } from './predictions.js';
import { sampleDdim } from './samplers/ddim.js';
import { sampleDpmSolverPP } from './samplers/dpm.js';
import { mixture2d, vp } from '../../test/support/sampler-fixtures.js';
import { karrasLevels, scheduleFromLevels } from './schedule.js';

const mix = mixture2d(); // weights 0.5 / 0.3 / 0.2, full-rank 2-D components
const D = mix.dim;
const K = mix.components.length;

// ---------------------------------------------------------------------------------------------
// The oracle in engine ops

/**
 * alpha and sigma^2 of `vp` (cosineVp, s = 0.008) in ops. sigma^2 = 1 - alpha^2 is formed as
 * (1 - alpha)(1 + alpha) with 1 - alpha = (cos u0 - cos u) / cos u0 = 2 sin((u + u0) / 2)
 * sin((u - u0) / 2) / cos u0, so it keeps float32 accuracy near t = 0 (sigma^2 ~ 4e-6).
 */
function vpOps(t: Tensor): { alpha: Tensor; sigma2: Tensor } {
  const s = 0.008;
  const c = Math.PI / 2 / (1 + s);
  const u0 = c * s;
  const u = ops.mul(ops.add(t, s), c);
  const alpha = ops.div(ops.cos(u), Math.cos(u0));
  const half = (v: Tensor): Tensor => ops.sin(ops.mul(v, 0.5));
  const sines = ops.mul(half(ops.add(u, u0)), half(ops.sub(u, u0)));
  const oneMinus = ops.div(ops.mul(sines, 2), Math.cos(u0)); // 1 - alpha
  return { alpha, sigma2: ops.mul(oneMinus, ops.add(alpha, 1)) };
}

/** Per component k: unnormalised log p(k, x_t) [B, K] and E[x0 | x_t, k] [B, K, D]. */
function mixtureOps(x: Tensor, t: Tensor): { logw: Tensor; means: Tensor } {
  const B = x.shape[0] as number;
  const d = D; // full-rank components: the basis is D x D
  const mu = ops.constant(mix.components.map((c) => [...c.mean])).reshape([1, K, D]);
  const basis = ops.constant(mix.components.map((c) => [...c.basis])).reshape([1, K, D, d]);
  const lam = ops.constant(mix.components.map((c) => [...c.variances])).reshape([1, K, d]);
  const logPi = ops.constant([mix.components.map((c) => Math.log(c.weight))]); // [1, K]
  const { alpha, sigma2 } = vpOps(t);
  const a = ops.reshape(alpha, [B, 1, 1]);
  const s2 = ops.reshape(sigma2, [B, 1, 1]);
  const r = ops.sub(ops.reshape(x, [B, 1, D]), ops.mul(a, mu)); // [B, K, D]
  const p = ops.sum(ops.mul(ops.unsqueeze(r, 3), basis), 2); // [B, K, d]: U^T r
  const v = ops.add(ops.mul(ops.mul(a, a), lam), s2); // [B, K, d]: alpha^2 lambda + sigma^2
  const quad = ops.sum(ops.add(ops.div(ops.mul(p, p), v), ops.log(v)), -1); // [B, K]
  const logw = ops.sub(logPi, ops.mul(quad, 0.5));
  const gain = ops.div(ops.mul(ops.mul(a, lam), p), v); // [B, K, d]
  const means = ops.add(mu, ops.sum(ops.mul(ops.unsqueeze(gain, 2), basis), -1)); // [B, K, D]
  return { logw, means };
}

/** Exact noisy classifier: log p(y | x_t) [B] for int64 labels y [B]. */
function logProb(x: Tensor, t: Tensor, y: Tensor): Tensor {
  const onehot = ops.cast(ops.equal(ops.unsqueeze(y, 1), ops.arange(K)), 'float32'); // [B, K]
  return ops.sum(ops.mul(onehot, ops.logSoftmax(mixtureOps(x, t).logw, -1)), -1);
}

/** Exact denoiser as an eps-prediction model: (x - alpha E[x0 | x_t]) / sigma, [B, D]. */
function epsModel(x: Tensor, t: Tensor): Tensor {
  const B = x.shape[0] as number;
  const { logw, means } = mixtureOps(x, t);
  const x0 = ops.sum(ops.mul(ops.unsqueeze(ops.softmax(logw, -1), 2), means), 1); // [B, D]
  const { alpha, sigma2 } = vpOps(t);
  const a = ops.reshape(alpha, [B, 1]);
  return ops.div(ops.sub(x, ops.mul(a, x0)), ops.reshape(ops.sqrt(sigma2), [B, 1]));
}

// ---------------------------------------------------------------------------------------------
// Helpers

const open: Releasable[] = [];
after(async () => Promise.all(open.map((d) => d.dispose())));
function track<T extends Releasable>(d: T): T {
  open.push(d);
  return d;
}

const f32 = (a: ArrayLike<number>, shape: number[]): HostArray<'float32'> =>
  new HostArray<'float32'>(Float32Array.from(a), shape, 'float32');

/** The x0 estimate of one denoiser call at time t for every row (host conversion). */
async function x0At(den: Denoiser, x: Batch, t: number): Promise<Float64Array> {
  const rows = x.shape[0]!;
  const p = await den.predict(x, new Float64Array(rows).fill(t));
  const { alpha, sigma } = vp.at(t);
  return Float64Array.from(toX0(den.prediction, x.data, p.data, alpha, sigma));
}

/** Central difference of a host function of one row, per coordinate. */
function numericGrad(f: (row: Float64Array) => number, row: Float64Array, h = 1e-4): number[] {
  return Array.from(row, (_, i) => {
    const up = Float64Array.from(row);
    const dn = Float64Array.from(row);
    up[i] = up[i]! + h;
    dn[i] = dn[i]! - h;
    return (f(up) - f(dn)) / (2 * h);
  });
}

function componentMoments(k: number): { mean: Float64Array; cov: Float64Array } {
  const { mean, basis: u, variances: lam } = mix.components[k]!;
  const cov = new Float64Array(D * D);
  for (let i = 0; i < D; i++)
    for (let j = 0; j < D; j++)
      for (let q = 0; q < D; q++) cov[i * D + j] += u[i * D + q]! * lam[q]! * u[j * D + q]!;
  return { mean, cov };
}

const schedule = scheduleFromLevels(vp, karrasLevels(50, 0.002, 100));

/** Fresh noise at the first level: x_T = sigma_0 z (alpha_0 = 0.01 is neglected). */
function freshNoise(rows: number, seed: number): HostArray<'float32'> {
  const s0 = schedule.sigmas[0]!;
  return f32(seededRandom(seed).normal(rows * D).map((z) => s0 * z), [rows, D]);
}

// ---------------------------------------------------------------------------------------------

describe('the oracle in ops', () => {
  it('log p(k | x_t) and E[x0 | x_t] match the host mixture', async () => {
    const rows = 8;
    const x = randn([rows, D], 3, 1.5);
    const t = 0.4;
    const { alpha, sigma } = vp.at(t);
    const host = mix.posterior(x.data, alpha, sigma);
    const lp = compile((xs: Tensor, ts: Tensor) =>
      ops.logSoftmax(mixtureOps(xs, ts).logw, -1));
    const got = await lp(x, f32(new Array(rows).fill(t), [rows]));
    await lp.dispose();
    (got.data as Float32Array).forEach((v, i) =>
      assert.ok(Math.abs(v - Math.log(host.responsibilities[i]!)) < 1e-4, `log p[${i}]`));
    const den = track(tracedDenoiser(epsModel, 'eps'));
    const x0 = await x0At(den, x, t);
    x0.forEach((v, i) => assert.ok(Math.abs(v - host.x0[i]!) < 1e-4, `x0[${i}]`));
  });
  it('grad of the traced log-probability agrees with finite differences', async () => {
    const rows = 6;
    const x = randn([rows, D], 4);
    const t = f32([0.2, 0.3, 0.4, 0.5, 0.6, 0.7], [rows]);
    const y = new HostArray(BigInt64Array.of(0n, 1n, 2n, 0n, 1n, 2n), [rows], 'int64');
    const r = await checkGrad('mixture log p(y | x_t)', logProb, [x, t, y], { wrt: [0] });
    assert.ok(r.error < 1e-3);
  });
});

describe('classifier guidance', () => {
  it('the correction is (sigma^2 / alpha) s(t) grad log p(y | x_t), s per step', async () => {
    const rows = 4;
    const x = randn([rows, D], 8, 1.2);
    const labels = [0, 1, 2, 1];
    const scale = (tt: number): number => 2 * tt; // a function of the step's model time
    const base = mix.denoiser(vp, 'eps');
    const guided = withGuidance(base, vp, track(classifierGuidance({ logProb, labels, scale })));
    for (const t of [0.3, 0.8]) {
      const { alpha, sigma } = vp.at(t);
      const exact = mix.posterior(x.data, alpha, sigma).x0;
      const shift = (await x0At(guided, x, t)).map((v, i) => v - exact[i]!);
      for (let b = 0; b < rows; b++) {
        const logp = (row: Float64Array): number =>
          Math.log(mix.posterior(row, alpha, sigma).responsibilities[labels[b]!]!);
        const g = numericGrad(logp, Float64Array.from(x.data.subarray(b * D, (b + 1) * D)));
        g.forEach((gi, i) => {
          const want = ((sigma * sigma) / alpha) * scale(t) * gi;
          const got = shift[b * D + i]!;
          assert.ok(Math.abs(got - want) < 1e-4 + 1e-3 * Math.abs(want), `${got} vs ${want}`);
        });
      }
    }
  });

  it('samples p(x | y) at scale 1, the mixture at scale 0, sharper at scale 3', async (t) => {
    // Components overlap, so even exact samples of component k are not all classified k: on
    // 200,000 oracle samples the rates are 0.992 / 0.988 / 0.983, the ceiling for scale 1.
    const perClass = 500;
    const rows = K * perClass;
    const labels = Array.from({ length: rows }, (_, i) => Math.floor(i / perClass));
    const x = freshNoise(rows, 6);
    const hits: number[][] = [];
    for (const scale of [0, 1, 3]) {
      const guide = track(classifierGuidance({ logProb, labels, scale }));
      const den = withGuidance(mix.denoiser(vp, 'eps'), vp, guide);
      const out = (await sampleDpmSolverPP(den, x, schedule)).data;
      const assigned = assignComponents(out, mix, 1e-3);
      if (scale === 0) {
        const { freq, tv } = componentFrequencies(assigned, mix);
        const shown = [...freq].map((f) => f.toFixed(3));
        t.diagnostic(`scale 0: frequencies ${shown}, tv ${tv.toFixed(3)}`);
        assert.ok(tv < 0.04, `scale 0 keeps the mixture weights: tv ${tv}`);
        continue;
      }
      const frac = [0, 1, 2].map((k) => {
        let n = 0;
        for (let i = k * perClass; i < (k + 1) * perClass; i++) n += assigned[i] === k ? 1 : 0;
        return n / perClass;
      });
      hits.push(frac);
      const errs = [0, 1, 2].map((k) => {
        const group = out.subarray(k * perClass * D, (k + 1) * perClass * D);
        return momentErrors(group, D, componentMoments(k));
      });
      t.diagnostic(
        `scale ${scale}: in class ${frac.map((f) => f.toFixed(3))}; moment errors ` +
          errs.map((e) => `${e.mean.toFixed(3)}/${e.cov.toFixed(3)}`).join(' '),
      );
      if (scale === 1) {
        frac.forEach((f, k) => assert.ok(f > 0.97, `class ${k}: ${f} in component`));
        errs.forEach((e, k) => {
          assert.ok(e.mean < 0.08, `class ${k}: mean error ${e.mean}`);
          assert.ok(e.cov < 0.1, `class ${k}: covariance error ${e.cov}`);
        });
      }
    }
    hits[1]!.forEach((f, k) => assert.ok(f >= hits[0]![k]!, `class ${k}: scale 3 ${f} < scale 1`));
  });
});

describe('energy guidance', () => {
  const target = [1.5, -1.5];
  /** E = |x0hat - target|^2 / 2 per row. */
  const energy = (x0: Tensor): Tensor =>
    ops.mul(ops.sum(ops.square(ops.sub(x0, ops.constant([target]))), -1), 0.5);
  const guided = (scale: number): Denoiser & Releasable =>
    energyGuidance({ model: epsModel, prediction: 'eps', process: vp, energy, scale });

  it('the correction is -(sigma^2 / alpha) s grad_x E(x0hat(x_t))', async () => {
    const rows = 3;
    const x = randn([rows, D], 9);
    const s = 0.7;
    const den = track(guided(s));
    const plain = track(tracedDenoiser(epsModel, 'eps'));
    for (const t of [0.2, 0.6]) {
      const { alpha, sigma } = vp.at(t);
      const [g0, p0] = [await x0At(den, x, t), await x0At(plain, x, t)];
      for (let b = 0; b < rows; b++) {
        const e = (row: Float64Array): number => {
          const x0 = mix.posterior(row, alpha, sigma).x0;
          return x0.reduce((a, v, i) => a + (v - target[i]!) ** 2, 0) / 2;
        };
        const g = numericGrad(e, Float64Array.from(x.data.subarray(b * D, (b + 1) * D)));
        g.forEach((gi, i) => {
          const want = -((sigma * sigma) / alpha) * s * gi;
          const got = g0[b * D + i]! - p0[b * D + i]!;
          assert.ok(Math.abs(got - want) < 2e-4 + 2e-3 * Math.abs(want), `${got} vs ${want}`);
        });
      }
    }
  });

  it('moves the mean toward the target as the scale grows; scale 0 is unguided', async (t) => {
    const rows = 1000;
    const x = freshNoise(rows, 12);
    const unguided = (await sampleDdim(track(tracedDenoiser(epsModel, 'eps')), x, schedule)).data;
    const dist: number[] = [];
    for (const scale of [0, 0.5, 2]) {
      const den = track(guided(scale));
      const out = (await sampleDdim(den, x, schedule)).data;
      if (scale === 0) assert.deepEqual(out, unguided);
      const m = [0, 0];
      for (let j = 0; j < out.length; j++) m[j % D]! += out[j]! / rows;
      dist.push(Math.hypot(m[0]! - target[0]!, m[1]! - target[1]!));
      const shown = m.map((v) => v.toFixed(3));
      t.diagnostic(`scale ${scale}: mean (${shown}), distance ${dist.at(-1)!.toFixed(3)}`);
    }
    assert.ok(dist[0]! > dist[1]! && dist[1]! > dist[2]!, `distances ${dist}`);
  });
});
