/**
 * @file REPA: Yu, Kwak, Jang, Jeong, Huang, Shin & Xie 2024, "Representation Alignment for
 * Generation: Training Diffusion Transformers Is Easier Than You Think" (official code:
 * sihyun-yu/REPA, loss.py and models/sit.py).
 *
 * Claim: aligning an early hidden state of the denoiser with a frozen pretrained encoder's
 * features of the clean image makes diffusion transformers train much faster (SiT-XL/2
 * reaches its 7M-step FID in 400K steps, 17.5x; FID 1.42 with guidance).
 *
 * As the official code: the hidden state after block `encoder_depth`, per token, through an
 * MLP projector (Linear, SiLU, Linear, SiLU, Linear: D -> H -> H -> z_dim); the loss is the
 * negative cosine similarity to the encoder's feature of the same token, averaged over tokens
 * and then over the batch; the total is the denoising loss + lambda (0.5) times it.
 * Departures, both forced by scale: the projector's width H defaults to 4 D instead of 2048
 * (2048 is sized for SiT-XL's D = 1152; at D = 128 it would cost several times the model);
 * and the encoder is a frozen network of this project, not DINOv2 (pipelines/repa.ts says
 * which and why). Where the encoder's grid and the model's tokens differ, the finer of the two
 * is average pooled onto the coarser (REPA matches them by construction).
 */
import * as ops from '../engine/ops.js';
import type { Tensor } from '../engine/tensor.js';
import { Linear } from '../nn/layers.js';
import { Module, type ParamsOf } from '../nn/module.js';
import { poolMap } from './ddae.js';

/** The official default weight of the alignment loss (proj_coeff). */
export const REPA_LAMBDA = 0.5;

/** The official encoder_depth as a share of SiT-XL's depth (8 of 28 blocks). */
export function repaDepth(blocks: number): number {
  return Math.max(1, Math.round((blocks * 8) / 28));
}

/** The per-token MLP projector, D -> H -> H -> z. */
export class RepaProjector extends Module {
  readonly linear1: Linear;
  readonly linear2: Linear;
  readonly linear3: Linear;
  constructor(readonly dim: number, readonly hidden: number, readonly zDim: number) {
    super();
    this.linear1 = new Linear(dim, hidden);
    this.linear2 = new Linear(hidden, hidden);
    this.linear3 = new Linear(hidden, zDim);
  }
  /** tokens [B, T, D] -> [B, T, z]. */
  forward(p: ParamsOf<RepaProjector>, x: Tensor): Tensor {
    const h = ops.silu(this.linear1.forward(p.linear1, x));
    return this.linear3.forward(p.linear3, ops.silu(this.linear2.forward(p.linear2, h)));
  }
}

/** A feature map [B, C, h, w] as tokens [B, h w, C]. */
export function mapTokens(map: Tensor): Tensor {
  const [b, c, h, w] = map.shape as [number, number, number, number];
  return ops.transpose(ops.reshape(map, [b, c, h * w]), [0, 2, 1]);
}

/** x / max(|x|, 1e-12) over the last axis (torch's F.normalize). */
function normalize(x: Tensor): Tensor {
  const norm = ops.sqrt(ops.sum(ops.square(x), [-1], true));
  return ops.div(x, ops.maximum(norm, 1e-12));
}

/** A per-token map [B, C, H, W] average pooled onto an h x w grid (H / h = W / w, whole). */
function onGrid(map: Tensor, h: number, w: number, what: string): Tensor {
  const [hh, ww] = map.shape.slice(2) as [number, number];
  if (hh === h && ww === w) return map;
  if (hh % h !== 0 || ww % w !== 0 || hh / h !== ww / w) {
    throw new RangeError(`REPA: the ${what} ${hh}x${ww} grid does not pool onto ${h}x${w}`);
  }
  return poolMap(map, h);
}

/**
 * REPA's alignment loss: -mean over tokens and batch of cos(projector(hidden), target), with
 * hidden [B, D, h, w] the model's state and target [B, z, H', W'] the encoder's features.
 * Where one grid is finer, it is average pooled onto the other (the projector runs per token
 * of the model first): grids that REPA matches by construction, here by pooling.
 */
export function repaLoss(projector: RepaProjector, p: ParamsOf<RepaProjector>, hidden: Tensor,
  target: Tensor): Tensor {
  const [h, w] = hidden.shape.slice(2) as [number, number];
  const [th, tw] = target.shape.slice(2) as [number, number];
  const [gh, gw] = th * tw < h * w ? [th, tw] : [h, w]; // the coarser grid
  const b = hidden.shape[0] as number;
  const proj = projector.forward(p, mapTokens(hidden)); // [B, h w, z]
  const projMap = ops.reshape(ops.transpose(proj, [0, 2, 1]), [b, projector.zDim, h, w]);
  const y = mapTokens(onGrid(projMap, gh, gw, "model's")); // [B, T, z]
  const z = mapTokens(onGrid(target, gh, gw, "encoder's")); // [B, T, z]
  const cos = ops.sum(ops.mul(normalize(y), normalize(z)), [-1]); // [B, T]
  return ops.neg(ops.mean(cos));
}
