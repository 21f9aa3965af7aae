/**
 * @file Flow-matching samplers: Euler and Heun on dx/ds = u(x, s) for the rectified-flow
 * process x_s = (1 - s) x0 + s eps, whose velocity is u = eps - x0 (Liu et al. 2022, "Flow
 * Straight and Fast"; Lipman et al. 2023; Esser et al. 2024, SD3). diffusers
 * FlowMatchEulerDiscreteScheduler and FlowMatchHeunDiscreteScheduler. The schedule's `sigmas`
 * are the s values (shifted or not, see process.ts `shiftFlow`).
 */
import { roundOf, zerosLike, type FloatArray } from '../arith.js';
import {
  evaluate,
  throwIfAborted,
  withData,
  type Batch,
  type Denoiser,
  type SamplerOptions,
} from '../denoiser.js';
import { convertPrediction, toX0Scaled } from '../predictions.js';
import type { Schedule } from '../schedule.js';
import { heunFirst, heunSecond } from './heun.js';
import { report, requireProcess } from './common.js';

/** x + (sNext - s) u, diffusers' FlowMatchEuler op order. */
export function flowEulerStep(x: FloatArray, u: FloatArray, s: number, sNext: number): FloatArray {
  const r = roundOf(x);
  const dt = r(r(sNext) - r(s));
  const out = zerosLike(x);
  for (let i = 0; i < x.length; i++) out[i] = r(x[i]! + r(dt * u[i]!));
  return out;
}

/**
 * The denoised point of a flow state, x0 = x - s u, computed as diffusers' FlowMatchHeun does
 * (the same arithmetic as the eps-prediction x0 in the level frame, with u for eps and s for
 * the level).
 */
export function flowDenoised(x: FloatArray, u: FloatArray, s: number): FloatArray {
  return toX0Scaled('eps', x, u, s, false);
}

async function velocity(
  denoiser: Denoiser,
  x: Batch,
  cur: FloatArray,
  schedule: Schedule,
  i: number,
  t: number,
  opts: SamplerOptions,
): Promise<FloatArray> {
  const p = await evaluate(denoiser, withData(x, cur), t, opts.condition);
  const a = schedule.alphas[i]!;
  const s = schedule.sigmas[i]!;
  return denoiser.prediction === 'flow'
    ? p
    : convertPrediction(denoiser.prediction, 'flow', cur, p, a, s);
}

/** Flow-matching Euler (diffusers FlowMatchEulerDiscreteScheduler). */
export async function sampleFlowEuler(
  denoiser: Denoiser,
  x: Batch,
  schedule: Schedule,
  opts: SamplerOptions = {},
): Promise<Batch> {
  requireProcess(schedule, 'sampleFlowEuler', ['flow']);
  let cur: FloatArray = x.data.slice();
  for (let i = 0; i < schedule.timesteps.length; i++) {
    throwIfAborted(opts.signal);
    const t = schedule.timesteps[i]!;
    opts.perturb?.(cur, i, t);
    const u = await velocity(denoiser, x, cur, schedule, i, t, opts);
    const s = schedule.sigmas[i]!;
    const x0 = opts.onStep ? flowDenoised(cur, u, s) : cur;
    cur = flowEulerStep(cur, u, s, schedule.sigmas[i + 1]!);
    report(opts, 'flow-euler', schedule, i, t, x, cur, x0);
  }
  return withData(x, cur);
}

/** Flow-matching Heun (diffusers FlowMatchHeunDiscreteScheduler); the step to s = 0 is Euler. */
export async function sampleFlowHeun(
  denoiser: Denoiser,
  x: Batch,
  schedule: Schedule,
  opts: SamplerOptions = {},
): Promise<Batch> {
  requireProcess(schedule, 'sampleFlowHeun', ['flow']);
  const n = schedule.timesteps.length;
  let cur: FloatArray = x.data.slice();
  for (let i = 0; i < n; i++) {
    throwIfAborted(opts.signal);
    const t = schedule.timesteps[i]!;
    const s = schedule.sigmas[i]!;
    const next = schedule.sigmas[i + 1]!;
    const D = flowDenoised(cur, await velocity(denoiser, x, cur, schedule, i, t, opts), s);
    const { d, dt, x2 } = heunFirst(cur, D, s, next);
    if (next === 0) {
      cur = x2;
    } else {
      const t2 = i + 1 < n ? schedule.timesteps[i + 1]! : schedule.endTime!;
      const u2 = await velocity(denoiser, x, x2, schedule, i + 1, t2, opts);
      cur = heunSecond(cur, d, dt, x2, flowDenoised(x2, u2, next), next);
    }
    report(opts, 'flow-heun', schedule, i, t, x, cur, D);
  }
  return withData(x, cur);
}
