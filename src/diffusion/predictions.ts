/**
 * @file Prediction types and every conversion between them, in one place (docs/architecture.md, convention 11).
 *
 * Process: x = alpha x0 + sigma eps (Principles of Diffusion Models, arXiv 2510.21890, sec. 2).
 *
 * | name  | symbol          | definition                         |
 * | ----- | --------------- | ---------------------------------- |
 * | eps   | eps             | the noise                          |
 * | x0    | x0              | the clean sample (diffusers "sample") |
 * | v     | v               | alpha eps - sigma x0 (Salimans & Ho 2022, "v_prediction") |
 * |       |                 | (read back with alpha^2 + sigma^2 = 1 as diffusers does when |
 * |       |                 | the process is VP, with the general 2x2 inverse otherwise) |
 * | flow  | u               | eps - x0, the rectified-flow velocity (Liu et al. 2022;     |
 * |       |                 | diffusers FlowMatch, SD3); dx/ds for alpha = 1 - s, sigma = s |
 * | score | grad log p(x_t) | -eps / sigma                       |
 *
 * Inverting the 2x2 system (x, p) -> (x0, eps) for each type gives the formulas below. Each
 * loop is written in the operation order diffusers uses, so float32 results match torch
 * (see arith.ts): DDIM / DPM-Solver's `(sample - sigma * eps) / alpha`, Euler's
 * `sample - sigma * eps` in the sigma ("VE") frame, and so on.
 */
import { roundOf, zerosLike, type FloatArray } from './arith.js';

export type Prediction = 'eps' | 'x0' | 'v' | 'flow';

export const PREDICTIONS: readonly Prediction[] = ['eps', 'x0', 'v', 'flow'];

/** diffusers' `prediction_type` names for ours. FlowMatch schedulers have no such key. */
export const DIFFUSERS_PREDICTION: Record<string, Prediction> = {
  epsilon: 'eps',
  sample: 'x0',
  v_prediction: 'v',
  flow_prediction: 'flow',
};

/** diffusers' `prediction_type` for each of ours (FlowMatch configs have no such key). */
export const DIFFUSERS_PREDICTION_TYPE: Readonly<Record<Prediction, string>> = {
  eps: 'epsilon',
  x0: 'sample',
  v: 'v_prediction',
  flow: 'flow_prediction',
};

/** x0 estimate from a prediction `p` at x = alpha x0 + sigma eps. */
export function toX0(
  pred: Prediction,
  x: FloatArray,
  p: FloatArray,
  alpha: number,
  sigma: number,
  out: FloatArray = zerosLike(x),
): FloatArray {
  const r = roundOf(x);
  alpha = r(alpha);
  sigma = r(sigma);
  const n = x.length;
  switch (pred) {
    case 'eps':
      for (let i = 0; i < n; i++) out[i] = r(r(x[i]! - r(sigma * p[i]!)) / alpha);
      break;
    case 'x0':
      out.set(p);
      break;
    case 'v': {
      const n2 = vNorm(alpha, sigma);
      for (let i = 0; i < n; i++) out[i] = r(r(r(alpha * x[i]!) - r(sigma * p[i]!)) / n2);
      break;
    }
    case 'flow': {
      const s = r(alpha + sigma);
      for (let i = 0; i < n; i++) out[i] = r(r(x[i]! - r(sigma * p[i]!)) / s);
      break;
    }
  }
  return out;
}

/** alpha^2 + sigma^2, or exactly 1 for a VP process (so VP arithmetic matches diffusers'). */
function vNorm(alpha: number, sigma: number): number {
  const n2 = alpha * alpha + sigma * sigma;
  return Math.abs(n2 - 1) < 1e-6 ? 1 : n2;
}

/** eps estimate from a prediction `p` at x = alpha x0 + sigma eps. */
export function toEps(
  pred: Prediction,
  x: FloatArray,
  p: FloatArray,
  alpha: number,
  sigma: number,
  out: FloatArray = zerosLike(x),
): FloatArray {
  const r = roundOf(x);
  alpha = r(alpha);
  sigma = r(sigma);
  const n = x.length;
  switch (pred) {
    case 'eps':
      out.set(p);
      break;
    case 'x0':
      for (let i = 0; i < n; i++) out[i] = r(r(x[i]! - r(alpha * p[i]!)) / sigma);
      break;
    case 'v': {
      const n2 = vNorm(alpha, sigma);
      for (let i = 0; i < n; i++) out[i] = r(r(r(alpha * p[i]!) + r(sigma * x[i]!)) / n2);
      break;
    }
    case 'flow': {
      const s = r(alpha + sigma);
      for (let i = 0; i < n; i++) out[i] = r(r(x[i]! + r(alpha * p[i]!)) / s);
      break;
    }
  }
  return out;
}

/** The prediction of type `pred` that x0 and eps imply (also the training target). */
export function fromX0Eps(
  pred: Prediction,
  x0: FloatArray,
  eps: FloatArray,
  alpha: number,
  sigma: number,
  out: FloatArray = zerosLike(x0),
): FloatArray {
  const r = roundOf(x0);
  alpha = r(alpha);
  sigma = r(sigma);
  const n = x0.length;
  switch (pred) {
    case 'eps':
      out.set(eps);
      break;
    case 'x0':
      out.set(x0);
      break;
    case 'v':
      for (let i = 0; i < n; i++) out[i] = r(r(alpha * eps[i]!) - r(sigma * x0[i]!));
      break;
    case 'flow':
      for (let i = 0; i < n; i++) out[i] = r(eps[i]! - x0[i]!);
      break;
  }
  return out;
}

/** Converts a prediction of one type into another at the same (alpha, sigma). */
export function convertPrediction(
  from: Prediction,
  to: Prediction,
  x: FloatArray,
  p: FloatArray,
  alpha: number,
  sigma: number,
): FloatArray {
  if (from === to) return p.slice();
  return fromX0Eps(
    to,
    toX0(from, x, p, alpha, sigma),
    toEps(from, x, p, alpha, sigma),
    alpha,
    sigma,
  );
}

/** Score grad_x log p_t(x) = -eps / sigma. */
export function scoreFromEps(eps: FloatArray, sigma: number, out = zerosLike(eps)): FloatArray {
  const r = roundOf(eps);
  for (let i = 0; i < eps.length; i++) out[i] = r(-eps[i]! / sigma);
  return out;
}

/** eps = -sigma * score. */
export function epsFromScore(
  score: FloatArray,
  sigma: number,
  out = zerosLike(score),
): FloatArray {
  const r = roundOf(score);
  for (let i = 0; i < score.length; i++) out[i] = r(-sigma * score[i]!);
  return out;
}

/**
 * Probability-flow ODE drift dx/dt = f x - g^2 score / 2 with f = alpha'/alpha and
 * g^2 = 2 sigma sigma' - 2 (alpha'/alpha) sigma^2 (Song et al. 2021). Substituting
 * x = alpha x0 + sigma eps and score = -eps / sigma it is alpha' x0 + sigma' eps.
 */
export function pfOdeDrift(
  x0: FloatArray,
  eps: FloatArray,
  dAlpha: number,
  dSigma: number,
  out: FloatArray = zerosLike(x0),
): FloatArray {
  const r = roundOf(x0);
  for (let i = 0; i < x0.length; i++) out[i] = r(r(dAlpha * x0[i]!) + r(dSigma * eps[i]!));
  return out;
}

/**
 * x0 estimate in the sigma frame used by Euler-type samplers (k-diffusion; diffusers'
 * Euler / Heun): xs = x / alpha = x0 + level * eps with level = sigma / alpha. `vp` says the
 * native process is variance preserving (alpha^2 = 1 / (level^2 + 1)), which is what a v- or
 * flow-prediction needs to be read back in this frame.
 */
export function toX0Scaled(
  pred: Prediction,
  xs: FloatArray,
  p: FloatArray,
  level: number,
  vp: boolean,
  out: FloatArray = zerosLike(xs),
): FloatArray {
  const r = roundOf(xs);
  level = r(level);
  const n = xs.length;
  if (pred === 'eps') {
    for (let i = 0; i < n; i++) out[i] = r(xs[i]! - r(level * p[i]!));
  } else if (pred === 'x0') {
    out.set(p);
  } else if (pred === 'v' && vp) {
    // x0 = alpha x - sigma v with x = alpha xs: diffusers'
    // `model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)`.
    const l2p1 = r(r(level * level) + 1);
    const c = r(-level / r(Math.sqrt(l2p1)));
    for (let i = 0; i < n; i++) out[i] = r(r(p[i]! * c) + r(xs[i]! / l2p1));
  } else {
    // alpha = 1 (VE) or the VP alpha: go through the native frame.
    const alpha = vp ? 1 / Math.sqrt(level * level + 1) : 1;
    const x = zerosLike(xs);
    for (let i = 0; i < n; i++) x[i] = r(xs[i]! * alpha);
    toX0(pred, x, p, alpha, level * alpha, out);
  }
  return out;
}
