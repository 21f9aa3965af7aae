/**
 * @file Diffusion on the host: processes, prediction conversions, training targets, samplers
 * over a Denoiser, guidance, and the diffusers scheduler adapter (docs/architecture.md).
 */
export * from './arith.js';
export * from './denoiser.js';
export * from './predictions.js';
export * from './process.js';
export * from './schedule.js';
export * from './training.js';
export * from './guidance.js';
export { postprocessX0, type X0Options } from './samplers/common.js';
export * from './samplers/ddpm.js';
export * from './samplers/ddim.js';
export * from './samplers/euler.js';
export * from './samplers/heun.js';
export * from './samplers/dpm.js';
export * from './samplers/unipc.js';
export * from './samplers/flow.js';
export * from './diffusers/config.js';
export * from './diffusers/tables.js';
export * from './diffusers/schedulers.js';
export {
  maxUlp,
  replay,
  type RecordedLoop,
  type RecordedStep,
  type ReplayReport,
} from './diffusers/replay.js';
export * from './sampling.js';
export * from './diffusers/spec.js';
export * from './gradient-guidance.js';
