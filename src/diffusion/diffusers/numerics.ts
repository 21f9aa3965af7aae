/**
 * @file The numerics diffusers' schedulers inherit from torch 1.13 (float32, CPU, AVX2) and
 * NumPy 1.24 (float64), reproduced so tables and steps match diffusers bit for bit.
 *
 * Each function names the library routine it mirrors. Where the rounding depends on how the
 * routine was compiled (fused multiply-adds in torch.linspace), the variant was chosen by
 * comparing against torch 1.13.1 (Debian build) on many inputs; see numerics.test.ts.
 */

/**
 * Fused multiply-add of float32 numbers, rounded once to float32: fma(a, b, c) = a * b + c.
 * a * b is exact in a double; the double sum may round, which matters only when it lands on a
 * float32 midpoint: then the sign of the lost low part decides.
 */
export function fmaF32(a: number, b: number, c: number): number {
  const p = a * b;
  const s = p + c;
  const r = Math.fround(s);
  const bb = s - p;
  const e = p - (s - bb) + (c - bb); // s + e = p + c exactly (TwoSum)
  if (e === 0 || r === s) return r;
  const diff = s - r;
  const other = r + 2 * diff;
  if (Math.fround(other) === other && Math.sign(e) === Math.sign(diff)) return other;
  return r;
}

/**
 * torch.linspace(start, end, steps, dtype=float32) on CPU: step = (end - start) / (steps - 1)
 * in float32; the first half counts up from start, the second half down from end, in vectors
 * of 8 lanes (AVX2) whose base is a fused multiply-add and whose lanes add k * step; the tail
 * that does not fill two vectors is computed one element at a time (fused).
 */
export function torchLinspaceF32(start: number, end: number, steps: number): Float32Array {
  const f = Math.fround;
  const s0 = f(start);
  const e0 = f(end);
  const out = new Float32Array(steps);
  if (steps === 1) {
    out[0] = s0;
    return out;
  }
  const step = f(f(e0 - s0) / (steps - 1));
  const half = Math.floor(steps / 2);
  const at = (idx: number): number =>
    idx < half ? fmaF32(step, idx, s0) : fmaF32(-step, steps - idx - 1, e0);
  const lanes = 8;
  let i = 0;
  for (; i <= steps - 2 * lanes; i += lanes) {
    const base = at(i);
    out[i] = base;
    for (let k = 1; k < lanes; k++) out[i + k] = f(base + f(k * step));
  }
  for (; i < steps; i++) out[i] = at(i);
  return out;
}

/** numpy.linspace(start, stop, num) in float64: i * step + start, the last value set to stop. */
export function numpyLinspace(start: number, stop: number, num: number): Float64Array {
  const out = new Float64Array(num);
  if (num === 1) {
    out[0] = start;
    return out;
  }
  const step = (stop - start) / (num - 1);
  for (let i = 0; i < num; i++) out[i] = i * step + start;
  out[num - 1] = stop;
  return out;
}

/** numpy.round / torch.round: half to even. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * numpy.arange(start, stop, step) in float64: length ceil((stop - start) / step); values
 * start + i * delta with delta = (start + step) - start, as NumPy's fill does.
 */
export function numpyArange(start: number, stop: number, step: number): Float64Array {
  const n = Math.max(0, Math.ceil((stop - start) / step));
  const out = new Float64Array(n);
  if (n === 0) return out;
  out[0] = start;
  if (n === 1) return out;
  const delta = start + step - start;
  for (let i = 1; i < n; i++) out[i] = start + i * delta;
  return out;
}

/**
 * numpy.interp(x, arange(len(fp)), fp) for x inside the table: slope * (x - j) + fp[j];
 * exact table points return fp[j].
 */
export function numpyInterpIndex(x: number, fp: ArrayLike<number>): number {
  const n = fp.length;
  if (x <= 0) return fp[0]!;
  if (x >= n - 1) return fp[n - 1]!;
  const j = Math.floor(x);
  if (j === x) return fp[j]!;
  const slope = fp[j + 1]! - fp[j]!;
  return slope * (x - j) + fp[j]!;
}

/**
 * Karras et al. 2022 eq. 5 (rho = 7) as diffusers' `_convert_to_karras` computes it in
 * float64: (max^(1/rho) + ramp (min^(1/rho) - max^(1/rho)))^rho over ramp = linspace(0, 1, n).
 */
export function karrasLevelsF64(
  n: number,
  sigmaMin: number,
  sigmaMax: number,
  rho = 7,
): Float64Array {
  const ramp = numpyLinspace(0, 1, n);
  const lo = sigmaMin ** (1 / rho);
  const hi = sigmaMax ** (1 / rho);
  return ramp.map((r) => (hi + r * (lo - hi)) ** rho);
}

/**
 * diffusers' `_sigma_to_t(sigma, log_sigmas)` under NumPy 1.24's value-based casting, with
 * `log_sigmas` a float32 table: the float64 log(sigma) is cast to float32 against it, the
 * weight w is float32, and t = (1 - w) * low + w * high is float64. NumPy's float32 log is
 * not correctly rounded (it is vectorised), so `logLevelsF32` from Math.log can differ from
 * diffusers' table in the last bit; fractional timesteps then agree to about 1e-5.
 */
export function sigmaToTF32(sigma: number, logLevelsF32: Float32Array): number {
  const f = Math.fround;
  const ls = f(Math.log(Math.max(sigma, 1e-10)));
  let low = 0;
  for (let i = 0; i < logLevelsF32.length; i++) if (f(ls - logLevelsF32[i]!) >= 0) low = i;
  low = Math.min(low, logLevelsF32.length - 2);
  const lo = logLevelsF32[low]!;
  const hi = logLevelsF32[low + 1]!;
  let w = f(f(lo - ls) / f(lo - hi));
  w = Math.min(Math.max(w, 0), 1);
  return f(1 - w) * low + w * (low + 1);
}

/**
 * torch.quantile(a, q) of one row (linear interpolation, float32): rank = q * (n - 1),
 * then torch.lerp between the neighbours (which switches formula at weight 0.5).
 */
export function torchQuantileF32(row: ArrayLike<number>, q: number): number {
  const f = Math.fround;
  const sorted = Float32Array.from(row).sort();
  const rank = f(f(q) * (sorted.length - 1));
  const lo = Math.floor(rank);
  const hi = Math.min(lo + 1, sorted.length - 1);
  const w = f(rank - lo);
  const a = sorted[lo]!;
  const b = sorted[hi]!;
  return w < 0.5 ? f(a + f(w * f(b - a))) : f(b - f(f(b - a) * f(1 - w)));
}

/**
 * torch.linalg.solve(A, b) for a small float32 system as torch 1.13 (Debian build, linked to
 * the reference BLAS / LAPACK) computes it. A row-major A reaches LAPACK as M = A^T, which
 * sgetrf2 factors recursively (split the columns in half; the single-column case pivots on
 * the largest magnitude and scales by the pivot's reciprocal; the trailing block is updated
 * by sgemm, column by column); sgetrs then solves M^T x = b by two reference strsm sweeps
 * (U^T z = b, then L^T w = z) and undoes the interchanges. Reference BLAS is compiled without
 * FMA, so every product and sum rounds. Checked against torch on 1,000 2x2 and 3x3 systems of
 * UniPC's Vandermonde form. A non-contiguous A (a slice such as diffusers' R[:-1, :-1]) is
 * copied instead and factored as is, then solved with sgetrs 'N' (`transposed` = false).
 * `r` = identity gives the same algorithm in float64.
 */
export function solveSmallF32(
  A: readonly (readonly number[])[],
  b: readonly number[],
  r: (x: number) => number = Math.fround,
  transposed = true,
): number[] {
  const n = b.length;
  const m = Array.from({ length: n }, (_, i) =>
    Array.from({ length: n }, (_, j) => r(transposed ? A[j]![i]! : A[i]![j]!)),
  );
  const piv: number[] = [];
  const getrf2 = (r0: number, c0: number, rows: number, cols: number): void => {
    if (cols === 1) {
      let p = 0;
      for (let k = 1; k < rows; k++)
        if (Math.abs(m[r0 + k]![c0]!) > Math.abs(m[r0 + p]![c0]!)) p = k;
      piv.push(r0 + p);
      if (m[r0 + p]![c0] === 0) return;
      if (p !== 0) [m[r0], m[r0 + p]] = [m[r0 + p]!, m[r0]!];
      const inv = r(1 / m[r0]![c0]!);
      for (let k = 1; k < rows; k++) m[r0 + k]![c0] = r(m[r0 + k]![c0]! * inv);
      return;
    }
    if (rows === 1) {
      piv.push(r0);
      return;
    }
    const n1 = Math.floor(Math.min(rows, cols) / 2);
    getrf2(r0, c0, rows, n1);
    for (let j = c0 + n1; j < c0 + cols; j++) {
      // A12 = L11^-1 A12 (strsm, unit lower), then A22 -= A21 A12 (sgemm)
      for (let k = 0; k < n1; k++) {
        for (let i = k + 1; i < n1; i++)
          m[r0 + i]![j] = r(m[r0 + i]![j]! - r(m[r0 + k]![j]! * m[r0 + i]![c0 + k]!));
      }
      for (let l = 0; l < n1; l++) {
        const temp = -m[r0 + l]![j]!;
        for (let i = r0 + n1; i < r0 + rows; i++)
          m[i]![j] = r(m[i]![j]! + r(temp * m[i]![c0 + l]!));
      }
    }
    getrf2(r0 + n1, c0 + n1, rows - n1, cols - n1);
  };
  getrf2(0, 0, n, n);
  const x = b.map((v) => r(v));
  if (!transposed) {
    // sgetrs 'N': interchanges, then L (unit) and U by column sweeps
    for (let j = 0; j < n; j++) {
      const p = piv[j]!;
      if (p !== j) [x[j], x[p]] = [x[p]!, x[j]!];
    }
    for (let k = 0; k < n; k++)
      for (let i = k + 1; i < n; i++) x[i] = r(x[i]! - r(x[k]! * m[i]![k]!));
    for (let k = n - 1; k >= 0; k--) {
      x[k] = r(x[k]! / m[k]![k]!);
      for (let i = 0; i < k; i++) x[i] = r(x[i]! - r(x[k]! * m[i]![k]!));
    }
    return x;
  }
  for (let i = 0; i < n; i++) {
    let t = x[i]!;
    for (let k = 0; k < i; k++) t = r(t - r(m[k]![i]! * x[k]!));
    x[i] = r(t / m[i]![i]!);
  }
  for (let i = n - 1; i >= 0; i--) {
    let t = x[i]!;
    for (let k = i + 1; k < n; k++) t = r(t - r(m[k]![i]! * x[k]!));
    x[i] = t;
  }
  for (let j = n - 1; j >= 0; j--) {
    const p = piv[j]!;
    if (p !== j) [x[j], x[p]] = [x[p]!, x[j]!];
  }
  return x;
}
