/**
 * @file Forward processes x_t = alpha_t x0 + sigma_t eps, each as (alpha_t, sigma_t) of the
 * model's own time t (docs/architecture.md):
 *
 * - discrete VP (DDPM, Ho et al. 2020): a beta table over T training steps, alpha_t^2 =
 *   alphas_cumprod[t]; betas `linear`, `scaled_linear`, `squaredcos_cap_v2` (Nichol & Dhariwal
 *   2021) or trained; optionally rescaled to zero terminal SNR (Lin et al. 2023, Algorithm 1).
 *   Built in float32 exactly as diffusers builds them with torch, so tables match bit for bit.
 * - continuous VP with the cosine schedule, t in [0, 1].
 * - VE / EDM (Karras et al. 2022): alpha = 1, sigma = t.
 * - rectified flow (Liu et al. 2022; Esser et al. 2024): alpha = 1 - s, sigma = s, s = t / T.
 *
 * The noise level sigma / alpha (k-diffusion's "sigma", diffusers' Euler `sigmas`) orders all
 * of them on one axis; `timeAtLevel` inverts it so a schedule chosen in levels (Karras) maps to
 * model times.
 */
import { torchLinspaceF32 } from './diffusers/numerics.js';

export type ProcessKind = 'vp' | 've' | 'flow';

export interface Coefficients {
  readonly alpha: number;
  readonly sigma: number;
}

export interface Process {
  readonly kind: ProcessKind;
  /** Model-time range [tMin, tMax]; tMax is the noisiest end. */
  readonly tMin: number;
  readonly tMax: number;
  /** alpha_t and sigma_t. */
  at(t: number): Coefficients;
  /** d alpha / dt and d sigma / dt (for the probability-flow ODE drift). */
  derivative(t: number): Coefficients;
  /** The model time where sigma / alpha equals `level` (clamped to [tMin, tMax]). */
  timeAtLevel(level: number): number;
}

/** alpha and sigma for a noise level `level` = sigma / alpha of a process of this kind. */
export function coefficientsAtLevel(kind: ProcessKind, level: number): Coefficients {
  switch (kind) {
    case 'vp': {
      const alpha = 1 / Math.sqrt(level * level + 1);
      return { alpha, sigma: level * alpha };
    }
    case 've':
      return { alpha: 1, sigma: level };
    case 'flow':
      return level === Infinity
        ? { alpha: 0, sigma: 1 }
        : { alpha: 1 / (1 + level), sigma: level / (1 + level) };
  }
}

// ---------------------------------------------------------------------------------------------
// Discrete VP: betas and alphas_cumprod as diffusers builds them (float32 torch)

export type BetaSchedule = 'linear' | 'scaled_linear' | 'squaredcos_cap_v2';
export const BETA_SCHEDULES: readonly BetaSchedule[] = [
  'linear',
  'scaled_linear',
  'squaredcos_cap_v2',
];

export interface BetaOptions {
  numTrainTimesteps: number;
  betaStart: number;
  betaEnd: number;
  betaSchedule: BetaSchedule;
  trainedBetas?: readonly number[] | null;
  rescaleBetasZeroSnr?: boolean;
}

/**
 * Cosine alpha-bar discretised into betas (Nichol & Dhariwal 2021, eq. 17), capped at
 * `maxBeta`; diffusers' `betas_for_alpha_bar` computes in float64 and stores float32.
 */
export function cosineBetas(T: number, maxBeta = 0.999): Float32Array {
  const alphaBar = (t: number): number => {
    const c = Math.cos((((t + 0.008) / 1.008) * Math.PI) / 2);
    return c * c;
  };
  const out = new Float32Array(T);
  for (let i = 0; i < T; i++)
    out[i] = Math.min(1 - alphaBar((i + 1) / T) / alphaBar(i / T), maxBeta);
  return out;
}

/** float32 betas as diffusers' DDPM-family constructors build them. */
export function makeBetas(o: BetaOptions): Float32Array {
  let betas: Float32Array;
  if (o.trainedBetas) {
    betas = Float32Array.from(o.trainedBetas);
  } else if (o.betaSchedule === 'linear') {
    betas = torchLinspaceF32(o.betaStart, o.betaEnd, o.numTrainTimesteps);
  } else if (o.betaSchedule === 'scaled_linear') {
    betas = torchLinspaceF32(Math.sqrt(o.betaStart), Math.sqrt(o.betaEnd), o.numTrainTimesteps);
    for (let i = 0; i < betas.length; i++) betas[i] = Math.fround(betas[i]! * betas[i]!);
  } else {
    betas = cosineBetas(o.numTrainTimesteps);
  }
  return o.rescaleBetasZeroSnr ? rescaleZeroTerminalSnr(betas) : betas;
}

/** torch.cumprod on a float32 CPU tensor: the running product is kept in float64. */
function cumprodF32(a: Float32Array): Float32Array {
  const out = new Float32Array(a.length);
  let acc = 1;
  for (let i = 0; i < a.length; i++) {
    acc *= a[i]!;
    out[i] = acc;
  }
  return out;
}

/** alphas_cumprod = cumprod(1 - betas), float32. */
export function alphasCumprod(betas: Float32Array): Float32Array {
  return cumprodF32(betas.map((b) => Math.fround(1 - b)));
}

/**
 * Rescales betas so the last alpha-bar is exactly 0 (zero terminal SNR), keeping the first:
 * Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1.
 */
export function rescaleZeroTerminalSnr(betas: Float32Array): Float32Array {
  const f = Math.fround;
  const sqrtAbar = alphasCumprod(betas).map((a) => f(Math.sqrt(a)));
  const first = sqrtAbar[0]!;
  const last = sqrtAbar[sqrtAbar.length - 1]!;
  const scale = f(first / f(first - last));
  const abar = sqrtAbar.map((s) => {
    const v = f(f(s - last) * scale);
    return f(v * v);
  });
  const out = new Float32Array(betas.length);
  out[0] = f(1 - abar[0]!);
  for (let i = 1; i < abar.length; i++) out[i] = f(1 - f(abar[i]! / abar[i - 1]!));
  return out;
}

/** sqrt((1 - abar) / abar) per entry, float32 (diffusers' Euler / DPM `sigmas` table). */
export function levelsOfAlphaBars(abar: Float32Array): Float32Array {
  const f = Math.fround;
  return abar.map((a) => f(Math.sqrt(f(f(1 - a) / a))));
}

/**
 * Discrete VP process over a float32 alphas_cumprod table (t = 0 .. T-1). Between integer
 * times the noise level is interpolated linearly in t, as diffusers' Euler schedulers do.
 */
export function discreteVp(abar: Float32Array): Process {
  const levels = levelsOfAlphaBars(abar);
  const logLevels = Float64Array.from(levels, (l) => Math.log(l));
  const T = abar.length;
  const levelAt = (t: number): number => {
    const tc = Math.min(Math.max(t, 0), T - 1);
    const i = Math.min(Math.floor(tc), T - 2);
    const w = tc - i;
    return levels[i]! + w * (levels[i + 1]! - levels[i]!);
  };
  return {
    kind: 'vp',
    tMin: 0,
    tMax: T - 1,
    at: (t) => coefficientsAtLevel('vp', levelAt(t)),
    derivative: (t) => {
      const h = 1e-3;
      const a = coefficientsAtLevel('vp', levelAt(t + h));
      const b = coefficientsAtLevel('vp', levelAt(t - h));
      return { alpha: (a.alpha - b.alpha) / (2 * h), sigma: (a.sigma - b.sigma) / (2 * h) };
    },
    timeAtLevel: (level) => sigmaToT(level, logLevels),
  };
}

/**
 * diffusers' `_sigma_to_t`: the fractional table index where log(level) falls, linear in
 * log-level between neighbours (float64 version; see diffusers/numerics.ts for the exact one).
 */
function sigmaToT(level: number, logLevels: Float64Array): number {
  const ls = Math.log(Math.max(level, 1e-10));
  let low = 0;
  for (let i = 0; i < logLevels.length; i++) if (ls - logLevels[i]! >= 0) low = i;
  low = Math.min(low, logLevels.length - 2);
  const lo = logLevels[low]!;
  const hi = logLevels[low + 1]!;
  const w = Math.min(Math.max((lo - ls) / (lo - hi), 0), 1);
  return (1 - w) * low + w * (low + 1);
}

// ---------------------------------------------------------------------------------------------
// Continuous processes

/**
 * Continuous VP with the cosine schedule (Nichol & Dhariwal 2021): alpha(t) = f(t) / f(0),
 * f(t) = cos(pi/2 (t + s) / (1 + s)), sigma = sqrt(1 - alpha^2), t in [0, tMax] (tMax < 1
 * keeps alpha > 0).
 */
export function cosineVp(opts: { s?: number; tMax?: number } = {}): Process {
  const s = opts.s ?? 0.008;
  const tMax = opts.tMax ?? 0.999;
  const c = Math.PI / 2 / (1 + s);
  const f0 = Math.cos(c * s);
  const at = (t: number): Coefficients => {
    const alpha = Math.cos(c * (t + s)) / f0;
    return { alpha, sigma: Math.sqrt(Math.max(0, 1 - alpha * alpha)) };
  };
  return {
    kind: 'vp',
    tMin: 0,
    tMax,
    at,
    derivative: (t) => {
      const { alpha, sigma } = at(t);
      const da = (-c * Math.sin(c * (t + s))) / f0;
      return { alpha: da, sigma: sigma > 0 ? (-alpha * da) / sigma : Infinity };
    },
    timeAtLevel: (level) => {
      const alpha = 1 / Math.sqrt(level * level + 1);
      const t = Math.acos(Math.min(1, alpha * f0)) / c - s;
      return Math.min(Math.max(t, 0), tMax);
    },
  };
}

/** Variance exploding / EDM: alpha = 1, sigma = t, and the model's time is sigma itself. */
export function veProcess(opts: { sigmaMin?: number; sigmaMax?: number } = {}): Process {
  const tMin = opts.sigmaMin ?? 0.002;
  const tMax = opts.sigmaMax ?? 80;
  return {
    kind: 've',
    tMin,
    tMax,
    at: (t) => ({ alpha: 1, sigma: t }),
    derivative: () => ({ alpha: 0, sigma: 1 }),
    timeAtLevel: (level) => level,
  };
}

/**
 * Rectified flow: alpha = 1 - s, sigma = s with s = t / timeScale (diffusers' FlowMatch passes
 * t = s * num_train_timesteps to the model; timeScale 1 gives t = s).
 */
export function rectifiedFlow(opts: { timeScale?: number } = {}): Process {
  const T = opts.timeScale ?? 1000;
  return {
    kind: 'flow',
    tMin: 0,
    tMax: T,
    at: (t) => ({ alpha: 1 - t / T, sigma: t / T }),
    derivative: () => ({ alpha: -1 / T, sigma: 1 / T }),
    timeAtLevel: (level) => (level === Infinity ? T : (T * level) / (1 + level)),
  };
}

/**
 * Time shift of rectified-flow schedules (SD3; diffusers' `shift`): s -> shift s / (1 +
 * (shift - 1) s), in float64 as diffusers' `set_timesteps` does.
 */
export function shiftFlow(s: number, shift: number): number {
  return (shift * s) / (1 + (shift - 1) * s);
}

/**
 * Resolution-dependent shift (Flux; diffusers' `time_shift` with sigma = 1):
 * s -> e^mu / (e^mu + 1/s - 1).
 */
export function dynamicShiftFlow(s: number, mu: number): number {
  return Math.exp(mu) / (Math.exp(mu) + (1 / s - 1));
}
