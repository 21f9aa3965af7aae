/**
 * @file Linear algebra primitives: batched matmul, conv2d and its transpose.
 * Their VJPs are each other (plus the conv weight gradient: weightGrad below, or
 * conv2dWeightGrad in ops for grouped convs and dynamic batches).
 */
import { blockedConvApplies, lowerBlockedConv } from '../nchwc.js';
import * as ops from '../ops.js';
import { broadcastShapes, fmtShape, ShapeError, staticDim, type Dim } from '../shape.js';
import type { Tensor } from '../tensor.js';
import type { Aval, Conv2dParams, PrimDef, PrimTable } from './types.js';

function swapLast(t: Tensor): Tensor {
  const perm = [...Array(t.rank).keys()];
  perm[t.rank - 2] = t.rank - 1;
  perm[t.rank - 1] = t.rank - 2;
  return ops.transpose(t, perm);
}

/** Output size of a convolution along one axis (floor division, as ONNX and torch). */
function convOutSize(n: number, k: number, s: number, d: number, p0: number, p1: number): number {
  return Math.floor((n + p0 + p1 - d * (k - 1) - 1) / s) + 1;
}

function convAttrs(p: Conv2dParams, w: Tensor | Aval) {
  return {
    strides: [...p.stride], pads: [...p.pads], dilations: [...p.dilation], group: p.groups,
    kernel_shape: [w.shape[2] as number, w.shape[3] as number],
  };
}

function checkConvOperands(op: string, x: Aval, w: Aval, bias: Aval | undefined, p: Conv2dParams,
  inPerGroupAxis: 0 | 1): void {
  const shapes = `x ${fmtShape(x.shape)}, w ${fmtShape(w.shape)}`;
  if (x.shape.length !== 4 || w.shape.length !== 4) {
    throw new ShapeError(op, `expects x [N, C, H, W] and w of rank 4, got ${shapes}`);
  }
  if (x.dtype !== w.dtype) throw new TypeError(`${op}: x is ${x.dtype} but w is ${w.dtype}`);
  const g = p.groups;
  const c = staticDim(x.shape[1]!, op, 'channels');
  if (!Number.isInteger(g) || g < 1 || c % g !== 0) {
    throw new ShapeError(op, `groups = ${g} must divide the ${c} input channels (${shapes})`);
  }
  const wIn = inPerGroupAxis === 1 ? staticDim(w.shape[1]!, op, 'w.shape[1]') * g
    : staticDim(w.shape[0]!, op, 'w.shape[0]');
  if (wIn !== c) {
    throw new ShapeError(op, `x has ${c} channels but w expects ${wIn} with groups = ${g} (${shapes})`);
  }
  if (inPerGroupAxis === 1 && staticDim(w.shape[0]!, op, 'w.shape[0]') % g !== 0) {
    throw new ShapeError(op, `groups = ${g} must divide the ${w.shape[0]} output channels (${shapes})`);
  }
  for (const v of [...p.stride, ...p.dilation]) {
    if (!Number.isInteger(v) || v < 1) throw new ShapeError(op, `stride and dilation must be >= 1`);
  }
  if (p.pads.some((v) => !Number.isInteger(v) || v < 0)) {
    throw new ShapeError(op, `pads must be non-negative integers, got [${p.pads.join(', ')}]`);
  }
  if (bias) {
    const o = inPerGroupAxis === 1 ? w.shape[0] : (w.shape[1] as number) * g;
    if (bias.shape.length !== 1 || bias.shape[0] !== o) {
      throw new ShapeError(op, `bias must be [${o}], got ${fmtShape(bias.shape)}`);
    }
  }
}

/**
 * dL/dw of y = conv2d(x, w) given gy. For a stride-1 conv whose output has its input's size
 * (the U-Net's 3x3 pad-1 and 1x1 convs), the kh*kw shifted copies of gy (padded) are stacked
 * along its channels and multiplied with x image by image, one batched matmul with K = h*w,
 * then summed over the images: dw[o, c, i, j] = sum_n,q gy[n, o, q - (i - pt, j - pl)] x[n, c, q].
 * No transposed [C, N, H, W] copies; the shifted operand is whichever of gy and x has fewer
 * channels (x for the U-Net's first conv, 1 channel against 32: 32x less to copy). Measured on
 * the U-Net's convs at batch 64 (forward and both gradients): 1.1-1.7x over ops.conv2dWeightGrad
 * (im2col of x), which serves every other conv (strided, dilated, grouped, dynamic batch).
 */
function weightGrad(x: Tensor, gy: Tensor, wShape: readonly number[], p: Conv2dParams): Tensor {
  const [o, c, kh, kw] = wShape as [number, number, number, number];
  const [n, , ho, wo] = gy.shape as [Dim, number, number, number];
  const [h, w] = [x.shape[2], x.shape[3]];
  const [pt, pl] = [p.pads[0], p.pads[1]];
  const same = p.groups === 1 && p.stride.every((s) => s === 1) && p.dilation.every((d) => d === 1) &&
    ho === h && wo === w && p.pads[2] === pt && p.pads[3] === pl;
  if (!same || typeof n !== 'number') return ops.conv2dWeightGrad(x, gy, wShape, p);
  const k = kh * kw;
  /** The k copies of t [N, Ch, H, W], zero-padded like the conv's input and shifted by each tap
   *  (by its mirror image for gy), stacked along the channels: [N, K*Ch, H*W]. */
  const taps = (t: Tensor, mirror: boolean): Tensor => {
    const ch = t.shape[1] as number;
    if (k === 1) return ops.reshape(t, [n, ch, ho * wo]);
    const tp = ops.pad(t, [[0, 0], [0, 0], [pt, pt], [pl, pl]]);
    const shifted: Tensor[] = [];
    for (let i = 0; i < kh; i++) {
      for (let j = 0; j < kw; j++) {
        const [r, q] = mirror ? [2 * pt - i, 2 * pl - j] : [i, j];
        shifted.push(ops.slice(tp, [null, null, [r, r + ho], [q, q + wo]]));
      }
    }
    return ops.reshape(ops.concat(shifted, 1), [n, k * ch, ho * wo]);
  };
  const flat = (t: Tensor) => ops.transpose(taps(t, false), [0, 2, 1]); // [N, HW, K*Ch]
  if (k > 1 && c < o) {
    // Fewer input than output channels (the first conv of a U-Net, widening resnets): shift x.
    const dw = ops.sum(ops.matmul(ops.reshape(gy, [n, o, ho * wo]), flat(x)), [0]); // [O, K*C]
    return ops.transpose(ops.reshape(dw, [o, kh, kw, c]), [0, 3, 1, 2]);
  }
  const xT = ops.transpose(ops.reshape(x, [n, c, ho * wo]), [0, 2, 1]); // [N, HW, C]
  const dw = ops.sum(ops.matmul(taps(gy, true), xT), [0]); // [K*O, C]
  return ops.transpose(ops.reshape(dw, [kh, kw, o, c]), [2, 3, 0, 1]);
}

export const linalgPrims: Pick<PrimTable, 'matmul' | 'conv2d' | 'convTranspose2d'> = {
  matmul: {
    arity: 2,
    infer: ([a, b]) => {
      const op = 'MatMul';
      if (a!.shape.length < 2 || b!.shape.length < 2) {
        throw new ShapeError(op, `operands must have rank >= 2, got ${fmtShape(a!.shape)} and ` +
          `${fmtShape(b!.shape)} (reshape vectors to [1, n] or [n, 1])`);
      }
      if (a!.dtype !== b!.dtype) throw new TypeError(`${op}: dtypes ${a!.dtype} and ${b!.dtype} differ`);
      const [m, k] = a!.shape.slice(-2) as [Dim, Dim];
      const [k2, n] = b!.shape.slice(-2) as [Dim, Dim];
      if (k !== k2) {
        throw new ShapeError(op, `contracting dimensions differ: ${fmtShape(a!.shape)} @ ` +
          `${fmtShape(b!.shape)} (${k} vs ${k2})`);
      }
      const batch = broadcastShapes(op, a!.shape.slice(0, -2), b!.shape.slice(0, -2));
      return [{ shape: [...batch, m, n], dtype: a!.dtype }];
    },
    lower: (cx, ins, outs) => cx.emit('MatMul', ins, outs),
    vjp: ([g], n, needs) => {
      const [a, b] = n.inputs as [Tensor, Tensor];
      return [
        needs[0] ? ops.unbroadcast(ops.matmul(g!, swapLast(b)), a.shape) : null,
        needs[1] ? ops.unbroadcast(ops.matmul(swapLast(a), g!), b.shape) : null,
      ];
    },
  },

  conv2d: {
    arity: [2, 3],
    infer: ([x, w, bias], p) => {
      checkConvOperands('Conv', x!, w!, bias, p, 1);
      const hw = [2, 3].map((ax, i) => {
        const n = staticDim(x!.shape[ax]!, 'Conv', 'spatial size');
        const k = staticDim(w!.shape[ax]!, 'Conv', 'kernel size');
        const o = convOutSize(n, k, p.stride[i]!, p.dilation[i]!, p.pads[i]!, p.pads[i + 2]!);
        if (o < 1) {
          throw new ShapeError('Conv', `kernel ${fmtShape(w!.shape)} (dilation ${p.dilation}) does ` +
            `not fit input ${fmtShape(x!.shape)} with pads [${p.pads.join(', ')}]`);
        }
        return o;
      });
      return [{ shape: [x!.shape[0]!, w!.shape[0]!, ...hw], dtype: x!.dtype }];
    },
    lower: (cx, ins, outs, p, n) => {
      const [x, w] = n.inputs as [Tensor, Tensor];
      const [o, c, kh, kw] = [w.shape[0], x.shape[1], w.shape[2], w.shape[3]] as number[];
      // Constant weights are ORT's to block (at load); input-dependent ones are ours (nchwc.ts).
      if (cx.dependsOnInput(w) && blockedConvApplies(cx.nchwcBlock, c!, o!, p)) {
        lowerBlockedConv(cx, cx.nchwcBlock, ins, outs[0]!, { c: c!, o: o!, kh: kh!, kw: kw! }, convAttrs(p, w));
      } else {
        cx.emit('Conv', ins, outs, convAttrs(p, w));
      }
    },
    vjp: ([g], n, needs) => {
      const [x, w] = n.inputs as [Tensor, Tensor];
      return [
        needs[0] ? ops.conv2dInputGrad(g!, w, x.shape, n.params) : null,
        needs[1] ? weightGrad(x, g!, w.shape as number[], n.params) : null,
        needs[2] ? ops.sum(g!, [0, 2, 3]) : null,
      ];
    },
  },

  convTranspose2d: {
    arity: [2, 3],
    infer: ([x, w, bias], p) => {
      const op = 'ConvTranspose';
      checkConvOperands(op, x!, w!, bias, p, 0);
      const hw = [2, 3].map((ax, i) => {
        const n = staticDim(x!.shape[ax]!, op, 'spatial size');
        const k = staticDim(w!.shape[ax]!, op, 'kernel size');
        const op_ = p.outputPadding[i]!;
        if (op_ < 0 || (op_ >= p.stride[i]! && op_ >= p.dilation[i]!)) {
          throw new ShapeError(op, `outputPadding ${op_} must be < stride or dilation`);
        }
        return (n - 1) * p.stride[i]! - p.pads[i]! - p.pads[i + 2]! + p.dilation[i]! * (k - 1) + 1 + op_;
      });
      if (hw.some((v) => v < 1)) throw new ShapeError(op, `pads leave an empty output ${hw}`);
      return [{ shape: [x!.shape[0]!, (w!.shape[1] as number) * p.groups, ...hw], dtype: x!.dtype }];
    },
    lower: (cx, ins, outs, p, n) => cx.emit('ConvTranspose', ins, outs,
      { ...convAttrs(p, n.inputs[1]!), output_padding: [...p.outputPadding] }),
    vjp: ([g], n, needs) => {
      const [x, w] = n.inputs as [Tensor, Tensor];
      const { outputPadding: _, ...p } = n.params;
      return [
        needs[0] ? ops.conv2d(g!, w, p) : null,
        // The weight gradient of a transposed conv is that of the conv running the other way.
        needs[1] ? ops.conv2dWeightGrad(g!, x, w.shape as number[], p) : null,
        needs[2] ? ops.sum(g!, [0, 2, 3]) : null,
      ];
    },
  },
};
