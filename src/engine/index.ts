/** @file The engine's public surface: tensors, ops, tracing, grad, ONNX, runtime, RNG. */
export { Tensor, isTensor } from './tensor.js';
export * from './ops.js';
export { HostArray, isHostArray, numel, type Nested } from './host.js';
export type { DType } from './dtype.js';
export { ShapeError, type Dim, type Shape } from './shape.js';
export { trace, printGraph, toposort, type Graph, type TensorSpec } from './trace.js';
export { grad, valueAndGrad, vjp, backward, type GradOptions } from './autodiff.js';
export { toOnnx, OPSET } from './onnx.js';
export { countFlops } from './flops.js';
export { compile, exportOnnx, createSession, RuntimeError, setDefaultThreads, type Compiled, type Provider,
  type RuntimeOptions } from './runtime.js';
export { flatten, unflatten, mapTree, type Tree, type TreeDef } from './tree.js';
