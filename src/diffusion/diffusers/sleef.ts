/**
 * @file torch 1.13's float32 exp, log and expm1 on x86 CPUs: SLEEF 3.5.1's 1-ulp vector kernels
 * (`Sleef_expf8_u10`, `Sleef_logf8_u10`, `Sleef_expm1f8_u10`, AVX2 with FMA), reproduced
 * operation by operation so DPM-Solver's and UniPC's lambda = log(alpha) - log(sigma) and
 * e^{-h} match diffusers bit for bit. They are within 1 ulp of the true value but not always
 * correctly rounded, which is why Math.exp rounded to float32 is not enough (it differs on
 * about 1 input in 10 for exp). Algorithms: SLEEF src/libm/sleefsimdsp.c (xexpf, xlogf_u1,
 * expk2f / xexpm1f) and df.h (double-float arithmetic, FMA variants). Checked against torch
 * 1.13.1 in sleef.test.ts.
 */
import { fmaF32 } from './numerics.js';

const f = Math.fround;
const fma = fmaF32;
/** x * y - z, fused. */
const fms = (x: number, y: number, z: number): number => fmaF32(x, y, -z);

const R_LN2 = f(1.442695040888963407359924681001892137426645954152985934135449406931);
const L2U = f(0.693145751953125);
const L2L = f(1.428606765330187045e-6);

/** A double-float: value x + y with |y| <= ulp(x) / 2. */
type DF = [number, number];

function rint(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** 2^e as a float32 (e in the normal range). */
const pow2i = (e: number): number => 2 ** e;

/** vldexp2: d * 2^(q >> 1) * 2^(q - (q >> 1)), two float32 products. */
const ldexp2 = (d: number, q: number): number => f(f(d * pow2i(q >> 1)) * pow2i(q - (q >> 1)));

const dfadd2_ff = (x: number, y: number): DF => {
  const s = f(x + y);
  const v = f(s - x);
  return [s, f(f(x - f(s - v)) + f(y - v))];
};
const dfadd2_df_f = (x: DF, y: number): DF => {
  const s = f(x[0] + y);
  const v = f(s - x[0]);
  const t = f(f(x[0] - f(s - v)) + f(y - v));
  return [s, f(t + x[1])];
};
const dfadd2_df_df = (x: DF, y: DF): DF => {
  const s = f(x[0] + y[0]);
  const v = f(s - x[0]);
  const t = f(f(x[0] - f(s - v)) + f(y[0] - v));
  return [s, f(t + f(x[1] + y[1]))];
};
const dfadd_f_df = (x: number, y: DF): DF => {
  const s = f(x + y[0]);
  return [s, f(f(f(x - s) + y[0]) + y[1])];
};
const dfadd_df_df = (x: DF, y: DF): DF => {
  const s = f(x[0] + y[0]);
  return [s, f(f(f(f(x[0] - s) + y[0]) + x[1]) + y[1])];
};
const dfadd_df_f = (x: DF, y: number): DF => {
  const s = f(x[0] + y);
  return [s, f(f(f(x[0] - s) + y) + x[1])];
};
const dfmul_df_f = (x: DF, y: number): DF => {
  const s = f(x[0] * y);
  return [s, fma(x[1], y, fms(x[0], y, s))];
};
const dfmul_df_df = (x: DF, y: DF): DF => {
  const s = f(x[0] * y[0]);
  return [s, fma(x[0], y[1], fma(x[1], y[0], fms(x[0], y[0], s)))];
};
const dfsqu = (x: DF): DF => {
  const s = f(x[0] * x[0]);
  return [s, fma(f(x[0] + x[0]), x[1], fms(x[0], x[0], s))];
};
const dfdiv = (n: DF, d: DF): DF => {
  const t = f(1 / d[0]);
  const s = f(n[0] * t);
  const u = fms(t, n[0], s);
  const v = fma(-d[1], t, fma(-d[0], t, 1));
  return [s, fma(s, v, fma(n[1], t, u))];
};

/** Sleef_expf8_u10 (xexpf). */
export function sleefExpF32(d: number): number {
  d = f(d);
  if (Number.isNaN(d)) return NaN;
  const q = rint(f(d * R_LN2));
  let s = fma(q, -L2U, d);
  s = fma(q, -L2L, s);
  let u = f(0.000198527617612853646278381);
  u = fma(u, s, f(0.00139304355252534151077271));
  u = fma(u, s, f(0.00833336077630519866943359));
  u = fma(u, s, f(0.0416664853692054748535156));
  u = fma(u, s, f(0.166666671633720397949219));
  u = fma(u, s, 0.5);
  u = f(1 + fma(f(s * s), u, s));
  u = ldexp2(u, q);
  if (d < -104) return 0;
  if (d > 100) return Infinity;
  return u;
}

/** Sleef_logf8_u10 (xlogf_u1, the non-AVX512 path). */
export function sleefLogF32(d: number): number {
  d = f(d);
  if (Number.isNaN(d) || d < 0) return NaN;
  if (d === 0) return -Infinity;
  if (d === Infinity) return Infinity;
  const tiny = d < 1.1754943508222875e-38;
  if (tiny) d = f(d * 2 ** 64);
  const scaled = f(d * f(1 / 0.75));
  let e = Math.floor(Math.log2(scaled));
  if (2 ** e > scaled)
    e -= 1; // exact exponent field of a normal float32
  else if (2 ** (e + 1) <= scaled) e += 1;
  const m = d * 2 ** -e;
  if (tiny) e -= 64;
  let s = dfmul_df_f([f(0.69314718246459960938), f(-1.904654323148236017e-9)], e);
  const x = dfdiv(dfadd2_ff(-1, m), dfadd2_ff(1, m));
  const x2 = f(x[0] * x[0]);
  let t = f(0.3027294874);
  t = fma(t, x2, f(0.3996108174));
  t = fma(t, x2, f(0.666669488));
  s = dfadd_df_df(s, [f(x[0] * 2), f(x[1] * 2)]);
  s = dfadd_df_f(s, f(f(x2 * x[0]) * t));
  return f(s[0] + s[1]);
}

/** SLEEF expk2f: e^d for a double-float d, as a double-float. */
function expk2(d: DF): DF {
  const u0 = f(f(d[0] + d[1]) * R_LN2);
  const q = rint(u0);
  let s = dfadd2_df_f(d, f(q * -L2U));
  s = dfadd2_df_f(s, f(q * -L2L));
  let u = f(0.1980960224e-3);
  u = fma(u, s[0], f(0.1394256484e-2));
  u = fma(u, s[0], f(0.8333456703e-2));
  u = fma(u, s[0], f(0.4166637361e-1));
  let t = dfadd2_df_f(dfmul_df_f(s, u), f(0.166666659414234244790680580464));
  t = dfadd2_df_f(dfmul_df_df(s, t), 0.5);
  t = dfadd2_df_df(s, dfmul_df_df(dfsqu(s), t));
  t = dfadd_f_df(1, t);
  if (d[0] < -104) return [0, 0];
  return [ldexp2(t[0], q), ldexp2(t[1], q)];
}

/** Sleef_expm1f8_u10 (xexpm1f). */
export function sleefExpm1F32(a: number): number {
  a = f(a);
  if (Number.isNaN(a)) return NaN;
  if (a > 88.72283172607421875) return Infinity;
  if (a < -16.63553233343868742601357) return -1;
  if (Object.is(a, -0)) return -0;
  const d = dfadd2_df_f(expk2([a, 0]), -1);
  return f(d[0] + d[1]);
}
