/**
 * @file Optimizers as graph code: each update is a pure function of (params, grads, state,
 * step) traced into the training graph, so a whole step is one ORT run. Their state is a
 * tree of host arrays shaped like the parameters.
 */
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { Tensor } from '../engine/tensor.js';
import { flatten, mapTree, unflatten, type Tree } from '../engine/tree.js';
import { lrSchedule, type LrSchedule } from './schedules.js';

const isTensor = (x: unknown): x is Tensor => x instanceof Tensor;
const isHost = (x: unknown): x is HostArray => x instanceof HostArray;

export interface Optimizer {
  readonly name: string;
  /** Fresh optimizer state for these parameters. */
  init(params: Tree<HostArray>): Tree<HostArray>;
  /** New parameters and state; `step` is the 1-based step count as a float32 scalar. */
  update(params: Tree<Tensor>, grads: Tree<Tensor>, state: Tree<Tensor>, step: Tensor):
    { params: Tree<Tensor>; state: Tree<Tensor>; lr: Tensor };
}

function zipMap(trees: Tree<Tensor>[], fn: (...leaves: Tensor[]) => Tensor[]): Tree<Tensor>[] {
  const flats = trees.map((t) => flatten(t, isTensor));
  const n = flats[0]!.leaves.length;
  for (const f of flats) {
    if (f.leaves.length !== n) throw new TypeError('optimizer: params, grads and state differ in structure');
  }
  const outs = Array.from({ length: n }, (_, i) => fn(...flats.map((f) => f.leaves[i]!)));
  return outs[0]!.map((_, k) => unflatten(flats[0]!.def, outs.map((o) => o[k]!)));
}

const zerosLike = (params: Tree<HostArray>): Tree<HostArray> =>
  mapTree(params, isHost, (p) => HostArray.zeros(p.shape));

export interface SgdOptions {
  lr: number | LrSchedule;
  momentum?: number;
  weightDecay?: number;
}

/** SGD with heavy-ball momentum as torch.optim.SGD (dampening 0): b = mu b + g; p -= lr b. */
export function sgd(opts: SgdOptions): Optimizer {
  const mu = opts.momentum ?? 0;
  const wd = opts.weightDecay ?? 0;
  const schedule = lrSchedule(opts.lr);
  return {
    name: 'sgd',
    init: (params) => ({ momentum: mu ? zerosLike(params) : [] }),
    update(params, grads, state, step) {
      const lr = schedule(step);
      const st = state as { momentum: Tree<Tensor> };
      if (!mu) {
        const [p] = zipMap([params, grads], (p, g) => [ops.sub(p, ops.mul(ops.add(g, ops.mul(p, wd)), lr))]);
        return { params: p!, state: { momentum: [] }, lr };
      }
      const [p, b] = zipMap([params, grads, st.momentum], (p, g, b) => {
        const buf = ops.add(ops.mul(b, mu), wd ? ops.add(g, ops.mul(p, wd)) : g);
        return [ops.sub(p, ops.mul(buf, lr)), buf];
      });
      return { params: p!, state: { momentum: b! }, lr };
    },
  };
}

export interface AdamWOptions {
  lr: number | LrSchedule;
  betas?: readonly [number, number];
  eps?: number;
  /** Decoupled weight decay (Loshchilov & Hutter), torch's default 0.01. */
  weightDecay?: number;
}

/** AdamW as torch.optim.AdamW: p <- p (1 - lr wd) - lr mhat / (sqrt(vhat) + eps), with
 *  bias-corrected moments mhat = m / (1 - b1^t), vhat = v / (1 - b2^t). */
export function adamw(opts: AdamWOptions): Optimizer {
  const [b1, b2] = opts.betas ?? [0.9, 0.999];
  const eps = opts.eps ?? 1e-8;
  const wd = opts.weightDecay ?? 0.01;
  const schedule = lrSchedule(opts.lr);
  return {
    name: 'adamw',
    init: (params) => ({ m: zerosLike(params), v: zerosLike(params) }),
    update(params, grads, state, step) {
      const lr = schedule(step);
      const st = state as { m: Tree<Tensor>; v: Tree<Tensor> };
      const bc1 = ops.sub(1, ops.pow(ops.scalarLike(b1, 'float32'), step));
      const bc2 = ops.sub(1, ops.pow(ops.scalarLike(b2, 'float32'), step));
      const stepSize = ops.div(lr, bc1);
      const decay = ops.sub(1, ops.mul(lr, wd));
      const [p, m, v] = zipMap([params, grads, st.m, st.v], (p, g, m0, v0) => {
        const m = ops.add(ops.mul(m0, b1), ops.mul(g, 1 - b1));
        const v = ops.add(ops.mul(v0, b2), ops.mul(ops.mul(g, g), 1 - b2));
        const denom = ops.add(ops.div(ops.sqrt(v), ops.sqrt(bc2)), eps);
        return [ops.sub(ops.mul(p, decay), ops.mul(ops.div(m, denom), stepSize)), m, v];
      });
      return { params: p!, state: { m: m!, v: v! }, lr };
    },
  };
}

/** Scales grads so their global L2 norm is at most maxNorm (torch's clip_grad_norm_). */
export function clipGradNorm(grads: Tree<Tensor>, maxNorm: number): { grads: Tree<Tensor>; norm: Tensor } {
  const flat = flatten(grads, isTensor);
  const sq = flat.leaves.map((g) => ops.sum(ops.mul(g, g))).reduce((a, b) => ops.add(a, b));
  const norm = ops.sqrt(sq);
  const scale = ops.minimum(ops.div(maxNorm, ops.add(norm, 1e-6)), 1);
  return { grads: unflatten(flat.def, flat.leaves.map((g) => ops.mul(g, scale))), norm };
}

/** The global L2 norm of a gradient tree. */
export function globalNorm(grads: Tree<Tensor>): Tensor {
  const flat = flatten(grads, isTensor);
  return ops.sqrt(flat.leaves.map((g) => ops.sum(ops.mul(g, g))).reduce((a, b) => ops.add(a, b)));
}
