/**
 * @file The attention head of Mukhopadhyay, Gwilliam, Yamaguchi, Agarwal, Padmanabhan, Swaminathan,
 * Zhou & Shrivastava 2023, "Diffusion Models Beat GANs on Image Classification", sec. 3.3: a
 * frozen diffusion U-Net's feature map of a noised image, read by a small trainable
 * Transformer block instead of a linear layer on its global average.
 *
 * Claim: the pooled linear probe throws away where a feature is; a learned head over the
 * unpooled map (the best of their heads: an attention head) recovers far higher accuracy from
 * the same frozen features (their ImageNet linear 61% -> attention 71% at the best block).
 *
 * The head: the map [B, C, h, w] as h w tokens of C channels plus a learned position
 * embedding; one pre-norm Transformer block (multi-head self-attention, then a 2x MLP), the
 * tokens' mean, a LayerNorm and a linear classifier. The paper's exact widths are not given
 * for this scale; C and 4 heads here.
 */
import * as ops from '../engine/ops.js';
import type { Tensor } from '../engine/tensor.js';
import { MultiHeadAttention } from '../nn/attention.js';
import { normal } from '../nn/init.js';
import { LayerNorm, Linear } from '../nn/layers.js';
import { Module, Param, type ParamsOf } from '../nn/module.js';

export class AttentionProbe extends Module {
  readonly pos: Param;
  readonly norm1: LayerNorm;
  readonly attn: MultiHeadAttention;
  readonly norm2: LayerNorm;
  readonly mlp: [Linear, Linear];
  readonly norm_out: LayerNorm;
  readonly head: Linear;
  constructor(readonly channels: number, readonly tokens: number, readonly classes: number,
    heads = 4) {
    super();
    this.pos = new Param([tokens, channels], normal(0.02));
    this.norm1 = new LayerNorm(channels);
    this.attn = new MultiHeadAttention(channels, { heads });
    this.norm2 = new LayerNorm(channels);
    this.mlp = [new Linear(channels, 2 * channels), new Linear(2 * channels, channels)];
    this.norm_out = new LayerNorm(channels);
    this.head = new Linear(channels, classes);
  }

  /** Class logits [B, classes] of feature maps [B, C, h, w] (h w = tokens). */
  logits(p: ParamsOf<AttentionProbe>, map: Tensor): Tensor {
    const [b, c, h, w] = map.shape as [number, number, number, number];
    if (c !== this.channels || h * w !== this.tokens) {
      throw new RangeError(`attention probe: built for ${this.channels} channels x ${this.tokens} ` +
        `tokens, got a [${map.shape.join(', ')}] feature map`);
    }
    let x = ops.add(ops.transpose(ops.reshape(map, [b, c, h * w]), [0, 2, 1]), p.pos); // [B, T, C]
    x = ops.add(x, this.attn.forward(p.attn, this.norm1.forward(p.norm1, x)));
    const hidden = ops.gelu(this.mlp[0].forward(p.mlp[0]!, this.norm2.forward(p.norm2, x)));
    x = ops.add(x, this.mlp[1].forward(p.mlp[1]!, hidden));
    const pooled = this.norm_out.forward(p.norm_out, ops.mean(x, [1])); // [B, C]
    return this.head.forward(p.head, pooled);
  }
}
