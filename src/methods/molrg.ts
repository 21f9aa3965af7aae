/**
 * @file Mixture of low-rank Gaussians (MoLRG): Wang, Zhang, Zhang, Chen, Ma and Qu 2024,
 * "Diffusion Models Learn Low-Dimensional Distributions via Subspace Clustering"
 * (arXiv 2409.02426; code github.com/huijieZH/Diffusion-Model-Generalizability).
 *
 * Claim: model images as a MoLRG, x0 = U_k a with a ~ N(0, I_d) and U_k an orthonormal D x d
 * basis, one of K components; parametrise the denoiser (DAE) the way the MoLRG's optimal
 * denoiser is written, with learnable bases. Then minimising the diffusion training loss over
 * N samples is subspace clustering of those samples, and the number of samples needed to learn
 * the distribution grows linearly with the intrinsic dimension d, not with D: a phase
 * transition from failure (N_k below about d_k per component) to generated samples that lie
 * on the true subspaces.
 *
 * The low-rank DAE (the oracle of METHODS 18 with equal weights pi_k and equal d_k, its
 * log-det terms cancelling in the softmax):
 *
 *     D(x_t) = c_t sum_k w_k(x_t) U_k U_k^T x_t,   c_t = alpha / (alpha^2 + sigma^2),
 *     w_k = softmax_k( alpha^2 |U_k^T x_t|^2 / (2 sigma^2 (alpha^2 + sigma^2)) ).
 *
 * | paper          | here                                                  |
 * |----------------|-------------------------------------------------------|
 * | U_k (D x d)    | `bases[k]`, parameter [K, D, d]; not kept orthonormal  |
 * | s_t, sigma_t   | alpha, sigma of the DDPM process (x_t = alpha x0 + sigma eps) |
 * | N_k            | `perComponent`: training samples drawn from each component |
 *
 * The paper writes the DAE for x_t = s_t x0 + gamma_t eps and the official trainMoLRG.py trains
 * with EDM's preconditioning and loss (s_t = 1); this trains on the project's DDPM process
 * (trainingScheduler('x0'), uniform t over 1,000 steps, x0 regression weighted as EDM weights
 * it, see DEFAULT_WEIGHTING), for which the same formula holds with alpha != 1. The parametric
 * network that trainMoLRG.py names ('param-mlp', ParametericMLP) is not in the released
 * networks.py; this DAE is written from the formula above.
 *
 * Success of a generated sample: its relative residual to the nearest true subspace,
 * min_k |x - U_k U_k^T x| / |x|, below 0.1 (within about 6 degrees of a true subspace). An
 * isotropic Gaussian vector in D dimensions has residual about sqrt((D - d) / D) (0.91 for
 * D = 48, d = 8); in docs/molrg.csv the samples of DAEs that recovered the subspaces have
 * median residuals of 0.002-0.02, those of DAEs whose bases mix two subspaces 0.13-0.52, so
 * 0.1 sits between the two. A DAE that learned part of a subspace (N_k < d) samples on it and
 * passes: the recovery of the bases (subspaceDistance) is reported beside it for that.
 * TODO: the paper's exact success criterion and threshold were not found in the released code.
 */
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { RngStream } from '../engine/random/stream.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import type { Tree } from '../engine/tree.js';
import { sample } from '../diffusion/sampling.js';
import {
  lossWeights, noisySample, processOf, trainingPoints, trainingScheduler, trainingTarget,
  type Weighting,
} from '../diffusion/training.js';
import { orthonormalColumns, symmetricEigen } from '../data/analytic/linalg.js';
import { subspaceResiduals } from '../data/analytic/metrics.js';
import { GaussianMixture } from '../data/analytic/mixture.js';
import type { RandomSource } from '../data/analytic/random.js';
import { normal } from '../nn/init.js';
import { Module, Param, type ParamsOf } from '../nn/module.js';
import { adamw } from '../nn/optim.js';
import { cosineLr } from '../nn/schedules.js';
import { compileTrainStep } from '../nn/train.js';
import { graphDenoiser, type GraphDenoiser } from '../pipelines/graph-denoiser.js';

/** The training process: DDPM linear betas, an x0-prediction model (the DAE predicts x0). */
export const MOLRG_SCHEDULER = trainingScheduler('x0');

/** A generated sample within this relative residual of a true subspace is a success. */
export const SUCCESS_THRESHOLD = 0.1;

// ---- data ----

export interface MolrgShape {
  /** Ambient dimension D. */
  ambient: number;
  /** Intrinsic dimension d of every component. */
  dim: number;
  /** Number of components K. */
  components: number;
}

/**
 * A MoLRG with equal weights and unit variances whose K subspaces are mutually orthogonal
 * blocks of one random orthonormal D x Kd basis, as the official dataset builds them (one SVD
 * split into blocks).
 */
export function randomMolrg(s: MolrgShape, rng: RandomSource): GaussianMixture {
  const { ambient: D, dim: d, components: K } = s;
  if (K * d > D) {
    throw new RangeError(`randomMolrg: K d = ${K * d} orthogonal directions need D >= ${K * d}, ` +
      `got D = ${D}`);
  }
  const all = orthonormalColumns(rng.normal(D * K * d), D, K * d); // [D, K d]
  const bases = Array.from({ length: K }, (_, k) =>
    Array.from({ length: D * d }, (_, i) => all[Math.floor(i / d) * K * d + k * d + (i % d)]!));
  return GaussianMixture.lowRank(bases.map(() => 1), bases.map(() => new Array(D).fill(0)),
    bases, bases.map(() => d));
}

/** `perComponent` samples of each component, [K n, D] row-major, grouped by component. */
export function balancedSamples(mix: GaussianMixture, perComponent: number,
  rng: RandomSource): Float64Array {
  const D = mix.dim;
  const out = new Float64Array(mix.components.length * perComponent * D);
  mix.components.forEach((c, k) => {
    const d = c.variances.length;
    const a = rng.normal(perComponent * d);
    for (let i = 0; i < perComponent; i++) {
      const row = (k * perComponent + i) * D;
      for (let r = 0; r < D; r++) {
        let v = 0;
        for (let j = 0; j < d; j++) v += c.basis[r * d + j]! * a[i * d + j]!;
        out[row + r] = v;
      }
    }
  });
  return out;
}

// ---- model ----

export class LowRankDae extends Module {
  /** U_k stacked: [K, D, d]. */
  readonly bases: Param;
  constructor(readonly shape: MolrgShape) {
    super();
    // N(0, 1/D) entries: columns of about unit norm and nearly orthogonal for d << D, the
    // scale of an orthonormal basis without enforcing it.
    this.bases = new Param([shape.components, shape.ambient, shape.dim],
      normal(1 / Math.sqrt(shape.ambient)));
  }

  /** x [N, D], alpha and sigma [N] or [N, 1] -> the x0 estimate [N, D]. Bases with leading
   *  axes ([R, K, D, d]: R sets of bases) give one estimate per set, [R, N, D]. */
  forward(p: ParamsOf<LowRankDae>, x: Tensor, alpha: Tensor, sigma: Tensor): Tensor {
    const a = ops.reshape(alpha, [-1]); // [N]
    const s = ops.reshape(sigma, [-1]); // [N]
    const a2 = ops.square(a);
    const v = ops.add(a2, ops.square(s)); // alpha^2 + sigma^2, [N]
    const r = p.bases.rank;
    const proj = ops.matmul(x, p.bases); // U_k^T x: [..., K, N, d]
    const energy = ops.sum(ops.square(proj), -1); // |U_k^T x|^2: [..., K, N]
    const logits = ops.mul(energy, ops.div(a2, ops.mul(ops.mul(ops.square(s), v), 2)));
    const w = ops.unsqueeze(ops.softmax(logits, -2), -1); // [..., K, N, 1]
    const swap = [...Array(r - 2).keys(), r - 1, r - 2];
    const back = ops.matmul(proj, ops.transpose(p.bases, swap)); // U_k U_k^T x: [..., K, N, D]
    const mixed = ops.sum(ops.mul(back, w), -3); // [..., N, D]
    return ops.mul(mixed, ops.reshape(ops.div(a, v), [-1, 1])); // c_t sum_k w_k ...: [..., N, D]
  }
}

/**
 * alpha and sigma [N] of the DDPM process at model times t [N], inside a graph: the noise
 * level sigma / alpha interpolated linearly between table steps, as discreteVp does.
 */
function tracedCoefficients(t: Tensor, levels: Float32Array): { alpha: Tensor; sigma: Tensor } {
  const T = levels.length;
  const next = Float32Array.from(levels, (_, i) => levels[Math.min(i + 1, T - 1)]!);
  const tc = ops.clamp(ops.cast(t, 'float32'), 0, T - 1);
  const i0 = ops.clamp(ops.floor(tc), 0, T - 2);
  const idx = ops.cast(i0, 'int64');
  const lo = ops.gather(ops.constant(new HostArray(levels, [T])), idx, 0); // [N]
  const hi = ops.gather(ops.constant(new HostArray(next, [T])), idx, 0); // [N]
  const level = ops.add(lo, ops.mul(ops.sub(tc, i0), ops.sub(hi, lo)));
  const alpha = ops.rsqrt(ops.add(ops.square(level), 1));
  return { alpha, sigma: ops.mul(level, alpha) };
}

/** The DAE with fixed bases as an x0 Denoiser on MOLRG_SCHEDULER's process. */
export function daeDenoiser(model: LowRankDae, params: ParamsOf<LowRankDae, HostArray>):
  GraphDenoiser {
  const proc = processOf(MOLRG_SCHEDULER);
  const T = proc.tMax + 1;
  const levels = Float32Array.from({ length: T }, (_, i) => {
    const { alpha, sigma } = proc.at(i);
    return sigma / alpha;
  });
  const consts = ops.constantTree(params as Tree<HostArray>) as ParamsOf<LowRankDae>;
  return graphDenoiser((x, t) => {
    const { alpha, sigma } = tracedCoefficients(t, levels);
    return model.forward(consts, x, alpha, sigma);
  }, MOLRG_SCHEDULER.prediction, { name: 'molrg_dae' });
}

/** The DAE's parameters with the mixture's true bases plugged in (the oracle, for checks). */
export function trueParams(mix: GaussianMixture): ParamsOf<LowRankDae, HostArray> {
  const K = mix.components.length;
  const d = mix.components[0]!.variances.length;
  const data = new Float32Array(K * mix.dim * d);
  mix.components.forEach((c, k) => data.set(c.basis, k * mix.dim * d));
  return { bases: new HostArray(data, [K, mix.dim, d]) };
}

// ---- training and sampling ----

export interface MolrgTrainOptions {
  /** The training set [n, D] row-major (noise-free MoLRG samples). */
  data: Float64Array;
  shape: MolrgShape;
  steps: number;
  batchSize?: number;
  lr?: number;
  seed?: number;
  /** The loss weighting over noise levels (default EDM's, see DEFAULT_WEIGHTING). */
  weighting?: Weighting;
  /** Random initialisations trained side by side; the lowest training loss is kept. */
  restarts?: number;
  onStep?: (step: number, loss: number) => void;
}

/**
 * EDM's loss weight (Karras et al. 2022, eq. 8) with its sigma_data = 0.5, as the official
 * trainMoLRG.py trains (precond 'edm'): it weights the small noise levels where the loss is
 * the clustering objective. Under uniform weighting, mid and high noise levels, where the
 * softmax is soft, dominate, and with N = 2d samples per component wrong bases fitted the
 * training set with a lower loss than the true ones (d = 4: 0.0457 against 0.0463).
 */
export const DEFAULT_WEIGHTING: Weighting = { kind: 'edm', sigmaData: 0.5 };

export interface TrainedDae {
  model: LowRankDae;
  params: ParamsOf<LowRankDae, HostArray>;
  /** Mean loss over all restarts, per step. */
  losses: number[];
  /** The final training loss of each restart (on one fixed batch of 2,048). */
  restartLosses: number[];
  seconds: number;
}

/** The batch of one step: x0 drawn with replacement from the training set, noise and times. */
function trainingBatch(data: Float64Array, D: number, n: number, w: Weighting,
  stream: RngStream): Record<string, HostArray> {
  const pick = stream.uniformInt(n, data.length / D);
  const x0 = new Float32Array(n * D);
  pick.forEach((r, j) => x0.set(data.subarray(r * D, (r + 1) * D), j * D));
  const pts = trainingPoints(MOLRG_SCHEDULER, stream.uniform(n));
  return {
    x0: new HostArray(x0, [n, D]),
    eps: new HostArray(stream.normal32(n * D), [n, D]),
    alpha: new HostArray(pts.alpha, [n, 1]),
    sigma: new HostArray(pts.sigma, [n, 1]),
    weight: new HostArray(lossWeights(w, MOLRG_SCHEDULER.prediction, pts), [n, 1]),
  };
}

/**
 * Trains the low-rank DAE by weighted x0 regression on the DDPM process, each batch drawn with
 * replacement from the fixed training set with fresh noise and times (AdamW, warm-up then
 * cosine decay, no weight decay: a decay would shrink U_k's scale, which the DAE needs).
 *
 * Gradient descent on the clustering objective stalls in local minima (U_k partly in one
 * true subspace, partly in the other) from a share of random initialisations whatever N: at
 * d = 4 and N = 4d, 8d, 6 seeds, about 40% at lr 1e-2; at d = 8, N = 2d, most of 8 at lr 1e-2,
 * with the true bases' training loss below the one reached. The paper's claim is about the
 * loss's minimiser, so `restarts` initialisations (default 8) train side by side in one graph,
 * sharing batches, and the one with the lowest loss on a fixed training batch is kept
 * (selection by training loss alone); lr 5e-2 escaped more of them than 1e-2 or 1e-1.
 */
export async function trainLowRankDae(o: MolrgTrainOptions): Promise<TrainedDae> {
  const D = o.shape.ambient;
  const R = o.restarts ?? 8;
  const model = new LowRankDae(o.shape);
  const batchSize = o.batchSize ?? 256;
  const key = RngKey.fromSeed(o.seed ?? 0);
  const weighting = o.weighting ?? DEFAULT_WEIGHTING;
  // per-restart losses [R] of bases [R, K, D, d]; forward broadcasts over the leading axis
  const restartLoss = (bases: Tensor, b: Record<string, Tensor>): Tensor => {
    const { x0, eps, alpha, sigma, weight } = b;
    const xt = noisySample(x0!, eps!, alpha!, sigma!); // [B, D]
    const target = trainingTarget(MOLRG_SCHEDULER.prediction, x0!, eps!, alpha!, sigma!);
    const out = model.forward({ bases }, xt, alpha!, sigma!); // [R, B, D]
    return ops.mean(ops.mul(ops.square(ops.sub(out, target)), weight!), [1, 2]); // [R]
  };
  const trainer = compileTrainStep((p, b) => ops.mean(restartLoss((p as { bases: Tensor }).bases,
    b as Record<string, Tensor>)), adamw({
    lr: cosineLr(o.lr ?? 5e-2, o.steps, Math.min(100, o.steps / 10), 1e-4), weightDecay: 0 }),
  { runtime: { name: 'molrg_train' } });
  const inits = Array.from({ length: R }, (_, r) => model.init(key.fold(r)).bases);
  const stacked = new Float32Array(R * inits[0]!.data.length);
  inits.forEach((a, r) => stacked.set(a.data as Float32Array, r * a.data.length));
  let state = trainer.init({ bases: new HostArray(stacked, [R, ...inits[0]!.shape]) });
  const stream = new RngStream(key.fold(1000));
  const losses: number[] = [];
  const start = performance.now();
  try {
    for (let i = 0; i < o.steps; i++) {
      const r = await trainer.step(state, trainingBatch(o.data, D, batchSize, weighting, stream));
      state = r.state;
      losses.push(r.metrics.loss);
      o.onStep?.(i, r.metrics.loss);
    }
  } finally {
    await trainer.dispose();
  }
  const evaluate = compile((bases: Tensor, b: Record<string, Tensor>) => restartLoss(bases, b),
    { name: 'molrg_restart_loss' });
  let restartLosses: number[];
  try {
    const bases = (state.params as { bases: HostArray }).bases;
    const batch = trainingBatch(o.data, D, 2048, weighting, new RngStream(key.fold(2000)));
    restartLosses = Array.from(((await evaluate(bases, batch)) as HostArray).data as Float32Array);
  } finally {
    await evaluate.dispose();
  }
  const best = restartLosses.indexOf(Math.min(...restartLosses));
  const all = (state.params as { bases: HostArray }).bases;
  const size = all.data.length / R;
  const params = { bases: new HostArray((all.data as Float32Array).slice(best * size,
    (best + 1) * size), all.shape.slice(1)) };
  return { model, params, losses, restartLosses, seconds: (performance.now() - start) / 1000 };
}

/** n samples [n, D] of the DAE with DDIM (eta 0, x0 predictions) in `steps` steps. */
export async function sampleDae(m: { model: LowRankDae; params: ParamsOf<LowRankDae, HostArray> },
  n: number, o: { steps?: number; sampler?: string; seed?: number } = {}): Promise<Float32Array> {
  const denoiser = daeDenoiser(m.model, m.params);
  const key = RngKey.fromSeed(o.seed ?? 1);
  const D = m.model.shape.ambient;
  try {
    const noise = (count: number, step: number): Float32Array => key.fold(step + 1).normal(count);
    const x = new HostArray<'float32'>(noise(n * D, -1), [n, D], 'float32');
    const out = await sample(denoiser, x, MOLRG_SCHEDULER,
      { sampler: o.sampler ?? 'ddim', steps: o.steps ?? 50, noise });
    return Float32Array.from(out.data);
  } finally {
    await denoiser.dispose();
  }
}

// ---- metrics ----

/** min_k |x - U_k U_k^T x| / |x| for each row of x [n, D] (zero rows count as residual 1). */
export function relativeResiduals(x: ArrayLike<number>, mix: GaussianMixture): Float64Array {
  const D = mix.dim;
  const { residual } = subspaceResiduals(x, mix);
  return residual.map((r, i) => {
    let norm = 0;
    for (let j = 0; j < D; j++) norm += x[i * D + j]! ** 2;
    return norm > 0 ? r / Math.sqrt(norm) : 1;
  });
}

/** The fraction of rows of x [n, D] within `threshold` relative residual of a true subspace. */
export function successRate(x: ArrayLike<number>, mix: GaussianMixture,
  threshold = SUCCESS_THRESHOLD): number {
  const r = relativeResiduals(x, mix);
  return r.reduce((s, v) => s + (v < threshold ? 1 : 0), 0) / r.length;
}

/** The projector [D, D] onto the span of the top `d` left singular vectors of B [D, d]. */
function topProjector(b: ArrayLike<number>, D: number, d: number): Float64Array {
  const gram = new Float64Array(D * D); // B B^T
  for (let i = 0; i < D; i++) {
    for (let j = 0; j < D; j++) {
      let s = 0;
      for (let q = 0; q < d; q++) s += b[i * d + q]! * b[j * d + q]!;
      gram[i * D + j] = s;
    }
  }
  const { values, vectors } = symmetricEigen(gram, D);
  const top = [...values.keys()].sort((p, q) => values[q]! - values[p]!).slice(0, d);
  const proj = new Float64Array(D * D);
  for (const e of top) {
    for (let i = 0; i < D; i++) {
      const vi = vectors[i * D + e]!;
      for (let j = 0; j < D; j++) proj[i * D + j] = proj[i * D + j]! + vi * vectors[j * D + e]!;
    }
  }
  return proj;
}

/**
 * Subspace distance between learned bases [K, D, d] and the mixture's: for the best matching
 * of components, the mean over k of |P_hat_k - U_k U_k^T|_F / sqrt(2 d), P_hat_k the projector
 * onto the top-d singular directions of U_hat_k; 0 for the true subspaces, 1 for orthogonal ones.
 */
export function subspaceDistance(bases: HostArray, mix: GaussianMixture): number {
  const [K, D, d] = bases.shape as [number, number, number];
  const data = bases.data as Float32Array;
  const learned = Array.from({ length: K }, (_, k) =>
    topProjector(data.subarray(k * D * d, (k + 1) * D * d), D, d));
  const truth = mix.components.map((c) => topProjector(c.basis, D, d));
  const dist = learned.map((p) => truth.map((q) =>
    Math.sqrt(p.reduce((s, v, i) => s + (v - q[i]!) ** 2, 0) / (2 * d))));
  let best = Infinity;
  for (const perm of permutations(K)) {
    best = Math.min(best, perm.reduce((s, j, k) => s + dist[k]![j]!, 0) / K);
  }
  return best;
}

function permutations(n: number): number[][] {
  if (n === 0) return [[]];
  return permutations(n - 1).flatMap((p) =>
    Array.from({ length: n }, (_, i) => [...p.slice(0, i), n - 1, ...p.slice(i)]));
}
