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
import * as ops from '../engine/ops.js';
import type { RandomSource } from '../engine/random/source.js';
import type { Tensor } from '../engine/tensor.js';
import { parseScheduler, type SchedulerSpec } from './diffusers/spec.js';
import { trainTables } from './diffusers/tables.js';
import { DIFFUSERS_PREDICTION_TYPE, type Prediction } from './predictions.js';
import { discreteVp, rectifiedFlow, type Process } from './process.js';

/**
 * The process Diffuse trains on, as the diffusers scheduler spec its pipelines ship: DDPM's
 * linear betas 1e-4 .. 0.02 over 1,000 steps (Ho et al. 2020, sec. 4) for eps / x0 / v, or
 * rectified flow (diffusers' FlowMatch, shift 1). clip_sample is off: DDIM clips its x0
 * estimate but keeps the guided noise estimate, and under classifier-free guidance the two
 * disagree (MNIST U-Net, DDIM-50 at guidance 3: 25% class accuracy with clipping, 99-100%
 * without; README, "Shipped models").
 */
export function trainingScheduler(prediction: Prediction): SchedulerSpec {
  if (prediction === 'flow') {
    return parseScheduler({ _class_name: 'FlowMatchEulerDiscreteScheduler',
      num_train_timesteps: 1000, shift: 1 });
  }
  return parseScheduler({ _class_name: 'DDPMScheduler', num_train_timesteps: 1000,
    beta_schedule: 'linear', beta_start: 0.0001, beta_end: 0.02, clip_sample: false,
    prediction_type: DIFFUSERS_PREDICTION_TYPE[prediction], variance_type: 'fixed_small' });
}

/** Where each row of a training batch is noised: model time t and x_t = alpha x0 + sigma eps. */
export interface TrainingPoints {
  readonly t: Float32Array;
  readonly alpha: Float32Array;
  readonly sigma: Float32Array;
}

const tables = new WeakMap<SchedulerSpec, Float32Array>();

function alphasCumprodOf(spec: SchedulerSpec): Float32Array {
  let acp = tables.get(spec);
  if (!acp) tables.set(spec, (acp = trainTables(spec.config).alphasCumprod));
  return acp;
}

/**
 * The points at model times `t`: DDPM family, t a training step, alpha^2 = alphas_cumprod[t];
 * flow, s = t / T, alpha = 1 - s, sigma = s (diffusers' FlowMatch).
 */
export function pointsAt(spec: SchedulerSpec, t: ArrayLike<number>): TrainingPoints {
  const n = t.length;
  const T = spec.config.num_train_timesteps as number;
  const pts = { t: Float32Array.from(t), alpha: new Float32Array(n), sigma: new Float32Array(n) };
  const acp = spec.family === 'flow' ? null : alphasCumprodOf(spec);
  for (let i = 0; i < n; i++) {
    if (acp) {
      const a = acp[t[i]!];
      if (a === undefined) throw new RangeError(`pointsAt: ${t[i]} is not a step in [0, ${T})`);
      pts.alpha[i] = Math.sqrt(a);
      pts.sigma[i] = Math.sqrt(1 - a);
    } else {
      pts.alpha[i] = 1 - t[i]! / T;
      pts.sigma[i] = t[i]! / T;
    }
  }
  return pts;
}

/** The process a scheduler spec's model was trained on, as samplers and guidance see it:
 *  the DDPM table (model time = table index) or rectified flow (model time = s T). */
export function processOf(spec: SchedulerSpec): Process {
  const T = spec.config.num_train_timesteps as number;
  return spec.family === 'flow' ? rectifiedFlow({ timeScale: T }) : discreteVp(alphasCumprodOf(spec));
}

/**
 * Training points from one uniform draw u in [0, 1) per row: a training step uniform over the
 * T steps (Ho et al. 2020, Algorithm 1), or for flow a uniform s with model time s T.
 */
export function trainingPoints(spec: SchedulerSpec, u: ArrayLike<number>): TrainingPoints {
  const T = spec.config.num_train_timesteps as number;
  const t = Float64Array.from(u, (v) =>
    spec.family === 'flow' ? T * v : Math.min(Math.floor(v * T), T - 1));
  return pointsAt(spec, t);
}

/** x_t = alpha x0 + sigma eps inside a training graph; alpha, sigma broadcast per row. */
export function noisySample(x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor): Tensor {
  return ops.add(ops.mul(x0, alpha), ops.mul(eps, sigma));
}

/** The regression target of a model predicting `pred` (predictions.ts, traced). */
export function trainingTarget(
  pred: Prediction,
  x0: Tensor,
  eps: Tensor,
  alpha: Tensor,
  sigma: Tensor,
): Tensor {
  switch (pred) {
    case 'eps':
      return eps;
    case 'x0':
      return x0;
    case 'v':
      return ops.sub(ops.mul(eps, alpha), ops.mul(x0, sigma)); // alpha eps - sigma x0
    case 'flow':
      return ops.sub(eps, x0); // the rectified-flow velocity
  }
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

/** One loss weight per training point. */
export function lossWeights(w: Weighting, pred: Prediction, p: TrainingPoints): Float32Array {
  return Float32Array.from(p.alpha, (a, i) => lossWeight(w, pred, a, p.sigma[i]!));
}

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
