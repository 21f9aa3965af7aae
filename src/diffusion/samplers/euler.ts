/**
 * @file Euler-type samplers in the noise-level frame: xs = x / alpha = x0 + level * eps, where
 * the probability-flow ODE reads d xs / d level = (xs - D(xs, level)) / level (Karras et al.
 * 2022, "Elucidating the Design Space of Diffusion-Based Generative Models", eq. 4 with
 * s(t) = 1, sigma(t) = t; k-diffusion `sample_euler`, `sample_euler_ancestral`).
 *
 * Samplers take and return x in the process frame (x = alpha x0 + sigma eps) and hand the
 * model process-frame inputs; internally they walk `schedule.levels`.
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
import { toX0Scaled } from '../predictions.js';
import type { Process } from '../process.js';
import { startScale, type Schedule } from '../schedule.js';
import { drawNoise, report, requireProcess } from './common.js';

/**
 * Stochastic "churn" (Karras et al. 2022, Algorithm 2 lines 4-6): raise the level from
 * `level` to `level * (1 + gamma)` with gamma = min(churn / n, sqrt(2) - 1) for levels in
 * [tMin, tMax], adding the matching fresh noise. `process` maps the raised level to a model time.
 */
export interface ChurnOptions {
  churn: number;
  tMin?: number;
  tMax?: number;
  sNoise?: number;
  process: Process;
}

/** The raised level at step i of n (equal to `level` when churn does not apply). */
export function churnLevel(
  level: number,
  n: number,
  c: Pick<ChurnOptions, 'churn' | 'tMin' | 'tMax'> | undefined,
  r = Math.fround,
): number {
  if (!c || c.churn <= 0) return level;
  const inRange = (c.tMin ?? 0) <= level && level <= (c.tMax ?? Infinity);
  const gamma = inRange ? Math.min(c.churn / n, Math.SQRT2 - 1) : 0;
  return gamma > 0 ? r(level * r(gamma + 1)) : level;
}

/** xs + noise * sNoise * sqrt(hat^2 - level^2), diffusers' op order. */
export function addChurnNoise(
  xs: FloatArray,
  level: number,
  hat: number,
  sNoise: number,
  noise: FloatArray,
): FloatArray {
  const r = roundOf(xs);
  hat = r(hat);
  level = r(level);
  const amp = r(Math.sqrt(r(r(hat * hat) - r(level * level))));
  const out = zerosLike(xs);
  for (let i = 0; i < xs.length; i++) out[i] = r(xs[i]! + r(r(noise[i]! * r(sNoise)) * amp));
  return out;
}

/** diffusers' `scale_model_input`: the process-frame input x = xs / sqrt(level^2 + 1) (VP). */
export function scaleModelInput(xs: FloatArray, level: number, vp: boolean): FloatArray {
  if (!vp) return xs.slice();
  const r = roundOf(xs);
  level = r(level);
  const d = r(Math.sqrt(r(r(level * level) + 1)));
  return xs.map((v) => r(v / d));
}

/** One Euler step of the ODE: d = (xs - D) / hat; xs + d (next - hat). */
export function eulerUpdate(xs: FloatArray, D: FloatArray, hat: number, next: number): FloatArray {
  const r = roundOf(xs);
  hat = r(hat);
  next = r(next);
  const dt = r(next - hat);
  const out = zerosLike(xs);
  for (let i = 0; i < xs.length; i++) out[i] = r(xs[i]! + r(r(r(xs[i]! - D[i]!) / hat) * dt));
  return out;
}

/**
 * Ancestral split of a step from `from` to `to` (k-diffusion `get_ancestral_step`): go down
 * deterministically to `down`, then add noise of std `up`, with up^2 + down^2 = to^2.
 */
export function ancestralLevels(
  from: number,
  to: number,
  eta: number,
  r = Math.fround,
): {
  up: number;
  down: number;
} {
  from = r(from);
  to = r(to);
  const t2 = r(to * to);
  const upRaw = r(Math.sqrt(r(r(t2 * r(r(from * from) - t2)) / r(from * from))));
  const up = eta === 1 ? upRaw : Math.min(to, r(eta * upRaw));
  return { up, down: r(Math.sqrt(r(t2 - r(up * up)))) };
}

export interface EulerOptions extends SamplerOptions {
  churn?: ChurnOptions;
}

/** The start state in the noise-level frame, xs = x * startScale (see Schedule.startScale). */
export function toLevelFrame(x: FloatArray, schedule: Schedule): FloatArray {
  const r = roundOf(x);
  const scale = r(startScale(schedule));
  return x.map((v) => r(v * scale));
}

function fromScaled(xs: FloatArray, alpha: number): FloatArray {
  const r = roundOf(xs);
  return xs.map((v) => r(v * alpha));
}

/** Euler (Karras et al. 2022, Algorithm 2 without the correction; with churn when asked). */
export async function sampleEuler(
  denoiser: Denoiser,
  x: Batch,
  schedule: Schedule,
  opts: EulerOptions = {},
): Promise<Batch> {
  requireProcess(schedule, 'sampleEuler', ['vp', 've']);
  const vp = schedule.process === 'vp';
  const n = schedule.timesteps.length;
  const r = roundOf(x.data);
  if (opts.churn?.churn) requireNoise(opts, 'sampleEuler', 'churn > 0 adds noise');
  let xs: FloatArray = toLevelFrame(x.data, schedule);
  for (let i = 0; i < n; i++) {
    throwIfAborted(opts.signal);
    const level = schedule.levels[i]!;
    const hat = churnLevel(level, n, opts.churn, r);
    let t = schedule.timesteps[i]!;
    opts.perturb?.(xs, i, t);
    if (hat !== level) {
      xs = addChurnNoise(xs, level, hat, opts.churn!.sNoise ?? 1, drawNoise(opts, xs, i));
      t = opts.churn!.process.timeAtLevel(hat);
    }
    const p = await evaluate(
      denoiser,
      withData(x, scaleModelInput(xs, hat, vp)),
      t,
      opts.condition,
    );
    const D = toX0Scaled(denoiser.prediction, xs, p, hat, vp);
    xs = eulerUpdate(xs, D, hat, schedule.levels[i + 1]!);
    report(opts, 'euler', schedule, i, t, x, xs, D);
  }
  return withData(x, fromScaled(xs, schedule.alphas[n]!));
}

export interface EulerAncestralOptions extends SamplerOptions {
  /** Scales the ancestral noise (k-diffusion's eta; diffusers uses 1). */
  eta?: number;
}

/** Euler ancestral (k-diffusion `sample_euler_ancestral`; diffusers EulerAncestralDiscrete). */
export async function sampleEulerAncestral(
  denoiser: Denoiser,
  x: Batch,
  schedule: Schedule,
  opts: EulerAncestralOptions = {},
): Promise<Batch> {
  requireProcess(schedule, 'sampleEulerAncestral', ['vp', 've']);
  requireNoise(opts, 'sampleEulerAncestral', 'ancestral steps add noise');
  const vp = schedule.process === 'vp';
  const n = schedule.timesteps.length;
  const r = roundOf(x.data);
  let xs: FloatArray = toLevelFrame(x.data, schedule);
  for (let i = 0; i < n; i++) {
    throwIfAborted(opts.signal);
    const level = schedule.levels[i]!;
    const t = schedule.timesteps[i]!;
    opts.perturb?.(xs, i, t);
    const p = await evaluate(
      denoiser,
      withData(x, scaleModelInput(xs, level, vp)),
      t,
      opts.condition,
    );
    const D = toX0Scaled(denoiser.prediction, xs, p, level, vp);
    const { up, down } = ancestralLevels(level, schedule.levels[i + 1]!, opts.eta ?? 1, r);
    xs = ancestralStep(xs, D, level, down, up, drawNoise(opts, xs, i));
    report(opts, 'euler-ancestral', schedule, i, t, x, xs, D);
  }
  return withData(x, fromScaled(xs, schedule.alphas[n]!));
}

/** Euler down to `down`, then + noise * up (diffusers' op order). */
export function ancestralStep(
  xs: FloatArray,
  D: FloatArray,
  level: number,
  down: number,
  up: number,
  noise: FloatArray,
): FloatArray {
  const r = roundOf(xs);
  const out = eulerUpdate(xs, D, level, down);
  for (let i = 0; i < out.length; i++) out[i] = r(out[i]! + r(noise[i]! * up));
  return out;
}
