/**
 * @file `diffuse/nn`: neural-network building blocks. Modules and their parameter trees,
 * layers, attention, initialisers, optimizers, LR schedules, EMA, state dicts, and
 * `compileTrainStep` (a whole training step as one graph).
 */
export { Module, Param, stateDict, type Initializer, type ParamsOf } from './module.js';
export * as init from './init.js';
export {
  Conv2d, Embedding, GroupNorm, LayerNorm, Linear, type Conv2dOptions,
} from './layers.js';
export {
  MultiHeadAttention, scaledDotProductAttention, type AttentionOptions,
} from './attention.js';
export {
  adamw, clipGradNorm, globalNorm, sgd, type AdamWOptions, type Optimizer, type SgdOptions,
} from './optim.js';
export { constantLr, cosineLr, warmupLr, type LrSchedule } from './schedules.js';
export { emaDecay, emaUpdate, type EmaOptions } from './ema.js';
export {
  compileTrainStep, type StepMetrics, type TrainState, type TrainStep, type TrainStepOptions,
} from './train.js';
export { loadStateDict, StateDictError, type LoadOptions } from './state.js';
export {
  applyLora, loraInit, loraParameterCount, loraScale, mergeLoraHost, type LoraFactors,
  type LoraOptions, type LoraTree,
} from './lora.js';
export type { Reparameterisation } from './reparam.js';
