/**
 * @file Normalisations: layerNorm (ONNX LayerNormalization) and groupNorm (a LayerNormalization
 * over [N, G, C/G * spatial] plus the per-channel affine; ORT has no CPU GroupNormalization
 * kernel). Both expose the kernel's 1/std as an output so that their VJPs never reduce x again.
 */
import * as ops from '../ops.js';
import { fmtShape, ShapeError, staticNumel, type Dim } from '../shape.js';
import type { Tensor } from '../tensor.js';
import { checkAxes } from './reduce.js';
import type { Aval, PrimTable } from './types.js';

/** Whether t is a constant whose every element is `v`. */
function isConstant(t: Tensor, v: number): boolean {
  const nd = t.node;
  return nd.kind === 'constant' && nd.value.data.every((e) => e === v);
}

/** [d0, .., d(axis-1), 1, .., 1]: the shape of a statistic over the axes from `axis` on. */
const statShape = (x: Aval, axis: number): Dim[] => x.shape.map((d, i) => (i < axis ? d : 1));

export const normPrims: Pick<PrimTable, 'layerNorm' | 'groupNorm'> = {
  // Outputs y, mean and 1/sqrt(var + eps) (ONNX's optional Mean and InvStdDev); toOnnx drops
  // the statistics where nothing reads them.
  layerNorm: {
    arity: 3,
    infer: ([x, scale, bias], p) => {
      const op = 'LayerNormalization';
      checkAxes(op, x!, [p.axis]);
      const normShape = x!.shape.slice(p.axis);
      for (const [what, t] of [['scale', scale!], ['bias', bias!]] as const) {
        if (t.shape.length > normShape.length ||
          t.shape.some((d, i) => d !== 1 && d !== normShape[normShape.length - t.shape.length + i])) {
          throw new ShapeError(op, `${what} ${fmtShape(t.shape)} must broadcast to the normalised ` +
            `shape ${fmtShape(normShape)} of input ${fmtShape(x!.shape)}`);
        }
        if (t.dtype !== x!.dtype) throw new TypeError(`${op}: ${what} dtype ${t.dtype} != ${x!.dtype}`);
      }
      const stat = { shape: statShape(x!, p.axis), dtype: x!.dtype };
      return [{ shape: x!.shape, dtype: x!.dtype }, stat, stat];
    },
    lower: (cx, ins, outs, p) =>
      cx.emit('LayerNormalization', ins, outs, { axis: p.axis, epsilon: { float: p.eps } }),
    // With xh = (x - mean) rstd and dxh = g scale:
    // dx = rstd (dxh - mean(dxh) - xh mean(dxh xh)); dscale = sum(g xh); dbias = sum(g).
    vjp: ([g, gMean, gRstd], n, needs) => {
      if (gMean || gRstd) throw new Error('layerNorm: its statistics outputs are not differentiable');
      const [x, scale, bias] = n.inputs as [Tensor, Tensor, Tensor];
      const [y, mean, rstd] = n.outputs as [Tensor, Tensor, Tensor];
      const axes = Array.from({ length: x.rank - n.params.axis }, (_, i) => n.params.axis + i);
      const unitScale = isConstant(scale, 1);
      const xh = unitScale && isConstant(bias, 0) ? y : ops.mul(ops.sub(x, mean), rstd);
      const dxh = unitScale ? g! : ops.mul(g!, scale);
      const dx = needs[0] ? ops.mul(rstd, ops.sub(ops.sub(dxh, ops.mean(dxh, axes, true)),
        ops.mul(xh, ops.mean(ops.mul(dxh, xh), axes, true)))) : null;
      return [dx,
        needs[1] ? ops.unbroadcast(ops.mul(g!, xh), scale.shape) : null,
        needs[2] ? ops.unbroadcast(g!, bias.shape) : null];
    },
  },

  // Inputs x [N, C, ...] and optionally scale and bias [C]; outputs y, the normalised x before
  // the affine (xh; y itself without an affine, when this output is never produced) and
  // 1/sqrt(var + eps) [N, G, 1].
  groupNorm: {
    arity: [1, 3],
    infer: ([x, scale, bias], p) => {
      const op = 'groupNorm';
      if (scale && !bias) throw new ShapeError(op, 'takes both scale and bias or neither');
      const c = x!.shape[1];
      if (x!.shape.length < 2 || typeof c !== 'number' || !Number.isInteger(p.groups) ||
        p.groups < 1 || c % p.groups !== 0) {
        throw new ShapeError(op, `${p.groups} groups must divide the channels of ${fmtShape(x!.shape)}`);
      }
      staticNumel(x!.shape.slice(2), op);
      for (const [what, t] of [['scale', scale], ['bias', bias]] as const) {
        if (t && (t.shape.length !== 1 || t.shape[0] !== c)) {
          throw new ShapeError(op, `${what} must be [${c}] for input ${fmtShape(x!.shape)}, got ${fmtShape(t.shape)}`);
        }
      }
      return [{ shape: x!.shape, dtype: x!.dtype }, { shape: x!.shape, dtype: x!.dtype },
        { shape: [x!.shape[0]!, p.groups, 1], dtype: x!.dtype }];
    },
    lower: (cx, ins, outs, p, node) => {
      const x = node.inputs[0]!;
      const c = x.shape[1] as number;
      const inner = (c / p.groups) * staticNumel(x.shape.slice(2), 'groupNorm');
      const grouped = cx.fresh('groups');
      cx.emit('Reshape', [ins[0]!, cx.int64s([0, p.groups, inner])], [grouped]); // 0: keep N
      const normed = cx.fresh('normed');
      cx.emit('LayerNormalization', [grouped, cx.float32s(new Array<number>(inner).fill(1))],
        [normed, '', outs[2]!], { axis: 2, epsilon: { float: p.eps } });
      const shape = cx.int64s([0, ...x.shape.slice(1) as number[]]);
      if (ins.length === 1) return cx.emit('Reshape', [normed, shape], [outs[0]!]);
      cx.emit('Reshape', [normed, shape], [outs[1]!]);
      const bcast = cx.int64s([c, ...x.shape.slice(2).map(() => 1)]);
      const [s, b, scaled] = [cx.fresh('scale'), cx.fresh('bias'), cx.fresh('scaled')];
      cx.emit('Reshape', [ins[1]!, bcast], [s]);
      cx.emit('Reshape', [ins[2]!, bcast], [b]);
      cx.emit('Mul', [outs[1]!, s], [scaled]);
      cx.emit('Add', [scaled, b], [outs[0]!]);
    },
    // Per image and channel, S = sum(g xh) and T = sum(g) over the spatial axes (the affine's
    // gradients are their sums over the images); the layer norm's means over a group then come
    // from S and T weighted by the scale, so
    // dx = rstd (scale g - mean_group(scale T) - xh mean_group(scale S)): three passes over the
    // [N, C, ...] tensors for S and T and four for dx, where the composite took eleven.
    vjp: ([g, gXh, gRstd], n, needs) => {
      if (gXh || gRstd) throw new Error('groupNorm: its statistics outputs are not differentiable');
      const [x, scale] = n.inputs as [Tensor, Tensor | undefined];
      const affine = scale !== undefined;
      const xh = affine ? n.outputs[1]! : n.outputs[0]!;
      const rstd = n.outputs[2]!;
      const [b, c] = x.shape as [Dim, number];
      const groups = n.params.groups;
      const inner = (c / groups) * staticNumel(x.shape.slice(2), 'groupNorm');
      const spatial = Array.from({ length: x.rank - 2 }, (_, i) => i + 2);
      const overSpace = (t: Tensor): Tensor => ops.reshape(spatial.length ? ops.sum(t, spatial) : t, [b, c]);
      const s = overSpace(ops.mul(g!, xh)); // [N, C]
      const t = overSpace(g!);
      const sc = affine ? ops.reshape(scale, [1, c]) : null;
      /** The mean over each group's elements of sc * v for v [N, C], per channel [N, C]. */
      const groupMean = (v: Tensor): Tensor => {
        const weighted = ops.reshape(sc ? ops.mul(v, sc) : v, [b, groups, c / groups]);
        const m = ops.div(ops.sum(weighted, [2], true), inner);
        return ops.reshape(ops.broadcastTo(m, [b, groups, c / groups]), [b, c]);
      };
      let dx: Tensor | null = null;
      if (needs[0]) {
        const r = ops.reshape(ops.broadcastTo(rstd, [b, groups, c / groups]), [b, c]); // [N, C]
        const col = (v: Tensor) => ops.reshape(v, x.shape.map((d, i) => (i < 2 ? d : 1)));
        const gain = sc ? ops.mul(r, sc) : r;
        const offset = ops.mul(r, groupMean(t));
        const slope = ops.mul(r, groupMean(s));
        dx = ops.sub(ops.sub(ops.mul(g!, col(gain)), ops.mul(xh, col(slope))), col(offset));
      }
      return [dx,
        affine && needs[1] ? ops.sum(s, [0]) : null,
        affine && needs[2] ? ops.sum(t, [0]) : null];
    },
  },
};
