/**
 * @file Multi-head attention with diffusers' parameter names (to_q, to_k, to_v, to_out.0),
 * written as batched MatMuls so ORT runs it with its GEMM kernels.
 */
import * as ops from '../engine/ops.js';
import type { Tensor } from '../engine/tensor.js';
import { Linear } from './layers.js';
import { Module, type ParamsOf } from './module.js';

/** softmax(q k^T / sqrt(d)) v over [B, H, T, D] tensors; an optional additive bias
 *  (e.g. a mask of -inf) broadcasts against the [B, H, Tq, Tk] scores. Without a bias this is
 *  ops.attention (narrow heads run as one cache-chunked primitive). */
export function scaledDotProductAttention(q: Tensor, k: Tensor, v: Tensor, bias?: Tensor): Tensor {
  if (!bias) return ops.attention(q, k, v);
  const d = q.shape[q.rank - 1] as number;
  const scores = ops.add(ops.matmul(ops.mul(q, 1 / Math.sqrt(d)), ops.transpose(k, [0, 1, 3, 2])), bias);
  return ops.matmul(ops.softmax(scores, -1), v); // [B, H, Tq, D]
}

export interface AttentionOptions {
  heads: number;
  /** Channels of the key/value source (cross-attention); default: the query's. */
  kvDim?: number;
  bias?: boolean;
  outBias?: boolean;
}

export class MultiHeadAttention extends Module {
  readonly to_q: Linear;
  readonly to_k: Linear;
  readonly to_v: Linear;
  readonly to_out: [Linear];
  readonly heads: number;
  constructor(readonly dim: number, opts: AttentionOptions) {
    super();
    if (dim % opts.heads !== 0) {
      throw new RangeError(`MultiHeadAttention: ${opts.heads} heads must divide dim ${dim}`);
    }
    const kv = opts.kvDim ?? dim;
    const bias = { bias: opts.bias ?? true };
    this.heads = opts.heads;
    this.to_q = new Linear(dim, dim, bias);
    this.to_k = new Linear(kv, dim, bias);
    this.to_v = new Linear(kv, dim, bias);
    this.to_out = [new Linear(dim, dim, { bias: opts.outBias ?? true })];
  }

  /** x [B, T, dim], context [B, S, kvDim] (default x) -> [B, T, dim] */
  forward(p: ParamsOf<MultiHeadAttention>, x: Tensor, context: Tensor = x, bias?: Tensor): Tensor {
    const [b, t] = x.shape;
    const split = (y: Tensor): Tensor =>
      ops.transpose(ops.reshape(y, [b!, y.shape[1]!, this.heads, -1]), [0, 2, 1, 3]); // [B, H, T, D]
    const q = split(this.to_q.forward(p.to_q, x));
    const k = split(this.to_k.forward(p.to_k, context));
    const v = split(this.to_v.forward(p.to_v, context));
    const o = scaledDotProductAttention(q, k, v, bias);
    const merged = ops.reshape(ops.transpose(o, [0, 2, 1, 3]), [b!, t!, this.dim]);
    return this.to_out[0].forward(p.to_out[0]!, merged);
  }
}
