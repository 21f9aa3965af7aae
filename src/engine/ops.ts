/**
 * @file The public ops over symbolic tensors. Each normalises its arguments and binds a
 * primitive, or composes others (docs/architecture.md, convention 6); user code never sees the table.
 */
export * from './ops/creation.js';
export * from './ops/elementwise.js';
export * from './ops/reduce.js';
export * from './ops/movement.js';
export * from './ops/linalg.js';
