/**
 * @file MMD-DDM: Aiello, Valsesia & Magli 2023, "Fast Inference in Denoising Diffusion Models
 * via MMD Finetuning" (official code: diegovalsesia/MMD-DDM).
 *
 * Claim: fine-tuning a trained diffusion model through its own T'-step sampler, with the
 * Maximum Mean Discrepancy between generated and real images as the loss, substantially
 * improves sample fidelity at that step budget (CIFAR-10, CelebA, ImageNet, LSUN-Church).
 *
 * As the official code does it: T' deterministic DDIM steps (uniform skip, eta 0) from fresh
 * noise, gradients through every step of the chain; the loss is the unbiased MMD^2 estimate
 * (a U-statistic) between features of the generated and of an equally large real batch, with
 * the cubic polynomial kernel k(x, y) = (<x, y> / d + 1)^3 (KID's kernel); Adam, gradient
 * norm clipped to 0.5. The official features are Inception's; here they are the shipped MNIST
 * classifier's, the features MNIST-FID is computed on.
 */
import * as ops from '../engine/ops.js';
import type { Tensor } from '../engine/tensor.js';
import type { Tree } from '../engine/tree.js';
import type { Prediction } from '../diffusion/predictions.js';
import type { Schedule } from '../diffusion/schedule.js';
import { guidedRows, tracedDdim, type RowModel } from '../diffusion/traced-steps.js';

/** k(x, y) = (<x, y> / d + 1)^3 for rows x [n, d], y [m, d]: the Gram matrix [n, m]. */
export function polynomialKernel(x: Tensor, y: Tensor): Tensor {
  const d = x.shape[1] as number;
  const k = ops.add(ops.div(ops.matmul(x, ops.transpose(y, [1, 0])), d), 1);
  return ops.mul(ops.square(k), k);
}

/** k(a_i, b_i) summed over rows i: the diagonal of the Gram matrix of a and b [n, d]. */
function diagonalSum(a: Tensor, b: Tensor): Tensor {
  const k = ops.add(ops.div(ops.sum(ops.mul(a, b), [1]), a.shape[1] as number), 1);
  return ops.sum(ops.mul(ops.square(k), k));
}

/**
 * The unbiased estimate of MMD^2 between the distributions of rows x [n, d] and y [m, d]
 * under polynomialKernel. The within-set means leave out the i = j terms, which is what makes
 * the estimate unbiased (it can be negative when the distributions match); the official code
 * (KID's estimator) averages every cross pair. `paired`: row i of x and row i of y belong
 * together (a generated image and a real one of the same class), so the cross mean leaves out
 * i = j too: Gretton et al.'s MMD^2_u, unbiased for class-matched batches, where the all-pairs
 * cross mean is biased low by the matched pairs' extra similarity.
 */
export function mmd2Unbiased(x: Tensor, y: Tensor, paired = false): Tensor {
  const n = x.shape[0] as number;
  const m = y.shape[0] as number;
  if (!(n >= 2 && m >= 2)) throw new RangeError(`mmd2Unbiased: needs at least 2 rows per set, got ${n} and ${m}`);
  if (paired && n !== m) throw new RangeError(`mmd2Unbiased: paired rows need equal sets, got ${n} and ${m}`);
  const within = (z: Tensor, rows: number): Tensor =>
    ops.div(ops.sub(ops.sum(polynomialKernel(z, z)), diagonalSum(z, z)), rows * (rows - 1));
  const all = ops.sum(polynomialKernel(x, y));
  const cross = paired ? ops.div(ops.sub(all, diagonalSum(x, y)), n * (n - 1)) : ops.div(all, n * m);
  return ops.sub(ops.add(within(x, n), within(y, m)), ops.mul(cross, 2));
}

/** What one MMD-DDM step sees: noise to sample from, a real batch, and class labels for the
 *  generated rows of a class-conditional model. */
export interface MmdBatch {
  noise: Tensor;
  real: Tensor;
  labels?: Tensor;
}

export interface MmdDdmSetup {
  /** The model being fine-tuned, as a function of its parameters. */
  model: (params: Tree<Tensor>) => RowModel;
  prediction: Prediction;
  /** The DDIM schedule of T' steps the student will be sampled with. */
  schedule: Schedule;
  /** Classifier-free guidance inside the chain (1: none); the null class for it. */
  guidance: number;
  nullClass: number;
  /** Features [B, d] of images [B, C, H, W] in [-1, 1] (no trainable parameters). */
  features: (images: Tensor) => Tensor;
}

/**
 * The loss of one fine-tuning step: sample the batch's noise with the T'-step DDIM chain
 * (clamped to the data range, as images are scored), then MMD^2 between its features and the
 * real batch's. For a class-conditional model the generated row i gets real row i's label.
 */
export function mmdDdmLoss(s: MmdDdmSetup): (params: Tree<Tensor>, batch: Tree<Tensor>) => Tensor {
  return (params, batch) => {
    const b = batch as unknown as MmdBatch;
    const rows = b.noise.shape[0] as number;
    const call = guidedRows(s.model(params), b.labels, s.nullClass, s.guidance);
    const chain = tracedDdim((x, t) => call(x, ops.full([rows], t)), s.prediction, b.noise, s.schedule);
    const generated = ops.clamp(chain.sample, -1, 1);
    // Generated rows take the real rows' labels: the two batches are paired by class.
    return mmd2Unbiased(s.features(generated), s.features(b.real), b.labels !== undefined);
  };
}
