/**
 * @file Heun's second-order method: Karras et al. 2022, "Elucidating the Design Space of
 * Diffusion-Based Generative Models", Algorithm 2 (deterministic with churn = 0, stochastic
 * otherwise), in the noise-level frame xs = x / alpha (see euler.ts). The last step, to level
 * 0, is a plain Euler step (Algorithm 2, line 9). k-diffusion `sample_heun`; diffusers
 * HeunDiscreteScheduler (no churn) and FlowMatchHeunDiscreteScheduler.
 */
import { roundOf, zerosLike, type FloatArray } from '../arith.js';
import {
  evaluate,
  requireNoise,
  throwIfAborted,
  withData,
  type Batch,
  type Denoiser,
} from '../denoiser.js';
import { toX0Scaled } from '../predictions.js';
import type { Schedule } from '../schedule.js';
import { drawNoise, postprocessX0, report, requireProcess, type X0Options } from './common.js';
import {
  addChurnNoise,
  churnLevel,
  scaleModelInput,
  toLevelFrame,
  type EulerOptions,
} from './euler.js';

/** Heun's options: Euler's, and diffusers' clip_sample of the x0 estimate. */
export interface HeunOptions extends EulerOptions, X0Options {}

/** First stage: slope d = (xs - D) / hat, dt = next - hat, Euler point x2 = xs + d dt. */
export function heunFirst(
  xs: FloatArray,
  D: FloatArray,
  hat: number,
  next: number,
): { d: FloatArray; dt: number; x2: FloatArray } {
  const r = roundOf(xs);
  const dt = r(r(next) - r(hat));
  hat = r(hat);
  const d = zerosLike(xs);
  const x2 = zerosLike(xs);
  for (let i = 0; i < xs.length; i++) {
    d[i] = r(r(xs[i]! - D[i]!) / hat);
    x2[i] = r(xs[i]! + r(d[i]! * dt));
  }
  return { d, dt, x2 };
}

/** Second stage: average the slopes at both ends and step from the start point xs. */
export function heunSecond(
  xs: FloatArray,
  d1: FloatArray,
  dt: number,
  x2: FloatArray,
  D2: FloatArray,
  next: number,
): FloatArray {
  const r = roundOf(xs);
  next = r(next);
  const out = zerosLike(xs);
  for (let i = 0; i < xs.length; i++) {
    const d2 = r(r(x2[i]! - D2[i]!) / next);
    out[i] = r(xs[i]! + r(r(r(d1[i]! + d2) / 2) * dt));
  }
  return out;
}

/** EDM Heun sampler (Karras et al. 2022, Algorithm 2); 2n - 1 model calls for n steps. */
export async function sampleHeun(
  denoiser: Denoiser,
  x: Batch,
  schedule: Schedule,
  opts: HeunOptions = {},
): Promise<Batch> {
  requireProcess(schedule, 'sampleHeun', ['vp', 've']);
  const vp = schedule.process === 'vp';
  const n = schedule.timesteps.length;
  const r = roundOf(x.data);
  if (opts.churn?.churn) requireNoise(opts, 'sampleHeun', 'churn > 0 adds noise');
  let xs: FloatArray = toLevelFrame(x.data, schedule);
  const denoise = async (at: FloatArray, level: number, t: number): Promise<FloatArray> => {
    const p = await evaluate(
      denoiser,
      withData(x, scaleModelInput(at, level, vp)),
      t,
      opts.condition,
    );
    return postprocessX0(toX0Scaled(denoiser.prediction, at, p, level, vp), x.shape, opts);
  };
  for (let i = 0; i < n; i++) {
    throwIfAborted(opts.signal);
    const level = schedule.levels[i]!;
    const next = schedule.levels[i + 1]!;
    const hat = churnLevel(level, n, opts.churn, r);
    let t = schedule.timesteps[i]!;
    if (hat !== level) {
      xs = addChurnNoise(xs, level, hat, opts.churn!.sNoise ?? 1, drawNoise(opts, xs, i));
      t = opts.churn!.process.timeAtLevel(hat);
    }
    const D = await denoise(xs, hat, t);
    const { d, dt, x2 } = heunFirst(xs, D, hat, next);
    if (next === 0) {
      xs = x2;
    } else {
      const t2 = i + 1 < n ? schedule.timesteps[i + 1]! : schedule.endTime!;
      xs = heunSecond(xs, d, dt, x2, await denoise(x2, next, t2), next);
    }
    report(opts, 'heun', schedule, i, t, x, xs, D);
  }
  const alphaN = schedule.alphas[n]!;
  return withData(
    x,
    xs.map((v) => r(v * alphaN)),
  );
}
