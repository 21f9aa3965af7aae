/**
 * @file DivControl's factorised layer (methods/divcontrol.ts; Xie et al. 2025, sec. 3.2.1, eq. 2):
 * a Linear whose weight is kept as rank-1 SVD components, W = sum_i u_i s_i v_i^T, split into
 * learngenes (always on) and tailors (weighed by the gate), composed into the dense [out, in]
 * matrix inside the graph (cheap next to the batch: D^2 r multiply-adds per projection), plus
 * the float64 host SVD the control branch starts from and the host composition tests check.
 */
import * as ops from '../engine/ops.js';
import type { HostArray } from '../engine/host.js';
import type { Tensor } from '../engine/tensor.js';
import { symmetricEigen } from '../data/analytic/linalg.js';
import { normal, torchDefault, zeros } from '../nn/init.js';
import { Module, Param, type ParamsOf } from '../nn/module.js';

/** Rank-1 components of a matrix [out, in]: columns of u [out, r] and v [in, r], s [r]. */
export interface SvdParts<T> {
  readonly u: T;
  readonly s: T;
  readonly v: T;
}

/** sum_i u_i s_i v_i^T over the components of every part, in graph ops: W [out, in]. */
export function composeWeight(parts: readonly SvdParts<Tensor>[]): Tensor {
  const cat = (k: keyof SvdParts<Tensor>, axis: number) => parts.length === 1 ? parts[0]![k]
    : ops.concat(parts.map((p) => p[k]), axis);
  const [u, s, v] = [cat('u', 1), cat('s', 0), cat('v', 1)]; // [out, r], [r], [in, r]
  return ops.matmul(ops.mul(u, s), ops.transpose(v, [1, 0]));
}

/** composeWeight on host arrays, summed in float64: the reference the tests check against. */
export function composeWeightHost(parts: readonly SvdParts<HostArray>[]): Float64Array {
  const [rows, cols] = [parts[0]!.u.shape[0]!, parts[0]!.v.shape[0]!];
  const w = new Float64Array(rows * cols);
  for (const part of parts) {
    const [u, s, v] = [part.u.data, part.s.data, part.v.data] as Float32Array[];
    const r = s!.length;
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < cols; j++) {
        let acc = 0;
        for (let k = 0; k < r; k++) acc += u![i * r + k]! * s![k]! * v![j * r + k]!;
        w[i * cols + j]! += acc;
      }
    }
  }
  return w;
}

/**
 * The SVD W = U diag(s) V^T of a row-major [rows, cols] matrix, s descending, r = min(rows,
 * cols): from the eigenvectors of the smaller Gram matrix (float64 Jacobi), the other side as
 * W x / s. Components with s below 1e-12 s_max get zero vectors there (they add nothing).
 */
export function svdHost(w: ArrayLike<number>, rows: number, cols: number):
  { u: Float64Array; s: Float64Array; v: Float64Array } {
  const tall = rows >= cols;
  const n = tall ? cols : rows;
  const m = tall ? rows : cols;
  const at = (k: number, i: number) => tall ? w[k * cols + i]! : w[i * cols + k]!; // A = tall ? W : W^T
  let norm = 0;
  for (let i = 0; i < rows * cols; i++) norm += w[i]! ** 2;
  const scale = norm > 0 ? 1 / norm : 1; // a unit-size Gram lets Jacobi reach its tolerance
  const g = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) {
      let acc = 0;
      for (let k = 0; k < m; k++) acc += at(k, i) * at(k, j);
      g[i * n + j] = g[j * n + i] = acc * scale;
    }
  }
  const { values, vectors } = symmetricEigen(g, n);
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => values[b]! - values[a]!);
  const s = Float64Array.from(order, (i) => Math.sqrt(Math.max(0, values[i]!) / scale));
  const small = new Float64Array(n * n); // [n, r]: the Gram side's vectors
  const big = new Float64Array(m * n); // [m, r]: A x / s
  order.forEach((src, c) => {
    for (let i = 0; i < n; i++) small[i * n + c] = vectors[i * n + src]!;
    if (!(s[c]! > 1e-12 * s[0]!)) return;
    for (let k = 0; k < m; k++) {
      let acc = 0;
      for (let i = 0; i < n; i++) acc += at(k, i) * small[i * n + c]!;
      big[k * n + c] = acc / s[c]!;
    }
  });
  return tall ? { u: big, s, v: small } : { u: small, s, v: big };
}

/** A Linear layer stored as SVD components: learngenes (shared) and tailors (gated). */
export class SvdLinear extends Module {
  readonly learngene_u: Param;
  readonly learngene_s: Param;
  readonly learngene_v: Param;
  readonly tailor_u: Param;
  readonly tailor_s: Param;
  readonly tailor_v: Param;
  readonly bias?: Param;
  constructor(readonly inFeatures: number, readonly outFeatures: number, learngenes: number,
    tailors: number, bias: boolean) {
    super();
    // Placeholders: divControlInitialize replaces them with the SVD of the base's matrix.
    const vec = (rows: number, r: number) => new Param([rows, r], normal(1 / Math.sqrt(rows)));
    this.learngene_u = vec(outFeatures, learngenes);
    this.learngene_s = new Param([learngenes], zeros);
    this.learngene_v = vec(inFeatures, learngenes);
    this.tailor_u = vec(outFeatures, tailors);
    this.tailor_s = new Param([tailors], zeros);
    this.tailor_v = vec(inFeatures, tailors);
    if (bias) this.bias = new Param([outFeatures], torchDefault(inFeatures));
  }

  /** W~ [out, in] (eq. 4): the learngenes, the tailors weighed by `weights` [N_T], and any
   *  `extra` components (an adapter's new tailors). */
  weight(p: ParamsOf<SvdLinear>, weights: Tensor, extra: readonly SvdParts<Tensor>[] = []): Tensor {
    return composeWeight([
      { u: p.learngene_u, s: p.learngene_s, v: p.learngene_v },
      { u: p.tailor_u, s: ops.mul(p.tailor_s, weights), v: p.tailor_v },
      ...extra,
    ]);
  }
}

/** The six factorised projections of one control block (the paper's set S). */
export const PROJECTIONS = ['to_q', 'to_k', 'to_v', 'to_out', 'ff_in', 'ff_out'] as const;
export type Projection = (typeof PROJECTIONS)[number];

/** [out, in] of each projection for width D and MLP width F. */
export function projectionShape(p: Projection, dim: number, ff: number): [number, number] {
  return p === 'ff_in' ? [ff, dim] : p === 'ff_out' ? [dim, ff] : [dim, dim];
}
