/**
 * @file Training-side diffusion maths: the noisy sample and regression target for each
 * prediction type, loss weightings, and timestep sampling.
 *
 * Weightings are stated for the loss on the model's own prediction and equal a weighting of
 * the x0-space error: for x0 = a(x) - c p, |x0 - x0*|^2 = c^2 |p - p*|^2, with c = sigma / alpha
 * (eps), 1 (x0), sigma (v, VP), sigma / (alpha + sigma) (flow).
 * - Min-SNR-gamma (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting
 *   Strategy"): min(snr, gamma) on x0, i.e. min(snr, gamma) / snr for eps and
 *   min(snr, gamma) / (snr + 1) for v, as diffusers' training scripts use.
 * - EDM (Karras et al. 2022, sec. 5, eq. 8): lambda(sigma) = (sigma^2 + sigma_data^2) /
 *   (sigma sigma_data)^2 on x0, with sigma the noise level sigma / alpha.
 */
import type { RandomSource } from '../engine/random/source.js';
import { zerosLike, type FloatArray } from './arith.js';
import { fromX0Eps, type Prediction } from './predictions.js';

/** x_t = alpha x0 + sigma eps, one (alpha, sigma) per row. */
export function noisySample(
  x0: FloatArray,
  eps: FloatArray,
  alpha: ArrayLike<number>,
  sigma: ArrayLike<number>,
): FloatArray {
  const rows = alpha.length;
  const per = x0.length / rows;
  const out = zerosLike(x0);
  for (let b = 0; b < rows; b++) {
    for (let i = b * per; i < (b + 1) * per; i++)
      out[i] = alpha[b]! * x0[i]! + sigma[b]! * eps[i]!;
  }
  return out;
}

/** The regression target for `pred`, one (alpha, sigma) per row. */
export function trainingTarget(
  pred: Prediction,
  x0: FloatArray,
  eps: FloatArray,
  alpha: ArrayLike<number>,
  sigma: ArrayLike<number>,
): FloatArray {
  const rows = alpha.length;
  const per = x0.length / rows;
  const out = zerosLike(x0);
  for (let b = 0; b < rows; b++) {
    const s = (a: FloatArray): FloatArray => a.subarray(b * per, (b + 1) * per);
    out.set(fromX0Eps(pred, s(x0), s(eps), alpha[b]!, sigma[b]!), b * per);
  }
  return out;
}

export type Weighting =
  { kind: 'uniform' } | { kind: 'min_snr'; gamma: number } | { kind: 'edm'; sigmaData: number };

/** d x0 / d prediction, squared: converts an x0-space weight to the prediction's loss. */
function x0Sensitivity(pred: Prediction, alpha: number, sigma: number): number {
  switch (pred) {
    case 'eps':
      return (sigma / alpha) ** 2;
    case 'x0':
      return 1;
    case 'v':
      return sigma ** 2;
    case 'flow':
      return (sigma / (alpha + sigma)) ** 2;
  }
}

/** The loss weight of a sample at (alpha, sigma) for a model predicting `pred`. */
export function lossWeight(w: Weighting, pred: Prediction, alpha: number, sigma: number): number {
  if (w.kind === 'uniform') return 1;
  const c2 = x0Sensitivity(pred, alpha, sigma);
  if (w.kind === 'min_snr') {
    const snr = (alpha * alpha) / (sigma * sigma);
    return Math.min(snr, w.gamma) * c2;
  }
  const level = sigma / alpha;
  const sd = w.sigmaData;
  return ((level * level + sd * sd) / (level * sd) ** 2) * c2;
}

export type { RandomSource };

export type TimestepSampling =
  /** Integers in [0, T): DDPM training (Ho et al. 2020, Algorithm 1). */
  | { kind: 'uniform_discrete'; numTrainTimesteps: number }
  /** Uniform on [tMin, tMax]. */
  | { kind: 'uniform'; tMin: number; tMax: number }
  /** s = sigmoid(m + s z), z ~ N(0, 1), times `scale` (Esser et al. 2024, SD3, sec. 3.1). */
  | { kind: 'logit_normal'; mean: number; std: number; scale?: number }
  /** EDM noise levels: sigma = exp(P_mean + P_std z) (Karras et al. 2022, Table 1). */
  | { kind: 'edm_lognormal'; pMean: number; pStd: number };

/** n training times (or EDM noise levels) from `rng`. */
export function sampleTimesteps(s: TimestepSampling, n: number, rng: RandomSource): Float64Array {
  switch (s.kind) {
    case 'uniform_discrete': {
      const u = rng.uniform(n);
      return Float64Array.from({ length: n }, (_, i) =>
        Math.min(Math.floor(u[i]! * s.numTrainTimesteps), s.numTrainTimesteps - 1),
      );
    }
    case 'uniform': {
      const u = rng.uniform(n);
      return Float64Array.from({ length: n }, (_, i) => s.tMin + u[i]! * (s.tMax - s.tMin));
    }
    case 'logit_normal': {
      const z = rng.normal(n);
      return Float64Array.from(
        { length: n },
        (_, i) => (s.scale ?? 1) / (1 + Math.exp(-(s.mean + s.std * z[i]!))),
      );
    }
    case 'edm_lognormal': {
      const z = rng.normal(n);
      return Float64Array.from({ length: n }, (_, i) => Math.exp(s.pMean + s.pStd * z[i]!));
    }
  }
}
