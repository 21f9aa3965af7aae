/**
 * @file The primitive set and the record every primitive has: shape rule, ONNX
 * lowering and VJP side by side (docs/architecture.md, convention 1). `PrimParams` is the list;
 * the table in `index.ts` is typed over it, so tsc rejects a primitive missing a rule.
 */
import type { DType } from '../dtype.js';
import type { Dim, Shape } from '../shape.js';
import type { PrimNode, Tensor } from '../tensor.js';

type NoParams = Record<string, never>;
export interface ReduceParams { axes: readonly number[]; keepDims: boolean }
export interface Conv2dParams {
  stride: readonly [number, number];
  /** [top, left, bottom, right], ONNX order. */
  pads: readonly [number, number, number, number];
  dilation: readonly [number, number];
  groups: number;
}
export interface ConvTranspose2dParams extends Conv2dParams {
  outputPadding: readonly [number, number];
}

/** Layout of attention's q, k, v and output: 'tokens' is [B, H, T, D] (the usual);
 *  'channels' is [B, H, D, T], heads read straight from a channel-first projection. */
export type AttentionLayout = 'tokens' | 'channels';

/** Every primitive and its parameters. Most lower to one ONNX op, some (attention, blocked convs) to several (opset in onnx.ts). */
export interface PrimParams {
  // elementwise unary (float)
  neg: NoParams; exp: NoParams; log: NoParams; sqrt: NoParams; reciprocal: NoParams;
  sin: NoParams; cos: NoParams; tanh: NoParams; sigmoid: NoParams; erf: NoParams;
  abs: NoParams; sign: NoParams; floor: NoParams;
  /** x sigmoid(x); outputs y and sigmoid(x). A primitive for its VJP (elementwise.ts). */
  silu: NoParams;
  /** GELU's tanh approximation, as ORT's one-pass FastGelu kernel (com.microsoft); a primitive
   *  because ORT fuses the composite only where no gradient reads its intermediates. */
  geluTanh: NoParams;
  // elementwise binary with numpy broadcasting
  add: NoParams; sub: NoParams; mul: NoParams; div: NoParams; pow: NoParams;
  maximum: NoParams; minimum: NoParams;
  equal: NoParams; less: NoParams; greater: NoParams; lessEqual: NoParams; greaterEqual: NoParams;
  logicalAnd: NoParams; logicalOr: NoParams; logicalNot: NoParams;
  where: NoParams;
  cast: { to: DType };
  stopGradient: NoParams;
  // reductions and normalisations
  reduceSum: ReduceParams; reduceMean: ReduceParams; reduceMax: ReduceParams;
  argmax: { axis: number; keepDims: boolean };
  topk: { k: number; axis: number; largest: boolean };
  softmax: { axis: number };
  logSoftmax: { axis: number };
  /** Normalises over axes [axis, rank); inputs x, scale, bias. A primitive because ORT's
   *  LayerNormalization kernel is one pass where the decomposition is nine ops. */
  layerNorm: { axis: number; eps: number };
  /** Normalises each of `groups` channel groups of x [N, C, ...] with its spatial extent; inputs
   *  x and optionally scale and bias [C]. A primitive for its VJP (norm.ts), not its kernel. */
  groupNorm: { groups: number; eps: number };
  // linear algebra
  matmul: NoParams;
  /** inputs x [N,C,H,W], w [O,C/g,kh,kw], optional bias [O] */
  conv2d: Conv2dParams;
  /** inputs x [N,C,H,W], w [C,O/g,kh,kw], optional bias [O] */
  convTranspose2d: ConvTranspose2dParams;
  /** softmax(scale q k^T) v in batch chunks whose scores stay in cache, with a backward that
   *  recomputes them (attention.ts); q, k, v in the given layout. */
  attention: { scale: number; layout: AttentionLayout };
  // movement
  reshape: { shape: readonly Dim[] };
  transpose: { perm: readonly number[] };
  /** Normalised: one entry per axis of the input, 0 <= start, step >= 1, count >= 0;
   *  an untouched axis has start 0, step 1 and its own dim as count (possibly dynamic). */
  slice: { starts: readonly number[]; steps: readonly number[]; counts: readonly Dim[] };
  concat: { axis: number };
  /** Constant padding, [begin_0..begin_r, end_0..end_r] as in ONNX, non-negative. */
  pad: { pads: readonly number[]; value: number };
  expand: { shape: readonly Dim[] };
  gather: { axis: number };
  /** inputs target [R, ...rest], indices int64 [...I], updates [...I, ...rest]: adds along axis 0. */
  scatterAdd: NoParams;
  upsampleNearest2x: NoParams;
}

export type Prim = keyof PrimParams;

/** The abstract value of a tensor: what shape rules see. */
export interface Aval {
  readonly shape: Shape;
  readonly dtype: DType;
}

export type AttrValue = number | readonly number[] | string | { readonly float: number };

/** What a lowering sees: emit ONNX nodes and make constants. */
export interface LowerCtx {
  /** Appends a node; `domain` for ops outside the ONNX standard set (ORT's contrib ops). */
  emit(op: string, inputs: readonly string[], outputs: readonly string[],
    attrs?: Record<string, AttrValue>, domain?: string): void;
  /** ORT's NCHWc block size when blocked convs may be emitted (CPU sessions), else 0. */
  readonly nchwcBlock: number;
  /** Whether the graph runs on ORT's CPU provider, where cache-sized batch chunks pay. */
  readonly cpuCacheChunks: boolean;
  /** Whether a tensor's value depends on a graph input (false: ORT folds it to a constant). */
  dependsOnInput(t: Tensor): boolean;
  fresh(hint: string): string;
  /** A 1-D int64 constant. */
  int64s(values: readonly number[]): string;
  /** A 1-D float32 constant. */
  float32s(values: readonly number[]): string;
  /** A scalar constant of a dtype. */
  scalar(value: number, dtype: DType): string;
  /** A 1-D int64 tensor holding a shape, with dynamic dimensions read at run time. */
  shapeTensor(shape: Shape): string;
}

/** Cotangent per input (null: none or not needed), given the cotangent of each output
 *  (null: that output does not reach the differentiated result). `needs[i]` is false when
 *  input i's cotangent will be discarded, so a rule may skip computing it. */
export type VjpRule<P extends Prim> = (
  cts: readonly (Tensor | null)[],
  node: PrimNode<P>,
  needs: readonly boolean[],
) => (Tensor | null)[];

export interface PrimDef<P extends Prim> {
  /** Input count: exact, or [min, max] (optional trailing inputs, e.g. conv bias), or 'any'. */
  arity: number | readonly [number, number] | 'any';
  /** Output avals; throws ShapeError naming the op, the requirement and the shapes. */
  infer(ins: readonly Aval[], p: PrimParams[P]): Aval[];
  lower(cx: LowerCtx, ins: readonly string[], outs: readonly string[], p: PrimParams[P],
    node: PrimNode<P>): void;
  /** null: not differentiable (integer or boolean outputs, piecewise-constant functions). */
  vjp: VjpRule<P> | null;
}

export type PrimTable = { [P in Prim]: PrimDef<P> };
