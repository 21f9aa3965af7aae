/**
 * @file A host generator that reproduces torch.randn, torch.rand and Tensor.uniform_ (float32,
 * CPU) bit for bit, so that a seed gives Diffuse the same noise, and so the same images, as
 * diffusers (and the tests the same seeded weights as torch's default init).
 *
 * Reference (PyTorch 1.13, read from source and checked against Debian's python3-torch by
 * test/data/torch-randn.json): aten/src/ATen/core/MT19937RNGEngine.h (the engine),
 * CPUGeneratorImpl.cpp (random, random64, the cached normal), core/TransformationHelper.h and
 * DistributionsHelper.h (uniform_real, normal_distribution), native/cpu/DistributionTemplates.h
 * (normal_kernel, normal_fill, normal_fill_16_AVX2) and native/cpu/avx_mathfun.h (log256_ps,
 * sincos256_ps).
 *
 * What torch does for a float32 tensor of n elements:
 * - rand: one engine word per element, u = (word & (2^24 - 1)) / 2^24.
 * - uniform_(from, to): the same u, then u (to - from) + from in float32 with one rounding.
 * - randn, n >= 16: n such uniforms, then Box-Muller in blocks of 16, pairing element j with
 *   j + 8: u1 = 1 - d[j], u2 = d[j + 8], radius = sqrt(-2 log u1), theta = 2 pi u2,
 *   d[j] = radius cos theta, d[j + 8] = radius sin theta, all in float32. If n % 16 != 0 the
 *   last 16 elements are redone from 16 fresh uniforms, so they overlap the last full block.
 * - randn, n < 16: per element normal_distribution<double>: u1, u2 = 53-bit uniforms from
 *   random64() (two words, the first one high), r = sqrt(-2 log(1 - u2)), theta = 2 pi u1; it
 *   returns r cos theta and keeps r sin theta in the generator for the next such draw (across
 *   calls, until reseeded); the double is then rounded to float32.
 *
 * Machine dependence inside torch: on x86-64 with AVX2 and FMA, torch's default CPU capability
 * there, the n >= 16 transform is normal_fill_16_AVX2, which computes log, sin and cos in float32
 * with Cephes polynomials (avx_mathfun.h), and GCC contracts their multiply-adds into fused
 * multiply-adds. This file reproduces that kernel, FMAs included. Builds that run the generic
 * kernel (ATEN_CPU_CAPABILITY=default, non-x86 CPUs such as Apple silicon) call libm's
 * logf/cosf/sinf instead; their values differ from these in the last bit for about 1.5% of
 * elements (measured against glibc on the same machine).
 */
import { portableLog, portableSinCos2Pi } from './philox.js';

const fr = Math.fround;

// ---------------------------------------------------------------------------------------------
// MT19937 (Matsumoto and Nishimura 1998), seeded like at::mt19937 with the seed's low 32 bits.

const N = 624;
const M = 397;
const MATRIX_A = 0x9908b0df;

class Mt19937 {
  private readonly s = new Uint32Array(N);
  private i = N; // the next state word to temper; N: regenerate first

  constructor(seed32: number) {
    const s = this.s;
    s[0] = seed32;
    for (let j = 1; j < N; j++) {
      const p = s[j - 1]!;
      s[j] = Math.imul(1812433253, p ^ (p >>> 30)) + j;
    }
  }

  private twist(): void {
    const s = this.s;
    const mix = (k: number, next: number): number => {
      const y = (s[k]! & 0x80000000) | (next & 0x7fffffff);
      return (y >>> 1) ^ (next & 1 ? MATRIX_A : 0);
    };
    for (let k = 0; k < N - M; k++) s[k] = s[k + M]! ^ mix(k, s[k + 1]!);
    for (let k = N - M; k < N - 1; k++) s[k] = s[k + M - N]! ^ mix(k, s[k + 1]!);
    s[N - 1] = s[M - 1]! ^ mix(N - 1, s[0]!);
    this.i = 0;
  }

  /** The next 32-bit output (torch's random()). */
  next(): number {
    if (this.i === N) this.twist();
    let y = this.s[this.i++]!;
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  /** A float32 uniform in [0, 1): uniform_real_distribution<float>(0, 1). */
  uniform24(): number {
    return (this.next() & 0xffffff) * 2 ** -24;
  }

  /** A double uniform in [0, 1): the low 53 bits of random64() = (first << 32 | second). */
  uniform53(): number {
    const first = this.next();
    const second = this.next();
    return ((first & 0x1fffff) * 4294967296 + second) * 2 ** -53;
  }
}

// ---------------------------------------------------------------------------------------------
// float32 Box-Muller of normal_fill_16_AVX2, operation by operation.

/** Fused multiply-add in float32: a * b + c rounded once (a, b, c float32). a * b is exact in
 * a double; the sum is rounded to double, then to float, which is wrong only when the double
 * lands exactly halfway between two floats, so that case is decided by the sum's error term. */
function fma32(a: number, b: number, c: number): number {
  const p = a * b;
  const s = p + c;
  const f = fr(s);
  if (f === s) return f;
  const sc = s - p;
  const err = (p - (s - sc)) + (c - sc); // exact: s + err = p + c (Knuth's two-sum)
  if (err === 0) return f;
  const other = 2 * s - f; // the float on the other side of s, if s is halfway
  if (fr(other) !== other) return f;
  return err > 0 ? Math.max(f, other) : Math.min(f, other);
}

// Cephes constants of avx_mathfun.h, as float32.
const SQRTHF = fr(0.707106781186547524);
const LOG_P = [
  7.0376836292e-2, -1.151461031e-1, 1.167699874e-1, -1.2420140846e-1, 1.4249322787e-1,
  -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1,
].map(fr);
const LOG_Q1 = fr(-2.1219444e-4);
const LOG_Q2 = fr(0.693359375);
const FOPI = fr(1.27323954473516); // 4 / pi
const DP1 = fr(-0.78515625); // -pi/4 in three parts
const DP2 = fr(-2.4187564849853515625e-4);
const DP3 = fr(-3.77489497744594108e-8);
const SIN_P = [fr(-1.9515295891e-4), fr(8.3321608736e-3), fr(-1.6666654611e-1)];
const COS_P = [fr(2.443315711809948e-5), fr(-1.388731625493765e-3), fr(4.166664568298827e-2)];
const TWO_PI_F = fr(2 * Math.PI); // _mm256_set1_ps(2.0f * c10::pi<double>)

const f32 = new Float32Array(1);
const f32Bits = new Uint32Array(f32.buffer);

// Where avx_mathfun.h multiplies and then adds the product, GCC (-O2, whose default
// -ffp-contract=fast applies to the intrinsics, and -mfma for this kernel) emits one FMA;
// fma32 marks those places. A product that feeds another product is rounded on its own. With
// these FMAs, 4M values from torch (4 seeds x 2^20) match bit for bit; without them about 1%
// differ in the last bit.

/** log256_ps for one lane, x in [2^-24, 1]: x = m 2^e, m in [sqrt(1/2), sqrt(2)), then a
 * degree-9 polynomial in m - 1. */
function cephesLogf(x: number): number {
  f32[0] = x;
  const bits = f32Bits[0]!;
  let e = (bits >>> 23) - 126; // float exponent + 1: m below is in [0.5, 1)
  f32Bits[0] = (bits & 0x807fffff) | 0x3f000000;
  const m = f32[0]!;
  let t: number;
  if (m < SQRTHF) {
    e -= 1;
    t = fr(fr(m - 1) + m);
  } else {
    t = fr(m - 1);
  }
  const z = fr(t * t);
  let y = LOG_P[0]!;
  for (let k = 1; k < 9; k++) y = fma32(y, t, LOG_P[k]!);
  y = fr(y * t);
  // y * z + e * q1: GCC fuses the first product in source order (y * z); fusing e * q1
  // instead misses about 190 of 1M torch values.
  y = fma32(y, z, fr(e * LOG_Q1));
  y = fr(y - fr(z * 0.5));
  return fr(fr(t + y) + fr(e * LOG_Q2));
}

let sinOut = 0;
let cosOut = 0;

/** sincos256_ps for one lane, x in [0, 2 pi): octant j (even), Cody-Waite reduction by pi/4
 * in three parts, then the Cephes sine and cosine polynomials; sets sinOut and cosOut. */
function cephesSinCosf(x: number): void {
  const j = (Math.trunc(fr(x * FOPI)) + 1) & ~1;
  const y = j;
  x = fma32(y, DP1, x);
  x = fma32(y, DP2, x);
  x = fma32(y, DP3, x);
  const z = fr(x * x);
  let c = fma32(COS_P[0]!, z, COS_P[1]!);
  c = fma32(c, z, COS_P[2]!);
  c = fr(c * z);
  c = fma32(c, z, -fr(z * 0.5));
  c = fr(c + 1);
  let s = fma32(SIN_P[0]!, z, SIN_P[1]!);
  s = fma32(s, z, SIN_P[2]!);
  s = fr(s * z);
  s = fma32(s, x, x);
  const swap = (j & 2) !== 0; // j = 2 or 6 (mod 8), near pi/2 or 3 pi/2: swap polynomials
  sinOut = (j & 4) !== 0 ? -(swap ? c : s) : swap ? c : s;
  cosOut = ((j - 2) & 4) === 0 ? -(swap ? s : c) : swap ? s : c;
}

/** Box-Muller on d[o .. o + 16): the 8 pairs (j, j + 8), as normal_fill_16_AVX2. Its final
 * fused multiply-add by std = 1 and mean = 0 only turns -0 into +0: hence the `+ 0`. */
function fill16(d: Float32Array, o: number): void {
  for (let j = o; j < o + 8; j++) {
    const radius = fr(Math.sqrt(fr(-2 * cephesLogf(fr(1 - d[j]!)))));
    cephesSinCosf(fr(TWO_PI_F * d[j + 8]!));
    d[j] = radius * cosOut + 0;
    d[j + 8] = radius * sinOut + 0;
  }
}

// ---------------------------------------------------------------------------------------------

function numel(op: string, shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) {
      throw new RangeError(`TorchGenerator.${op}: bad shape [${shape.join(', ')}]`);
    }
    n *= d;
  }
  if (n > 2 ** 31 - 1) {
    throw new RangeError(`TorchGenerator.${op}: shape [${shape.join(', ')}] is too large`);
  }
  return n;
}

/**
 * torch.Generator() on the CPU, seeded: `new TorchGenerator(seed)` draws what
 * `torch.Generator().manual_seed(seed)` draws. Stateful like torch's: successive calls continue
 * the same MT19937 stream. (For Diffuse's own noise, prefer the immutable keys of philox.ts.)
 */
export class TorchGenerator {
  private readonly mt: Mt19937;
  /** torch's next_double_normal_sample: the sine half of the last scalar Box-Muller pair. */
  private nextNormal: number | null = null;

  /** seed: an integer in [-2^63, 2^64), as manual_seed accepts; MT19937 uses its low 32 bits. */
  constructor(seed: number | bigint) {
    const big = typeof seed === 'bigint' ? seed : Number.isSafeInteger(seed) ? BigInt(seed) : null;
    if (big === null || big < -(2n ** 63n) || big >= 2n ** 64n) {
      throw new RangeError(
        `TorchGenerator: seed must be an integer in [-2^63, 2^64), got ${seed}`,
      );
    }
    this.mt = new Mt19937(Number(BigInt.asUintN(32, big)));
  }

  /** torch.randn(shape, generator=g) for float32 on the CPU. */
  randn(shape: readonly number[]): Float32Array {
    const n = numel('randn', shape);
    const d = new Float32Array(n);
    if (n < 16) {
      for (let i = 0; i < n; i++) d[i] = this.scalarNormal();
      return d;
    }
    for (let i = 0; i < n; i++) d[i] = this.mt.uniform24();
    for (let o = 0; o + 16 <= n; o += 16) fill16(d, o);
    if (n % 16 !== 0) {
      for (let i = n - 16; i < n; i++) d[i] = this.mt.uniform24();
      fill16(d, n - 16);
    }
    return d;
  }

  /** torch.rand(shape, generator=g) for float32 on the CPU. */
  rand(shape: readonly number[]): Float32Array {
    const n = numel('rand', shape);
    const d = new Float32Array(n);
    for (let i = 0; i < n; i++) d[i] = this.mt.uniform24();
    return d;
  }

  /**
   * `tensor.uniform_(from, to)` for a float32 tensor on the CPU (what nn.init's uniform_ and
   * kaiming_uniform_ call): per element one engine word w, x = (w & (2^24 - 1)) 2^-24, then
   * x (to - from) + from with from and to first rounded to float32 (uniform_kernel), in float32
   * arithmetic (dist_acctype<float> is float in TransformationHelper.h) where GCC fuses the
   * multiply-add, as in the AVX2 kernel above: rounding the product first misses about half of
   * torch's values. Checked through nn.init against 7.5M weights of the golden models
   * (test/support/torch-init.test.ts); a double multiply-add rounded to float32 would match
   * them too (it differs from the FMA only at exact float32 halfway points).
   */
  uniform(shape: readonly number[], from: number, to: number): Float32Array {
    const n = numel('uniform', shape);
    const lo = fr(from);
    const range = fr(fr(to) - lo);
    const d = new Float32Array(n);
    for (let i = 0; i < n; i++) d[i] = fma32(this.mt.uniform24(), range, lo);
    return d;
  }

  /** at::normal_distribution<double>(0, 1) with the generator's cached second value. Its
   * log, sin and cos are glibc's in torch; ours are portable (error ~1e-16), which changes the
   * float32 result only when a double lands within ~1e-16 of a float32 rounding boundary. */
  private scalarNormal(): number {
    if (this.nextNormal !== null) {
      const z = this.nextNormal;
      this.nextNormal = null;
      return z + 0; // transformation::normal: z * std + mean, which also makes -0 into +0
    }
    const u1 = this.mt.uniform53();
    const u2 = this.mt.uniform53();
    // 1 - u2 is exact for a 53-bit u2, so log(1 - u2) here equals the log1p(-u2) of newer torch.
    const r = Math.sqrt(-2 * portableLog(1 - u2));
    portableSinCos2Pi(u1, scratch);
    this.nextNormal = r * scratch[0]!;
    return r * scratch[1]! + 0;
  }
}

const scratch = new Float64Array(2);
