/**
 * @file `diffuse`: the engine (tensors, ops, tracing, grad, ONNX, the ORT runtime and its
 * providers, host arrays, seeded randomness) and, as the namespace `nn`, the neural-network
 * layer. The other layers have their own entry points: diffuse/nn, diffuse/models,
 * diffuse/diffusion, diffuse/data, diffuse/io, diffuse/pipelines (docs/api.md).
 */
export * from './engine/index.js';
export * as ops from './engine/ops.js';
export * as nn from './nn/index.js';
export { RngKey } from './engine/random/philox.js';
export { RngStream } from './engine/random/stream.js';
export { TorchGenerator } from './engine/random/torch.js';
export type { RandomSource } from './engine/random/source.js';
