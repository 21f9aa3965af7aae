/** @file Movement ops: reshape, transpose, slicing, joining, padding, broadcasting, indexing. */
import { bind1 } from '../bind.js';
import { fmtShape, normAxis, ShapeError, staticDim, type Dim, type Shape } from '../shape.js';
import type { Tensor } from '../tensor.js';
import { arange, zeros } from './creation.js';
import { cast, equal, mul } from './elementwise.js';
import { sum } from './reduce.js';

/** Reshape; one dimension may be -1 (inferred from the static sizes). */
export function reshape(x: Tensor, shape: readonly Dim[]): Tensor {
  const holes = shape.filter((d) => d === -1).length;
  if (holes > 1) throw new ShapeError('reshape', `at most one -1 allowed, got ${fmtShape(shape)}`);
  let target = shape;
  if (holes === 1) {
    const staticIn = x.shape.reduce<number>((n, d) => (typeof d === 'number' ? n * d : n), 1);
    const staticOut = shape.reduce<number>((n, d) => (typeof d === 'number' && d !== -1 ? n * d : n), 1);
    const dynIn = x.shape.filter((d) => typeof d === 'string').sort().join();
    const dynOut = shape.filter((d) => typeof d === 'string').sort().join();
    if (dynIn !== dynOut || staticOut === 0 || staticIn % staticOut !== 0) {
      throw new ShapeError('reshape', `cannot infer -1 reshaping ${fmtShape(x.shape)} to ${fmtShape(shape)}`);
    }
    target = shape.map((d) => (d === -1 ? staticIn / staticOut : d));
  }
  if (target.length === x.rank && target.every((d, i) => d === x.shape[i])) return x;
  return bind1('reshape', [x], { shape: [...target] });
}

/** Permutes axes; without perm, reverses them. */
export function transpose(x: Tensor, perm?: readonly number[]): Tensor {
  const p = perm ? perm.map((a) => normAxis(a, x.rank, 'transpose')) : [...Array(x.rank).keys()].reverse();
  if (p.every((v, i) => v === i)) return x;
  return bind1('transpose', [x], { perm: p });
}

export function flatten(x: Tensor, startAxis = 1): Tensor {
  const a = normAxis(startAxis, x.rank, 'flatten');
  return reshape(x, [...x.shape.slice(0, a), -1]);
}

export function unsqueeze(x: Tensor, axis: number): Tensor {
  const a = normAxis(axis, x.rank + 1, 'unsqueeze');
  return reshape(x, [...x.shape.slice(0, a), 1, ...x.shape.slice(a)]);
}

export function squeeze(x: Tensor, axes: number | readonly number[]): Tensor {
  const list = (typeof axes === 'number' ? [axes] : axes).map((a) => normAxis(a, x.rank, 'squeeze'));
  for (const a of list) {
    if (x.shape[a] !== 1) throw new ShapeError('squeeze', `axis ${a} of ${fmtShape(x.shape)} is not 1`);
  }
  return reshape(x, x.shape.filter((_, i) => !list.includes(i)));
}

/** Python-style range per axis: [start, end) or [start, end, step]; null or missing = all.
 *  Negative start/end count from the end and are clamped, as in numpy. Steps are positive. */
export type SliceRange = null | readonly [number, number] | readonly [number, number, number];

export function slice(x: Tensor, ranges: readonly SliceRange[]): Tensor {
  if (ranges.length > x.rank) {
    throw new ShapeError('slice', `${ranges.length} ranges for ${fmtShape(x.shape)}`);
  }
  const starts: number[] = [];
  const steps: number[] = [];
  const counts: Dim[] = [];
  x.shape.forEach((d, i) => {
    const r = ranges[i];
    if (!r) {
      starts.push(0), steps.push(1), counts.push(d);
      return;
    }
    const dim = staticDim(d, 'slice', `sliced axis ${i}`);
    const step = r[2] ?? 1;
    if (!Number.isInteger(step) || step < 1) throw new ShapeError('slice', `step must be >= 1, got ${step}`);
    const norm = (v: number): number => Math.min(Math.max(v < 0 ? v + dim : v, 0), dim);
    const s = norm(r[0]);
    const e = norm(r[1]);
    starts.push(s), steps.push(step), counts.push(Math.max(0, Math.ceil((e - s) / step)));
  });
  return bind1('slice', [x], { starts, steps, counts });
}

/** x[..., start:end, ...] along one axis. */
export function sliceAxis(x: Tensor, axis: number, start: number, end: number, step = 1): Tensor {
  const a = normAxis(axis, x.rank, 'sliceAxis');
  const ranges: SliceRange[] = x.shape.map(() => null);
  ranges[a] = [start, end, step];
  return slice(x, ranges);
}

/** The VJP of slice: places g at the sliced positions of a zero tensor of xShape. */
export function sliceGrad(g: Tensor, xShape: Shape,
  p: { starts: readonly number[]; steps: readonly number[]; counts: readonly Dim[] }): Tensor {
  let out = g;
  xShape.forEach((d, i) => {
    const [start, step] = [p.starts[i]!, p.steps[i]!];
    if (start === 0 && step === 1 && p.counts[i] === d) return;
    const count = p.counts[i] as number;
    const dim = d as number;
    if (step > 1 && count > 0) {
      // Interleave step-1 zeros after each element: [.., c, ..] -> [.., c*step, ..].
      const s = out.shape;
      const spread = pad(unsqueeze(out, i + 1), padSpec(s.length + 1, i + 1, 0, step - 1));
      out = reshape(spread, [...s.slice(0, i), count * step, ...s.slice(i + 1)]);
      out = sliceAxis(out, i, 0, Math.min(count * step, dim - start));
    }
    const len = step > 1 && count > 0 ? (out.shape[i] as number) : count;
    out = pad(out, padSpec(xShape.length, i, start, dim - start - len));
  });
  return out;
}

function padSpec(rank: number, axis: number, before: number, after: number): number[] {
  const pads = new Array<number>(2 * rank).fill(0);
  pads[axis] = before;
  pads[axis + rank] = after;
  return pads;
}

/** Constant padding with ONNX's [begin_0.., end_0..] pads, or per-axis [before, after] pairs. */
export function pad(x: Tensor, pads: readonly number[] | readonly (readonly [number, number])[],
  value = 0): Tensor {
  const flat = typeof pads[0] === 'number' ? (pads as number[])
    : [...(pads as [number, number][]).map((p) => p[0]), ...(pads as [number, number][]).map((p) => p[1])];
  if (flat.every((v) => v === 0) && flat.length === 2 * x.rank) return x;
  return bind1('pad', [x], { pads: flat, value });
}

export function concat(xs: readonly Tensor[], axis = 0): Tensor {
  if (xs.length === 1) return xs[0]!;
  const a = normAxis(axis, xs[0]?.rank ?? 0, 'concat');
  return bind1('concat', xs, { axis: a });
}

export function stack(xs: readonly Tensor[], axis = 0): Tensor {
  return concat(xs.map((x) => unsqueeze(x, axis)), axis);
}

/** Splits along an axis into equal parts (a number) or the given sizes. */
export function split(x: Tensor, parts: number | readonly number[], axis = 0): Tensor[] {
  const a = normAxis(axis, x.rank, 'split');
  const dim = staticDim(x.shape[a]!, 'split', 'the split axis');
  const sizes = typeof parts === 'number' ? Array<number>(parts).fill(dim / parts) : parts;
  if (sizes.some((s) => !Number.isInteger(s) || s < 0) || sizes.reduce((s, v) => s + v, 0) !== dim) {
    throw new ShapeError('split', `sizes [${sizes.join(', ')}] do not split axis ${a} of ${fmtShape(x.shape)}`);
  }
  let at = 0;
  return sizes.map((s) => sliceAxis(x, a, at, (at += s)));
}

export function broadcastTo(x: Tensor, shape: readonly Dim[]): Tensor {
  if (shape.length === x.rank && shape.every((d, i) => d === x.shape[i])) return x;
  return bind1('expand', [x], { shape: [...shape] });
}

/** x[..., indices, ...] along an axis (ONNX Gather); indices int64 or int32 of any shape. */
export function gather(x: Tensor, indices: Tensor, axis = 0): Tensor {
  return bind1('gather', [x, indices], { axis: normAxis(axis, x.rank, 'gather') });
}

/** target + (updates added at rows `indices` of axis 0); duplicate indices accumulate. */
export function scatterAdd(target: Tensor, indices: Tensor, updates: Tensor): Tensor {
  return bind1('scatterAdd', [target, indices, updates], {});
}

/** The VJP of gather: scatter-adds g into zeros of xShape along the gathered axis. */
export function gatherGrad(g: Tensor, indices: Tensor, xShape: Shape, axis: number): Tensor {
  if (axis === 0) return scatterAdd(zeros(xShape, g.dtype), indices, g);
  const ni = indices.rank;
  const before = [...Array(axis).keys()];
  const idxAxes = [...Array(ni).keys()].map((i) => axis + i);
  const after = [...Array(g.rank - axis - ni).keys()].map((i) => axis + ni + i);
  const gFront = transpose(g, [...idxAxes, ...before, ...after]);
  const movedShape = [xShape[axis]!, ...xShape.slice(0, axis), ...xShape.slice(axis + 1)];
  const scattered = scatterAdd(zeros(movedShape, g.dtype), indices, gFront);
  return transpose(scattered, [...before.map((i) => i + 1), 0, ...after.map((_, i) => axis + 1 + i)]);
}

/** Places values [..., k, ...] at their int64 indices along `axis` of a zero tensor of
 *  shape xShape (the VJP of topk), by one-hot contraction over the k picks. */
export function scatterAlongAxis(values: Tensor, indices: Tensor, xShape: Shape, axis: number): Tensor {
  const n = staticDim(xShape[axis]!, 'scatterAlongAxis', 'the scattered axis');
  const last = values.rank - 1;
  const toLast = [...Array(values.rank).keys()].filter((i) => i !== axis).concat(axis);
  const v = transpose(values, toLast);
  const idx = transpose(indices, toLast);
  const oneHot = cast(equal(unsqueeze(idx, -1), arange(n, idx.dtype)), values.dtype); // [..., k, n]
  const placed = sum(mul(unsqueeze(v, -1), oneHot), -2); // [..., n]
  const back: number[] = [];
  toLast.forEach((src, i) => (back[src] = i));
  return last === axis ? placed : transpose(placed, back);
}

/** Nearest-neighbour x2 upsampling of [N, C, H, W], as torch's F.interpolate(scale_factor=2). */
export function upsampleNearest2x(x: Tensor): Tensor {
  return bind1('upsampleNearest2x', [x], {});
}
