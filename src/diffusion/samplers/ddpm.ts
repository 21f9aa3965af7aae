/**
 * @file DDPM ancestral sampling: Ho et al. 2020, "Denoising Diffusion Probabilistic Models",
 * Algorithm 2, in the x0-parameterised posterior form (eqs. 6-7).
 *
 * | here      | paper / diffusers                                |
 * | --------- | ------------------------------------------------ |
 * | abarT     | alpha-bar_t (`alpha_prod_t`)                     |
 * | abarPrev  | alpha-bar_{t-1} (`alpha_prod_t_prev`)            |
 * | curBeta   | beta_t = 1 - alpha-bar_t / alpha-bar_{t-1}       |
 * | c0, c1    | posterior mean coefficients of x0 and x_t (eq. 7) |
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
import { toX0 } from '../predictions.js';
import type { Schedule } from '../schedule.js';
import { drawNoise, postprocessX0, report, requireProcess, type X0Options } from './common.js';

/** `fixed_small` is the posterior variance beta-tilde_t, `fixed_large` is beta_t (sec. 3.2). */
export type DdpmVariance = 'fixed_small' | 'fixed_large';

export interface DdpmOptions extends SamplerOptions, X0Options {
  variance?: DdpmVariance;
}

/**
 * One posterior step x_t -> x_{t-1} given the x0 estimate, in diffusers' float32 op order;
 * `noise` null adds none (diffusers' last step at t = 0).
 */
export function ddpmStep(
  x: FloatArray,
  x0: FloatArray,
  abarT: number,
  abarPrev: number,
  variance: DdpmVariance,
  noise: FloatArray | null,
): FloatArray {
  const r = roundOf(x);
  abarT = r(abarT);
  abarPrev = r(abarPrev);
  const betaT = r(1 - abarT);
  const betaPrev = r(1 - abarPrev);
  const curAlpha = r(abarT / abarPrev);
  const curBeta = r(1 - curAlpha);
  const c0 = r(r(r(Math.sqrt(abarPrev)) * curBeta) / betaT);
  const c1 = r(r(r(Math.sqrt(curAlpha)) * betaPrev) / betaT);
  const out = zerosLike(x);
  for (let i = 0; i < x.length; i++) out[i] = r(r(c0 * x0[i]!) + r(c1 * x[i]!));
  if (noise) {
    const small = Math.max(r(r(betaPrev / betaT) * curBeta), r(1e-20));
    const std = r(Math.sqrt(variance === 'fixed_large' ? curBeta : small));
    for (let i = 0; i < x.length; i++) out[i] = r(out[i]! + r(std * noise[i]!));
  }
  return out;
}

/**
 * DDPM ancestral sampler (Ho et al. 2020, Algorithm 2) over a VP schedule. Noise is added on
 * every step that starts at t > 0 (all but a last step from training step 0).
 */
export async function sampleDdpm(
  denoiser: Denoiser,
  x: Batch,
  schedule: Schedule,
  opts: DdpmOptions = {},
): Promise<Batch> {
  requireProcess(schedule, 'sampleDdpm', ['vp']);
  requireNoise(opts, 'sampleDdpm', 'ancestral sampling draws noise every step');
  let cur: FloatArray = x.data.slice();
  for (let i = 0; i < schedule.timesteps.length; i++) {
    throwIfAborted(opts.signal);
    const t = schedule.timesteps[i]!;
    opts.perturb?.(cur, i, t);
    const p = await evaluate(denoiser, withData(x, cur), t, opts.condition);
    const x0 = toX0(denoiser.prediction, cur, p, schedule.alphas[i]!, schedule.sigmas[i]!);
    postprocessX0(x0, x.shape, opts);
    const target = schedule.targetAlphaBars?.[i] ?? schedule.alphaBars[i + 1]!;
    // diffusers adds noise whenever t > 0, even where the variance is clamped at 1e-20
    const z = t > 0 ? drawNoise(opts, cur, i) : null;
    cur = ddpmStep(cur, x0, schedule.alphaBars[i]!, target, opts.variance ?? 'fixed_small', z);
    report(opts, 'ddpm', schedule, i, t, x, cur, x0);
  }
  return withData(x, cur);
}
