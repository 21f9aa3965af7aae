/**
 * @file Host arithmetic for samplers: float32 arrays round like torch float32 tensors,
 * float64 arrays compute in full double precision.
 *
 * Matching diffusers bit for bit means rounding to float32 after every operation that torch
 * performs on a float32 tensor (a product of two float32 numbers is exact in a double, and
 * rounding a double sum, product, quotient or square root of float32 operands to float32 gives
 * the correctly rounded float32 result). So each kernel writes `r(a * b)` where torch has one op.
 * The same kernels run on Float64Array with `r` the identity: that is how the order-of-accuracy
 * tests solve the probability-flow ODE without float32 noise.
 */

import { sleefExpF32, sleefExpm1F32, sleefLogF32 } from './diffusers/sleef.js';

export type FloatArray = Float32Array | Float64Array;

/** Rounds one intermediate result to the working precision. */
export type Round = (x: number) => number;

const identity: Round = (x) => x;

/** Math.fround for float32 data, the identity for float64 data. */
export function roundOf(a: FloatArray): Round {
  return a instanceof Float32Array ? Math.fround : identity;
}

/** A zeroed array of the same precision as `a`, of length `n` (default: a's length). */
export function zerosLike(a: FloatArray, n: number = a.length): FloatArray {
  return a instanceof Float32Array ? new Float32Array(n) : new Float64Array(n);
}

/** `a` converted to the precision of `like` (no copy when it already is). */
export function asPrecisionOf(a: FloatArray, like: FloatArray): FloatArray {
  if (like instanceof Float32Array) return a instanceof Float32Array ? a : Float32Array.from(a);
  return a instanceof Float64Array ? a : Float64Array.from(a);
}

/**
 * Transcendental functions at a working precision. For float32, torch 1.13 on x86 computes
 * exp / log / expm1 with SLEEF's 1-ulp vector kernels, which are not always correctly rounded;
 * diffusers/sleef.ts reproduces them.
 */
export interface Transcendentals {
  exp(x: number): number;
  log(x: number): number;
  expm1(x: number): number;
}

const float64Math: Transcendentals = { exp: Math.exp, log: Math.log, expm1: Math.expm1 };

const float32Math: Transcendentals = { exp: sleefExpF32, log: sleefLogF32, expm1: sleefExpm1F32 };

export function mathOf(a: FloatArray): Transcendentals {
  return a instanceof Float32Array ? float32Math : float64Math;
}
