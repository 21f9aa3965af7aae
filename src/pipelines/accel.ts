/**
 * @file Training-free acceleration for the sampling pipeline: the spellings users type
 * (`deepcache:3`, `faster`, `ras:0.5`), their checks against the model and sampler, and the
 * Denoiser each one puts in place of the plain model graph (methods/ holds the methods).
 */
import type { Provider } from '../engine/runtime.js';
import type { FloatArray } from '../diffusion/arith.js';
import type { Denoiser } from '../diffusion/denoiser.js';
import type { Prediction } from '../diffusion/predictions.js';
import { samplerSchedule } from '../diffusion/sampling.js';
import { deepCacheDenoiser, deepCacheSchedule, type DeepCacheOptions } from '../methods/deepcache.js';
import { fasterDiffusionDenoiser, type FasterDiffusionOptions } from '../methods/faster-diffusion.js';
import { rasDenoiser, type RasOptions } from '../methods/ras.js';
import type { DiTTransformer2DModel } from '../models/dit.js';
import type { UNet2DModel } from '../models/unet2d.js';
import type { ParamsOf } from '../nn/module.js';
import type { Pipeline } from './sample.js';

/** What `SampleOptions.accel` takes. */
export type Acceleration =
  | ({ method: 'deepcache' } & DeepCacheOptions)
  | ({ method: 'faster' } & FasterDiffusionOptions)
  | ({ method: 'ras' } & RasOptions);

/** Every spelling parseAccel takes, for messages and --help. */
export const ACCEL_SPELLINGS = 'deepcache:N[,nonuniform][,branch=K], faster[:K][,serial]' +
  '[,noinject] or ras:R[,random][,starvation=S][,cache=high|low][,metric=std|l2norm]';

/** A malformed acceleration spelling; `reason` is the message without the list of spellings
 *  (for callers that print that list themselves, as the CLI does). */
export class AccelSpellingError extends RangeError {
  constructor(message: string, readonly reason: string) {
    super(message);
    this.name = 'AccelSpellingError';
  }
}

/** parseAccel for option parsers that state the expected form themselves: errors carry only
 *  the reason. */
export function parseAccelOption(text: string): Acceleration {
  try {
    return parseAccel(text);
  } catch (e) {
    throw e instanceof AccelSpellingError ? new RangeError(e.reason) : e;
  }
}

/**
 * The command-line spelling of an acceleration:
 * - `deepcache:N` with `,nonuniform` (pow 1.4, center 15) and `,branch=K` (the partial step
 *   recomputes the last K up-path resnets; default 1);
 * - `faster` (the paper's key steps) or `faster:K` (every K-th step), with `,serial` (no
 *   parallel decoder) and `,noinject` (no prior noise injection);
 * - `ras:R` (share R of the tokens refreshed) with `,random` (the control), `,starvation=S`,
 *   `,cache=high|low` and `,metric=std|l2norm`.
 */
export function parseAccel(text: string): Acceleration {
  const [head, ...mods] = text.split(',').map((s) => s.trim());
  const bad = (why: string) => new AccelSpellingError(`'${text}': ${why}; expected ${ACCEL_SPELLINGS}`,
    why);
  const option = (mod: string) => /^([a-z]+)=(.+)$/.exec(mod);
  let m = /^deepcache:(\d+)$/.exec(head ?? '');
  if (m) {
    if (Number(m[1]) < 1) throw bad('N must be >= 1 model calls per full step');
    const accel: Acceleration = { method: 'deepcache', interval: Number(m[1]) };
    for (const mod of mods) {
      const b = /^branch=(\d+)$/.exec(mod);
      if (mod === 'nonuniform') accel.nonUniform = true;
      else if (b) accel.branch = Number(b[1]);
      else throw bad(`unknown modifier '${mod}' of deepcache`);
    }
    return accel;
  }
  m = /^faster(?::(\d+))?$/.exec(head ?? '');
  if (m) {
    if (m[1] !== undefined && Number(m[1]) < 1) throw bad('K must be >= 1 steps between key steps');
    const accel: Acceleration = { method: 'faster', keySteps: m[1] === undefined ? 'paper' : Number(m[1]) };
    for (const mod of mods) {
      if (mod === 'serial') accel.parallel = false;
      else if (mod === 'noinject') accel.noiseInjection = false;
      else throw bad(`unknown modifier '${mod}' of faster`);
    }
    return accel;
  }
  m = /^ras:([0-9.]+)$/.exec(head ?? '');
  if (m) {
    const ratio = Number(m[1]);
    if (!(ratio > 0 && ratio <= 1)) throw bad('R must be in (0, 1], the share of tokens refreshed');
    const accel: Acceleration = { method: 'ras', ratio };
    for (const mod of mods) {
      const kv = option(mod);
      if (mod === 'random') accel.selection = 'random';
      else if (kv?.[1] === 'starvation' && Number.isFinite(Number(kv[2]))) accel.starvation = Number(kv[2]);
      else if (kv?.[1] === 'cache' && (kv[2] === 'high' || kv[2] === 'low')) accel.cache = kv[2];
      else if (kv?.[1] === 'metric' && (kv[2] === 'std' || kv[2] === 'l2norm')) accel.metric = kv[2];
      else throw bad(`unknown or malformed modifier '${mod}' of ras`);
    }
    return accel;
  }
  throw bad('unknown acceleration');
}

/** One line for logs: what the acceleration does. */
export function describeAccel(a: Acceleration): string {
  switch (a.method) {
    case 'deepcache':
      return `DeepCache every ${a.interval}${a.nonUniform ? ' (non-uniform)' : ''}` +
        `${a.branch ? `, branch ${a.branch}` : ''}`;
    case 'faster':
      return `Faster Diffusion (key steps: ${a.keySteps === 'paper' ? "the paper's" : `every ${a.keySteps}`}` +
        `${a.parallel === false ? ', serial decoder' : ''}${a.noiseInjection === false ? ', no noise injection' : ''})`;
    case 'ras':
      return `RAS refreshing ${a.ratio} of the tokens${a.selection === 'random' ? ' (random selection)' : ''}`;
  }
}

/** Samplers that call the model once per step (Heun calls it twice). */
const ONE_CALL_PER_STEP = new Set(['ddim', 'ddpm', 'euler', 'euler-a', 'dpm++2m', 'dpm++3m',
  'unipc', 'flow-euler']);

export interface AcceleratedDenoiser {
  denoiser: Denoiser;
  /** Model calls, in calls of at most `rows` rows. */
  stats: { rowCalls: number };
  /** It runs classifier-free guidance itself: give it the images' rows, not CFG's. */
  guided: boolean;
  /** SamplerOptions.perturb to pass to the sampler. */
  perturb?: (state: FloatArray, step: number, t: number) => void;
  reset(): void;
  dispose(): Promise<void>;
}

/** The acceleration `accel` over the pipeline's model, checked against model and sampler;
 *  `consts` are the pipeline's weights as graph constants (the caller's, shared with its
 *  plain model graph). */
export function acceleratedDenoiser(p: Pipeline, consts: unknown, accel: Acceleration,
  o: { sampler: string; steps: number; rows: number; conditional: boolean; guidance: number;
    seed: number; prediction: Prediction; provider?: Provider }): AcceleratedDenoiser {
  const runtime = o.provider ? { provider: o.provider } : {};
  const family = p.model.family;
  const needs = (kind: string, model: string, ok: boolean) => {
    if (!ok) {
      throw new RangeError(`${accel.method} ${kind}, so it needs ${model}; this model is a ` +
        `${p.model.cls.className}`);
    }
  };
  const oneCall = (why: string) => {
    if (!ONE_CALL_PER_STEP.has(o.sampler)) {
      throw new RangeError(`${why}, so it needs a sampler with one model call per step, not ` +
        `${o.sampler}`);
    }
  };
  switch (accel.method) {
    case 'deepcache': {
      needs('caches U-Net features', 'a UNet2DModel', family === 'unet');
      if (accel.nonUniform) oneCall('a non-uniform DeepCache schedule is laid over the steps');
      const schedule = deepCacheSchedule(o.steps, accel);
      const d = deepCacheDenoiser(p.model.module as UNet2DModel, consts as ParamsOf<UNet2DModel>,
        o.prediction, { ...accel, conditional: o.conditional, rows: o.rows, runtime,
          isFull: (call) => call >= schedule.length || schedule[call]! });
      return { denoiser: d, stats: d.stats, guided: false, reset: () => d.reset(),
        dispose: () => d.dispose() };
    }
    case 'faster': {
      needs('splits a U-Net into encoder and decoder', 'a UNet2DModel', family === 'unet');
      oneCall('Faster Diffusion plans its key steps over the steps');
      const times = samplerSchedule(o.sampler, p.scheduler, o.steps).timesteps;
      const d = fasterDiffusionDenoiser(p.model.module as UNet2DModel,
        consts as ParamsOf<UNet2DModel>, o.prediction, { ...accel, conditional: o.conditional,
          rows: o.rows, maxRows: o.rows, times: Array.from(times),
          trainTimesteps: Number(p.scheduler.config.num_train_timesteps), runtime });
      return { denoiser: d, stats: d.stats, guided: false, reset: () => d.reset(),
        dispose: () => d.dispose(), ...(d.perturb ? { perturb: d.perturb } : {}) };
    }
    case 'ras': {
      needs('selects transformer tokens', 'a DiT or DiT-MoE', family === 'dit' || family === 'dit-moe');
      oneCall('RAS selects tokens from one step for the next');
      const d = rasDenoiser(p.model.module as DiTTransformer2DModel, consts, o.prediction,
        { ...accel, steps: o.steps, rows: o.rows, nullClass: p.model.numClasses,
          conditional: o.conditional, guidance: o.guidance, seed: o.seed, runtime });
      return { denoiser: d, stats: d.stats, guided: true, reset: () => d.reset(),
        dispose: () => d.dispose() };
    }
  }
}
