/**
 * @file Sampler arithmetic as graph code, for methods that differentiate through sampling or
 * build targets from it inside a training graph: MMD-DDM backpropagates through an unrolled
 * DDIM chain, BOOT forms its targets from one DDIM step of the teacher. The host samplers
 * (samplers/ddim.ts) remain the reference: the same schedule gives the same states up to
 * float32 rounding order.
 */
import * as ops from '../engine/ops.js';
import type { Tensor } from '../engine/tensor.js';
import type { Prediction } from './predictions.js';
import type { Schedule } from './schedule.js';

/** x0 and eps estimates from a model output `p` at x = alpha x0 + sigma eps (VP predictions;
 *  alpha and sigma are numbers or per-row tensors that broadcast). */
export function tracedEstimates(pred: Prediction, x: Tensor, p: Tensor, alpha: Tensor | number,
  sigma: Tensor | number): { x0: Tensor; eps: Tensor } {
  const [a, s] = [alpha, sigma];
  switch (pred) {
    case 'eps':
      return { x0: ops.div(ops.sub(x, ops.mul(p, s)), a), eps: p };
    case 'x0':
      return { x0: p, eps: ops.div(ops.sub(x, ops.mul(p, a)), s) };
    case 'v': // alpha^2 + sigma^2 = 1 on a VP process
      return { x0: ops.sub(ops.mul(x, a), ops.mul(p, s)), eps: ops.add(ops.mul(p, a), ops.mul(x, s)) };
    case 'flow':
      throw new TypeError('tracedEstimates: flow predictions live on the flow process, not VP');
  }
}

/** Classifier-free guidance of a [2B, ...] output whose first B rows are conditional. */
export function tracedGuidance(both: Tensor, guidance: number): Tensor {
  const rows = both.shape[0];
  if (typeof rows !== 'number') throw new TypeError('tracedGuidance: the batch must have a static size');
  const b = rows / 2;
  const [cond, uncond] = ops.split(both, [b, b], 0) as [Tensor, Tensor];
  if (guidance === 1) return cond;
  return ops.add(uncond, ops.mul(ops.sub(cond, uncond), guidance));
}

/** A model output for x [B, ...] at model time t (one number for every row). */
export type TracedModel = (x: Tensor, t: number) => Tensor;

/**
 * The deterministic DDIM chain (eta = 0) over `schedule` from x (the start state) as one
 * differentiable expression: step i evaluates the model at schedule.timesteps[i] and moves
 * to the landing point of ddim.ts (targetAlphaBars, else point i + 1). Returns the final
 * state and the x0 estimates of each step.
 */
export function tracedDdim(model: TracedModel, pred: Prediction, x: Tensor, schedule: Schedule):
  { sample: Tensor; x0s: Tensor[] } {
  let cur = x;
  const x0s: Tensor[] = [];
  for (let i = 0; i < schedule.timesteps.length; i++) {
    const { x0, eps } = tracedEstimates(pred, cur, model(cur, schedule.timesteps[i]!),
      schedule.alphas[i]!, schedule.sigmas[i]!);
    const target = schedule.targetAlphaBars?.[i] ?? schedule.alphaBars[i + 1]!;
    cur = ops.add(ops.mul(x0, Math.sqrt(target)), ops.mul(eps, Math.sqrt(1 - target)));
    x0s.push(x0);
  }
  return { sample: cur, x0s };
}

/** A network over rows x [B, ...] at per-row model times t [B], with optional int64 labels. */
export type RowModel = (x: Tensor, t: Tensor, labels?: Tensor) => Tensor;

/**
 * `model` with classifier-free guidance folded in: with labels and guidance != 1 the rows are
 * doubled (labels, then the null class `nullClass`) and combined; otherwise one plain call.
 * Returns a model of (x, t) alone, for the rows of `labels`.
 */
export function guidedRows(model: RowModel, labels: Tensor | undefined, nullClass: number,
  guidance: number): (x: Tensor, t: Tensor) => Tensor {
  if (!labels || guidance === 1) return (x, t) => model(x, t, labels);
  const both = ops.concat([labels, ops.full(labels.shape, nullClass, 'int64')], 0);
  return (x, t) => tracedGuidance(model(ops.concat([x, x], 0), ops.concat([t, t], 0), both), guidance);
}
