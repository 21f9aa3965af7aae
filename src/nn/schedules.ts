/**
 * @file Learning-rate schedules as graph code: functions of the step counter tensor, so a
 * compiled training step never needs recompiling as the rate changes.
 */
import * as ops from '../engine/ops.js';
import type { Tensor } from '../engine/tensor.js';

/** lr as a function of the 1-based step (a float32 scalar tensor). */
export type LrSchedule = (step: Tensor) => Tensor;

export function constantLr(lr: number): LrSchedule {
  return (step) => ops.add(ops.mul(step, 0), lr);
}

/** Linear warm-up from lr/warmup to lr over `warmup` steps, then constant (diffusers'
 *  constant_with_warmup: lr * min(1, step / warmup)). */
export function warmupLr(lr: number, warmup: number): LrSchedule {
  return (step) => ops.mul(ops.minimum(ops.div(step, Math.max(1, warmup)), 1), lr);
}

/** Warm-up, then half-cosine decay to minLr at `total` steps (diffusers' cosine). */
export function cosineLr(lr: number, total: number, warmup = 0, minLr = 0): LrSchedule {
  return (step) => {
    const progress = ops.clamp(ops.div(ops.sub(step, warmup), Math.max(1, total - warmup)), 0, 1);
    const cosine = ops.add(ops.mul(ops.add(ops.cos(ops.mul(progress, Math.PI)), 1), 0.5 * (lr - minLr)), minLr);
    if (warmup <= 0) return cosine;
    return ops.where(ops.less(step, warmup), ops.mul(ops.div(step, warmup), lr), cosine);
  };
}

export function lrSchedule(lr: number | LrSchedule): LrSchedule {
  return typeof lr === 'number' ? constantLr(lr) : lr;
}
