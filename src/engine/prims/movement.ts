/**
 * @file Movement primitives: reshape, transpose, slice, concat, pad, expand (broadcastTo),
 * gather, scatter-add and nearest x2 upsampling. All are linear; their VJPs move back.
 */
import * as ops from '../ops.js';
import { broadcastShapes, fmtShape, sameShape, ShapeError, staticDim, type Dim, type Shape } from '../shape.js';
import type { Tensor } from '../tensor.js';
import type { PrimTable } from './types.js';

/** Product of static dims plus the sorted list of dynamic ones: equal for equal sizes. */
function sizeKey(s: Shape): string {
  let n = 1;
  const names: string[] = [];
  for (const d of s) typeof d === 'number' ? (n *= d) : names.push(d);
  return `${n}*${names.sort().join('*')}`;
}

function isIntIndex(dtype: string): boolean {
  return dtype === 'int64' || dtype === 'int32';
}

export const movementPrims: Pick<PrimTable, 'reshape' | 'transpose' | 'slice' | 'concat' | 'pad'
  | 'expand' | 'gather' | 'scatterAdd' | 'upsampleNearest2x'> = {
  reshape: {
    arity: 1,
    infer: ([a], p) => {
      if (sizeKey(a!.shape) !== sizeKey(p.shape)) {
        throw new ShapeError('Reshape', `cannot reshape ${fmtShape(a!.shape)} to ${fmtShape(p.shape)}` +
          ` (sizes differ)`);
      }
      return [{ shape: p.shape, dtype: a!.dtype }];
    },
    lower: (cx, ins, outs, p) => cx.emit('Reshape', [ins[0]!, cx.shapeTensor(p.shape)], outs),
    vjp: ([g], n) => [ops.reshape(g!, n.inputs[0]!.shape)],
  },

  transpose: {
    arity: 1,
    infer: ([a], p) => {
      const r = a!.shape.length;
      if (p.perm.length !== r || [...p.perm].sort((x, y) => x - y).some((v, i) => v !== i)) {
        throw new ShapeError('Transpose', `perm [${p.perm.join(', ')}] is not a permutation of ` +
          `the ${r} axes of ${fmtShape(a!.shape)}`);
      }
      return [{ shape: p.perm.map((i) => a!.shape[i]!), dtype: a!.dtype }];
    },
    lower: (cx, ins, outs, p) => cx.emit('Transpose', ins, outs, { perm: [...p.perm] }),
    vjp: ([g], n) => {
      const inv: number[] = [];
      n.params.perm.forEach((src, i) => (inv[src] = i));
      return [ops.transpose(g!, inv)];
    },
  },

  slice: {
    arity: 1,
    infer: ([a], p) => {
      const s = a!.shape;
      if (p.starts.length !== s.length || p.steps.length !== s.length || p.counts.length !== s.length) {
        throw new ShapeError('Slice', `needs one (start, step, count) per axis of ${fmtShape(s)}`);
      }
      const shape = s.map((d, i) => {
        const [start, step] = [p.starts[i]!, p.steps[i]!];
        if (start === 0 && step === 1 && p.counts[i] === d) return d;
        const count = staticDim(p.counts[i]!, 'Slice', `count of axis ${i}`);
        const dim = staticDim(d, 'Slice', `sliced axis ${i}`);
        if (count > 0 && (start < 0 || step < 1 || start + (count - 1) * step >= dim)) {
          throw new ShapeError('Slice', `axis ${i}: start ${start}, step ${step}, count ${count} ` +
            `leaves the range [0, ${dim}) of ${fmtShape(s)}`);
        }
        return count;
      });
      return [{ shape, dtype: a!.dtype }];
    },
    lower: (cx, ins, outs, p, n) => {
      const s = n.inputs[0]!.shape;
      const axes = s.map((_, i) => i).filter((i) =>
        !(p.starts[i] === 0 && p.steps[i] === 1 && p.counts[i] === s[i]));
      if (axes.length === 0) return cx.emit('Identity', ins, outs);
      const starts = axes.map((i) => p.starts[i]!);
      const ends = axes.map((i) => p.starts[i]! + Math.max(0, ((p.counts[i] as number) - 1) * p.steps[i]! + 1));
      cx.emit('Slice', [ins[0]!, cx.int64s(starts), cx.int64s(ends), cx.int64s(axes),
        cx.int64s(axes.map((i) => p.steps[i]!))], outs);
    },
    vjp: ([g], n) => [ops.sliceGrad(g!, n.inputs[0]!.shape, n.params)],
  },

  concat: {
    arity: 'any',
    infer: (ins, p) => {
      if (ins.length === 0) throw new ShapeError('Concat', 'needs at least one tensor');
      const first = ins[0]!;
      let total = 0;
      for (const t of ins) {
        const ok = t.shape.length === first.shape.length &&
          t.shape.every((d, i) => i === p.axis || d === first.shape[i]);
        if (!ok || t.dtype !== first.dtype) {
          throw new ShapeError('Concat', `along axis ${p.axis}, all inputs must match elsewhere: ` +
            ins.map((x) => `${x.dtype}${fmtShape(x.shape)}`).join(', '));
        }
        total += staticDim(t.shape[p.axis]!, 'Concat', 'the concatenated axis');
      }
      return [{ shape: first.shape.map((d, i) => (i === p.axis ? total : d)), dtype: first.dtype }];
    },
    lower: (cx, ins, outs, p) => cx.emit('Concat', ins, outs, { axis: p.axis }),
    vjp: ([g], n) => {
      let offset = 0;
      return n.inputs.map((t) => {
        const len = t.shape[n.params.axis] as number;
        const piece = ops.sliceAxis(g!, n.params.axis, offset, offset + len);
        offset += len;
        return piece;
      });
    },
  },

  pad: {
    arity: 1,
    infer: ([a], p) => {
      const r = a!.shape.length;
      if (p.pads.length !== 2 * r || p.pads.some((v) => !Number.isInteger(v) || v < 0)) {
        throw new ShapeError('Pad', `needs ${2 * r} non-negative pads for ${fmtShape(a!.shape)}, ` +
          `got [${p.pads.join(', ')}]`);
      }
      const shape = a!.shape.map((d, i) => (p.pads[i] === 0 && p.pads[i + r] === 0 ? d
        : staticDim(d, 'Pad', `padded axis ${i}`) + p.pads[i]! + p.pads[i + r]!));
      return [{ shape, dtype: a!.dtype }];
    },
    lower: (cx, ins, outs, p, n) => cx.emit('Pad',
      [ins[0]!, cx.int64s(p.pads), cx.scalar(p.value, n.inputs[0]!.dtype)], outs, { mode: 'constant' }),
    vjp: ([g], n) => {
      const { pads } = n.params;
      const x = n.inputs[0]!;
      return [ops.slice(g!, x.shape.map((d, i) =>
        (pads[i] === 0 && pads[i + x.rank] === 0 ? null : [pads[i]!, pads[i]! + (d as number)])))];
    },
  },

  expand: {
    arity: 1,
    infer: ([a], p) => {
      const out = broadcastShapes('Expand', a!.shape, p.shape);
      if (!sameShape(out, p.shape)) {
        throw new ShapeError('Expand', `cannot broadcast ${fmtShape(a!.shape)} to ${fmtShape(p.shape)}`);
      }
      return [{ shape: p.shape, dtype: a!.dtype }];
    },
    lower: (cx, ins, outs, p, n) => {
      // Dims the input already has need no run-time value: Expand broadcasts both ways.
      const src = n.inputs[0]!.shape;
      const target = p.shape.map((d, i) => {
        const have = src[src.length - p.shape.length + i];
        return typeof d === 'string' && have === d ? 1 : d;
      });
      cx.emit('Expand', [ins[0]!, cx.shapeTensor(target)], outs);
    },
    vjp: ([g], n) => [ops.unbroadcast(g!, n.inputs[0]!.shape)],
  },

  gather: {
    arity: 2,
    infer: ([x, idx], p) => {
      if (!isIntIndex(idx!.dtype)) throw new TypeError(`Gather: indices must be int64/int32, got ${idx!.dtype}`);
      if (p.axis < 0 || p.axis >= x!.shape.length) {
        throw new ShapeError('Gather', `axis ${p.axis} out of range for ${fmtShape(x!.shape)}`);
      }
      const s = x!.shape;
      return [{ shape: [...s.slice(0, p.axis), ...idx!.shape, ...s.slice(p.axis + 1)], dtype: x!.dtype }];
    },
    lower: (cx, ins, outs, p) => cx.emit('Gather', ins, outs, { axis: p.axis }),
    vjp: ([g], n) => {
      const [x, idx] = n.inputs as [Tensor, Tensor];
      return [ops.gatherGrad(g!, idx, x.shape, n.params.axis), null];
    },
  },

  scatterAdd: {
    arity: 3,
    infer: ([target, idx, upd]) => {
      if (!isIntIndex(idx!.dtype)) throw new TypeError(`ScatterAdd: indices must be int64/int32, got ${idx!.dtype}`);
      const want = [...idx!.shape, ...target!.shape.slice(1)];
      if (!sameShape(upd!.shape, want) || upd!.dtype !== target!.dtype) {
        throw new ShapeError('ScatterAdd', `updates must be ${target!.dtype}${fmtShape(want)} ` +
          `(indices ${fmtShape(idx!.shape)} + target ${fmtShape(target!.shape)} without axis 0), ` +
          `got ${upd!.dtype}${fmtShape(upd!.shape)}`);
      }
      return [{ shape: target!.shape, dtype: target!.dtype }];
    },
    lower: (cx, [target, idx, upd], outs, _p, n) => {
      let index = idx!;
      if (n.inputs[1]!.dtype !== 'int64') {
        index = cx.fresh('idx64');
        cx.emit('Cast', [idx!], [index], { to: 7 });
      }
      const idxNd = cx.fresh('idx_nd');
      cx.emit('Unsqueeze', [index, cx.int64s([-1])], [idxNd]);
      cx.emit('ScatterND', [target!, idxNd, upd!], outs, { reduction: 'add' });
    },
    vjp: ([g], n, needs) => [g!, null, needs[2] ? ops.gather(g!, n.inputs[1]!, 0) : null],
  },

  upsampleNearest2x: {
    arity: 1,
    infer: ([a]) => {
      if (a!.shape.length !== 4) {
        throw new ShapeError('Upsample', `expects [N, C, H, W], got ${fmtShape(a!.shape)}`);
      }
      const [n, c, h, w] = a!.shape as [Dim, Dim, Dim, Dim];
      return [{ shape: [n, c, staticDim(h, 'Upsample', 'H') * 2, staticDim(w, 'Upsample', 'W') * 2],
        dtype: a!.dtype }];
    },
    // torch's nearest x2: asymmetric coordinates, floor.
    lower: (cx, ins, outs) => {
      cx.emit('Resize', [ins[0]!, '', cx.float32s([1, 1, 2, 2])], outs, {
        mode: 'nearest', coordinate_transformation_mode: 'asymmetric', nearest_mode: 'floor',
      });
    },
    vjp: ([g], n) => {
      const [b, c, h, w] = n.inputs[0]!.shape as [Dim, Dim, number, number];
      return [ops.sum(ops.reshape(g!, [b, c, h, 2, w, 2]), [3, 5])];
    },
  },
};
