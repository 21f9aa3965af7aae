/**
 * @file The one sampling path: the samplers by the names users type (`--sampler dpm++2m`),
 * each a sampler function of samplers/ run over the schedule a diffusers scheduler config
 * gives. The `sample`, `eval` and `toy` commands, training sample grids and the methods built
 * on them all call `sample` here.
 *
 * A name picks a diffusers scheduler class and the config keys of its variant. Applied to a
 * model's own scheduler spec (as diffusers' `from_config` swaps schedulers), it gives the
 * schedule (diffusers/tables.ts, bit-exact with diffusers' set_timesteps) and the options of
 * the sampler function (clip_sample, solver order, ...). The sampler functions follow
 * diffusers' float32 operation order, so for the same config, model and noise they give
 * diffusers' images bit for bit (sampling.test.ts replays diffusers' recordings through here).
 * The scheduler classes in diffusers/ are the set-then-step adapter over the same step
 * functions, for code ported from diffusers.
 */
import type { Batch, Denoiser, SamplerOptions } from './denoiser.js';
import { parseSchedulerConfig, SCHEMAS, type SchedulerClass } from './diffusers/config.js';
import { SCHEDULER_FAMILY, specOf, type SchedulerSpec } from './diffusers/spec.js';
import { buildSchedule } from './diffusers/tables.js';
import type { Schedule } from './schedule.js';
import { sampleDdim } from './samplers/ddim.js';
import { sampleDdpm, type DdpmVariance } from './samplers/ddpm.js';
import { sampleDpmSolverPP, type DpmSolverType } from './samplers/dpm.js';
import { sampleEuler, sampleEulerAncestral } from './samplers/euler.js';
import { sampleFlowEuler, sampleFlowHeun } from './samplers/flow.js';
import { sampleHeun } from './samplers/heun.js';
import { sampleUniPc, type UniPcSolverType } from './samplers/unipc.js';

/** Runs a sampler function with the options `spec` (the sampler's own spec) selects. */
type Run = (
  denoiser: Denoiser,
  x: Batch,
  schedule: Schedule,
  spec: SchedulerSpec,
  opts: SamplerOptions,
) => Promise<Batch>;

export interface NamedSampler {
  readonly className: SchedulerClass;
  /** Config keys that select the variant, applied over the model's config. */
  readonly overrides: Readonly<Record<string, unknown>>;
  /** Adds noise at each step (so its result depends on the noise stream, not only x_T). */
  readonly stochastic: boolean;
  readonly description: string;
  readonly run: Run;
}

const key = <T>(spec: SchedulerSpec, name: string): T => spec.config[name] as T;

const dpm: Run = (d, x, s, spec, o) =>
  sampleDpmSolverPP(d, x, s, {
    ...o,
    ...spec.x0,
    order: key<1 | 2 | 3>(spec, 'solver_order'),
    solverType: key<DpmSolverType>(spec, 'solver_type'),
    lowerOrderFinal: key<boolean>(spec, 'lower_order_final'),
    eulerAtFinal: key<boolean>(spec, 'euler_at_final'),
  });

export const SAMPLERS = {
  ddpm: {
    className: 'DDPMScheduler', overrides: {}, stochastic: true,
    description: 'DDPM ancestral sampling (Ho et al. 2020)',
    run: (d, x, s, spec, o) =>
      sampleDdpm(d, x, s, { ...o, ...spec.x0, variance: key<DdpmVariance>(spec, 'variance_type') }),
  },
  ddim: {
    className: 'DDIMScheduler', overrides: {}, stochastic: false,
    description: 'DDIM, eta 0 (Song et al. 2021)',
    run: (d, x, s, spec, o) => sampleDdim(d, x, s, { ...o, ...spec.x0 }),
  },
  euler: {
    className: 'EulerDiscreteScheduler', overrides: {}, stochastic: false,
    description: 'Euler on the PF-ODE (Karras et al. 2022)',
    run: (d, x, s, _spec, o) => sampleEuler(d, x, s, o),
  },
  'euler-a': {
    className: 'EulerAncestralDiscreteScheduler', overrides: {}, stochastic: true,
    description: 'Euler ancestral',
    run: (d, x, s, _spec, o) => sampleEulerAncestral(d, x, s, o),
  },
  heun: {
    className: 'HeunDiscreteScheduler', overrides: {}, stochastic: false,
    description: 'Heun, 2nd order, two model calls per step (Karras et al. 2022)',
    run: (d, x, s, spec, o) => sampleHeun(d, x, s, { ...o, ...spec.x0 }),
  },
  'dpm++2m': {
    className: 'DPMSolverMultistepScheduler', overrides: { solver_order: 2 }, stochastic: false,
    description: 'DPM-Solver++ 2M (Lu et al. 2022)', run: dpm,
  },
  'dpm++3m': {
    className: 'DPMSolverMultistepScheduler', overrides: { solver_order: 3 }, stochastic: false,
    description: 'DPM-Solver++ 3M', run: dpm,
  },
  unipc: {
    className: 'UniPCMultistepScheduler', overrides: {}, stochastic: false,
    description: 'UniPC bh2 (Zhao et al. 2023)',
    run: (d, x, s, spec, o) =>
      sampleUniPc(d, x, s, {
        ...o,
        ...spec.x0,
        order: key<number>(spec, 'solver_order'),
        solverType: key<UniPcSolverType>(spec, 'solver_type'),
        lowerOrderFinal: key<boolean>(spec, 'lower_order_final'),
        disableCorrector: key<number[]>(spec, 'disable_corrector'),
      }),
  },
  'flow-euler': {
    className: 'FlowMatchEulerDiscreteScheduler', overrides: {}, stochastic: false,
    description: 'Euler for rectified-flow models',
    run: (d, x, s, _spec, o) => sampleFlowEuler(d, x, s, o),
  },
  'flow-heun': {
    className: 'FlowMatchHeunDiscreteScheduler', overrides: {}, stochastic: false,
    description: 'Heun for rectified-flow models',
    run: (d, x, s, _spec, o) => sampleFlowHeun(d, x, s, o),
  },
} satisfies Record<string, NamedSampler>;

export type SamplerName = keyof typeof SAMPLERS;
export const SAMPLER_NAMES = Object.keys(SAMPLERS) as SamplerName[];

/** The entry for `name`, or an error listing the names. */
export function namedSampler(name: string): NamedSampler {
  const entry = (SAMPLERS as Record<string, NamedSampler>)[name];
  if (!entry) {
    throw new RangeError(`unknown sampler '${name}': expected one of ${SAMPLER_NAMES.join(', ')}`);
  }
  return entry;
}

/** The samplers that fit a model whose scheduler spec is `model` (those samplerSpec accepts):
 *  the flow samplers for a flow-matching model, the others for the rest. */
export function samplersFor(model: SchedulerSpec): SamplerName[] {
  return SAMPLER_NAMES.filter((name) => SCHEDULER_FAMILY[namedSampler(name).className] === model.family);
}

/** Keys that describe the trained process, carried over when swapping scheduler classes. */
const PROCESS_KEYS = ['num_train_timesteps', 'beta_start', 'beta_end', 'beta_schedule',
  'trained_betas', 'prediction_type', 'rescale_betas_zero_snr', 'timestep_spacing', 'steps_offset',
  'clip_sample', 'clip_sample_range', 'thresholding', 'dynamic_thresholding_ratio',
  'sample_max_value', 'shift', 'use_dynamic_shifting'];

/**
 * The spec sampler `name` runs with on a model whose scheduler spec is `model`: the process
 * keys and x0 post-processing carry over; when the sampler is the model's own class every key
 * does (DDPM's variance_type, DDIM's set_alpha_to_one), as diffusers' pipelines use a folder's
 * scheduler. Other keys are not carried across classes: a name can mean different things
 * there (variance_type in DDPM and in DPM-Solver).
 */
export function samplerSpec(name: string, model: SchedulerSpec): SchedulerSpec {
  const entry = namedSampler(name);
  const family = SCHEDULER_FAMILY[entry.className];
  if (family !== model.family) {
    throw new RangeError(`sampler '${name}' does not fit a model trained with ` +
      `${model.className} (${family === 'flow' ? 'flow samplers need a flow-matching model'
        : 'use flow-euler or flow-heun'})`);
  }
  const known = SCHEMAS[entry.className];
  const same = model.className === entry.className;
  const json: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(model.config)) {
    if (!k.startsWith('_') && k in known && (same || PROCESS_KEYS.includes(k))) json[k] = v;
  }
  Object.assign(json, entry.overrides);
  return specOf(parseSchedulerConfig(json, { className: entry.className }));
}

export interface SampleOptions extends SamplerOptions {
  /** A name of SAMPLERS. */
  sampler: string;
  steps: number;
  /** Dynamic-shift mu, for flow-matching configs with use_dynamic_shifting. */
  mu?: number;
}

/** The schedule sampler `name` walks in `steps` steps on a model with scheduler spec `model`. */
export function samplerSchedule(
  name: string,
  model: SchedulerSpec,
  steps: number,
  mu?: number,
): Schedule {
  return buildSchedule(samplerSpec(name, model).config, steps, mu === undefined ? {} : { mu });
}

/**
 * Samples from `denoiser` with a named sampler on the process of scheduler spec `model`.
 * `x` is the start state in the process frame: unit normal noise for generation (diffusers'
 * latents before init_noise_sigma; level-frame samplers apply it). Returns the final state.
 */
export async function sample(
  denoiser: Denoiser,
  x: Batch,
  model: SchedulerSpec,
  opts: SampleOptions,
): Promise<Batch> {
  const spec = samplerSpec(opts.sampler, model);
  if (denoiser.prediction !== spec.prediction) {
    throw new TypeError(`sample: the denoiser predicts '${denoiser.prediction}' but the ` +
      `scheduler config expects '${spec.prediction}'`);
  }
  if (!(Number.isInteger(opts.steps) && opts.steps >= 1)) {
    throw new RangeError(`sample: steps must be an integer >= 1, got ${opts.steps}`);
  }
  const schedule = buildSchedule(spec.config, opts.steps,
    opts.mu === undefined ? {} : { mu: opts.mu });
  return namedSampler(opts.sampler).run(denoiser, x, schedule, spec, opts);
}
