/**
 * @file diffusers' `__init__` + `set_timesteps`, as data: a parsed scheduler config and a step
 * count become a Schedule whose timesteps and noise levels equal diffusers' bit for bit
 * (v0.31, torch 1.13 float32, NumPy 1.24 float64), including its quirks:
 *
 * - DDPM / DDIM step to t - T // n rather than to the next timestep (visible with `linspace`
 *   and `trailing` spacing). Kept by default (`targetAlphaBars`); `prevFromSchedule` opts into
 *   stepping to the next scheduled timestep instead.
 * - DPM-Solver / UniPC `linspace` spacing takes n + 1 points and drops the last.
 * - Euler's `init_noise_sigma` is sigma_max (not sqrt(sigma_max^2 + 1)) for `linspace` and
 *   `trailing` spacing.
 */
import { alphasCumprod, levelsOfAlphaBars, makeBetas, type BetaSchedule } from '../process.js';
import { makeSchedule, type Schedule } from '../schedule.js';
import { cfgBool, cfgNum, cfgStr, type SchedulerConfig } from './config.js';
import {
  karrasLevelsF64,
  numpyArange,
  numpyInterpIndex,
  numpyLinspace,
  roundHalfEven,
  sigmaToTF32,
} from './numerics.js';

const f = Math.fround;

/** betas and alphas_cumprod (float32) as the class's constructor builds them. */
export function trainTables(c: SchedulerConfig): {
  betas: Float32Array;
  alphasCumprod: Float32Array;
} {
  const betas = makeBetas({
    numTrainTimesteps: cfgNum(c, 'num_train_timesteps'),
    betaStart: cfgNum(c, 'beta_start'),
    betaEnd: cfgNum(c, 'beta_end'),
    betaSchedule: cfgStr(c, 'beta_schedule') as BetaSchedule,
    trainedBetas: c['trained_betas'] as number[] | null,
    rescaleBetasZeroSnr: c['rescale_betas_zero_snr'] === true,
  });
  const acp = alphasCumprod(betas);
  const keepsLastZero = c._class_name === 'DDPMScheduler' || c._class_name === 'DDIMScheduler';
  // Euler / DPM / UniPC avoid an infinite sigma at zero terminal SNR
  if (c['rescale_betas_zero_snr'] === true && !keepsLastZero) acp[acp.length - 1] = 2 ** -24;
  return { betas, alphasCumprod: acp };
}

type Spacing = 'linspace' | 'leading' | 'trailing';

/**
 * Timesteps (descending) for a spacing. `extra` = 1 is DPM-Solver / UniPC's variant (n + 1
 * points, the last dropped); `last` is the first excluded training step (T, or less with
 * DPM's lambda_min_clipped).
 */
export function spacedTimesteps(
  spacing: Spacing,
  T: number,
  n: number,
  offset: number,
  opts: { extra?: 0 | 1; last?: number; float?: boolean } = {},
): Float64Array {
  const extra = opts.extra ?? 0;
  const last = opts.last ?? T;
  let ts: Float64Array;
  if (spacing === 'linspace') {
    const lin = numpyLinspace(0, last - 1, n + extra);
    ts = opts.float ? lin.map(f) : lin.map(roundHalfEven);
    ts = ts.reverse().slice(0, n);
  } else if (spacing === 'leading') {
    const ratio = Math.floor(last / (n + extra));
    ts = Float64Array.from({ length: n + extra }, (_, i) => i * ratio)
      .reverse()
      .slice(0, n);
    ts = ts.map((t) => t + offset);
  } else {
    ts = numpyArange(last, 0, -T / n).map((t) => roundHalfEven(t) - 1);
  }
  return ts;
}

/** Per-point arrays of a VP schedule from noise levels (DPM-Solver's _sigma_to_alpha_sigma_t). */
function vpFromLevels(levels: Float32Array): { alphas: Float64Array; sigmas: Float64Array } {
  const alphas = Float64Array.from(levels, (l) => f(1 / f(Math.sqrt(f(f(l * l) + 1)))));
  const sigmas = Float64Array.from(levels, (l, i) => f(l * alphas[i]!));
  return { alphas, sigmas };
}

/** DDPMScheduler / DDIMScheduler: integer timesteps, points on the alphas_cumprod table. */
export function ddpmSchedule(c: SchedulerConfig, n: number, prevFromSchedule = false): Schedule {
  const T = cfgNum(c, 'num_train_timesteps');
  if (!(Number.isInteger(n) && n >= 1 && n <= T)) {
    throw new RangeError(
      `${c._class_name}: num_inference_steps must be an integer in [1, ${T}], got ${n}`,
    );
  }
  const { alphasCumprod: acp } = trainTables(c);
  const spacing = cfgStr(c, 'timestep_spacing') as Spacing;
  const timesteps = spacedTimesteps(spacing, T, n, cfgNum(c, 'steps_offset'));
  const final = c._class_name === 'DDIMScheduler' && !cfgBool(c, 'set_alpha_to_one') ? acp[0]! : 1;
  const abar = new Float32Array(n + 1);
  timesteps.forEach((t, i) => (abar[i] = acp[t]!));
  abar[n] = final;
  const target = Float64Array.from(timesteps, (t) => {
    const prev = t - Math.floor(T / n);
    return prev >= 0 ? acp[prev]! : final;
  });
  const quirk = !prevFromSchedule && target.some((v, i) => v !== abar[i + 1]);
  return makeSchedule({
    process: 'vp',
    timesteps,
    alphaBars: Float64Array.from(abar),
    alphas: Float64Array.from(abar, (a) => f(Math.sqrt(a))),
    sigmas: Float64Array.from(abar, (a) => f(Math.sqrt(f(1 - a)))),
    levels: Float64Array.from(levelsOfAlphaBars(abar)),
    ...(quirk ? { targetAlphaBars: target } : {}),
  });
}

/** Final level for `final_sigmas_type`: 0, or the table's smallest level (torch float32). */
function finalLevel(c: SchedulerConfig, acp: Float32Array): number {
  if ((c['final_sigmas_type'] ?? 'zero') === 'zero') return 0;
  return f(Math.sqrt(f(f(1 - acp[0]!) / acp[0]!)));
}

/** Euler / EulerAncestral / Heun: float timesteps, levels interpolated in t (or Karras). */
export function eulerSchedule(c: SchedulerConfig, n: number): Schedule {
  const T = cfgNum(c, 'num_train_timesteps');
  const { alphasCumprod: acp } = trainTables(c);
  const table = levelsOfAlphaBars(acp);
  const spacing = cfgStr(c, 'timestep_spacing') as Spacing;
  let timesteps: Float64Array = spacedTimesteps(spacing, T, n, cfgNum(c, 'steps_offset'), {
    float: true,
  });
  let levels: Float64Array = timesteps.map((t) => numpyInterpIndex(t, table));
  if (c['use_karras_sigmas'] === true) {
    const min = (c['sigma_min'] as number | null | undefined) ?? levels[n - 1]!;
    const max = (c['sigma_max'] as number | null | undefined) ?? levels[0]!;
    levels = karrasLevelsF64(n, min, max);
    const logTable = table.map((l) => Math.log(l));
    // Euler casts these to float32; Heun keeps NumPy's float64
    const cast = c._class_name === 'HeunDiscreteScheduler' ? (v: number) => v : f;
    timesteps = levels.map((l) => cast(sigmaToTF32(l, logTable)));
  }
  const all = new Float32Array(n + 1);
  all.set(levels);
  all[n] = finalLevel(c, acp);
  const { alphas, sigmas } = vpFromLevels(all);
  return makeSchedule({
    process: 'vp',
    timesteps,
    alphas,
    sigmas,
    levels: Float64Array.from(all),
    alphaBars: alphas.map((a) => a * a),
    startScale: initNoiseSigma(all, spacing),
  });
}

/** diffusers' init_noise_sigma of the level-frame classes (sigma_max for linspace / trailing). */
function initNoiseSigma(levels: Float32Array, spacing: Spacing): number {
  const max = Math.max(...levels);
  return spacing === 'linspace' || spacing === 'trailing' ? max : f(Math.sqrt(f(f(max * max) + 1)));
}

/** DPMSolverMultistep / UniPCMultistep: integer timesteps, n + 1 linspace, Karras rounded. */
export function dpmSchedule(c: SchedulerConfig, n: number): Schedule {
  const T = cfgNum(c, 'num_train_timesteps');
  const { alphasCumprod: acp } = trainTables(c);
  const table = levelsOfAlphaBars(acp);
  const spacing = cfgStr(c, 'timestep_spacing') as Spacing;
  const last = T - clippedIndex(c, acp);
  let timesteps: Float64Array = spacedTimesteps(spacing, T, n, cfgNum(c, 'steps_offset'), {
    extra: 1,
    last,
  });
  let levels: Float64Array;
  let end = finalLevel(c, acp);
  if (c['use_karras_sigmas'] === true) {
    levels = karrasLevelsF64(n, table[0]!, table[T - 1]!);
    const logTable = table.map((l) => Math.log(l));
    timesteps = levels.map((l) => roundHalfEven(sigmaToTF32(l, logTable)));
    if (c._class_name === 'UniPCMultistepScheduler' && c['final_sigmas_type'] === 'sigma_min') {
      end = f(levels[n - 1]!);
    }
  } else {
    levels = timesteps.map((t) => numpyInterpIndex(t, table));
  }
  const all = new Float32Array(n + 1);
  all.set(levels);
  all[n] = end;
  const { alphas, sigmas } = vpFromLevels(all);
  return makeSchedule({
    process: 'vp',
    timesteps,
    alphas,
    sigmas,
    levels: Float64Array.from(all),
    alphaBars: alphas.map((a) => a * a),
  });
}

/**
 * DPM-Solver's lambda_min_clipped: the number of training steps (from the noisy end) whose
 * lambda = log(alpha) - log(sigma) lies below the clip (torch.searchsorted on the flipped table).
 */
function clippedIndex(c: SchedulerConfig, acp: Float32Array): number {
  const clip = c['lambda_min_clipped'];
  if (typeof clip !== 'number' || clip === -Infinity) return 0;
  const lambdas = Array.from(acp, (a) =>
    f(f(Math.log(f(Math.sqrt(a)))) - f(Math.log(f(Math.sqrt(f(1 - a)))))),
  );
  lambdas.reverse();
  let idx = 0;
  while (idx < lambdas.length && lambdas[idx]! < clip) idx++;
  return idx;
}

/** The float32 s table FlowMatch schedulers build (shift applied unless dynamic). */
function flowTrainSigmas(c: SchedulerConfig): Float32Array {
  const T = cfgNum(c, 'num_train_timesteps');
  const shift = f(cfgNum(c, 'shift'));
  const dynamic = c['use_dynamic_shifting'] === true;
  const s = Float32Array.from({ length: T }, (_, i) => f((T - i) / T));
  if (dynamic) return s;
  const sm1 = f(cfgNum(c, 'shift') - 1);
  return s.map((v) => f(f(shift * v) / f(1 + f(sm1 * v))));
}

/**
 * FlowMatchEuler / FlowMatchHeun: s from sigma_max to sigma_min in float64, shifted (or
 * dynamically shifted with `mu`), then float32; model time = s * T.
 */
export function flowSchedule(c: SchedulerConfig, n: number, mu?: number): Schedule {
  const T = cfgNum(c, 'num_train_timesteps');
  const train = flowTrainSigmas(c);
  const lin = numpyLinspace(train[0]! * T, train[T - 1]! * T, n);
  const dynamic = c['use_dynamic_shifting'] === true;
  if (dynamic && mu === undefined) {
    throw new TypeError(`${c._class_name}: use_dynamic_shifting needs setTimesteps(n, { mu })`);
  }
  const shift = cfgNum(c, 'shift');
  const s32 = new Float32Array(n + 1);
  for (let i = 0; i < n; i++) {
    const s = lin[i]! / T;
    s32[i] = dynamic
      ? Math.exp(mu!) / (Math.exp(mu!) + (1 / s - 1))
      : (shift * s) / (1 + (shift - 1) * s);
  }
  const sigmas = Float64Array.from(s32);
  const alphas = sigmas.map((s) => 1 - s);
  return makeSchedule({
    process: 'flow',
    timesteps: Float64Array.from(s32.subarray(0, n), (s) => f(s * T)),
    alphas,
    sigmas,
    levels: sigmas.map((s, i) => s / alphas[i]!),
    alphaBars: alphas.map((a) => a * a),
  });
}

/** diffusers' `calculate_shift` for dynamic shifting: mu linear in the image sequence length. */
export function flowShiftMu(c: SchedulerConfig, imageSeqLen: number): number {
  const x1 = cfgNum(c, 'base_image_seq_len');
  const x2 = cfgNum(c, 'max_image_seq_len');
  const y1 = cfgNum(c, 'base_shift');
  const y2 = cfgNum(c, 'max_shift');
  const m = (y2 - y1) / (x2 - x1);
  return imageSeqLen * m + (y1 - m * x1);
}

/** The schedule a config gives for n inference steps. */
export function buildSchedule(
  c: SchedulerConfig,
  n: number,
  opts: { prevFromSchedule?: boolean; mu?: number } = {},
): Schedule {
  switch (c._class_name) {
    case 'DDPMScheduler':
    case 'DDIMScheduler':
      return ddpmSchedule(c, n, opts.prevFromSchedule);
    case 'EulerDiscreteScheduler':
    case 'EulerAncestralDiscreteScheduler':
    case 'HeunDiscreteScheduler':
      return eulerSchedule(c, n);
    case 'DPMSolverMultistepScheduler':
    case 'UniPCMultistepScheduler':
      return dpmSchedule(c, n);
    case 'FlowMatchEulerDiscreteScheduler':
    case 'FlowMatchHeunDiscreteScheduler':
      return flowSchedule(c, n, opts.mu);
  }
}
