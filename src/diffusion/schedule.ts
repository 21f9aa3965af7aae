/**
 * @file Sampling schedules as immutable data (docs/architecture.md, convention 10): which model times a sampler visits and
 * the process coefficients at each point. Samplers only index a schedule; diffusers configs
 * become schedules in diffusers/tables.ts, once, at the boundary.
 *
 * A schedule of n steps has n + 1 points; point i < n is where step i evaluates the model, and
 * point n is where sampling ends (usually noise level 0). Several parameterisations of the same
 * points are kept side by side because diffusers' schedulers each read a different one and
 * round them differently: `alphas` / `sigmas` (DPM-Solver, UniPC, flow), `levels` = sigma /
 * alpha (Euler, Heun; k-diffusion's sigmas), `alphaBars` = alpha^2 (DDPM, DDIM).
 */
import { coefficientsAtLevel, type Process, type ProcessKind } from './process.js';

export interface Schedule {
  readonly process: ProcessKind;
  /** Model time of step i's evaluation, [n]. */
  readonly timesteps: Float64Array;
  /** x = alpha x0 + sigma eps at each point, [n + 1]. */
  readonly alphas: Float64Array;
  readonly sigmas: Float64Array;
  /** Noise level sigma / alpha at each point, [n + 1]. */
  readonly levels: Float64Array;
  /** alpha^2 at each point, [n + 1] (VP: diffusers' alphas_cumprod entries). */
  readonly alphaBars: Float64Array;
  /**
   * Where DDPM / DDIM step i lands, when that is not point i + 1: diffusers computes the
   * previous timestep as t - T // n, which differs from the next timestep for `linspace` and
   * `trailing` spacing. [n], alpha^2 of the landing point.
   */
  readonly targetAlphaBars?: Float64Array;
  /** Model time of the end point, where it has one (sigma > 0); DDIM inversion starts there. */
  readonly endTime?: number;
  /**
   * How level-frame samplers (Euler, Heun) turn the process-frame start x into xs = x * scale.
   * Default 1 / alpha_0 (= sqrt(level_0^2 + 1) for VP). diffusers' Euler-type schedulers scale
   * unit noise by their init_noise_sigma instead, which for `linspace` and `trailing` spacing
   * is sigma_max rather than sqrt(sigma_max^2 + 1); schedules built from their configs record
   * it here so that the same noise gives the same image.
   */
  readonly startScale?: number;
}

/** The factor from the process-frame start state to the noise-level frame (see startScale). */
export function startScale(s: Schedule): number {
  return s.startScale ?? 1 / s.alphas[0]!;
}

/** Number of steps. */
export function steps(s: Schedule): number {
  return s.timesteps.length;
}

function freeze(s: Schedule): Schedule {
  const n = s.timesteps.length;
  for (const [name, a] of [
    ['alphas', s.alphas],
    ['sigmas', s.sigmas],
    ['levels', s.levels],
    ['alphaBars', s.alphaBars],
  ] as const) {
    if (a.length !== n + 1) {
      throw new RangeError(`schedule: ${name} has ${a.length} points, expected n + 1 = ${n + 1}`);
    }
  }
  if (s.targetAlphaBars && s.targetAlphaBars.length !== n) {
    throw new RangeError(
      `schedule: targetAlphaBars has ${s.targetAlphaBars.length}, expected ${n}`,
    );
  }
  return Object.freeze({ ...s });
}

/** Builds a schedule from explicit arrays (n timesteps, n + 1 of everything else). */
export function makeSchedule(s: Schedule): Schedule {
  return freeze(s);
}

/**
 * A schedule visiting model times `times` ([n + 1]; the last is where sampling ends) of a
 * process, with coefficients from the process.
 */
export function scheduleFromTimes(process: Process, times: ArrayLike<number>): Schedule {
  const m = times.length;
  const alphas = new Float64Array(m);
  const sigmas = new Float64Array(m);
  for (let i = 0; i < m; i++) {
    const c = process.at(times[i]!);
    alphas[i] = c.alpha;
    sigmas[i] = c.sigma;
  }
  return freeze({
    process: process.kind,
    timesteps: Float64Array.from({ length: m - 1 }, (_, i) => times[i]!),
    alphas,
    sigmas,
    levels: alphas.map((a, i) => sigmas[i]! / a),
    alphaBars: alphas.map((a) => a * a),
    endTime: times[m - 1]!,
  });
}

/**
 * A schedule visiting noise levels `levels` ([n + 1], decreasing; typically ending in 0), with
 * model times from `process.timeAtLevel` and coefficients from the level.
 */
export function scheduleFromLevels(process: Process, levels: ArrayLike<number>): Schedule {
  const m = levels.length;
  const alphas = new Float64Array(m);
  const sigmas = new Float64Array(m);
  for (let i = 0; i < m; i++) {
    const c = coefficientsAtLevel(process.kind, levels[i]!);
    alphas[i] = c.alpha;
    sigmas[i] = c.sigma;
  }
  return freeze({
    process: process.kind,
    timesteps: Float64Array.from({ length: m - 1 }, (_, i) => process.timeAtLevel(levels[i]!)),
    alphas,
    sigmas,
    levels: Float64Array.from(levels),
    alphaBars: alphas.map((a) => a * a),
    ...(levels[m - 1]! > 0 ? { endTime: process.timeAtLevel(levels[m - 1]!) } : {}),
  });
}

/**
 * Karras et al. 2022 eq. 5: n levels from sigmaMax down to sigmaMin, equally spaced in
 * level^(1/rho), then 0 appended (n + 1 values).
 */
export function karrasLevels(
  n: number,
  sigmaMin: number,
  sigmaMax: number,
  rho = 7,
): Float64Array {
  const out = new Float64Array(n + 1);
  const lo = sigmaMin ** (1 / rho);
  const hi = sigmaMax ** (1 / rho);
  for (let i = 0; i < n; i++) {
    const ramp = n === 1 ? 0 : i / (n - 1);
    out[i] = (hi + ramp * (lo - hi)) ** rho;
  }
  return out;
}

/** n + 1 times equally spaced from tStart down to tEnd (both exact). */
export function uniformTimes(n: number, tStart: number, tEnd: number): Float64Array {
  return Float64Array.from({ length: n + 1 }, (_, i) =>
    i === n ? tEnd : tStart + ((tEnd - tStart) * i) / n,
  );
}
