/**
 * @file What randomness consumers draw from, passed as an argument (docs/architecture.md, convention 12): RngKey
 * (Philox), RngStream, the torch generator and data/analytic's seededRandom all fit.
 */
export interface RandomSource {
  /** n independent U[0, 1) values. */
  uniform(n: number): Float32Array | Float64Array;
  /** n independent N(0, 1) values. */
  normal(n: number): Float32Array | Float64Array;
}
