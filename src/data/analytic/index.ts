/** @file Analytic datasets with exact denoisers (Gaussian mixtures), 2-D toys, and metrics. */
export * from './random.js';
export * from './linalg.js';
export * from './mixture.js';
export * from './metrics.js';
export * from './toy2d.js';
