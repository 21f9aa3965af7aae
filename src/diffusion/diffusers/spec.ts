/**
 * @file A diffusers `scheduler_config.json` as one typed, immutable value, made once when a
 * folder is loaded (docs/architecture.md, convention 10): the validated config (diffusers' key names and defaults), the
 * trained process family and prediction type, the x0 post-processing it asks for, and the keys
 * it ignored. Pipelines carry this value; nothing downstream parses the JSON again or guesses
 * the process from a class name.
 */
import { DIFFUSERS_PREDICTION, type Prediction } from '../predictions.js';
import type { X0Options } from '../samplers/common.js';
import {
  configToJson,
  parseSchedulerConfig,
  type ParseOptions,
  type SchedulerClass,
  type SchedulerConfig,
} from './config.js';

/** What a scheduler class's model was trained on: a DDPM-style VP table, or rectified flow. */
export type SchedulerFamily = 'vp' | 'flow';

export const SCHEDULER_FAMILY: Readonly<Record<SchedulerClass, SchedulerFamily>> = {
  DDPMScheduler: 'vp',
  DDIMScheduler: 'vp',
  EulerDiscreteScheduler: 'vp',
  EulerAncestralDiscreteScheduler: 'vp',
  HeunDiscreteScheduler: 'vp',
  DPMSolverMultistepScheduler: 'vp',
  UniPCMultistepScheduler: 'vp',
  FlowMatchEulerDiscreteScheduler: 'flow',
  FlowMatchHeunDiscreteScheduler: 'flow',
};

export interface SchedulerSpec {
  readonly className: SchedulerClass;
  readonly family: SchedulerFamily;
  /** What the model predicts (FlowMatch configs have no prediction_type: always 'flow'). */
  readonly prediction: Prediction;
  /** clip_sample / thresholding as the class applies them to its x0 estimate. */
  readonly x0: X0Options;
  /** Every key of the class, parsed, with diffusers' names and defaults. */
  readonly config: SchedulerConfig;
  /** Keys of the JSON the class does not know (diffusers ignores them too). */
  readonly ignoredKeys: readonly string[];
}

/** The x0 post-processing a parsed config asks for (only where the class has the keys). */
function x0OptionsOf(c: SchedulerConfig): X0Options {
  return Object.freeze({
    clipSample: c['clip_sample'] === true ? (c['clip_sample_range'] as number) : null,
    thresholding:
      c['thresholding'] === true
        ? {
            ratio: c['dynamic_thresholding_ratio'] as number,
            maxValue: c['sample_max_value'] as number,
          }
        : null,
  });
}

/** The spec of an already parsed config. */
export function specOf(config: SchedulerConfig, ignoredKeys: readonly string[] = []): SchedulerSpec {
  const family = SCHEDULER_FAMILY[config._class_name];
  const type = family === 'flow' ? 'flow_prediction' : (config['prediction_type'] as string);
  return Object.freeze({
    className: config._class_name,
    family,
    prediction: DIFFUSERS_PREDICTION[type]!,
    x0: x0OptionsOf(config),
    config,
    ignoredKeys: Object.freeze([...ignoredKeys]),
  });
}

/**
 * Parses the contents of a scheduler_config.json (throws a ConfigError naming the key, value
 * and allowed set). Unknown keys are collected in `ignoredKeys`, not printed.
 */
export function parseScheduler(
  json: Record<string, unknown>,
  opts: Omit<ParseOptions, 'warn'> = {},
): SchedulerSpec {
  const ignored: string[] = [];
  const config = parseSchedulerConfig(json, {
    ...opts,
    warn: (m) => ignored.push(/'([^']+)'/.exec(m)?.[1] ?? m),
  });
  return specOf(config, ignored);
}

/** The JSON diffusers would write for this spec (`save_config`). */
export function specToJson(spec: SchedulerSpec): Record<string, unknown> {
  return configToJson(spec.config);
}
