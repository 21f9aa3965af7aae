/**
 * @file The samplers by the names users type (`--sampler dpm++2m`): each is a diffusers
 * scheduler class plus the config keys that select its variant, applied on top of a model's
 * own scheduler config (as diffusers' `from_config` swaps schedulers).
 */
import { parseSchedulerConfig, type SchedulerClass } from './diffusers/config.js';
import { schedulerFromConfig, type DiffusersScheduler } from './diffusers/schedulers.js';

export interface NamedSampler {
  className: SchedulerClass;
  overrides: Record<string, unknown>;
  /** Adds noise at each step (so its result depends on the noise stream, not only x_T). */
  stochastic: boolean;
  description: string;
}

export const SAMPLERS = {
  ddpm: { className: 'DDPMScheduler', overrides: {}, stochastic: true,
    description: 'DDPM ancestral sampling (Ho et al. 2020)' },
  ddim: { className: 'DDIMScheduler', overrides: {}, stochastic: false,
    description: 'DDIM, eta 0 (Song et al. 2021)' },
  euler: { className: 'EulerDiscreteScheduler', overrides: {}, stochastic: false,
    description: 'Euler on the PF-ODE (Karras et al. 2022)' },
  'euler-a': { className: 'EulerAncestralDiscreteScheduler', overrides: {}, stochastic: true,
    description: 'Euler ancestral' },
  heun: { className: 'HeunDiscreteScheduler', overrides: {}, stochastic: false,
    description: 'Heun, 2nd order, two model calls per step (Karras et al. 2022)' },
  'dpm++2m': { className: 'DPMSolverMultistepScheduler', overrides: { solver_order: 2 },
    stochastic: false, description: 'DPM-Solver++ 2M (Lu et al. 2022)' },
  'dpm++3m': { className: 'DPMSolverMultistepScheduler', overrides: { solver_order: 3 },
    stochastic: false, description: 'DPM-Solver++ 3M' },
  unipc: { className: 'UniPCMultistepScheduler', overrides: {}, stochastic: false,
    description: 'UniPC bh2 (Zhao et al. 2023)' },
  'flow-euler': { className: 'FlowMatchEulerDiscreteScheduler', overrides: {}, stochastic: false,
    description: 'Euler for rectified-flow models' },
  'flow-heun': { className: 'FlowMatchHeunDiscreteScheduler', overrides: {}, stochastic: false,
    description: 'Heun for rectified-flow models' },
} satisfies Record<string, NamedSampler>;

export type SamplerName = keyof typeof SAMPLERS;
export const SAMPLER_NAMES = Object.keys(SAMPLERS) as SamplerName[];

/** Keys that describe the trained process, carried over when swapping scheduler classes. */
const PROCESS_KEYS = ['num_train_timesteps', 'beta_start', 'beta_end', 'beta_schedule',
  'trained_betas', 'prediction_type', 'rescale_betas_zero_snr', 'timestep_spacing', 'steps_offset',
  'clip_sample', 'clip_sample_range', 'thresholding', 'shift', 'use_dynamic_shifting'];

/** The scheduler for `name`, configured for the process a model was trained with. */
export function namedScheduler(name: string, base: Record<string, unknown>): DiffusersScheduler {
  const entry = (SAMPLERS as Record<string, NamedSampler>)[name];
  if (!entry) {
    throw new RangeError(`unknown sampler '${name}': expected one of ${SAMPLER_NAMES.join(', ')}`);
  }
  const isFlow = entry.className.startsWith('FlowMatch');
  const baseClass = String(base._class_name ?? '');
  if (baseClass && isFlow !== baseClass.startsWith('FlowMatch')) {
    throw new RangeError(`sampler '${name}' does not fit a model trained with ${baseClass} ` +
      `(${isFlow ? 'flow samplers need a flow-matching model' : 'use flow-euler or flow-heun'})`);
  }
  // Only the keys the target class knows, so a DDPM config can drive an Euler scheduler.
  const known = parseSchedulerConfig({}, { className: entry.className });
  const config: Record<string, unknown> = { _class_name: entry.className };
  for (const k of PROCESS_KEYS) if (k in base && k in known) config[k] = base[k];
  Object.assign(config, entry.overrides);
  return schedulerFromConfig(config, { className: entry.className });
}
