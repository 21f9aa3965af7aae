/**
 * @file InvDiff: Hou, Wu, Xu, Huang, Bai, Wu & Bian 2024, "InvDiff: Invariant Guidance for
 * Bias Mitigation in Diffusion Models" (arXiv 2412.08480, KDD 2025; official code
 * github.com/Hundredl/InvDiff).
 *
 * Claim: a diffusion model trained on biased data can be debiased without bias labels and
 * without touching its weights: infer the bias annotations (environments) by maximising a
 * debiasing objective over the partition, then train a lightweight module that adds a mean
 * shift to the frozen model's noise prediction by minimising the same objective; sampling with
 * that shift (invariant guidance) gives less biased images at about the same quality
 * (Waterbirds, CelebA, FairFace).
 *
 * Verified in the official code (read, not run):
 * - the objective (src/train_text_to_image.py, `--eiil 1`, training and validation loops):
 *   per-sample denoising MSE, its weighted mean R_e in each environment e (soft or one-hot
 *   weights [B, G] per row), environments whose mean is 0 (no weight in the batch) dropped,
 *   then mean_e R_e + lambda Var_e R_e (torch's unbiased variance); `invariantObjective`
 *   below (which drops environments by weight rather than by value);
 * - the module (src/model/epsilon_with_delta.py): a second U-Net of the same interface whose
 *   output conv starts at zero, combined with the frozen U-Net's output (`delta_ratio <= -1`:
 *   base + delta; otherwise the mix r delta + (1 - r) base); `meanShift` below. The fairness
 *   scripts read (lambda 1, lr 1e-4, batch 64, 10,000 steps) use r = 0.8, so training starts
 *   from a fifth of the base's prediction, and a delta that is a copy of the base
 *   (`pretrain`) or one of the base's size (`small0`); smaller presets exist (`small1`-`5`).
 *   Their `hard` runs take the environments from the dataset's group labels, the `soft`
 *   runs from the grouper below;
 * - the max step (src/group/train_group.py): soft weights [N, G] over the simplex, optimised
 *   by Adam (500 steps) to maximise the standard deviation over environments of the biased
 *   model's weighted mean per-sample score, plus a term on the smallest weighted score. The
 *   score (src/group/generate_train_text_to_image.py) is taken at a random t per image and
 *   is MSE(predicted noise, clean latent): the noise target is saved beside it but unused.
 *   Read here as the per-image denoising loss (prediction against its target).
 * Read only through summaries of the paper (its text was not reachable here): that the
 * module is written G_psi(x_t, t, Phi(y)) with an encoder Phi of the condition, and that the
 * paper proves the objective bounds the generalisation error. Here: base + s x module with a
 * small U-Net (the `tiny` preset, 45k weights beside the MNIST U-Net's 1.1M), so the module is
 * lightweight as the paper describes it and starts exactly at the base; the sampling-time
 * scale s (trained at 1) is this file's knob.
 *
 * This file's reading at MNIST scale (the stand-in: stroke thickness correlated with the
 * digit, data/biased-mnist.ts):
 * - G = 2 hard environments, inferred per class from the biased model's per-image
 *   conditional denoising loss (the official grouper's input), averaged over a few
 *   stratified (t, eps) draws that every image shares (common random numbers: the images'
 *   losses then differ by the images, not by the draws). Per class, because the loss level
 *   differs between classes far more than between the bias-aligned and bias-conflicting
 *   images of one class.
 * - The max step in hard form: the one-threshold split of a class's losses that best fits
 *   them as two Gaussians (`twoGaussianSplit`, Kittler & Illingworth's minimum-error
 *   threshold), exact by a scan. The literal hard form of "maximise the variance of the
 *   environments' mean losses", the share-weighted between-group variance (Otsu), favours
 *   balanced environments: on the synthetic set of invdiff.test.ts (5% exceptions five
 *   standard deviations out) it cut 66 of 200 images off one class where 10 are exceptions.
 *   The official unweighted standard deviation is maximised by splitting off single extreme
 *   images, which its extra term fights.
 * - Measured on the tiny 8x8 set (two classes, 5% exceptions): with independent draws per
 *   image the exceptions were found exactly only from 32 draws (16: 35-83% precision, by
 *   split; 4: 23-33%); with shared draws, exactly from 4. Tried and dropped: the label's
 *   share of the loss, L(x_t, y) - L(x_t, null) (the diffusion model itself as JTT's biased
 *   reference classifier), which with independent draws found nothing (4% precision).
 * - Each batch takes B / G rows from every environment (`environmentRows`), and the rows of
 *   the environments share their (t, eps) draws, so the batch's R_e differ by the data, not
 *   by the noise: the objective's group means are then estimated with far less variance than
 *   from a 5%-minority random batch.
 * - Measured on that set (base 300 steps, module 150 steps, DDPM-50 at CFG 1.5, 50 samples
 *   per class): plain CFG gave bold shares 0.70 / 0.18 (bias 0.26, correlation 0.52);
 *   InvDiff with lambda 0 (the environment-balanced mean alone) 0.54 / 0.32 (0.11, 0.22),
 *   lambda 1 0.30 / 0.48 (0.11, -0.19), lambda 10 0.06 / 0.60 (0.27, -0.57): the variance
 *   term pushes past balance (equal environment losses are not equal shares). TODO: whether
 *   that holds at MNIST scale, and a lambda between 0 and 1 there.
 *
 * Notation (paper -> here):
 *   eps_theta(x_t, t, y)   the frozen base model's prediction        base
 *   G_psi(x_t, t, Phi(y))  the module (its own class embedding Phi)  module
 *   s                      the shift's scale at sampling (1 trained) scale
 *   e, G                   environment (inferred bias group), count  env, groups
 *   R_e                    mean denoising loss in environment e      means
 *   lambda                 weight of the variance over environments  lambda
 */
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import type { RngKey } from '../engine/random/philox.js';
import type { Tensor } from '../engine/tensor.js';

// ---- bias identification: the max step ----

export interface Split {
  /** Scores above it form the high environment. */
  threshold: number;
  /** How many scores are above it. */
  high: number;
  /** The fit's criterion J (lower is better; see twoGaussianSplit). */
  criterion: number;
}

/**
 * The two-way split of `scores` that best explains them as two Gaussians, one per
 * environment: the threshold minimising Kittler & Illingworth's (1986) minimum-error
 * criterion J = sum_e pi_e (ln sigma_e^2 - 2 ln pi_e), pi_e the environment's share and
 * sigma_e^2 its variance, i.e. maximising the likelihood of the hard two-Gaussian fit. Exact:
 * sort, then scan every cut between distinct values leaving at least `minSize` scores
 * (default max(2, 1% of them)) on each side; variances are floored at 1e-9 of the total.
 * Fewer than 2 minSize scores, or no cut: everything low.
 */
export function twoGaussianSplit(scores: ArrayLike<number>, minSize?: number): Split {
  const v = Float64Array.from(scores).sort();
  const n = v.length;
  const m = Math.max(1, minSize ?? Math.max(2, Math.ceil(0.01 * n)));
  const centre = n ? v.reduce((a, b) => a + b, 0) / n : 0;
  const total = v.reduce((a, b) => a + (b - centre) ** 2, 0);
  const floor = Math.max(1e-9 * (total / Math.max(n, 1)), Number.MIN_VALUE);
  let best: Split = { threshold: n ? v[n - 1]! : 0, high: 0, criterion: Infinity };
  const [s1, s2] = [v.reduce((a, b) => a + (b - centre), 0), total];
  let [l1, l2] = [0, 0]; // sums of (x - centre) and its square over the low side
  const term = (k: number, sum: number, sq: number) => {
    const pi = k / n;
    return pi * (Math.log(Math.max(sq / k - (sum / k) ** 2, floor)) - 2 * Math.log(pi));
  };
  for (let i = 0; i < n - 1; i++) {
    const d = v[i]! - centre;
    [l1, l2] = [l1 + d, l2 + d * d];
    const k = i + 1; // scores in the low environment
    if (v[i + 1] === v[i] || k < m || n - k < m) continue;
    const criterion = term(k, l1, l2) + term(n - k, s1 - l1, s2 - l2);
    if (criterion < best.criterion) {
      best = { threshold: (v[i]! + v[i + 1]!) / 2, high: n - k, criterion };
    }
  }
  return best;
}

export interface Environments {
  /** 1 for images above their class's threshold (suspected bias-conflicting), else 0. */
  env: Uint8Array;
  /** The split of each class (undefined for a class without images). */
  splits: (Split | undefined)[];
}

/** Splits every class by `twoGaussianSplit` of its images' scores (the biased model's mean
 *  loss; higher: suspected bias-conflicting); the environments pool the classes' two sides. */
export function inferEnvironments(scores: ArrayLike<number>, labels: ArrayLike<number>,
  classes: number): Environments {
  if (scores.length !== labels.length) {
    throw new RangeError(`inferEnvironments: ${scores.length} scores for ${labels.length} labels`);
  }
  const env = new Uint8Array(scores.length);
  const splits: (Split | undefined)[] = [];
  for (let c = 0; c < classes; c++) {
    const rows = Array.from({ length: labels.length }, (_, i) => i)
      .filter((i) => Number(labels[i]) === c);
    if (rows.length === 0) {
      splits.push(undefined);
      continue;
    }
    const s = twoGaussianSplit(rows.map((i) => scores[i]!));
    splits.push(s);
    for (const i of rows) env[i] = s.high > 0 && scores[i]! > s.threshold ? 1 : 0;
  }
  return { env, splits };
}

/** Agreement of inferred environments with a hidden attribute (for reports only): env 1
 *  should hold the images marked 1 in `conflicting` (bias-conflicting). */
export function environmentAgreement(env: ArrayLike<number>, conflicting: ArrayLike<number>):
  { precision: number; recall: number; size: number } {
  let [tp, predicted, actual] = [0, 0, 0];
  for (let i = 0; i < env.length; i++) {
    predicted += Number(env[i]);
    actual += Number(conflicting[i]);
    tp += Number(env[i]) * Number(conflicting[i]);
  }
  return { precision: predicted ? tp / predicted : NaN, recall: actual ? tp / actual : NaN,
    size: predicted };
}

// ---- the debiasing objective: the min step ----

/**
 * mean_e R_e + lambda Var_e R_e over the environments present in the batch, where R_e =
 * sum_b w_be l_b / sum_b w_be is environment e's weighted mean of the per-sample losses
 * `perSample` [B] under weights `groups` [B, G] (one-hot rows for hard environments), and Var
 * is the unbiased variance over the P environments present (0 when P = 1). The weights carry
 * no gradient.
 */
export function invariantObjective(perSample: Tensor, groups: Tensor, lambda: number): Tensor {
  const [b, g] = groups.shape as [number, number];
  if (groups.rank !== 2 || perSample.rank !== 1 || perSample.shape[0] !== b) {
    throw new RangeError(`invariantObjective: losses [${perSample.shape.join(', ')}] and ` +
      `environment weights [${groups.shape.join(', ')}]: expected [B] and [B, G]`);
  }
  const w = ops.stopGradient(groups);
  const count = ops.sum(w, [0]); // [G]
  const present = ops.cast(ops.greater(count, 0), 'float32'); // [G]
  const means = ops.div(ops.sum(ops.mul(ops.reshape(perSample, [b, 1]), w), [0]),
    ops.maximum(count, 1e-12)); // [G] (0 where absent)
  const p = ops.sum(present);
  const mean = ops.div(ops.sum(ops.mul(means, present)), p);
  const spread = ops.sum(ops.mul(ops.square(ops.sub(means, mean)), present));
  const variance = ops.div(spread, ops.maximum(ops.sub(p, 1), 1)); // 0 when p = 1
  return g === 1 ? mean : ops.add(mean, ops.mul(variance, lambda));
}

/**
 * The rows of one batch: `batchSize / groups` images from every environment, each drawn
 * uniformly (with replacement) from its members by `key`, environment-major. Throws if an
 * environment is empty or the batch does not divide.
 */
export function environmentRows(env: ArrayLike<number>, groups: number, batchSize: number,
  key: RngKey): Int32Array {
  if (batchSize % groups !== 0) {
    throw new RangeError(`environmentRows: a batch of ${batchSize} does not split into ` +
      `${groups} environments`);
  }
  const members = Array.from({ length: groups }, (_, e) =>
    Array.from({ length: env.length }, (_, i) => i).filter((i) => Number(env[i]) === e));
  const per = batchSize / groups;
  const out = new Int32Array(batchSize);
  members.forEach((m, e) => {
    if (m.length === 0) throw new RangeError(`environmentRows: environment ${e} has no images`);
    const pick = key.fold(e).uniformInt(per, m.length);
    for (let j = 0; j < per; j++) out[e * per + j] = m[pick[j]!]!;
  });
  return out;
}

/** One-hot environment weights [rows, groups] of the rows `rows`. */
export function environmentWeights(env: ArrayLike<number>, rows: ArrayLike<number>,
  groups: number): HostArray<'float32'> {
  const w = new Float32Array(rows.length * groups);
  for (let i = 0; i < rows.length; i++) w[i * groups + Number(env[rows[i]!])] = 1;
  return new HostArray(w, [rows.length, groups]);
}

// ---- the guidance ----

/** A prediction as a function of x [B, C, H, W], t [B] and labels [B] (int64). */
export type PredictFn = (x: Tensor, t: Tensor, labels?: Tensor) => Tensor;

/** Invariant guidance: eps_theta(x_t, t, y) + s G_psi(x_t, t, Phi(y)), the module's mean
 *  shift added to the frozen model's prediction (trained at s = 1). */
export function meanShift(base: PredictFn, module: PredictFn, scale: number): PredictFn {
  return (x, t, labels) => {
    const b = base(x, t, labels);
    return scale === 0 ? b : ops.add(b, ops.mul(module(x, t, labels), scale));
  };
}
