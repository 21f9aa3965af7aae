/** @file Matrix products and convolutions, including the conv weight gradient. */
import { bind1 } from '../bind.js';
import type { AttentionLayout, Conv2dParams } from '../prims/types.js';
import { fmtShape, ShapeError, staticDim, type Dim } from '../shape.js';
import type { Tensor } from '../tensor.js';
import { add, mul } from './elementwise.js';
import { softmax } from './reduce.js';
import { concat, gather, pad, reshape, slice, transpose } from './movement.js';
import { constant } from './creation.js';
import { HostArray } from '../host.js';

/** Batched matrix product with numpy broadcasting of the batch axes; operands rank >= 2. */
export function matmul(a: Tensor, b: Tensor): Tensor {
  return bind1('matmul', [a, b], {});
}

/** The widest heads the attention primitive takes: its backward recomputes q k^T, 2 T^2 D
 *  flops per head, to save two passes of 4 T^2 bytes through memory, which pays for narrow
 *  heads only (measured: U-Net, D = 8, training 1.02-1.04x and forward 1.11x; pixel DiT,
 *  D = 32, training 0.97x and forward 1.01x). */
const RECOMPUTED_HEAD_MAX = 16;

/**
 * softmax(scale q k^T) v per batch and head. q, k, v are [B, H, T, D] (layout 'tokens', the
 * default) or [B, H, D, T] ('channels'); the output has q's layout with v's D. scale defaults
 * to 1/sqrt(D). Heads up to RECOMPUTED_HEAD_MAX wide go to the attention primitive, which
 * keeps the scores in cache and recomputes them for the backward (prims/attention.ts); wider
 * ones to the composite, whose backward reads the saved probabilities.
 */
export function attention(q: Tensor, k: Tensor, v: Tensor,
  opts: { scale?: number; layout?: AttentionLayout } = {}): Tensor {
  const layout = opts.layout ?? 'tokens';
  const d = q.shape[layout === 'tokens' ? 3 : 2];
  // A q of the wrong rank gets its error from the primitive's shape rule.
  const scale = opts.scale ?? (typeof d === 'number' ? 1 / Math.sqrt(d) : 1);
  if (!Number.isFinite(scale)) throw new RangeError(`attention: scale must be finite, got ${scale}`);
  if (q.rank === 4 && typeof d === 'number' && d > RECOMPUTED_HEAD_MAX) {
    const swap = (t: Tensor): Tensor => transpose(t, [0, 1, 3, 2]);
    const [qt, kt, vt] = layout === 'tokens' ? [q, k, v] : [swap(q), swap(k), swap(v)];
    const o = matmul(softmax(matmul(scale === 1 ? qt : mul(qt, scale), swap(kt)), -1), vt);
    return layout === 'tokens' ? o : swap(o);
  }
  return bind1('attention', [q, k, v], { scale, layout });
}

/** x @ w^T + b for torch-layout weights w [out, in]: the Linear layer's product. */
export function linear(x: Tensor, w: Tensor, b?: Tensor): Tensor {
  const y = matmul(x, transpose(w));
  return b ? add(y, b) : y;
}

type Pair = number | readonly [number, number];
export interface ConvOptions {
  stride?: Pair;
  /** Symmetric [ph, pw] (or one number), or [top, left, bottom, right]. */
  padding?: Pair | readonly [number, number, number, number];
  dilation?: Pair;
  groups?: number;
  bias?: Tensor;
}

function pair(v: Pair | undefined, dflt: number): [number, number] {
  return v === undefined ? [dflt, dflt] : typeof v === 'number' ? [v, v] : [v[0], v[1]];
}

function convParams(o: ConvOptions | Conv2dParams): Conv2dParams {
  if ('pads' in o) return o;
  const p = o.padding;
  const pads: [number, number, number, number] = p === undefined ? [0, 0, 0, 0]
    : typeof p === 'number' ? [p, p, p, p]
      : p.length === 2 ? [p[0], p[1], p[0], p[1]] : [p[0], p[1], p[2]!, p[3]!];
  return { stride: pair(o.stride, 1), pads, dilation: pair(o.dilation, 1), groups: o.groups ?? 1 };
}

/** 2-D convolution (cross-correlation, as torch): x [N, C, H, W], w [O, C/groups, kh, kw]. */
export function conv2d(x: Tensor, w: Tensor, opts: ConvOptions | Conv2dParams = {}): Tensor {
  const bias = 'bias' in opts ? opts.bias : undefined;
  return bind1('conv2d', bias ? [x, w, bias] : [x, w], convParams(opts));
}

/** Transposed convolution: x [N, C, H, W], w [C, O/groups, kh, kw] (torch layout). */
export function convTranspose2d(x: Tensor, w: Tensor,
  opts: (ConvOptions & { outputPadding?: Pair }) | (Conv2dParams & { outputPadding: readonly [number, number] }) = {}): Tensor {
  const bias = 'bias' in opts ? opts.bias : undefined;
  const outputPadding = pair(opts.outputPadding, 0);
  return bind1('convTranspose2d', bias ? [x, w, bias] : [x, w], { ...convParams(opts), outputPadding });
}

/**
 * dL/dw of y = conv2d(x, w) given gy = dL/dy, for w of shape wShape [O, C/g, kh, kw].
 * Written as patches x matmul: ORT runs a Conv over transposed tensors with a large kernel
 * (the textbook form) far slower than MatMul. The input is transposed once to [C, N, H, W]
 * so each kernel tap is a strided slice already in the matmul's layout. (An im2col by a Conv
 * with one-hot kernels was tried: ORT reorders its [N*C, K, H, W] output to NCHWc and back,
 * which cost more than these slices.)
 */
export function conv2dWeightGrad(x: Tensor, gy: Tensor, wShape: readonly number[],
  p: Conv2dParams): Tensor {
  const op = 'conv2dWeightGrad';
  const [o, cg, kh, kw] = wShape as [number, number, number, number];
  const g = p.groups;
  const c = staticDim(x.shape[1]!, op, 'channels');
  const [ho, wo] = [gy.shape[2] as number, gy.shape[3] as number];
  if (c !== cg * g || gy.shape[1] !== o) {
    throw new ShapeError(op, `x ${fmtShape(x.shape)}, gy ${fmtShape(gy.shape)} and w ` +
      `${fmtShape(wShape)} disagree (groups ${g})`);
  }
  const xp = pad(transpose(x, [1, 0, 2, 3]), [[0, 0], [0, 0], [p.pads[0], p.pads[2]], [p.pads[1], p.pads[3]]]);
  const taps: Tensor[] = [];
  for (let i = 0; i < kh; i++) {
    for (let j = 0; j < kw; j++) {
      const r0 = i * p.dilation[0];
      const c0 = j * p.dilation[1];
      const tap = slice(xp, [null, null, [r0, r0 + (ho - 1) * p.stride[0] + 1, p.stride[0]],
        [c0, c0 + (wo - 1) * p.stride[1] + 1, p.stride[1]]]); // [C, N, ho, wo]
      taps.push(reshape(tap, [g, cg, 1, -1]));
    }
  }
  const cols = reshape(concat(taps, 2), [g, cg * kh * kw, -1]); // [G, Cg*K, N*ho*wo]
  const gyT = reshape(transpose(gy, [1, 0, 2, 3]), [g, o / g, -1]); // [G, O/G, N*ho*wo]
  const dw = matmul(gyT, transpose(cols, [0, 2, 1])); // [G, O/G, Cg*K]
  return reshape(dw, [o, cg, kh, kw]);
}

/**
 * dL/dx of y = conv2d(x, w) given gy: for stride 1, a Conv of gy with the flipped, transposed
 * kernel (ORT's Conv kernels beat its ConvTranspose); otherwise ConvTranspose.
 */
export function conv2dInputGrad(gy: Tensor, w: Tensor, xShape: readonly Dim[], p: Conv2dParams): Tensor {
  const [o, cg, kh, kw] = w.shape as [number, number, number, number];
  const [dh, dw] = p.dilation;
  const pads = [dh * (kh - 1) - p.pads[0], dw * (kw - 1) - p.pads[1], dh * (kh - 1) - p.pads[2],
    dw * (kw - 1) - p.pads[3]] as const;
  if (p.stride[0] === 1 && p.stride[1] === 1 && pads.every((v) => v >= 0)) {
    const g = p.groups;
    // [O, C/g, kh, kw] -> [C, O/g, kh, kw], spatially flipped.
    const wt = reshape(transpose(reshape(w, [g, o / g, cg, kh, kw]), [0, 2, 1, 3, 4]), [cg * g, o / g, kh, kw]);
    const rev = (k: number) => constant(HostArray.fromNested(Array.from({ length: k }, (_, i) => k - 1 - i), 'int64'));
    const flipped = gather(gather(wt, rev(kh), 2), rev(kw), 3);
    return conv2d(gy, flipped, { stride: [1, 1], pads, dilation: p.dilation, groups: g });
  }
  const outPad = [0, 1].map((i) => {
    const k = w.shape[2 + i] as number;
    const ho = gy.shape[2 + i] as number;
    return (xShape[2 + i] as number) - ((ho - 1) * p.stride[i]! - p.pads[i]! - p.pads[i + 2]! +
      p.dilation[i]! * (k - 1) + 1);
  }) as [number, number];
  return convTranspose2d(gy, w, { ...p, outputPadding: outPad });
}
