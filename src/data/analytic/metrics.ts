/**
 * @file Distances between a sample set and a known distribution (the exact metrics of
 * analytic data): moment errors, sliced Wasserstein distance, distance to
 * the union of a low-rank mixture's subspaces, and component frequencies.
 */
import { meanAndCovariance } from './linalg.js';
import type { GaussianMixture } from './mixture.js';
import type { RandomSource } from './random.js';

/** |mean(x) - mean| and the Frobenius norm of cov(x) - cov, for n samples [n x D]. */
export function momentErrors(
  x: ArrayLike<number>,
  D: number,
  target: { mean: Float64Array; cov: Float64Array },
): { mean: number; cov: number } {
  const n = x.length / D;
  const { mean, cov } = meanAndCovariance(x, n, D);
  let dm = 0;
  for (let i = 0; i < D; i++) dm += (mean[i]! - target.mean[i]!) ** 2;
  let dc = 0;
  for (let i = 0; i < D * D; i++) dc += (cov[i]! - target.cov[i]!) ** 2;
  return { mean: Math.sqrt(dm), cov: Math.sqrt(dc) };
}

/**
 * Sliced Wasserstein-1 distance between two equal-size sample sets [n x D]: the average over
 * `projections` random unit directions of the 1-D W1 between the projected samples.
 */
export function slicedWasserstein(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  D: number,
  rng: RandomSource,
  projections = 64,
): number {
  const n = a.length / D;
  if (b.length !== a.length)
    throw new RangeError('slicedWasserstein: sample sets must have the same size');
  let total = 0;
  for (let p = 0; p < projections; p++) {
    const dir = rng.normal(D);
    const norm = Math.hypot(...dir);
    const pa = new Float64Array(n);
    const pb = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < D; j++) {
        pa[i] = pa[i]! + (a[i * D + j]! * dir[j]!) / norm;
        pb[i] = pb[i]! + (b[i * D + j]! * dir[j]!) / norm;
      }
    }
    pa.sort();
    pb.sort();
    let w = 0;
    for (let i = 0; i < n; i++) w += Math.abs(pa[i]! - pb[i]!);
    total += w / n;
  }
  return total / projections;
}

/**
 * For each sample, the distance to the nearest component's affine subspace mu_k + span(U_k),
 * and the index of that component. Meaningful for low-rank mixtures.
 */
export function subspaceResiduals(
  x: ArrayLike<number>,
  mix: GaussianMixture,
): { residual: Float64Array; nearest: Int32Array } {
  const D = mix.dim;
  const n = x.length / D;
  const residual = new Float64Array(n).fill(Infinity);
  const nearest = new Int32Array(n);
  const r = new Float64Array(D);
  for (let i = 0; i < n; i++) {
    mix.components.forEach((c, k) => {
      const d = c.variances.length;
      for (let j = 0; j < D; j++) r[j] = x[i * D + j]! - c.mean[j]!;
      for (let q = 0; q < d; q++) {
        let p = 0;
        for (let j = 0; j < D; j++) p += c.basis[j * d + q]! * r[j]!;
        for (let j = 0; j < D; j++) r[j] = r[j]! - p * c.basis[j * d + q]!;
      }
      const dist = Math.hypot(...r);
      if (dist < residual[i]!) {
        residual[i] = dist;
        nearest[i] = k;
      }
    });
  }
  return { residual, nearest };
}

/** Fraction of samples per component (by `labels`) and its total variation from the weights. */
export function componentFrequencies(
  labels: Int32Array,
  mix: GaussianMixture,
): { freq: Float64Array; tv: number } {
  const K = mix.components.length;
  const freq = new Float64Array(K);
  for (const l of labels) freq[l] = freq[l]! + 1 / labels.length;
  let tv = 0;
  for (let k = 0; k < K; k++) tv += Math.abs(freq[k]! - mix.components[k]!.weight) / 2;
  return { freq, tv };
}

/** Most likely component of each sample (posterior at a small noise level). */
export function assignComponents(
  x: ArrayLike<number>,
  mix: GaussianMixture,
  sigma = 1e-3,
): Int32Array {
  const K = mix.components.length;
  const { responsibilities } = mix.posterior(x, 1, sigma);
  const n = x.length / mix.dim;
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let k = 1; k < K; k++)
      if (responsibilities[i * K + k]! > responsibilities[i * K + best]!) best = k;
    out[i] = best;
  }
  return out;
}
