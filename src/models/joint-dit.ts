/**
 * @file JointDiTModel: one DiT that denoises an image and a label vector together, the model of
 * the multi-task diffusion in methods/multi-task.ts (Chen et al., "Diffusion Models for
 * Multi-Task Generative Modeling", ICLR 2024, arXiv 2407.17571: a shared backbone with
 * modality-specific encoders into it and decoder heads out of it).
 *
 * The backbone is an unchanged DiTTransformer2DModel, composed, not edited. The image goes
 * through its patch embedding as usual; the noisy label vector y_t [N, K] becomes one more
 * token, label_embed(y_t) (a Linear K -> D whose bias is that token's learned position),
 * appended after the h * w image tokens, so every block attends across both modalities. The
 * blocks run with the DiT's null class: the class is a diffused modality here, not a
 * condition, so the adaLN conditioning carries the time alone. The image tokens leave through
 * the DiT's own final layer and unpatchify; the label token through its own head, a LayerNorm
 * without affine parameters (eps 1e-6, as DiT's final norm) and a Linear D -> K.
 *
 *   x_t [N, C, H, W] --patch embed--> [N, T, D] --+
 *                                                  concat [N, T + 1, D] --blocks--> split
 *   y_t [N, K] ------label_embed----> [N, 1, D] --+
 *   image tokens --final layer, unpatchify--> [N, C, H, W];  label token --head--> [N, K]
 *
 * Saved in diffusers' layout as its own class (config.json: DiT's keys, label_dim, label_scale),
 * with the backbone's weights under `transformer.` and the label parts beside it.
 */
import * as ops from '../engine/ops.js';
import { HostArray } from '../engine/host.js';
import type { RngKey } from '../engine/random/philox.js';
import type { Tensor } from '../engine/tensor.js';
import { mapTree, type Tree } from '../engine/tree.js';
import { zeros } from '../nn/init.js';
import { Linear } from '../nn/layers.js';
import { Module, type ParamsOf } from '../nn/module.js';
import { readConfig, requireConfig, toDiffusersConfig, type ReadConfigOptions } from './config.js';
import { ditCond } from './dit-blocks.js';
import { checkDiTConfig, DIT_DEFAULTS, ditConfigJson, type DiTConfig } from './dit-config.js';
import { ditInitialize, DiTTransformer2DModel } from './dit.js';

// ---- config ----

/** A DiT config plus the width of the label modality. */
export type JointDiTConfig = DiTConfig & {
  /** K: entries of the label vector (the number of classes for a one-hot label). */
  label_dim: number;
  /** The label vectors it was trained on: +label_scale at the class, -label_scale elsewhere.
   *  The model does not read it; samplers do (as AutoencoderKL's scaling_factor). */
  label_scale: number;
};

export const JOINT_DIT_CLASS_NAME = 'JointDiTModel';

/** DiT's defaults, one (unused) class for the DiT's label table, ten label entries (MNIST). */
export const JOINT_DIT_DEFAULTS: JointDiTConfig = {
  ...DIT_DEFAULTS, num_embeds_ada_norm: 1, label_dim: 10, label_scale: 1,
};

export function checkJointDiTConfig(c: JointDiTConfig): void {
  const name = JOINT_DIT_CLASS_NAME;
  checkDiTConfig(c, name);
  requireConfig(Number.isInteger(c.label_dim) && c.label_dim >= 1, name, 'label_dim',
    'a positive integer', c.label_dim);
  requireConfig(Number.isFinite(c.label_scale) && c.label_scale > 0, name, 'label_scale',
    'a number > 0', c.label_scale);
  // The image head predicts a velocity of the image's shape; a learned variance is not used.
  requireConfig(c.out_channels === null || c.out_channels === c.in_channels, name,
    'out_channels', `null or in_channels (${c.in_channels})`, c.out_channels);
}

export function readJointDiTConfig(raw: Record<string, unknown>,
  opts: ReadConfigOptions = {}): JointDiTConfig {
  const c = readConfig(JOINT_DIT_CLASS_NAME, raw, JOINT_DIT_DEFAULTS,
    { ...opts, nullable: { out_channels: 'number', dtr_alpha: 'number', ...opts.nullable } });
  checkJointDiTConfig(c);
  return c;
}

// ---- model ----

/** The two predictions of one call, each shaped like its input. */
export interface JointOutput {
  /** [N, C, H, W] */
  image: Tensor;
  /** [N, K] */
  label: Tensor;
}

export class JointDiTModel extends Module {
  readonly transformer: DiTTransformer2DModel;
  /** The label's encoder into the token space; its bias is the label token's position. */
  readonly label_embed: Linear;
  /** The label's decoder head. */
  readonly label_head: Linear;

  constructor(readonly config: JointDiTConfig) {
    super();
    checkJointDiTConfig(config);
    const { label_dim: _, label_scale: __, ...dit } = config;
    this.transformer = new DiTTransformer2DModel(dit);
    const d = this.transformer.innerDim;
    this.label_embed = new Linear(config.label_dim, d);
    this.label_head = new Linear(d, config.label_dim);
  }

  /** x [N, C, H, W] and y [N, K] at model times t [N] -> both predictions. */
  forward(p: ParamsOf<JointDiTModel>, x: Tensor, y: Tensor, t: Tensor): JointOutput {
    const dit = this.transformer;
    const pt = p.transformer;
    const [h, w] = dit.tokenGrid(x);
    const n = x.shape[0]!;
    const nullClass = ops.full([n], this.config.num_embeds_ada_norm, 'int64'); // [N]
    const image = dit.embed(pt, x); // [N, T, D]
    const label = ops.unsqueeze(this.label_embed.forward(p.label_embed, y), 1); // [N, 1, D]
    const out = dit.forwardTokens(pt, ops.concat([image, label], 1), t, nullClass); // [N, T+1, D]
    const [imageOut, labelOut] = ops.split(out, [h * w, 1], 1);
    const c = ditCond(t, nullClass);
    const patches = dit.finalLayer(pt, imageOut!, c); // [N, T, p * p * C]
    const normed = ops.layerNorm(ops.squeeze(labelOut!, 1), { eps: 1e-6 }); // [N, D]
    return { image: dit.unpatchify(patches, h, w),
      label: this.label_head.forward(p.label_head, normed) }; // [N, K]
  }
}

// ---- initialisation ----

/** DiT's initialisation for the backbone (and the label encoder, a Linear: xavier), and the
 *  label head zeroed like DiT's output layer, so both predictions start at 0. */
export function jointDiTInitialize<P extends Tree<HostArray>>(params: P, key: RngKey): P {
  const base = ditInitialize(params, key);
  const isHost = (x: unknown): x is HostArray => x instanceof HostArray;
  return mapTree(base, isHost, (a, path) =>
    (/^label_head\./.test(path) ? zeros(a.shape, key) : a)) as P;
}

/** The class as the diffusers loader and saver see it. */
export const jointDiTClass = {
  className: JOINT_DIT_CLASS_NAME,
  readConfig: readJointDiTConfig,
  create: (config: JointDiTConfig) => new JointDiTModel(config),
  toConfig: (config: JointDiTConfig) => {
    const { label_dim, label_scale, ...dit } = config;
    return toDiffusersConfig(JOINT_DIT_CLASS_NAME,
      { ...ditConfigJson(dit), label_dim, label_scale });
  },
} as const;
