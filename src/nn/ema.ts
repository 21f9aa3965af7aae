/**
 * @file Exponential moving average of parameters, as graph code, with diffusers'
 * EMAModel decay warm-up: decay 0 at the first update, then (1 + s) / (10 + s), or
 * 1 - (1 + s / invGamma)^-power with warm-up, clamped to [minDecay, maxDecay].
 */
import * as ops from '../engine/ops.js';
import { Tensor } from '../engine/tensor.js';
import { flatten, unflatten, type Tree } from '../engine/tree.js';

export interface EmaOptions {
  /** The largest decay (diffusers' `decay`, default 0.9999). */
  maxDecay?: number;
  minDecay?: number;
  /** Updates before this step leave the average equal to the parameters. */
  updateAfterStep?: number;
  /** diffusers' use_ema_warmup with inv_gamma and power (default off). */
  warmup?: { invGamma?: number; power?: number };
}

/** The decay used at optimisation step `step` (1-based float32 scalar tensor). */
export function emaDecay(step: Tensor, opts: EmaOptions = {}): Tensor {
  const s = ops.sub(step, (opts.updateAfterStep ?? 0) + 1);
  const sPos = ops.maximum(s, 0);
  const w = opts.warmup;
  const cur = w
    ? ops.sub(1, ops.pow(ops.add(ops.div(sPos, w.invGamma ?? 1), 1), -(w.power ?? 2 / 3)))
    : ops.div(ops.add(sPos, 1), ops.add(sPos, 10));
  const clamped = ops.clamp(cur, opts.minDecay ?? 0, opts.maxDecay ?? 0.9999);
  return ops.where(ops.lessEqual(s, 0), 0, clamped);
}

/** ema <- ema - (1 - decay) (ema - params), leaf by leaf. */
export function emaUpdate(ema: Tree<Tensor>, params: Tree<Tensor>, decay: Tensor): Tree<Tensor> {
  const isT = (x: unknown): x is Tensor => x instanceof Tensor;
  const e = flatten(ema, isT);
  const p = flatten(params, isT);
  const rate = ops.sub(1, decay);
  return unflatten(e.def, e.leaves.map((x, i) => ops.sub(x, ops.mul(ops.sub(x, p.leaves[i]!), rate))));
}
