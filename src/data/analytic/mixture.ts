/**
 * @file The exact oracle: Gaussian mixtures, full-rank or low-rank, whose optimal denoiser
 * E[x0 | x_t] has a closed form for every (alpha, sigma) (METHODS 18; Wang et al., "Diffusion
 * Models Learn Low-Dimensional Distributions via Subspace Clustering").
 *
 * Component k: x0 = mu_k + U_k a, a ~ N(0, diag(lambda_k)), U_k (D x d_k) orthonormal, weight
 * pi_k. With x_t = alpha x0 + sigma eps and r = x_t - alpha mu_k, p = U_k^T r:
 *
 * - Cov(x_t | k) = alpha^2 U Lambda U^T + sigma^2 I, whose inverse is
 *   (I - U U^T) / sigma^2 + U diag(1 / (alpha^2 lambda + sigma^2)) U^T;
 * - E[x0 | x_t, k] = mu_k + alpha U diag(lambda / (alpha^2 lambda + sigma^2)) p;
 * - log w_k = log pi_k - |r - U p|^2 / (2 sigma^2)
 *     - sum_j p_j^2 / (2 (alpha^2 lambda_j + sigma^2))
 *   - ((D - d_k) / 2) log sigma^2 - (1/2) sum_j log(alpha^2 lambda_j + sigma^2), softmax over k;
 * - E[x0 | x_t] = sum_k w_k E[x0 | x_t, k].
 *
 * A full covariance is the d_k = D case (eigendecomposed once).
 */
import { HostArray } from '../../engine/host.js';
import type { FloatArray } from '../../diffusion/arith.js';
import type { Batch, Denoiser } from '../../diffusion/denoiser.js';
import { fromX0Eps, type Prediction } from '../../diffusion/predictions.js';
import type { Process } from '../../diffusion/process.js';
import { orthonormalColumns, symmetricEigen } from './linalg.js';
import type { RandomSource } from './random.js';

export interface MixtureComponent {
  readonly weight: number;
  /** [D] */
  readonly mean: Float64Array;
  /** [D x d] row-major, orthonormal columns. */
  readonly basis: Float64Array;
  /** [d] variances along the basis columns. */
  readonly variances: Float64Array;
}

export class GaussianMixture {
  readonly components: readonly MixtureComponent[];

  constructor(
    readonly dim: number,
    components: readonly MixtureComponent[],
  ) {
    const total = components.reduce((s, c) => s + c.weight, 0);
    if (!(total > 0))
      throw new RangeError('GaussianMixture: weights must sum to a positive number');
    this.components = components.map((c) => {
      const d = c.variances.length;
      if (c.mean.length !== dim || c.basis.length !== dim * d) {
        throw new RangeError(
          `GaussianMixture: component mean [${c.mean.length}] / basis [${c.basis.length}] ` +
            `for D = ${dim}, d = ${d}`,
        );
      }
      return Object.freeze({ ...c, weight: c.weight / total });
    });
  }

  /** Full-covariance components (covariances row-major D x D, symmetric, PSD). */
  static full(
    weights: readonly number[],
    means: readonly (readonly number[])[],
    covariances: readonly (readonly number[])[],
  ): GaussianMixture {
    const D = means[0]!.length;
    return new GaussianMixture(
      D,
      weights.map((w, k) => {
        const { values, vectors } = symmetricEigen(covariances[k]!, D);
        return {
          weight: w,
          mean: Float64Array.from(means[k]!),
          basis: vectors,
          variances: values.map((v) => Math.max(v, 0)),
        };
      }),
    );
  }

  /**
   * Low-rank components: x0 = mu_k + U_k a with U_k's columns `bases[k]` (D x d_k row-major,
   * orthonormalised here) and a ~ N(0, variance_k I).
   */
  static lowRank(
    weights: readonly number[],
    means: readonly (readonly number[])[],
    bases: readonly (readonly number[])[],
    ranks: readonly number[],
    variances: readonly number[] = weights.map(() => 1),
  ): GaussianMixture {
    const D = means[0]!.length;
    return new GaussianMixture(
      D,
      weights.map((w, k) => ({
        weight: w,
        mean: Float64Array.from(means[k]!),
        basis: orthonormalColumns(bases[k]!, D, ranks[k]!),
        variances: new Float64Array(ranks[k]!).fill(variances[k]!),
      })),
    );
  }

  /** Component mean and covariance (D x D) of the whole mixture. */
  moments(): { mean: Float64Array; cov: Float64Array } {
    const D = this.dim;
    const mean = new Float64Array(D);
    for (const c of this.components)
      for (let i = 0; i < D; i++) mean[i] = mean[i]! + c.weight * c.mean[i]!;
    const cov = new Float64Array(D * D);
    for (const c of this.components) {
      const d = c.variances.length;
      for (let i = 0; i < D; i++) {
        for (let j = 0; j < D; j++) {
          let s = (c.mean[i]! - mean[i]!) * (c.mean[j]! - mean[j]!);
          for (let k = 0; k < d; k++)
            s += c.basis[i * d + k]! * c.variances[k]! * c.basis[j * d + k]!;
          cov[i * D + j] = cov[i * D + j]! + c.weight * s;
        }
      }
    }
    return { mean, cov };
  }

  /** n samples [n x D] and their component labels. */
  sample(n: number, rng: RandomSource): { x: Float64Array; labels: Int32Array } {
    const D = this.dim;
    const u = rng.uniform(n);
    const x = new Float64Array(n * D);
    const labels = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      let k = 0;
      let acc = this.components[0]!.weight;
      while (u[i]! >= acc && k < this.components.length - 1) acc += this.components[++k]!.weight;
      labels[i] = k;
      const c = this.components[k]!;
      const d = c.variances.length;
      const a = rng.normal(d).map((z, j) => z * Math.sqrt(c.variances[j]!));
      for (let r = 0; r < D; r++) {
        let v = c.mean[r]!;
        for (let j = 0; j < d; j++) v += c.basis[r * d + j]! * a[j]!;
        x[i * D + r] = v;
      }
    }
    return { x, labels };
  }

  /**
   * E[x0 | x_t] for rows of `x` ([rows x D]) at one (alpha, sigma), and the posterior
   * component probabilities [rows x K]. sigma = 0 returns x / alpha.
   */
  posterior(
    x: ArrayLike<number>,
    alpha: number,
    sigma: number,
  ): { x0: Float64Array; responsibilities: Float64Array } {
    const D = this.dim;
    const K = this.components.length;
    const rows = x.length / D;
    const x0 = new Float64Array(rows * D);
    const resp = new Float64Array(rows * K);
    if (sigma === 0) {
      for (let i = 0; i < x0.length; i++) x0[i] = x[i]! / alpha;
      return { x0, responsibilities: resp.fill(1 / K) };
    }
    const s2 = sigma * sigma;
    const logw = new Float64Array(K);
    const means = new Float64Array(K * D);
    const r = new Float64Array(D);
    // per component: log det and the shrinkage of each basis direction
    const logdets = this.components.map((c) =>
      c.variances.reduce(
        (acc, v) => acc + Math.log(alpha * alpha * v + s2),
        (D - c.variances.length) * Math.log(s2),
      ),
    );
    for (let b = 0; b < rows; b++) {
      for (let k = 0; k < K; k++) {
        const c = this.components[k]!;
        const d = c.variances.length;
        let rr = 0;
        for (let i = 0; i < D; i++) {
          r[i] = x[b * D + i]! - alpha * c.mean[i]!;
          rr += r[i]! * r[i]!;
          means[k * D + i] = c.mean[i]!;
        }
        let quad = 0;
        let pp = 0;
        for (let j = 0; j < d; j++) {
          let p = 0;
          for (let i = 0; i < D; i++) p += c.basis[i * d + j]! * r[i]!;
          const v = alpha * alpha * c.variances[j]! + s2;
          quad += (p * p) / v;
          pp += p * p;
          const gain = (alpha * c.variances[j]! * p) / v;
          for (let i = 0; i < D; i++)
            means[k * D + i] = means[k * D + i]! + gain * c.basis[i * d + j]!;
        }
        // the part of r outside span(U): |r|^2 - |U^T r|^2 (U orthonormal)
        if (d < D) quad += Math.max(rr - pp, 0) / s2;
        logw[k] = Math.log(c.weight) - 0.5 * quad - 0.5 * logdets[k]!;
      }
      let top = -Infinity;
      for (let k = 0; k < K; k++) top = Math.max(top, logw[k]!);
      let z = 0;
      for (let k = 0; k < K; k++) z += Math.exp(logw[k]! - top);
      for (let k = 0; k < K; k++) {
        const w = Math.exp(logw[k]! - top) / z;
        resp[b * K + k] = w;
        for (let i = 0; i < D; i++) x0[b * D + i] = x0[b * D + i]! + w * means[k * D + i]!;
      }
    }
    return { x0, responsibilities: resp };
  }

  /**
   * The optimal denoiser of this mixture under `process`, returning predictions of type
   * `prediction` (computed in float64, returned at the input's precision).
   */
  denoiser(process: Process, prediction: Prediction): Denoiser {
    const D = this.dim;
    return {
      prediction,
      predict: async (x: Batch, t: Float64Array): Promise<Batch> => {
        const rows = x.data.length / D;
        const out = new Float64Array(x.data.length);
        // rows sharing a time are denoised together
        for (let b0 = 0; b0 < rows;) {
          let b1 = b0 + 1;
          while (b1 < rows && t[b1] === t[b0]) b1++;
          const { alpha, sigma } = process.at(t[b0]!);
          const xb = Float64Array.from(x.data.subarray(b0 * D, b1 * D));
          const { x0 } = this.posterior(xb, alpha, sigma);
          const eps =
            sigma > 0
              ? xb.map((v, i) => (v - alpha * x0[i]!) / sigma)
              : new Float64Array(xb.length);
          out.set(fromX0Eps(prediction, x0, eps, alpha, sigma), b0 * D);
          b0 = b1;
        }
        return like(x, out);
      },
    };
  }
}

function like(x: Batch, data: Float64Array): Batch {
  if (x.data instanceof Float32Array)
    return new HostArray<'float32'>(Float32Array.from(data), x.shape, 'float32');
  return { data: data as FloatArray, shape: x.shape };
}

/** A random orthonormal D x d basis. */
export function randomBasis(D: number, d: number, rng: RandomSource): Float64Array {
  return orthonormalColumns(rng.normal(D * d), D, d);
}
