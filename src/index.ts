/** @file The `diffuse` package: the engine and the neural-network layer. */
export * from './engine/index.js';
export * as ops from './engine/ops.js';
export * as nn from './nn/index.js';
export { RngKey } from './engine/random/philox.js';
export { TorchGenerator } from './engine/random/torch.js';
