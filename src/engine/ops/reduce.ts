/** @file Reductions, softmax and normalisations. Axes may be negative; none means all. */
import { bind, bind1 } from '../bind.js';
import { HostArray } from '../host.js';
import { fmtShape, normAxis, ShapeError, staticNumel, type Shape } from '../shape.js';
import type { Tensor } from '../tensor.js';
import { constant } from './creation.js';
import { add, neg, sub, log, exp, square, stopGradient } from './elementwise.js';
import { reshape } from './movement.js';

export type Axes = number | readonly number[] | undefined;

function normAxes(x: Tensor, axes: Axes, op: string): number[] {
  if (axes === undefined) return [...Array(x.rank).keys()];
  const list = typeof axes === 'number' ? [axes] : axes;
  const out = list.map((a) => normAxis(a, x.rank, op));
  if (new Set(out).size !== out.length) throw new ShapeError(op, `repeated axes [${list.join(', ')}]`);
  return out.sort((a, b) => a - b);
}

export function sum(x: Tensor, axes?: Axes, keepDims = false): Tensor {
  return bind1('reduceSum', [x], { axes: normAxes(x, axes, 'sum'), keepDims });
}
export function mean(x: Tensor, axes?: Axes, keepDims = false): Tensor {
  return bind1('reduceMean', [x], { axes: normAxes(x, axes, 'mean'), keepDims });
}
export function max(x: Tensor, axes?: Axes, keepDims = false): Tensor {
  return bind1('reduceMax', [x], { axes: normAxes(x, axes, 'max'), keepDims });
}
export function min(x: Tensor, axes?: Axes, keepDims = false): Tensor {
  return neg(max(neg(x), axes, keepDims));
}
/** Mean of squared deviations (biased, as normalisation layers use). */
export function variance(x: Tensor, axes?: Axes, keepDims = false): Tensor {
  const m = mean(x, axes, true);
  return mean(square(sub(x, m)), axes, keepDims);
}

/** Index of the largest value along an axis (int64; no gradient). */
export function argmax(x: Tensor, axis = -1, keepDims = false): Tensor {
  return bind1('argmax', [x], { axis: normAxis(axis, x.rank, 'argmax'), keepDims });
}

/** The k largest (or smallest) values along an axis, sorted, and their int64 indices.
 *  Values carry gradient back to the chosen positions; indices carry none. */
export function topk(x: Tensor, k: number, axis = -1, largest = true): { values: Tensor; indices: Tensor } {
  const [values, indices] = bind('topk', [x], { k, axis: normAxis(axis, x.rank, 'topk'), largest });
  return { values: values!, indices: indices! };
}

export function softmax(x: Tensor, axis = -1): Tensor {
  return bind1('softmax', [x], { axis: normAxis(axis, x.rank, 'softmax') });
}
export function logSoftmax(x: Tensor, axis = -1): Tensor {
  return bind1('logSoftmax', [x], { axis: normAxis(axis, x.rank, 'logSoftmax') });
}

/** log(sum(exp(x))) over axes, stable for large x. */
export function logSumExp(x: Tensor, axes?: Axes, keepDims = false): Tensor {
  const m = stopGradient(max(x, axes, true));
  const s = log(sum(exp(sub(x, m)), axes, true));
  const out = add(s, m);
  return keepDims ? out : reshape(out, out.shape.filter((_, i) => !normAxes(x, axes, 'logSumExp').includes(i)));
}

/** Sums g over the axes that broadcasting added or stretched, giving it `shape`. */
export function unbroadcast(g: Tensor, shape: Shape): Tensor {
  if (g.rank === shape.length && g.shape.every((d, i) => d === shape[i])) return g;
  const lead = g.rank - shape.length;
  if (lead < 0) throw new ShapeError('unbroadcast', `${fmtShape(g.shape)} is smaller than ${fmtShape(shape)}`);
  const axes: number[] = [];
  g.shape.forEach((d, i) => {
    if (i < lead || (shape[i - lead] === 1 && d !== 1)) axes.push(i);
  });
  const summed = axes.length ? sum(g, axes, true) : g;
  return reshape(summed, shape);
}

export interface NormOptions {
  eps?: number;
  /** Per-element scale over the normalised axes (LayerNorm) or per channel (GroupNorm). */
  scale?: Tensor;
  bias?: Tensor;
}

/** LayerNorm over the axes from `axis` to the last (ONNX LayerNormalization). */
export function layerNorm(x: Tensor, opts: NormOptions & { axis?: number } = {}): Tensor {
  const axis = normAxis(opts.axis ?? -1, x.rank, 'layerNorm');
  const normShape = x.shape.slice(axis);
  const n = staticNumel(normShape, 'layerNorm');
  const scale = opts.scale ?? constant(HostArray.ones([n]).reshape(normShape as number[]));
  const bias = opts.bias ?? constant(HostArray.zeros(normShape as number[]));
  return bind1('layerNorm', [x, scale, bias], { axis, eps: opts.eps ?? 1e-5 });
}

/** GroupNorm over [N, C, ...]: normalises each group of C/groups channels with its spatial
 *  extent, then applies the per-channel affine (scale and bias [C], each optional). */
export function groupNorm(x: Tensor, groups: number, opts: NormOptions = {}): Tensor {
  const c = x.shape[1];
  const ins = [x];
  if (opts.scale || opts.bias) {
    if (typeof c !== 'number') throw new ShapeError('groupNorm', `channels of ${fmtShape(x.shape)} must be static`);
    ins.push(opts.scale ?? constant(HostArray.ones([c])), opts.bias ?? constant(HostArray.zeros([c])));
  }
  return bind('groupNorm', ins, { groups, eps: opts.eps ?? 1e-5 })[0]!;
}
