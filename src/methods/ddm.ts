/**
 * @file Decentralized Diffusion Models: McAllister, Tancik, Song & Kanazawa 2025,
 * "Decentralized Diffusion Models" (arXiv 2501.05450).
 *
 * Claim: split the data into K clusters, train one flow-matching expert per cluster in
 * complete isolation (no gradient exchange), and train a router that predicts which cluster a
 * noisy sample x_t came from. The marginal velocity of the whole data is
 *   u(x_t, t) = sum_k p(k | x_t, t) u_k(x_t, t)
 * (each u_k the marginal velocity of cluster k), so the experts and a perfect router optimise
 * the monolithic objective; sparse top-k routing at inference beats a monolith FLOP for FLOP.
 * No official code; this follows the paper's decentralized flow matching.
 *
 * Here: seeded k-means with k-means++ initialisation (the paper clusters DINOv2 features; here
 * the shipped classifier's), the router's training points, the top-k weights, and the
 * ensemble as a Denoiser. With class-conditional experts the identity holds per class,
 * u(x_t, t | c) = sum_k p(k | x_t, t, c) u_k(x_t, t, c), so the router is given the class too
 * (and the null class for the unconditional half of classifier-free guidance). The same sum
 * holds for eps, x0 and v predictions: each is affine in E[x0 | x_t], which mixes the same way.
 */
import { HostArray } from '../engine/host.js';
import type { RngKey } from '../engine/random/philox.js';
import type { Tensor } from '../engine/tensor.js';
import { conditionLabels, type Batch, type Denoiser } from '../diffusion/denoiser.js';
import { noisySample } from '../diffusion/training.js';
import type { DiffuseClassifier } from '../models/classifier.js';
import type { ParamsOf } from '../nn/module.js';

// ---------------------------------------------------------------------------------------------
// Clustering
// ---------------------------------------------------------------------------------------------

export interface KMeansResult {
  /** [k, dim] cluster centres. */
  centroids: Float32Array;
  /** The cluster of each point. */
  assignments: Int32Array;
  /** Points per cluster. */
  sizes: number[];
  /** Sum of squared distances of the points to their centres. */
  inertia: number;
  iterations: number;
}

function squaredDistance(a: Float32Array, i: number, b: Float32Array, j: number, dim: number): number {
  let s = 0;
  for (let d = 0; d < dim; d++) {
    const v = a[i * dim + d]! - b[j * dim + d]!;
    s += v * v;
  }
  return s;
}

/**
 * Lloyd's k-means on `points` [n, dim] from a k-means++ start (Arthur & Vassilvitskii 2007:
 * each next centre drawn with probability proportional to its squared distance to the nearest
 * chosen one), every draw from `key`: the same key gives the same clusters. A cluster that
 * empties takes the point farthest from its centre, so all k stay in use.
 */
export function kMeans(points: Float32Array, n: number, dim: number, k: number, key: RngKey,
  opts: { maxIterations?: number } = {}): KMeansResult {
  if (!(Number.isInteger(k) && k >= 1)) throw new RangeError(`k-means: k must be a positive integer, got ${k}`);
  if (points.length !== n * dim) throw new RangeError(`k-means: ${points.length} values for ${n} points of ${dim}`);
  if (n < k) throw new RangeError(`k-means: ${n} points cannot make ${k} clusters`);
  const maxIterations = opts.maxIterations ?? 100;
  const centroids = new Float32Array(k * dim);
  const draws = key.uniform(k);
  const setCentre = (c: number, i: number) => centroids.set(points.subarray(i * dim, (i + 1) * dim), c * dim);
  setCentre(0, Math.min(Math.floor(draws[0]! * n), n - 1));
  const nearest = new Float64Array(n).fill(Infinity);
  for (let c = 1; c < k; c++) {
    let total = 0;
    for (let i = 0; i < n; i++) {
      nearest[i] = Math.min(nearest[i]!, squaredDistance(points, i, centroids, c - 1, dim));
      total += nearest[i]!;
    }
    let pick = n - 1;
    let target = draws[c]! * total;
    for (let i = 0; i < n; i++) {
      target -= nearest[i]!;
      if (target < 0) {
        pick = i;
        break;
      }
    }
    setCentre(c, pick);
  }
  const assignments = new Int32Array(n).fill(-1);
  const distance = new Float64Array(n);
  let iterations = 0;
  for (; iterations < maxIterations; iterations++) {
    let changed = 0;
    for (let i = 0; i < n; i++) {
      let best = 0;
      let bestD = Infinity;
      for (let c = 0; c < k; c++) {
        const d = squaredDistance(points, i, centroids, c, dim);
        if (d < bestD) (bestD = d, best = c);
      }
      distance[i] = bestD;
      if (assignments[i] !== best) (assignments[i] = best, changed++);
    }
    if (changed === 0) break;
    const sums = new Float64Array(k * dim);
    const counts = new Int32Array(k);
    for (let i = 0; i < n; i++) {
      const c = assignments[i]!;
      counts[c]!++;
      for (let d = 0; d < dim; d++) sums[c * dim + d]! += points[i * dim + d]!;
    }
    for (let c = 0; c < k; c++) {
      if (counts[c] === 0) {
        let far = 0;
        for (let i = 1; i < n; i++) if (distance[i]! > distance[far]!) far = i;
        setCentre(c, far);
        distance[far] = 0;
        assignments[far] = -1; // reassigned (to its own centre) on the next pass
        continue;
      }
      for (let d = 0; d < dim; d++) centroids[c * dim + d] = sums[c * dim + d]! / counts[c]!;
    }
  }
  const sizes = Array.from({ length: k }, () => 0);
  let inertia = 0;
  for (let i = 0; i < n; i++) {
    sizes[assignments[i]!]!++;
    inertia += squaredDistance(points, i, centroids, assignments[i]!, dim);
  }
  return { centroids, assignments, sizes, inertia, iterations };
}

// ---------------------------------------------------------------------------------------------
// Router
// ---------------------------------------------------------------------------------------------

/** Flow times this close to 0 or 1 are clamped before the log-SNR: it is infinite at both ends. */
const FLOW_EDGE = 1e-4;

/**
 * The noise level the router is given for rectified-flow model times t = s T: the log-SNR
 * log(alpha^2 / sigma^2) = 2 log((1 - s) / s) of x_t = (1 - s) x0 + s eps, the same input the
 * noise-aware classifier takes, with s clamped to [1e-4, 1 - 1e-4] (|level| <= 18.4).
 */
export function flowNoiseLevel(t: ArrayLike<number>, numTrainTimesteps: number): Float32Array {
  return Float32Array.from(t, (v) => {
    const s = Math.min(Math.max(v / numTrainTimesteps, FLOW_EDGE), 1 - FLOW_EDGE);
    return 2 * Math.log((1 - s) / s);
  });
}

/** One router training batch (traced): clean images, noise, flow coefficients per row, the
 *  log-SNR the router is given, each image's cluster, and its class (conditional experts). */
export interface RouterBatch<T> {
  x0: T; eps: T; alpha: T; sigma: T; level: T; cluster: T; labels?: T;
}

/**
 * The router's loss: cross-entropy of the cluster of x0 given x_t = alpha x0 + sigma eps (the
 * experts' flow noising), the noise level and, for conditional experts, the class: the
 * router is then the posterior p(k | x_t, t, c) that mixes the experts.
 */
export function routerLoss(net: DiffuseClassifier, p: ParamsOf<DiffuseClassifier>, b: RouterBatch<Tensor>): Tensor {
  return net.loss(p, noisySample(b.x0, b.eps, b.alpha, b.sigma), b.cluster, b.level, b.labels);
}

export type EnsembleMode = 'top1' | 'top2' | 'full';
export const ENSEMBLE_MODES: readonly EnsembleMode[] = ['top1', 'top2', 'full'];

/** How many experts a mode keeps per row (full: all). */
export function expertsKept(mode: EnsembleMode, k: number): number {
  return mode === 'top1' ? 1 : mode === 'top2' ? Math.min(2, k) : k;
}

/**
 * The ensemble weights [rows, k] from router probabilities [rows, k]: the `kept` largest of
 * each row renormalised to sum to 1 (the paper's sparse top-k), the rest 0; ties go to the
 * lower expert index.
 */
export function routeWeights(probs: ArrayLike<number>, rows: number, k: number, kept: number): Float32Array {
  if (probs.length !== rows * k) throw new RangeError(`routeWeights: ${probs.length} probabilities for ${rows} rows of ${k}`);
  const w = new Float32Array(rows * k);
  const order = Array.from({ length: k }, (_, e) => e);
  for (let r = 0; r < rows; r++) {
    const row = (e: number) => probs[r * k + e]!;
    const top = [...order].sort((a, b) => row(b) - row(a) || a - b).slice(0, kept);
    const total = top.reduce((s, e) => s + row(e), 0);
    for (const e of top) w[r * k + e] = total > 0 ? row(e) / total : 1 / kept;
  }
  return w;
}

/** Probabilities [rows, k] over the experts for a batch x_t at model times t (and classes). */
export type Router = (x: Batch, t: Float64Array, condition?: unknown) => Promise<Float32Array>;

export interface EnsembleStats {
  /** Expert calls and the rows each expert was given (padding included). */
  expertCalls: number[];
  expertRows: number[];
}

/**
 * The experts as one Denoiser: per call, the router's probabilities, the mode's weights, and
 * sum_k w_k(x_t) D_k(x_t) where each expert runs only on the rows that give it weight (so
 * top-1 costs one expert evaluation per row, as in the paper). Sub-batches are padded with
 * copies of their first row to a multiple of `padTo` rows, so a compiled expert meets a few
 * batch shapes instead of one per possible count.
 */
export function ensembleDenoiser(experts: readonly Denoiser[], router: Router, mode: EnsembleMode,
  opts: { padTo?: number } = {}): Denoiser & { stats: EnsembleStats } {
  const k = experts.length;
  if (k < 1) throw new RangeError('ensemble: no experts');
  const prediction = experts[0]!.prediction;
  const other = experts.findIndex((e) => e.prediction !== prediction);
  if (other >= 0) {
    throw new TypeError(`ensemble: expert ${other} predicts ${experts[other]!.prediction}, expert 0 ${prediction}; ` +
      'the experts of one ensemble must share a prediction type');
  }
  const padTo = opts.padTo ?? 8;
  const stats: EnsembleStats = { expertCalls: Array(k).fill(0), expertRows: Array(k).fill(0) };
  return {
    prediction,
    stats,
    async predict(x, t, condition) {
      const rows = x.shape[0]!;
      const per = x.data.length / rows;
      const probs = await router(x, t, condition);
      const w = routeWeights(probs, rows, k, expertsKept(mode, k));
      const labels = condition === undefined ? undefined : conditionLabels(condition);
      const out = new Float32Array(x.data.length);
      for (let e = 0; e < k; e++) {
        const mine: number[] = [];
        for (let r = 0; r < rows; r++) if (w[r * k + e]! > 0) mine.push(r);
        if (mine.length === 0) continue;
        const padded = Math.min(Math.ceil(mine.length / padTo) * padTo, Math.max(rows, mine.length));
        const take = Array.from({ length: padded }, (_, i) => mine[i] ?? mine[0]!);
        const xs = new Float32Array(padded * per);
        take.forEach((r, i) => xs.set(x.data.subarray(r * per, (r + 1) * per), i * per));
        const y = await experts[e]!.predict(new HostArray<'float32'>(xs, [padded, ...x.shape.slice(1)], 'float32'),
          Float64Array.from(take, (r) => t[r]!), labels && take.map((r) => labels[r]!));
        stats.expertCalls[e]!++;
        stats.expertRows[e]! += padded;
        mine.forEach((r, i) => {
          const we = w[r * k + e]!;
          for (let j = 0; j < per; j++) out[r * per + j]! += we * y.data[i * per + j]!;
        });
      }
      return new HostArray<'float32'>(out, x.shape, 'float32');
    },
  };
}
