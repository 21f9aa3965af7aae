/**
 * @file PPAP: Go, Lee, Kim, Kim, Kim & Lee 2022/2023, "Towards Practical Plug-and-Play
 * Diffusion Models" (CVPR 2023; official code: riiid/PPAP).
 *
 * Claim: an off-the-shelf classifier trained on clean images fails as a guide for a diffusion
 * model, because at most timesteps it is shown x_t, far from anything it saw. Splitting
 * [0, T) into N equal ranges and giving each an "expert" - a parameter-efficient (LoRA)
 * fine-tune of the same clean classifier, trained only on x_t from its range - guides as well
 * as a fully supervised noise-aware classifier, with a small fraction of trainable parameters
 * and without labelled data: the experts are distilled data-free, from images the diffusion
 * model itself generates, with the clean classifier's (temperature-sharpened) predictions on
 * the clean generated image as soft targets.
 *
 * Notation (paper -> here):
 *
 * | paper                         | here                                         |
 * |-------------------------------|----------------------------------------------|
 * | T, N experts                  | `T`, `ranges.length` (expertRanges)          |
 * | phi (clean classifier)        | the teacher; its logits on x0 -> softTargets |
 * | f_phi_n (expert n, on x_t)    | the student; its logits on x_t               |
 * | tau (softmax temperature)     | `tau` (0.25 in the brief's setting)          |
 * | x_t = sqrt(abar_t) x0 + ...   | x_t = alpha_t x0 + sigma_t eps (noisySample) |
 *
 * The distillation loss KL(softmax(teacher(x0) / tau) || softmax(student(x_t))) equals the
 * cross-entropy with soft targets minus the targets' entropy, which does not depend on the
 * student; softCrossEntropy is that cross-entropy. The supervised baseline trains the same
 * experts on labelled real images with plain cross-entropy.
 */
import * as ops from '../engine/ops.js';
import type { Tensor } from '../engine/tensor.js';
import { noisySample } from '../diffusion/training.js';
import { crossEntropy } from '../models/classifier.js';

/** A half-open range [lo, hi) of training timesteps. */
export type TimestepRange = readonly [number, number];

/** n equal half-open ranges covering [0, T): [floor(k T / n), floor((k + 1) T / n)). */
export function expertRanges(T: number, n: number): TimestepRange[] {
  if (!Number.isInteger(T) || T < 1) {
    throw new RangeError(`expertRanges: T must be an integer >= 1, got ${T}`);
  }
  if (!Number.isInteger(n) || n < 1 || n > T) {
    throw new RangeError(`expertRanges: the number of experts must be an integer from 1 to ` +
      `T = ${T}, got ${n}`);
  }
  return Array.from({ length: n }, (_, k): TimestepRange =>
    [Math.floor((k * T) / n), Math.floor(((k + 1) * T) / n)]);
}

/** The index of the range holding model time t (lo <= t < hi); t outside all is an error. */
export function expertFor(t: number, ranges: readonly TimestepRange[]): number {
  const k = ranges.findIndex(([lo, hi]) => t >= lo && t < hi);
  if (k < 0) {
    const span = ranges.length ? `[${ranges[0]![0]}, ${ranges[ranges.length - 1]![1]})` : '(none)';
    throw new RangeError(`expertFor: timestep ${t} is in no expert's range ${span}`);
  }
  return k;
}

/** Integer timesteps uniform in [lo, hi), one per draw u in [0, 1). */
export function timestepsIn(range: TimestepRange, u: ArrayLike<number>): Float64Array {
  const [lo, hi] = range;
  return Float64Array.from(u, (v) => Math.min(lo + Math.floor(v * (hi - lo)), hi - 1));
}

/** The teacher's soft targets softmax(logits / tau) [N, K]; tau < 1 sharpens them. */
export function softTargets(teacherLogits: Tensor, tau: number): Tensor {
  if (!(tau > 0)) throw new RangeError(`softTargets: tau must be > 0, got ${tau}`);
  return ops.softmax(ops.div(teacherLogits, tau), -1);
}

/** Mean over the batch of -sum_k q_k log softmax(s)_k: logits s [N, K], targets q [N, K]. */
export function softCrossEntropy(studentLogits: Tensor, targets: Tensor): Tensor {
  const logp = ops.logSoftmax(studentLogits, -1); // [N, K]
  return ops.neg(ops.mean(ops.sum(ops.mul(logp, targets), -1)));
}

/**
 * One expert's batch: clean images, their noise and process points (alpha, sigma [N, 1, 1, 1]
 * at timesteps drawn in the expert's range), and either the teacher's soft targets [N, K]
 * (PPAP) or true labels int64 [N] (the supervised baseline).
 */
export type ExpertBatch<T = Tensor> = {
  x0: T; eps: T; alpha: T; sigma: T;
} & ({ soft: T; labels?: never } | { labels: T; soft?: never });

/** The expert loss: the student's logits on x_t against soft targets or labels. */
export function expertLoss(logits: (x: Tensor) => Tensor, b: ExpertBatch): Tensor {
  const xt = noisySample(b.x0, b.eps, b.alpha, b.sigma); // [N, C, H, W]
  const s = logits(xt); // [N, K]
  return b.soft ? softCrossEntropy(s, b.soft) : crossEntropy(s, b.labels!);
}
