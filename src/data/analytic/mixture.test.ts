/** The exact oracle: posterior means vs brute force, low-rank vs full-rank, prediction types. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { cosineVp, rectifiedFlow } from '../../diffusion/process.js';
import { toX0 } from '../../diffusion/predictions.js';
import { symmetricEigen } from './linalg.js';
import {
  componentFrequencies,
  momentErrors,
  slicedWasserstein,
  subspaceResiduals,
} from './metrics.js';
import { GaussianMixture, randomBasis } from './mixture.js';
import { seededRandom } from './random.js';

/** E[x0 | x_t] by importance sampling from the prior (slow, approximate). */
function bruteForce(
  mix: GaussianMixture,
  x: Float64Array,
  alpha: number,
  sigma: number,
  n: number,
): Float64Array {
  const { x: s } = mix.sample(n, seededRandom(77));
  const D = mix.dim;
  const w = new Float64Array(n);
  let top = -Infinity;
  for (let i = 0; i < n; i++) {
    let q = 0;
    for (let j = 0; j < D; j++) q += (x[j]! - alpha * s[i * D + j]!) ** 2;
    w[i] = -q / (2 * sigma * sigma);
    top = Math.max(top, w[i]!);
  }
  let z = 0;
  const m = new Float64Array(D);
  for (let i = 0; i < n; i++) {
    const e = Math.exp(w[i]! - top);
    z += e;
    for (let j = 0; j < D; j++) m[j] = m[j]! + e * s[i * D + j]!;
  }
  return m.map((v) => v / z);
}

describe('Gaussian mixture oracle', () => {
  const full = GaussianMixture.full(
    [0.6, 0.4],
    [
      [-1, 0],
      [1.5, 1],
    ],
    [
      [0.3, 0.1, 0.1, 0.2],
      [0.1, 0, 0, 0.4],
    ],
  );
  it('posterior mean matches brute-force importance sampling', () => {
    const x = Float64Array.of(0.4, 0.3);
    const exact = full.posterior(x, 0.8, 0.6).x0;
    const approx = bruteForce(full, x, 0.8, 0.6, 200000);
    for (let j = 0; j < 2; j++)
      assert.ok(Math.abs(exact[j]! - approx[j]!) < 0.01, `${exact[j]} vs ${approx[j]}`);
  });
  it('a low-rank mixture with d = D equals the full-rank one', () => {
    const rng = seededRandom(2);
    const U = randomBasis(3, 3, rng);
    const lr = GaussianMixture.lowRank([1], [[0.5, -1, 2]], [Array.from(U)], [3], [0.7]);
    const cov = new Array(9).fill(0).map((_, k) => (k % 4 === 0 ? 0.7 : 0));
    const fr = GaussianMixture.full([1], [[0.5, -1, 2]], [cov]);
    const x = Float64Array.of(0.1, 0.2, -0.3, 1, 1, 1);
    const a = lr.posterior(x, 0.5, 0.9).x0;
    const b = fr.posterior(x, 0.5, 0.9).x0;
    a.forEach((v, i) => assert.ok(Math.abs(v - b[i]!) < 1e-12));
  });
  it('low-rank posterior: METHODS 18 formula for one centred component', () => {
    const rng = seededRandom(3);
    const U = randomBasis(6, 2, rng);
    const mix = GaussianMixture.lowRank([1], [new Array(6).fill(0)], [Array.from(U)], [2]);
    const x = Float64Array.from(rng.normal(6));
    const [alpha, sigma] = [0.7, 0.4];
    const got = mix.posterior(x, alpha, sigma).x0;
    const p = [0, 1].map((j) => x.reduce((s, v, i) => s + v * U[i * 2 + j]!, 0));
    got.forEach((v, i) => {
      const want =
        (alpha / (alpha * alpha + sigma * sigma)) * (U[i * 2]! * p[0]! + U[i * 2 + 1]! * p[1]!);
      assert.ok(Math.abs(v - want) < 1e-12);
    });
  });
  it('denoisers of every prediction type agree on x0', async () => {
    for (const proc of [cosineVp(), rectifiedFlow({ timeScale: 1 })]) {
      const x = { data: Float64Array.of(0.2, -0.4, 1.1, 0.3), shape: [2, 2] };
      const t = Float64Array.of(0.35, 0.35);
      const { alpha, sigma } = proc.at(0.35);
      const want = full.posterior(x.data, alpha, sigma).x0;
      for (const pred of ['eps', 'x0', 'v', 'flow'] as const) {
        const out = await full.denoiser(proc, pred).predict(x, t);
        const x0 = toX0(pred, x.data, out.data, alpha, sigma);
        x0.forEach((v, i) => assert.ok(Math.abs(v - want[i]!) < 1e-12, `${proc.kind} ${pred}`));
      }
    }
  });
  it('samples have the mixture moments; metrics read zero on true samples', () => {
    const { x, labels } = full.sample(20000, seededRandom(5));
    const e = momentErrors(x, 2, full.moments());
    assert.ok(e.mean < 0.03 && e.cov < 0.05);
    assert.ok(componentFrequencies(labels, full).tv < 0.01);
    const y = full.sample(20000, seededRandom(6)).x;
    assert.ok(slicedWasserstein(x, y, 2, seededRandom(1), 16) < 0.02);
  });
  it("subspace residuals vanish on a low-rank mixture's samples", () => {
    const rng = seededRandom(8);
    const mix = GaussianMixture.lowRank(
      [0.5, 0.5],
      [Array.from(rng.normal(5)), Array.from(rng.normal(5))],
      [Array.from(randomBasis(5, 2, rng)), Array.from(randomBasis(5, 1, rng))],
      [2, 1],
    );
    const { x, labels } = mix.sample(500, rng);
    const { residual, nearest } = subspaceResiduals(x, mix);
    assert.ok(residual.every((r) => r < 1e-9));
    assert.deepEqual(Array.from(nearest), Array.from(labels));
  });
  it('symmetric eigendecomposition reconstructs the matrix', () => {
    const a = [4, 1, 0.5, 1, 3, 0.2, 0.5, 0.2, 2];
    const { values, vectors } = symmetricEigen(a, 3);
    for (let i = 0; i < 3; i++) {
      for (let j = 0; j < 3; j++) {
        let s = 0;
        for (let k = 0; k < 3; k++) s += vectors[i * 3 + k]! * values[k]! * vectors[j * 3 + k]!;
        assert.ok(Math.abs(s - a[i * 3 + j]!) < 1e-12);
      }
    }
  });
});
