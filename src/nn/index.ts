/** @file Neural-network building blocks: modules, layers, attention, optimizers, training. */
export { Module, Param, stateDict, type Initializer, type ParamsOf } from './module.js';
export * as init from './init.js';
export { Linear, Conv2d, GroupNorm, LayerNorm, Embedding, type Conv2dOptions } from './layers.js';
export { MultiHeadAttention, scaledDotProductAttention, type AttentionOptions } from './attention.js';
export { sgd, adamw, clipGradNorm, globalNorm, type Optimizer, type AdamWOptions, type SgdOptions } from './optim.js';
export { constantLr, warmupLr, cosineLr, type LrSchedule } from './schedules.js';
export { emaDecay, emaUpdate, type EmaOptions } from './ema.js';
export { compileTrainStep, type TrainState, type TrainStep, type TrainStepOptions, type StepMetrics } from './train.js';
export { loadStateDict, StateDictError, type LoadOptions } from './state.js';
