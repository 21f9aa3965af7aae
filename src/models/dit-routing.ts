/**
 * @file Denoising Task Routing: Park, Woo, Go, Kim & Kim 2023, "Denoising Task Routing for
 * Diffusion Models" (official code: byeongjun-park/DTR, models/taskrouting.py).
 *
 * Claim: treating each timestep as a task and routing it through its own fixed subset of
 * channels, with neighbouring timesteps sharing most of theirs, turns one DiT into an
 * explicit multi-task network at no parameter cost (DiT-L/2 on ImageNet: FID 12.59 -> 8.90).
 *
 * As the official code: timestep (task) i of T = 1000 keeps channels [s_i, s_i + k) active,
 * k = floor(beta C), s_i = round((i / (T - 1))^alpha (C - k)), alpha = 4, beta = 0.8 by
 * default; the same mask in every block, and a block sees x m and hands back
 * block(x m) + x (1 - m): inactive channels bypass it. Continuous model times (flow matching,
 * t = s T) use task floor(t). Rounding is half up (numpy's is half to even; the two differ
 * only where (i / 999)^alpha (C - k) is a half-integer).
 */
import * as ops from '../engine/ops.js';
import type { Tensor } from '../engine/tensor.js';

/** Tasks of the official code: the 1,000 training steps DiT's time is counted in. */
export const DTR_TASKS = 1000;

export interface TaskRouting {
  /** How fast the active window slides towards the high channels with t (4). */
  alpha: number;
  /** Share of channels active at every timestep (0.8). */
  beta: number;
}

/** The first active channel of task `task` (plain numbers: the reference the graph follows). */
export function dtrStart(task: number, channels: number, r: TaskRouting): number {
  const k = Math.floor(channels * r.beta);
  return Math.round((task / (DTR_TASKS - 1)) ** r.alpha * (channels - k));
}

/** The float mask [N, 1, C] of model times t [N] (1 on active channels). */
export function dtrMask(t: Tensor, channels: number, r: TaskRouting): Tensor {
  const k = Math.floor(channels * r.beta);
  const task = ops.clamp(ops.floor(ops.cast(t, 'float32')), 0, DTR_TASKS - 1); // [N]
  const u = ops.div(task, DTR_TASKS - 1);
  const start = ops.floor(ops.add(ops.mul(ops.pow(u, r.alpha), channels - k), 0.5)); // [N]
  const s = ops.reshape(start, [-1, 1, 1]); // [N, 1, 1]
  const c = ops.reshape(ops.arange(channels, 'float32'), [1, 1, channels]);
  const on = ops.logicalAnd(ops.greaterEqual(c, s), ops.less(c, ops.add(s, k)));
  return ops.cast(on, 'float32');
}

/** A block with routing: block(x m) + x (1 - m). */
export function routedBlock(x: Tensor, mask: Tensor, block: (x: Tensor) => Tensor): Tensor {
  return ops.add(block(ops.mul(x, mask)), ops.mul(x, ops.sub(1, mask)));
}
