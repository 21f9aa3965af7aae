/**
 * @file DDIM: Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models", eq. 12 (the
 * generalised step with eta; eta = 0 is the deterministic sampler, eta = 1 is DDPM's posterior
 * variance) and sec. 4.3 / eq. 13 (deterministic inversion, x0 -> x_T along the same ODE).
 *
 * | here     | paper eq. 12                          |
 * | -------- | ------------------------------------- |
 * | abarT    | alpha_t (the paper's alpha is cumulative) |
 * | abarPrev | alpha_{t-1}                           |
 * | std      | sigma_t(eta) = eta sqrt((1 - a_{t-1}) / (1 - a_t)) sqrt(1 - a_t / a_{t-1}) |
 */
import { roundOf, zerosLike, type FloatArray } from '../arith.js';
import {
  evaluate,
  requireNoise,
  throwIfAborted,
  withData,
  type Batch,
  type Denoiser,
  type SamplerOptions,
} from '../denoiser.js';
import { toEps, toX0 } from '../predictions.js';
import type { Schedule } from '../schedule.js';
import { drawNoise, postprocessX0, report, requireProcess, type X0Options } from './common.js';

export interface DdimOptions extends SamplerOptions, X0Options {
  /** 0 (deterministic, default) .. 1 (DDPM-like). */
  eta?: number;
  /** Recompute eps from the clipped x0 (diffusers' use_clipped_model_output). */
  useClippedModelOutput?: boolean;
}

/** One DDIM step (eq. 12) from the x0 and eps estimates, in diffusers' float32 op order. */
export function ddimStep(
  x0: FloatArray,
  eps: FloatArray,
  abarT: number,
  abarPrev: number,
  eta: number,
  noise: FloatArray | null,
): FloatArray {
  const r = roundOf(x0);
  abarT = r(abarT);
  abarPrev = r(abarPrev);
  // eta = 0 skips the variance, which is negative when stepping towards noise (inversion)
  const variance =
    eta === 0 ? 0 : r(r(r(1 - abarPrev) / r(1 - abarT)) * r(1 - r(abarT / abarPrev)));
  const std = r(r(eta) * r(Math.sqrt(variance)));
  const cDir = r(Math.sqrt(r(r(1 - abarPrev) - r(std * std))));
  const c0 = r(Math.sqrt(abarPrev));
  const out = zerosLike(x0);
  for (let i = 0; i < x0.length; i++) out[i] = r(r(c0 * x0[i]!) + r(cDir * eps[i]!));
  if (eta > 0) {
    if (!noise) throw new TypeError('ddimStep: eta > 0 needs noise');
    for (let i = 0; i < x0.length; i++) out[i] = r(out[i]! + r(std * noise[i]!));
  }
  return out;
}

/** x0 and eps estimates at point i, as diffusers' DDIM forms them. */
function estimates(
  pred: Denoiser['prediction'],
  x: FloatArray,
  p: FloatArray,
  alpha: number,
  sigma: number,
  shape: readonly number[],
  opts: DdimOptions,
): { x0: FloatArray; eps: FloatArray } {
  const x0 = toX0(pred, x, p, alpha, sigma);
  let eps = toEps(pred, x, p, alpha, sigma);
  postprocessX0(x0, shape, opts);
  if (opts.useClippedModelOutput) eps = toEps('x0', x, x0, alpha, sigma);
  return { x0, eps };
}

/** DDIM sampler (Song et al. 2021, eq. 12) over a VP schedule. */
export async function sampleDdim(
  denoiser: Denoiser,
  x: Batch,
  schedule: Schedule,
  opts: DdimOptions = {},
): Promise<Batch> {
  requireProcess(schedule, 'sampleDdim', ['vp']);
  const eta = opts.eta ?? 0;
  if (!(eta >= 0 && eta <= 1))
    throw new RangeError(`sampleDdim: eta must be in [0, 1], got ${eta}`);
  if (eta > 0) requireNoise(opts, 'sampleDdim', `eta = ${eta} > 0 adds noise`);
  let cur: FloatArray = x.data.slice();
  for (let i = 0; i < schedule.timesteps.length; i++) {
    throwIfAborted(opts.signal);
    const t = schedule.timesteps[i]!;
    opts.perturb?.(cur, i, t);
    const p = await evaluate(denoiser, withData(x, cur), t, opts.condition);
    const a = schedule.alphas[i]!;
    const s = schedule.sigmas[i]!;
    const { x0, eps } = estimates(denoiser.prediction, cur, p, a, s, x.shape, opts);
    const target = schedule.targetAlphaBars?.[i] ?? schedule.alphaBars[i + 1]!;
    const z = eta > 0 ? drawNoise(opts, cur, i) : null;
    cur = ddimStep(x0, eps, schedule.alphaBars[i]!, target, eta, z);
    report(opts, 'ddim', schedule, i, t, x, cur, x0);
  }
  return withData(x, cur);
}

/**
 * Deterministic DDIM inversion (Song et al. 2021, sec. 4.3): walks the schedule backwards from
 * its end point (which must have sigma > 0 and a model time, `schedule.endTime`) to point 0,
 * evaluating the model at the less noisy end of each step.
 */
export async function invertDdim(
  denoiser: Denoiser,
  x: Batch,
  schedule: Schedule,
  opts: SamplerOptions = {},
): Promise<Batch> {
  requireProcess(schedule, 'invertDdim', ['vp']);
  const n = schedule.timesteps.length;
  if (schedule.endTime === undefined || !(schedule.sigmas[n]! > 0)) {
    throw new RangeError(
      'invertDdim: the schedule must end at sigma > 0 with a model time (endTime)',
    );
  }
  let cur: FloatArray = x.data.slice();
  for (let j = n; j >= 1; j--) {
    throwIfAborted(opts.signal);
    const t = j === n ? schedule.endTime : schedule.timesteps[j]!;
    const p = await evaluate(denoiser, withData(x, cur), t, opts.condition);
    const a = schedule.alphas[j]!;
    const s = schedule.sigmas[j]!;
    const x0 = toX0(denoiser.prediction, cur, p, a, s);
    const eps = toEps(denoiser.prediction, cur, p, a, s);
    cur = ddimStep(x0, eps, schedule.alphaBars[j]!, schedule.alphaBars[j - 1]!, 0, null);
    report(opts, 'ddim-inverse', schedule, n - j, t, x, cur, x0, j);
  }
  return withData(x, cur);
}
