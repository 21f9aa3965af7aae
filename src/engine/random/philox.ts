/**
 * @file Philox-4x32-10, the project's default seeded random number generator, with keys that
 * split and fold like JAX's.
 *
 * Reference: J. K. Salmon, M. A. Moraes, R. O. Dror, D. E. Shaw, "Parallel random numbers: as
 * easy as 1, 2, 3", SC11 (2011); constants and known-answer vectors as in Random123.
 * Why: a counter-based generator needs no hidden state, so every stochastic function can take its
 * noise as an argument (docs/architecture.md, convention 12) and a run can be replayed from a key.
 *
 * Purity: a key's draws are a pure function of the key. Calling `normal(8)` twice on one key
 * gives the same eight numbers; to get fresh numbers, derive new keys with `split` (n children)
 * or `fold` (one child per integer, e.g. a step index). All draw methods read the same word
 * stream (counter blocks 0, 1, 2, ... of `bits`), so `uniform(n)` and `normal(n)` on one key are
 * correlated: never use one key for two things. A shorter draw is a prefix of a longer one:
 * `uniform(3)` equals the first three values of `uniform(10)`; the same holds for every method
 * except `permutation`.
 *
 * Platform independence: the integer path is exact 32-bit arithmetic (the low half of a 32x32
 * product from Math.imul, the high half from it and the double product, see `mulhi32`; the
 * tests check it against BigInt). Floats use only IEEE +, -, *, /, Math.sqrt and Math.fround,
 * which are correctly rounded everywhere. Math.log, Math.cos and Math.sin are deterministic for
 * one Node build, but ECMAScript leaves their accuracy to the implementation (V8 ships its own,
 * which may change with a V8 update), so `normal` uses `portableLog` and `portableSinCos2Pi`
 * below (double precision, relative error ~2e-16) instead, and its draws are the same on every
 * machine and Node version. No BigInt on any path.
 */

// Round multipliers and Weyl key increments (golden ratio and sqrt(3) - 1), from Random123.
const M0 = 0xd2511f53;
const M1 = 0xcd9e8d57;
const W0 = 0x9e3779b9;
const W1 = 0xbb67ae85;
const ROUNDS = 10;

// Word 2 of the counter separates the uses of one key: draws, split children, fold children.
const DOMAIN_DRAW = 0;
const DOMAIN_SPLIT = 1;
const DOMAIN_FOLD = 2;

const TWO_POW_32 = 4294967296;
const TWO_POW_M24 = 2 ** -24;
const TWO_POW_M32 = 2 ** -32;

/**
 * The high 32 bits of the 64-bit product of two uint32, exactly, given its exact low 32 bits
 * `lo` (from Math.imul). The double a * b is within 2^10 of the true product P (P < 2^64), and
 * subtracting lo rounds by at most 2^10 more, so (a * b - lo) / 2^32 is within 2^-21 of the
 * integer (P - lo) / 2^32: rounding it to the nearest integer gives the high word exactly.
 */
function mulhi32(a: number, b: number, lo: number): number {
  return Math.round((a * b - lo) * TWO_POW_M32);
}

/** One Philox-4x32-10 block: writes the four output words for counter c and key k at out[o]. */
function philoxInto(
  c0: number, c1: number, c2: number, c3: number,
  k0: number, k1: number,
  out: Uint32Array, o: number,
): void {
  for (let r = 0; r < ROUNDS; r++) {
    const lo0 = Math.imul(M0, c0) >>> 0;
    const hi0 = mulhi32(M0, c0, lo0);
    const lo1 = Math.imul(M1, c2) >>> 0;
    const hi1 = mulhi32(M1, c2, lo1);
    c0 = (hi1 ^ c1 ^ k0) >>> 0;
    c1 = lo1;
    c2 = (hi0 ^ c3 ^ k1) >>> 0;
    c3 = lo0;
    k0 = (k0 + W0) >>> 0; // the key schedule: bumped between rounds
    k1 = (k1 + W1) >>> 0;
  }
  out[o] = c0;
  out[o + 1] = c1;
  out[o + 2] = c2;
  out[o + 3] = c3;
}

/** Philox-4x32-10 of one counter (4 words) under one key (2 words), as in Random123. */
export function philox4x32(counter: Uint32Array, key: Uint32Array): Uint32Array {
  if (counter.length !== 4 || key.length !== 2) {
    throw new RangeError(
      `philox4x32: counter must have 4 words and key 2, got ${counter.length} and ${key.length}`,
    );
  }
  const out = new Uint32Array(4);
  philoxInto(counter[0]!, counter[1]!, counter[2]!, counter[3]!, key[0]!, key[1]!, out, 0);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Portable double-precision log and sincos (no libm): used for Box-Muller here and in torch.ts.

const f64 = new Float64Array(1);
const f64Words = new Uint32Array(f64.buffer);
/** Index of the word holding sign and exponent (1 on little-endian machines). */
const HI = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1 ? 1 : 0;
/** POW2_NEG[e + 1023] = 2^-e for e in [-1023, 1023], built exactly by halving and doubling. */
const POW2_NEG = new Float64Array(2047);
for (let e = 0, p = 1; e <= 1023; e++, p *= 0.5) POW2_NEG[e + 1023] = p;
for (let e = 0, p = 1; e <= 1023; e++, p *= 2) POW2_NEG[1023 - e] = p;
// ln 2 split so that e * LN2_HI is exact for |e| < 2^11 (the low 32 bits of LN2_HI are zero).
const LN2_HI = 6.93147180369123816490e-1;
const LN2_LO = 1.90821492927058770002e-10;
// Series coefficients, exact rationals rounded once: 1/(2k+1) for atanh, 1/k! for sin and cos.
const A3 = 1 / 3, A5 = 1 / 5, A7 = 1 / 7, A9 = 1 / 9, A11 = 1 / 11, A13 = 1 / 13;
const A15 = 1 / 15, A17 = 1 / 17, A19 = 1 / 19, A21 = 1 / 21;
const F3 = 1 / 6, F5 = 1 / 120, F7 = 1 / 5040, F9 = 1 / 362880, F11 = 1 / 39916800;
const F13 = 1 / 6227020800, F15 = 1 / 1307674368000, F17 = 1 / 355687428096000;
const F4 = 1 / 24, F6 = 1 / 720, F8 = 1 / 40320, F10 = 1 / 3628800, F12 = 1 / 479001600;
const F14 = 1 / 87178291200, F16 = 1 / 20922789888000;

/**
 * Natural logarithm in double precision from IEEE arithmetic only (same bits on every machine).
 * x = m 2^e with m in (sqrt(1/2), sqrt(2)]; log m = 2 atanh((m - 1) / (m + 1)) by its series,
 * which for |s| <= 0.172 is exact to 2e-17 after 11 terms. Max relative error ~3e-16. (A table
 * of powers of two extracts m, as reading and rewriting the exponent bits was 2x slower.)
 */
export function portableLog(x: number): number {
  if (!(x > 0) || x === Infinity) return x === 0 ? -Infinity : x === Infinity ? x : NaN;
  let e = 0;
  if (x < 2.2250738585072014e-308) {
    x *= 18014398509481984; // subnormal: scale by 2^54 first
    e = -54;
  }
  f64[0] = x;
  const ex = ((f64Words[HI]! >>> 20) & 0x7ff) - 1023;
  let m = x * POW2_NEG[ex + 1023]!; // exact: the mantissa, in [1, 2)
  e += ex;
  if (m > Math.SQRT2) {
    m *= 0.5;
    e += 1;
  }
  const s = (m - 1) / (m + 1);
  const z = s * s;
  // 2 atanh s = 2s (1 + z p), p = 1/3 + z/5 + ... + z^9/21 (Estrin's scheme, for speed)
  const z2 = z * z;
  const z4 = z2 * z2;
  const p = A3 + z * A5 + z2 * (A7 + z * A9)
    + z4 * (A11 + z * A13 + z2 * (A15 + z * A17) + z4 * (A19 + z * A21));
  const twoS = 2 * s;
  return e * LN2_HI + (e * LN2_LO + twoS * z * p + twoS);
}

/**
 * out[0] = sin(2 pi t), out[1] = cos(2 pi t), in double precision from IEEE arithmetic only.
 * The reduction to the nearest quarter turn, r = t - q/4, is exact, so the only argument error
 * is the rounding of 2 pi r (|2 pi r| <= pi/4); the series are then exact to 1e-18.
 */
export function portableSinCos2Pi(t: number, out: Float64Array): void {
  const q = Math.round(t * 4);
  const x = (t - q * 0.25) * (2 * Math.PI);
  const z = x * x;
  // sin x = x + x z ps, ps = -1/3! + z/5! - ... + z^7/17!;
  // cos x = 1 - z/2 + z^2 pc, pc = 1/4! - z/6! + ... + z^6/16! (Estrin's scheme)
  const z2 = z * z;
  const z4 = z2 * z2;
  const ps = F5 * z - F3 + z2 * (F9 * z - F7) + z4 * (F13 * z - F11 + z2 * (F17 * z - F15));
  const pc = F4 - F6 * z + z2 * (F8 - F10 * z) + z4 * (F12 - F14 * z + z2 * F16);
  const s = x + x * z * ps;
  const c = 1 - 0.5 * z + z2 * pc;
  switch (q & 3) { // the quarter turn, mod 4 (exact for any integer q, negative too)
    case 0: out[0] = s; out[1] = c; break;
    case 1: out[0] = c; out[1] = 0 - s; break; // 0 - s, not -s: sin and cos of 0 are +0
    case 2: out[0] = 0 - s; out[1] = 0 - c; break;
    default: out[0] = 0 - c; out[1] = s; break;
  }
}

// ---------------------------------------------------------------------------------------------

function checkCount(op: string, n: number): void {
  if (!Number.isInteger(n) || n < 0 || n > 2 ** 31 - 1) {
    throw new RangeError(`RngKey.${op}: n must be an integer in [0, 2^31), got ${n}`);
  }
}

/** A safe integer as two's-complement 64 bits: [low word, high word]. */
function words64(op: string, v: number | bigint): [number, number] {
  if (typeof v === 'bigint') {
    const u = BigInt.asUintN(64, v);
    return [Number(u & 0xffffffffn), Number(u >> 32n)];
  }
  if (!Number.isSafeInteger(v)) {
    throw new RangeError(`RngKey.${op}: expected a safe integer or a bigint, got ${v}`);
  }
  return [v >>> 0, Math.floor(v / TWO_POW_32) >>> 0];
}

/** Reads the draw stream of one key word by word (for draws that reject some words). */
class WordStream {
  private block = 0;
  private pos = 4;
  private readonly buf = new Uint32Array(4);
  constructor(private readonly k0: number, private readonly k1: number) {}

  next(): number {
    if (this.pos === 4) {
      const b = this.block++;
      const high = Math.floor(b / TWO_POW_32);
      philoxInto(b >>> 0, high, DOMAIN_DRAW, 0, this.k0, this.k1, this.buf, 0);
      this.pos = 0;
    }
    return this.buf[this.pos++]!;
  }

  /** Uniform in [0, high) for 1 <= high <= 2^31, unbiased (Lemire's multiply-and-reject). */
  below(high: number): number {
    let w = this.next();
    let lo = Math.imul(w, high) >>> 0;
    if (lo < high) {
      const threshold = (TWO_POW_32 - high) % high; // 2^32 mod high
      while (lo < threshold) {
        w = this.next();
        lo = Math.imul(w, high) >>> 0;
      }
    }
    return mulhi32(w, high, lo);
  }
}

/**
 * An immutable Philox key (two uint32 words). See the file comment: its draws are a pure
 * function of the key; derive new keys with `split` and `fold`.
 */
export class RngKey {
  private constructor(
    /** Key word 0 (the low 32 bits of the seed for `fromSeed`). */
    readonly lo: number,
    /** Key word 1 (the high 32 bits of the seed). */
    readonly hi: number,
  ) {}

  /** The key whose words are the seed's low and high 32 bits (two's complement if negative). */
  static fromSeed(seed: number | bigint): RngKey {
    const [lo, hi] = words64('fromSeed', seed);
    return new RngKey(lo, hi);
  }

  /** Rebuilds a key from its two words, e.g. from a checkpoint (`[key.lo, key.hi]`). */
  static fromWords(lo: number, hi: number): RngKey {
    for (const w of [lo, hi]) {
      if (!Number.isInteger(w) || w < 0 || w >= TWO_POW_32) {
        throw new RangeError(`RngKey.fromWords: words must be uint32, got [${lo}, ${hi}]`);
      }
    }
    return new RngKey(lo, hi);
  }

  /** n child keys, deterministic: child i is Philox of counter (i, 0, SPLIT, 0) under this key. */
  split(n: number): RngKey[] {
    checkCount('split', n);
    const out = new Uint32Array(4);
    const keys: RngKey[] = [];
    for (let i = 0; i < n; i++) {
      philoxInto(i, 0, DOMAIN_SPLIT, 0, this.lo, this.hi, out, 0);
      keys.push(new RngKey(out[0]!, out[1]!));
    }
    return keys;
  }

  /** The child key for a safe integer (e.g. a step index): counter (lo, hi, FOLD, 0). */
  fold(data: number): RngKey {
    const [lo, hi] = words64('fold', data);
    const out = new Uint32Array(4);
    philoxInto(lo, hi, DOMAIN_FOLD, 0, this.lo, this.hi, out, 0);
    return new RngKey(out[0]!, out[1]!);
  }

  /** n raw words: counter blocks (0, 0, 0, 0), (1, 0, 0, 0), ... each give 4 words in order. */
  bits(n: number): Uint32Array {
    checkCount('bits', n);
    return this.wordsAt(0, n);
  }

  /** Words [start, start + n) of the draw stream; block b is counter (b mod 2^32, b / 2^32,
   *  DRAW, 0), so the stream is as long as a safe integer allows. */
  private wordsAt(start: number, n: number): Uint32Array {
    const first = Math.floor(start / 4);
    const blocks = Math.ceil((start + n) / 4) - first;
    const out = new Uint32Array(blocks * 4);
    for (let b = 0; b < blocks; b++) {
      const c = first + b;
      philoxInto(c % TWO_POW_32, Math.floor(c / TWO_POW_32), DOMAIN_DRAW, 0, this.lo, this.hi,
        out, 4 * b);
    }
    const skip = start - 4 * first;
    return skip === 0 && n === out.length ? out : out.slice(skip, skip + n);
  }

  /** n floats in [0, 1) with 24-bit resolution: (word >>> 8) / 2^24, never 1.0. */
  uniform(n: number): Float32Array {
    checkCount('uniform', n);
    const w = this.bits(n);
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = (w[i]! >>> 8) * TWO_POW_M24;
    return out;
  }

  /**
   * n standard normals by Box-Muller: pair k uses words 2k and 2k+1 as u = (w + 1) / 2^32 in
   * (0, 1] and t = w' / 2^32 in [0, 1); z = sqrt(-2 log u) (cos 2 pi t, sin 2 pi t), computed
   * in double and rounded once to float32. |z| <= sqrt(64 ln 2) = 6.66.
   *
   * `offset` skips that many normals of the same stream without drawing them: `normal(n, o)`
   * equals `normal(o + n).subarray(o)`, so a batch too large to hold can be drawn in chunks.
   */
  normal(n: number, offset = 0): Float32Array {
    checkCount('normal', n);
    if (!Number.isSafeInteger(offset) || offset < 0) {
      throw new RangeError(`RngKey.normal: offset must be a safe integer >= 0, got ${offset}`);
    }
    const firstPair = Math.floor(offset / 2);
    const pairs = Math.ceil((offset + n) / 2) - firstPair;
    const w = this.wordsAt(2 * firstPair, 2 * pairs);
    const out = new Float32Array(n);
    const sc = new Float64Array(2);
    for (let k = 0; k < pairs; k++) {
      const r = Math.sqrt(-2 * portableLog((w[2 * k]! + 1) * TWO_POW_M32));
      portableSinCos2Pi(w[2 * k + 1]! * TWO_POW_M32, sc);
      const i = 2 * (firstPair + k) - offset; // where this pair's first normal lands in out
      if (i >= 0 && i < n) out[i] = r * sc[1]!;
      if (i + 1 >= 0 && i + 1 < n) out[i + 1] = r * sc[0]!;
    }
    return out;
  }

  /** n integers uniform in [0, high) for an integer 1 <= high <= 2^31, without bias. */
  uniformInt(n: number, high: number): Int32Array {
    checkCount('uniformInt', n);
    if (!Number.isInteger(high) || high < 1 || high > 2 ** 31) {
      throw new RangeError(`RngKey.uniformInt: high must be an integer in [1, 2^31], got ${high}`);
    }
    const stream = new WordStream(this.lo, this.hi);
    const out = new Int32Array(n);
    for (let i = 0; i < n; i++) out[i] = stream.below(high);
    return out;
  }

  /** A random permutation of 0..n-1: Fisher-Yates from the top, j uniform in [0, i]. */
  permutation(n: number): Int32Array {
    checkCount('permutation', n);
    const stream = new WordStream(this.lo, this.hi);
    const out = new Int32Array(n);
    for (let i = 0; i < n; i++) out[i] = i;
    for (let i = n - 1; i > 0; i--) {
      const j = stream.below(i + 1);
      const t = out[i]!;
      out[i] = out[j]!;
      out[j] = t;
    }
    return out;
  }
}
