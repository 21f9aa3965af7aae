/**
 * @file Small dense float64 linear algebra for the analytic datasets: symmetric eigensolver
 * (cyclic Jacobi), Gram-Schmidt, products. Matrices are row-major Float64Arrays; sizes are tens.
 */

/** Eigen-decomposition of a symmetric D x D matrix: A = V diag(values) V^T, V orthonormal. */
export function symmetricEigen(
  a: ArrayLike<number>,
  D: number,
): { values: Float64Array; vectors: Float64Array } {
  const m = Float64Array.from(a);
  const v = new Float64Array(D * D);
  for (let i = 0; i < D; i++) v[i * D + i] = 1;
  for (let sweep = 0; sweep < 100; sweep++) {
    let off = 0;
    for (let p = 0; p < D; p++) for (let q = p + 1; q < D; q++) off += m[p * D + q]! ** 2;
    if (off < 1e-30) break;
    for (let p = 0; p < D; p++) {
      for (let q = p + 1; q < D; q++) {
        const apq = m[p * D + q]!;
        if (Math.abs(apq) < 1e-300) continue;
        const theta = (m[q * D + q]! - m[p * D + p]!) / (2 * apq);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        for (let k = 0; k < D; k++) {
          const akp = m[k * D + p]!;
          const akq = m[k * D + q]!;
          m[k * D + p] = c * akp - s * akq;
          m[k * D + q] = s * akp + c * akq;
        }
        for (let k = 0; k < D; k++) {
          const apk = m[p * D + k]!;
          const aqk = m[q * D + k]!;
          m[p * D + k] = c * apk - s * aqk;
          m[q * D + k] = s * apk + c * aqk;
        }
        for (let k = 0; k < D; k++) {
          const vkp = v[k * D + p]!;
          const vkq = v[k * D + q]!;
          v[k * D + p] = c * vkp - s * vkq;
          v[k * D + q] = s * vkp + c * vkq;
        }
      }
    }
  }
  return { values: Float64Array.from({ length: D }, (_, i) => m[i * D + i]!), vectors: v };
}

/**
 * Orthonormalises the d columns of a D x d row-major matrix (modified Gram-Schmidt); throws
 * if they are linearly dependent.
 */
export function orthonormalColumns(a: ArrayLike<number>, D: number, d: number): Float64Array {
  const u = Float64Array.from(a);
  for (let j = 0; j < d; j++) {
    for (let k = 0; k < j; k++) {
      let dot = 0;
      for (let i = 0; i < D; i++) dot += u[i * d + j]! * u[i * d + k]!;
      for (let i = 0; i < D; i++) u[i * d + j] = u[i * d + j]! - dot * u[i * d + k]!;
    }
    let norm = 0;
    for (let i = 0; i < D; i++) norm += u[i * d + j]! ** 2;
    norm = Math.sqrt(norm);
    if (norm < 1e-12)
      throw new RangeError(`orthonormalColumns: column ${j} is dependent on the previous ones`);
    for (let i = 0; i < D; i++) u[i * d + j] = u[i * d + j]! / norm;
  }
  return u;
}

/** Mean (D) and covariance (D x D) of n row-major samples. */
export function meanAndCovariance(
  x: ArrayLike<number>,
  n: number,
  D: number,
): { mean: Float64Array; cov: Float64Array } {
  const mean = new Float64Array(D);
  for (let i = 0; i < n; i++) for (let j = 0; j < D; j++) mean[j] = mean[j]! + x[i * D + j]! / n;
  const cov = new Float64Array(D * D);
  for (let i = 0; i < n; i++) {
    for (let a = 0; a < D; a++) {
      const da = x[i * D + a]! - mean[a]!;
      for (let b = 0; b < D; b++)
        cov[a * D + b] = cov[a * D + b]! + (da * (x[i * D + b]! - mean[b]!)) / n;
    }
  }
  return { mean, cov };
}
