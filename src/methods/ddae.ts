/**
 * @file DDAE: Xiang, Yang, Wang & Huang 2023, "Denoising Diffusion Autoencoders are Unified
 * Self-supervised Learners" (official code: FutureXiang/ddae, model/DDPM.py get_feature and
 * linear.py), with Mukhopadhyay et al. 2023, "Diffusion Models Beat GANs on Image
 * Classification" (the same features, read by larger heads).
 *
 * Claim: a diffusion model trained only to denoise is a self-supervised representation
 * learner: noise an image lightly, run the network, and the global-average-pooled activations
 * of a middle decoder block are linearly separable by class (CIFAR-10 linear probe ~95%,
 * competitive with contrastive methods), best at a small timestep (t = 11 of 1,000 for the
 * DDPM U-Net) and falling off towards the input and output blocks.
 *
 * As the official code: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, one forward pass, the
 * block's output [B, C, H, W] averaged over H and W (no normalisation); a linear probe on top
 * (linear-probe.ts). DDAE counts timesteps from 1 (its t = 11 noises with abar[10] of a
 * 0-based table): here t is the 0-based diffusers index, so DDAE's t = 11 is t = 10. A
 * class-conditional model is given its null (unconditional) label: the features must not see
 * the answer.
 */
import * as ops from '../engine/ops.js';
import type { Tensor } from '../engine/tensor.js';
import { UNet2DModel, type UNet2DConfig, type UNet2DNode } from '../models/unet2d.js';
import type { ParamsOf } from '../nn/module.js';

/** The U-Net blocks a probe can read, as users name them: down.i, mid, up.i. */
export function unetBlocks(c: Pick<UNet2DConfig, 'down_block_types' | 'up_block_types'>): string[] {
  return [...c.down_block_types.map((_, i) => `down.${i}`), 'mid',
    ...c.up_block_types.map((_, i) => `up.${i}`)];
}

/** down.i -> down_blocks.i, mid -> mid_block, up.i -> up_blocks.i. */
export function blockNode(block: string, c: Pick<UNet2DConfig, 'down_block_types' | 'up_block_types'>):
  UNet2DNode {
  const known = unetBlocks(c);
  if (!known.includes(block)) {
    throw new RangeError(`block '${block}' is not one of this U-Net's: ${known.join(', ')}`);
  }
  if (block === 'mid') return 'mid_block';
  const [side, i] = block.split('.');
  return `${side === 'down' ? 'down_blocks' : 'up_blocks'}.${Number(i)}` as UNet2DNode;
}

/**
 * Average pooling of a feature map [B, C, H, W] to a k x k grid, flattened to [B, C k^2]
 * (channel-major). k = 1 is DDAE's global average pool; Mukhopadhyay et al. also pool to
 * small grids before a linear head, keeping where a feature is. H and W must divide by k.
 */
export function gridPool(act: Tensor, k: number): Tensor {
  const [b, c] = act.shape as [number, number];
  return k === 1 ? ops.mean(act, [2, 3]) : ops.reshape(poolMap(act, k), [b, c * k * k]);
}

/** Average pooling of a feature map [B, C, H, W] to [B, C, k, k]; k must divide H and W. */
export function poolMap(act: Tensor, k: number): Tensor {
  const [b, c, h, w] = act.shape as [number, number, number, number];
  if (!(Number.isInteger(k) && k >= 1 && h % k === 0 && w % k === 0)) {
    throw new RangeError(`pooling ${h}x${w} features to a ${k}x${k} grid: ${k} must divide both`);
  }
  return k === h && k === w ? act : ops.mean(ops.reshape(act, [b, c, k, h / k, k, w / k]), [3, 5]);
}

/**
 * The pooled features of `blocks` for noised images x_t [B, C, H, W] at model times t [B]:
 * one [B, channels x pool^2] tensor per block, in order. Only the pass up to the last block
 * asked for is in the graph.
 */
export function pooledFeatures(model: UNet2DModel, p: ParamsOf<UNet2DModel>, xt: Tensor, t: Tensor,
  labels: Tensor | undefined, blocks: readonly string[], pool = 1): Tensor[] {
  const nodes = blocks.map((b) => blockNode(b, model.config));
  const { features } = model.intermediates(p, xt, t, labels);
  return nodes.map((n) => {
    const act = features.get(n);
    if (!act) throw new Error(`DDAE: the U-Net reported no output for ${n}`);
    return gridPool(act, pool);
  });
}

/** The feature map of one block, average-pooled to at most `most` x `most` cells
 *  ([B, channels, k, k]): what an attention head reads, its token count bounded. */
export function blockFeatureMap(model: UNet2DModel, p: ParamsOf<UNet2DModel>, xt: Tensor, t: Tensor,
  labels: Tensor | undefined, block: string, most = 8): Tensor {
  const node = blockNode(block, model.config);
  const act = model.intermediates(p, xt, t, labels).features.get(node);
  if (!act) throw new Error(`DDAE: the U-Net reported no output for ${node}`);
  return poolMap(act, Math.min(most, act.shape[2] as number));
}
