/**
 * @file BOOT: Gu, Zhai, Zhang, Liu & Susskind 2023, "BOOT: Data-free Distillation of Denoising
 * Diffusion Models with Bootstrapping" (no official code released).
 *
 * Claim: a time-conditioned student g(eps, t), trained from the teacher alone (no data, no
 * teacher-generated dataset) by bootstrapping between two consecutive steps of the teacher's
 * DDIM path, generates in one step at quality comparable to the DDIM teacher, orders of
 * magnitude faster.
 *
 * The mechanism, checked against the paper's Signal-ODE. Fix the starting noise eps and write
 * every state of the teacher's deterministic path as x_t = alpha_t y_t + sigma_t eps; the
 * "signal" y_t = (x_t - sigma_t eps) / alpha_t is smooth, low-frequency and ends at the image
 * (y = x0 where sigma = 0). The paper's ODE dy/dt = -lambda'_t (f(x_t, t) - y_t), with
 * lambda = -log(alpha / sigma) and f the teacher's x0 estimate, integrated exactly over one
 * DDIM step from t to s (s less noisy) is
 *
 *     y_s = y_t + delta (f(x_t, t) - y_t),   delta = 1 - (sigma_s alpha_t) / (sigma_t alpha_s),
 *
 * the DDIM update itself rewritten in y (so the student copies the same path `diffuse sample
 * --sampler ddim` walks). The student learns y_s from eps: its output at step k is trained
 * towards stopgrad(y + delta (f(alpha y + sigma eps) - y)) where y is its own output at step
 * k - 1 (the bootstrap). At the first step x = eps exactly, so y = (1 - sigma) eps / alpha
 * comes from the noise alone: that step is the boundary condition the bootstraps grow from.
 * At the last step sigma_s = 0, delta = 1 and the target is the teacher's x0 estimate: the
 * student's output there is the one-step sample.
 *
 * Student time convention (so that a diffusers DDIM scheduler with one step runs it): the
 * student is called with the model time t_k of step k and returns y after step k. A one-step
 * DDIM schedule with "leading" spacing evaluates at t = 0, the path's last step, and with
 * prediction_type "sample" returns the model output unchanged.
 */
import * as ops from '../engine/ops.js';
import type { Tensor } from '../engine/tensor.js';
import type { Tree } from '../engine/tree.js';
import type { Prediction } from '../diffusion/predictions.js';
import type { Schedule } from '../diffusion/schedule.js';
import { guidedRows, tracedEstimates, type RowModel } from '../diffusion/traced-steps.js';

/** The teacher's DDIM path in signal space: per step k, where it evaluates and how far its
 *  update moves y. */
export interface SignalPath {
  /** Model time t_k of step k (the student's time input), [N]. */
  times: Float64Array;
  /** alpha and sigma of the state step k evaluates, [N]. */
  alphas: Float64Array;
  sigmas: Float64Array;
  /** delta_k = 1 - (sigma_{k+1} alpha_k) / (sigma_k alpha_{k+1}), [N]; the last is 1. */
  deltas: Float64Array;
  /** y at the start, per unit of noise: (1 - sigma_0) / alpha_0 (x_0 = eps exactly). */
  startSignal: number;
}

/** The signal path of a deterministic DDIM schedule whose steps land on its next points. */
export function signalPath(schedule: Schedule): SignalPath {
  const n = schedule.timesteps.length;
  const alphas = schedule.alphas.slice(0, n);
  const sigmas = schedule.sigmas.slice(0, n);
  const deltas = new Float64Array(n);
  for (let k = 0; k < n; k++) {
    const landing = schedule.targetAlphaBars?.[k] ?? schedule.alphaBars[k + 1]!;
    if (k + 1 < n && Math.abs(landing - schedule.alphaBars[k + 1]!) > 1e-12) {
      throw new RangeError(`signalPath: DDIM step ${k} lands at alpha_bar ${landing}, not on the ` +
        `next evaluated point (${schedule.alphaBars[k + 1]}); use "leading" timestep spacing`);
    }
    const [a, s] = [alphas[k]!, sigmas[k]!];
    const [aNext, sNext] = [Math.sqrt(landing), Math.sqrt(Math.max(0, 1 - landing))];
    deltas[k] = 1 - (sNext * a) / (s * aNext);
  }
  return { times: Float64Array.from(schedule.timesteps), alphas, sigmas, deltas,
    startSignal: (1 - sigmas[0]!) / alphas[0]! };
}

/**
 * Per-row inputs of one BOOT step (drawn on the host from the step index k of each row):
 * the noise, the model times of steps k - 1 and k, alpha_k and sigma_k ([B, 1, 1, 1]),
 * delta_k ([B, 1, 1, 1]), the start signal coefficient (startSignal where k = 0, else 0) and
 * whether the row is at k = 0 ([B, 1, 1, 1], 1 or 0); labels for class-conditional models.
 */
export interface BootBatch {
  eps: Tensor;
  timePrev: Tensor;
  time: Tensor;
  alpha: Tensor;
  sigma: Tensor;
  delta: Tensor;
  start: Tensor;
  first: Tensor;
  labels?: Tensor;
}

export interface BootSetup {
  /** The student as a function of its parameters: g(eps, t, labels) -> y. */
  student: (params: Tree<Tensor>) => RowModel;
  /** The frozen teacher (weights baked in) and what it predicts. */
  teacher: RowModel;
  teacherPrediction: Prediction;
  /** Classifier-free guidance of the teacher, distilled into the student; the null class. */
  guidance: number;
  nullClass: number;
}

/** The bootstrapped target of step k: y_k (the start signal at k = 0, the student's own
 *  previous output otherwise) moved by one teacher DDIM step. No gradient flows through it. */
export function bootTarget(s: BootSetup, params: Tree<Tensor>, b: BootBatch): Tensor {
  const previous = ops.stopGradient(s.student(params)(b.eps, b.timePrev, b.labels));
  const y = ops.add(ops.mul(b.eps, b.start), ops.mul(previous, ops.sub(1, b.first)));
  const x = ops.add(ops.mul(y, b.alpha), ops.mul(b.eps, b.sigma));
  const teacher = guidedRows(s.teacher, b.labels, s.nullClass, s.guidance);
  const f = tracedEstimates(s.teacherPrediction, x, teacher(x, b.time), b.alpha, b.sigma).x0;
  return ops.stopGradient(ops.add(y, ops.mul(ops.sub(f, y), b.delta)));
}

/** The BOOT loss: the student's output at step k against its bootstrapped target (mean
 *  squared error per pixel). */
export function bootLoss(s: BootSetup): (params: Tree<Tensor>, batch: Tree<Tensor>) => Tensor {
  return (params, batch) => {
    const b = batch as unknown as BootBatch;
    const out = s.student(params)(b.eps, b.time, b.labels);
    return ops.mean(ops.square(ops.sub(out, bootTarget(s, params, b))));
  };
}
