/**
 * @file `diffuse/diffusion`: diffusion on the host. Processes, prediction conversions,
 * training targets and weightings, schedules, the samplers over a Denoiser and the one sampling
 * path by name (`sample`), diffusers' scheduler configs (`parseScheduler`) and the set-then-step
 * adapter classes, and guidance (docs/architecture.md, "The diffusion module map").
 *
 * Listed name by name: the step functions the samplers and the adapters share (ddimStep,
 * heunFirst, uniPredictor, ...), the float32 arithmetic helpers (arith.ts, numerics.ts) and the
 * diffusers schedule tables other than `trainTables` stay internal; `samplerSchedule` gives a
 * sampler's schedule for a config.
 */

// ---- the model as samplers see it ----
export type { FloatArray } from './arith.js';
export {
  inBatches, withData, type Batch, type Denoiser, type NoiseSource, type SamplerOptions, type StepRecord,
} from './denoiser.js';

// ---- processes, predictions, schedules ----
export {
  alphasCumprod, BETA_SCHEDULES, coefficientsAtLevel, cosineBetas, cosineVp, discreteVp,
  dynamicShiftFlow, makeBetas, rectifiedFlow, rescaleZeroTerminalSnr, shiftFlow, veProcess,
  type BetaOptions, type BetaSchedule, type Coefficients, type Process, type ProcessKind,
} from './process.js';
export {
  convertPrediction, DIFFUSERS_PREDICTION, DIFFUSERS_PREDICTION_TYPE, epsFromScore, fromX0Eps,
  pfOdeDrift, PREDICTIONS, scoreFromEps, toEps, toX0, type Prediction,
} from './predictions.js';
export {
  karrasLevels, makeSchedule, scheduleFromLevels, scheduleFromTimes, startScale, uniformTimes,
  type Schedule,
} from './schedule.js';

// ---- training ----
export {
  lossWeight, lossWeights, noisySample, pointsAt, sampleTimesteps, trainingPoints,
  trainingScheduler, trainingTarget, type TimestepSampling, type TrainingPoints, type Weighting,
} from './training.js';

// ---- samplers: by name over a scheduler spec, or each function over a Schedule ----
export {
  namedSampler, sample, SAMPLER_NAMES, samplerSchedule, SAMPLERS, samplersFor, samplerSpec,
  type NamedSampler, type SampleOptions, type SamplerName,
} from './sampling.js';
export { postprocessX0, type X0Options } from './samplers/common.js';
export { sampleDdpm, type DdpmOptions, type DdpmVariance } from './samplers/ddpm.js';
export { invertDdim, sampleDdim, type DdimOptions } from './samplers/ddim.js';
export {
  sampleEuler, sampleEulerAncestral, type ChurnOptions, type EulerAncestralOptions,
  type EulerOptions,
} from './samplers/euler.js';
export { sampleHeun, type HeunOptions } from './samplers/heun.js';
export { sampleDpmSolverPP, type DpmSolverOptions, type DpmSolverType } from './samplers/dpm.js';
export { sampleUniPc, type UniPcOptions, type UniPcSolverType } from './samplers/unipc.js';
export { sampleFlowEuler, sampleFlowHeun } from './samplers/flow.js';

// ---- diffusers: scheduler_config.json, and the set-then-step adapter classes ----
// ConfigError here is the scheduler-config error (key, value, expected); diffuse/models has
// its own ConfigError for model configs. Both have name 'ConfigError'.
export {
  ConfigError, configToJson, parseSchedulerConfig, SCHEDULER_CLASSES, type ParseOptions,
  type SchedulerClass, type SchedulerConfig,
} from './diffusers/config.js';
export {
  parseScheduler, SCHEDULER_FAMILY, specOf, specToJson, type SchedulerFamily,
  type SchedulerSpec,
} from './diffusers/spec.js';
export { trainTables } from './diffusers/tables.js';
export {
  DDIMScheduler, DDPMScheduler, DiffusersScheduler, DPMSolverMultistepScheduler,
  EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler,
  FlowMatchHeunDiscreteScheduler, HeunDiscreteScheduler, schedulerFromConfig,
  UniPCMultistepScheduler, type AdapterOptions, type SchedulerCtor, type StepOptions,
  type StepOutput,
} from './diffusers/schedulers.js';
export {
  maxUlp, replay, type RecordedLoop, type RecordedStep, type ReplayReport,
} from './diffusers/replay.js';

// ---- guidance ----
export {
  classifierFreeGuidance, concatConditions, withGuidance, type CfgOptions, type GuidanceFn,
} from './guidance.js';
export {
  classifierGuidance, energyGuidance, tracedDenoiser, x0FromPrediction,
  type ClassifierGuidanceOptions, type EnergyGuidanceOptions, type GuidanceScale,
  type Releasable, type TracedModel,
} from './gradient-guidance.js';
