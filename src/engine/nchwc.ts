/**
 * @file Convolutions in ORT's blocked NCHWc layout when the weights are not constants.
 *
 * Why: at optimisation level 'all', ORT rewrites a Conv whose weight is an initializer into
 * its NCHWc kernels (channels in blocks of 8 with AVX2, 16 with AVX-512), reordering the
 * weight once at load. A weight that is a graph input - every conv of a training step, and
 * the flipped-kernel conv of an input gradient - keeps the plain NCHW kernel, measured 1.2-2.2x
 * slower at the U-Net's shapes. The blocked kernel itself reads its weight as an ordinary
 * input, so we emit it directly (domain com.microsoft.nchwc): the weight is reordered in the
 * graph by a Reshape/Transpose, the activation by ReorderInput/ReorderOutput.
 *
 * The block size is the CPU's (MlasNchwcGetBlockSize), so it is read from ORT itself: a
 * ReorderInput of 4 channels pads them to one block.
 */
import ort from 'onnxruntime-node';
import onnxProto from 'onnx-proto';
import type { Conv2dParams, LowerCtx } from './prims/types.js';

export const NCHWC_DOMAIN = 'com.microsoft.nchwc';

let probed: Promise<number> | undefined;
let known: number | undefined;

/** ORT's NCHWc block size on this CPU, or 0 where the blocked kernels are unavailable. */
export function nchwcBlockSize(): Promise<number> {
  probed ??= probe().then((b) => (known = b));
  return probed;
}

/** The block size if nchwcBlockSize() has resolved, else undefined (for synchronous callers). */
export function nchwcBlockSizeIfKnown(): number | undefined {
  return known;
}

async function probe(): Promise<number> {
  const { onnx } = onnxProto;
  const dims = [1, 4, 1, 1].map((d) => ({ dimValue: d }));
  const bytes = onnx.ModelProto.encode(onnx.ModelProto.create({
    irVersion: 8,
    opsetImport: [{ domain: '', version: 18 }, { domain: NCHWC_DOMAIN, version: 1 }],
    graph: {
      name: 'nchwc_probe',
      node: [{ opType: 'ReorderInput', domain: NCHWC_DOMAIN, input: ['x'], output: ['y'] }],
      input: [{ name: 'x', type: { tensorType: { elemType: 1, shape: { dim: dims } } } }],
      output: [{ name: 'y', type: { tensorType: { elemType: 1 } } }],
    },
  })).finish();
  try {
    const session = await ort.InferenceSession.create(bytes, { executionProviders: ['cpu'], logSeverityLevel: 3 });
    const { y } = await session.run({ x: new ort.Tensor('float32', new Float32Array(4), [1, 4, 1, 1]) });
    await session.release();
    const block = y!.dims[1]!;
    // Blocks under 8 (SSE-only CPUs, or none) are not worth the reorders.
    return block >= 8 ? block : 0;
  } catch {
    return 0;
  }
}

/** Whether a conv of x [N, C, H, W] by w [O, C/g, kh, kw] can run in the blocked layout. */
export function blockedConvApplies(block: number, c: number, o: number, p: Conv2dParams): boolean {
  return block > 0 && p.groups === 1 && o % block === 0 && (c % block === 0 || c < block);
}

/**
 * Emits y = Conv(x, w, bias) in the blocked layout. Channels that fill whole blocks are
 * reordered to NCHWc and the weight to OIHWBiBo ([O/B, I/B, kh, kw, Bi, Bo]); fewer input
 * channels than one block stay NCHW and the weight goes to OIHWBo ([O/B, I, kh, kw, Bo]).
 */
export function lowerBlockedConv(cx: LowerCtx, block: number, ins: readonly string[], out: string,
  shape: { c: number; o: number; kh: number; kw: number }, attrs: Record<string, number[] | number>): void {
  const [x, w, bias] = ins as [string, string, string | undefined];
  const { c, o, kh, kw } = shape;
  const b = block;
  const w6 = cx.fresh('nchwc_w');
  const wt = cx.fresh('nchwc_w');
  const wb = cx.fresh('nchwc_w');
  let xc = x;
  if (c % b === 0) {
    cx.emit('Reshape', [w, cx.int64s([o / b, b, c / b, b, kh * kw])], [w6]);
    cx.emit('Transpose', [w6], [wt], { perm: [0, 2, 4, 3, 1] });
    xc = cx.fresh('nchwc_x');
    cx.emit('ReorderInput', [x], [xc], {}, NCHWC_DOMAIN);
  } else {
    cx.emit('Reshape', [w, cx.int64s([o / b, b, c * kh * kw])], [w6]);
    cx.emit('Transpose', [w6], [wt], { perm: [0, 2, 1] });
  }
  cx.emit('Reshape', [wt, cx.int64s([o, c, kh, kw])], [wb]);
  const yc = cx.fresh('nchwc_y');
  cx.emit('Conv', bias ? [xc, wb, bias] : [xc, wb], [yc], attrs, NCHWC_DOMAIN);
  cx.emit('ReorderOutput', [yc], [out], { channels: o }, NCHWC_DOMAIN);
}
