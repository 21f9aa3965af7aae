/** @file diffusers' `embeddings.TimestepEmbedding`, shared by the U-Net and the DiT. */
import * as ops from '../engine/ops.js';
import type { Tensor } from '../engine/tensor.js';
import { Linear } from '../nn/layers.js';
import { Module, type ParamsOf } from '../nn/module.js';

/** linear_1, SiLU, linear_2 (neither UNet2DModel nor DiT changes its act_fn). */
export class TimestepEmbedding extends Module {
  readonly linear_1: Linear;
  readonly linear_2: Linear;
  constructor(inC: number, outC: number) {
    super();
    this.linear_1 = new Linear(inC, outC);
    this.linear_2 = new Linear(outC, outC);
  }
  /** x [N, in] -> [N, out] */
  forward(p: ParamsOf<TimestepEmbedding>, x: Tensor): Tensor {
    return this.linear_2.forward(p.linear_2, ops.silu(this.linear_1.forward(p.linear_1, x)));
  }
}
