/**
 * @file DiTTransformer2DModel's config as diffusers writes it (v0.31 `dit_transformer_2d.py`
 * arguments): the type, the defaults (DiT-XL/2 at 256 px) and the checks run at load time.
 */
import { readConfig, requireConfig, type ReadConfigOptions } from './config.js';

export type FfActivation = 'gelu' | 'gelu-approximate' | 'geglu' | 'geglu-approximate' | 'swiglu';

/** diffusers' DiTTransformer2DModel arguments; the defaults are DiT-XL/2 at 256 px. */
export type DiTConfig = {
  num_attention_heads: number;
  attention_head_dim: number;
  in_channels: number;
  /** null = in_channels; 2 * in_channels = learned sigma (DiT's learn_sigma). */
  out_channels: number | null;
  num_layers: number;
  /** Forward is eval mode (dropout is the identity), as diffusers after `.eval()`. */
  dropout: number;
  /** Kept for round trips; DiT has no GroupNorm. */
  norm_num_groups: number;
  attention_bias: boolean;
  sample_size: number;
  patch_size: number;
  activation_fn: FfActivation;
  /** Number of classes; each block's label table has one more row, the CFG null class. */
  num_embeds_ada_norm: number;
  /** float32 only: attention already runs in float32. */
  upcast_attention: boolean;
  norm_type: 'ada_norm_zero';
  /** Affine parameters of norm3 (the LayerNorm before the MLP). */
  norm_elementwise_affine: boolean;
  /** eps of norm3 only; norm1 and norm_out use 1e-6, fixed in diffusers. */
  norm_eps: number;
  /** Diffuse's: Denoising Task Routing's alpha (dit-routing.ts); null, the default, is a plain
   *  DiT, and the two DTR keys are then left out of the saved config. */
  dtr_alpha: number | null;
  /** Diffuse's: DTR's share of active channels. */
  dtr_beta: number;
};


export const FF_ACTIVATIONS: readonly FfActivation[] =
  ['gelu', 'gelu-approximate', 'geglu', 'geglu-approximate', 'swiglu'];

export const DIT_DEFAULTS: DiTConfig = {
  num_attention_heads: 16, attention_head_dim: 72, in_channels: 4, out_channels: null,
  num_layers: 28, dropout: 0, norm_num_groups: 32, attention_bias: true, sample_size: 32,
  patch_size: 2, activation_fn: 'gelu-approximate', num_embeds_ada_norm: 1000,
  upcast_attention: false, norm_type: 'ada_norm_zero', norm_elementwise_affine: false,
  norm_eps: 1e-5, dtr_alpha: null, dtr_beta: 0.8,
};

/** A DiT config as diffusers' config.json: the DTR keys only when routing is on. */
export function ditConfigJson(config: DiTConfig): Record<string, unknown> {
  if (config.dtr_alpha !== null) return config;
  const { dtr_alpha: _, dtr_beta: __, ...plain } = config;
  return plain;
}

export const DIT_CLASS_NAME = 'DiTTransformer2DModel';

/** Checks the values diffusers would reject (or that this port does not implement). */
export function checkDiTConfig(c: DiTConfig, className = DIT_CLASS_NAME): void {
  requireConfig(c.norm_type === 'ada_norm_zero', className, 'norm_type', "'ada_norm_zero'",
    c.norm_type);
  requireConfig(FF_ACTIVATIONS.includes(c.activation_fn), className, 'activation_fn',
    `one of ${FF_ACTIVATIONS.join(', ')}`, c.activation_fn);
  const dim = c.num_attention_heads * c.attention_head_dim;
  requireConfig(dim % 4 === 0, className, 'num_attention_heads * attention_head_dim',
    'a multiple of 4 (2-D sin-cos positions)', dim);
  requireConfig(c.sample_size % c.patch_size === 0, className, 'sample_size',
    `a multiple of patch_size ${c.patch_size}`, c.sample_size);
  requireConfig(Number.isInteger(c.num_embeds_ada_norm) && c.num_embeds_ada_norm > 0, className,
    'num_embeds_ada_norm', 'a positive integer (the number of classes)', c.num_embeds_ada_norm);
  requireConfig(c.dtr_alpha === null || (className === DIT_CLASS_NAME && c.dtr_alpha > 0),
    className, 'dtr_alpha', className === DIT_CLASS_NAME ? 'null or a number > 0'
      : `null (task routing is implemented for ${DIT_CLASS_NAME})`, c.dtr_alpha);
  requireConfig(c.dtr_beta > 0 && c.dtr_beta <= 1, className, 'dtr_beta', 'in (0, 1]', c.dtr_beta);
}

export function readDiTConfig(raw: Record<string, unknown>,
  opts: ReadConfigOptions = {}): DiTConfig {
  const c = readConfig(DIT_CLASS_NAME, raw, DIT_DEFAULTS, { ...opts,
    aliases: ['Transformer2DModel'],
    nullable: { out_channels: 'number', dtr_alpha: 'number', ...opts.nullable } });
  checkDiTConfig(c);
  return c;
}
