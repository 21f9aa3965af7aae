/**
 * @file AutoencoderKL: the KL-regularised VAE of latent diffusion (Rombach et al. 2022,
 * "High-Resolution Image Synthesis with Latent Diffusion Models", sections 3 and G), with
 * diffusers' config keys and parameter names (diffusers v0.31 `AutoencoderKL`, `Encoder`,
 * `Decoder`, `DiagonalGaussianDistribution`), so its checkpoints load unchanged.
 *
 * Sections: config, the encoder/decoder blocks (built from the U-Net's ResnetBlock2D without
 * time embedding, its resamplers and its attention with one head as wide as the block),
 * encoder and decoder, model, presets.
 */
import * as ops from '../engine/ops.js';
import { HostArray } from '../engine/host.js';
import type { Tensor } from '../engine/tensor.js';
import { Conv2d, GroupNorm } from '../nn/layers.js';
import { Module, type ParamsOf } from '../nn/module.js';
import {
  ACTIVATIONS, Downsample2D, ResnetBlock2D, SpatialAttention, Upsample2D, type Activation, type BlockCtx,
} from './unet2d-blocks.js';
import {
  readConfig, requireConfig, toDiffusersConfig, type ReadConfigOptions,
} from './config.js';

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/** diffusers' AutoencoderKL constructor arguments, with its defaults. */
export type AutoencoderKLConfig = {
  in_channels: number;
  out_channels: number;
  /** One per resolution; only 'DownEncoderBlock2D' exists for this class. */
  down_block_types: string[];
  /** One per resolution; only 'UpDecoderBlock2D' exists for this class. */
  up_block_types: string[];
  block_out_channels: number[];
  /** Resnets per encoder block; decoder blocks have one more (as diffusers). */
  layers_per_block: number;
  act_fn: string;
  latent_channels: number;
  norm_num_groups: number;
  /** Only used by diffusers' tiled encode/decode, which Diffuse does not implement. */
  sample_size: number;
  /** Latents are multiplied by this before the diffusion model sees them (LDM 4.3.2). */
  scaling_factor: number;
  /** Subtracted before scaling (SD3/Flux VAEs); null: 0. */
  shift_factor: number | null;
  /** Per-channel latent statistics (SDXL-style pipelines); null: not used. */
  latents_mean: number[] | null;
  latents_std: number[] | null;
  /** A half-precision hint for pipelines; Diffuse's CPU graphs are float32 anyway. */
  force_upcast: boolean;
  use_quant_conv: boolean;
  use_post_quant_conv: boolean;
  mid_block_add_attention: boolean;
};

export const AUTOENCODER_KL_DEFAULTS: Readonly<AutoencoderKLConfig> = Object.freeze({
  in_channels: 3,
  out_channels: 3,
  down_block_types: ['DownEncoderBlock2D'],
  up_block_types: ['UpDecoderBlock2D'],
  block_out_channels: [64],
  layers_per_block: 1,
  act_fn: 'silu',
  latent_channels: 4,
  norm_num_groups: 32,
  sample_size: 32,
  scaling_factor: 0.18215,
  shift_factor: null,
  latents_mean: null,
  latents_std: null,
  force_upcast: true,
  use_quant_conv: true,
  use_post_quant_conv: true,
  mid_block_add_attention: true,
});

const CLASS_NAME = 'AutoencoderKL';

const isPosInt = (v: unknown): boolean => typeof v === 'number' && Number.isInteger(v) && v > 0;

/** Reads a diffusers AutoencoderKL config.json: types checked against the defaults, unknown
 *  keys warned about, then every value checked; a problem throws a ConfigError naming the key. */
export function readAutoencoderKLConfig(raw: Record<string, unknown>,
  opts: Pick<ReadConfigOptions, 'warn'> = {}): AutoencoderKLConfig {
  const c = readConfig(CLASS_NAME, raw, { ...AUTOENCODER_KL_DEFAULTS } as AutoencoderKLConfig, {
    ...opts, nullable: { shift_factor: 'number', latents_mean: 'array', latents_std: 'array' },
  });
  const need = (ok: boolean, key: keyof AutoencoderKLConfig, expected: string): void =>
    requireConfig(ok, CLASS_NAME, key, expected, c[key]);
  for (const key of ['in_channels', 'out_channels', 'layers_per_block', 'latent_channels',
    'norm_num_groups', 'sample_size'] as const) need(isPosInt(c[key]), key, 'a positive integer');
  const n = c.block_out_channels.length;
  need(n > 0 && c.block_out_channels.every((ch) => isPosInt(ch) && ch % c.norm_num_groups === 0),
    'block_out_channels', `a non-empty list of channel counts divisible by norm_num_groups ` +
    `(${c.norm_num_groups})`);
  for (const [key, kind] of [['down_block_types', 'DownEncoderBlock2D'],
    ['up_block_types', 'UpDecoderBlock2D']] as const) {
    need(c[key].length === n && c[key].every((t) => t === kind), key,
      `${n} entries (one per block_out_channels), each "${kind}"`);
  }
  need(Object.hasOwn(ACTIVATIONS, c.act_fn), 'act_fn',
    `one of ${Object.keys(ACTIVATIONS).join(', ')}`);
  need(c.scaling_factor !== 0, 'scaling_factor', 'a non-zero number');
  for (const key of ['latents_mean', 'latents_std'] as const) {
    const v = c[key];
    need(v === null || (v.length === c.latent_channels && v.every((e) => typeof e === 'number')),
      key, `null or ${c.latent_channels} numbers (one per latent channel)`);
  }
  need((c.latents_mean === null) === (c.latents_std === null), 'latents_std',
    'set exactly when latents_mean is');
  return c;
}

// ---------------------------------------------------------------------------------------------
// Blocks (diffusers' resnet.py, downsampling.py, upsampling.py, attention_processor.py)
// ---------------------------------------------------------------------------------------------

/** The U-Net's blocks as the VAE builds them: no time embedding, one attention head as wide
 *  as the block (diffusers' `_from_deprecated_attn_block` with heads = 1). */
function vaeBlockCtx(act: Activation, groups: number): BlockCtx {
  return { act, groups, eps: 1e-6, tembChannels: null, timeScaleShift: 'default', headDim: null };
}

/** UNetMidBlock2D(num_layers=1, temb None): resnet, [attention], resnet. */
export class UNetMidBlock2D extends Module {
  readonly attentions?: [SpatialAttention];
  readonly resnets: [ResnetBlock2D, ResnetBlock2D];
  constructor(channels: number, ctx: BlockCtx, addAttention: boolean) {
    super();
    if (addAttention) this.attentions = [new SpatialAttention(channels, ctx, { groups: ctx.groups })];
    this.resnets = [new ResnetBlock2D(channels, channels, ctx),
      new ResnetBlock2D(channels, channels, ctx)];
  }
  forward(p: ParamsOf<UNetMidBlock2D>, x: Tensor): Tensor {
    let h = this.resnets[0].forward(p.resnets[0]!, x); // [N, C, H, W]
    if (this.attentions) h = this.attentions[0].forward(p.attentions![0]!, h);
    return this.resnets[1].forward(p.resnets[1]!, h); // [N, C, H, W]
  }
}

/** `layers` resnets, inC -> outC in the first. */
function resnetStack(inC: number, outC: number, layers: number, ctx: BlockCtx): ResnetBlock2D[] {
  return Array.from({ length: layers }, (_, i) => new ResnetBlock2D(i ? outC : inC, outC, ctx));
}

/** DownEncoderBlock2D: resnets, then an optional Downsample2D (padding 0). */
export class DownEncoderBlock2D extends Module {
  readonly resnets: ResnetBlock2D[];
  readonly downsamplers?: [Downsample2D];
  constructor(inC: number, outC: number, layers: number, downsample: boolean, ctx: BlockCtx) {
    super();
    this.resnets = resnetStack(inC, outC, layers, ctx);
    if (downsample) this.downsamplers = [new Downsample2D(outC, 0)];
  }
  forward(p: ParamsOf<DownEncoderBlock2D>, x: Tensor): Tensor {
    let h = x;
    this.resnets.forEach((r, i) => (h = r.forward(p.resnets[i]!, h))); // [N, O, H, W]
    return this.downsamplers ? this.downsamplers[0].forward(p.downsamplers![0]!, h) : h;
  }
}

/** UpDecoderBlock2D: resnets, then an optional Upsample2D. */
export class UpDecoderBlock2D extends Module {
  readonly resnets: ResnetBlock2D[];
  readonly upsamplers?: [Upsample2D];
  constructor(inC: number, outC: number, layers: number, upsample: boolean, ctx: BlockCtx) {
    super();
    this.resnets = resnetStack(inC, outC, layers, ctx);
    if (upsample) this.upsamplers = [new Upsample2D(outC)];
  }
  forward(p: ParamsOf<UpDecoderBlock2D>, x: Tensor): Tensor {
    let h = x;
    this.resnets.forEach((r, i) => (h = r.forward(p.resnets[i]!, h))); // [N, O, H, W]
    return this.upsamplers ? this.upsamplers[0].forward(p.upsamplers![0]!, h) : h;
  }
}

// ---------------------------------------------------------------------------------------------
// Encoder and decoder (diffusers' vae.py; eps 1e-6 throughout, as diffusers hard-codes it)
// ---------------------------------------------------------------------------------------------

export class Encoder extends Module {
  readonly conv_in: Conv2d;
  readonly down_blocks: DownEncoderBlock2D[];
  readonly mid_block: UNetMidBlock2D;
  readonly conv_norm_out: GroupNorm;
  readonly conv_out: Conv2d;
  constructor(c: AutoencoderKLConfig, private readonly ctx: BlockCtx) {
    super();
    const ch = c.block_out_channels;
    const last = ch[ch.length - 1]!;
    this.conv_in = new Conv2d(c.in_channels, ch[0]!, 3, { padding: 1 });
    this.down_blocks = ch.map((out, i) => new DownEncoderBlock2D(i ? ch[i - 1]! : ch[0]!, out,
      c.layers_per_block, i < ch.length - 1, ctx));
    this.mid_block = new UNetMidBlock2D(last, ctx, c.mid_block_add_attention);
    this.conv_norm_out = new GroupNorm(ctx.groups, last, ctx.eps);
    // double_z: mean and logvar channels.
    this.conv_out = new Conv2d(last, 2 * c.latent_channels, 3, { padding: 1 });
  }
  /** x [N, in, H, W] -> moments [N, 2L, H/f, W/f] with f = 2^(blocks - 1). */
  forward(p: ParamsOf<Encoder>, x: Tensor): Tensor {
    let h = this.conv_in.forward(p.conv_in, x); // [N, C0, H, W]
    this.down_blocks.forEach((b, i) => (h = b.forward(p.down_blocks[i]!, h))); // [N, Ck, H/f, W/f]
    h = this.mid_block.forward(p.mid_block, h);
    const out = ACTIVATIONS[this.ctx.act](this.conv_norm_out.forward(p.conv_norm_out, h));
    return this.conv_out.forward(p.conv_out, out); // [N, 2L, H/f, W/f]
  }
}

export class Decoder extends Module {
  readonly conv_in: Conv2d;
  readonly mid_block: UNetMidBlock2D;
  readonly up_blocks: UpDecoderBlock2D[];
  readonly conv_norm_out: GroupNorm;
  readonly conv_out: Conv2d;
  constructor(c: AutoencoderKLConfig, private readonly ctx: BlockCtx) {
    super();
    const rev = [...c.block_out_channels].reverse();
    const first = c.block_out_channels[0]!;
    this.conv_in = new Conv2d(c.latent_channels, rev[0]!, 3, { padding: 1 });
    this.mid_block = new UNetMidBlock2D(rev[0]!, ctx, c.mid_block_add_attention);
    this.up_blocks = rev.map((out, i) => new UpDecoderBlock2D(i ? rev[i - 1]! : rev[0]!, out,
      c.layers_per_block + 1, i < rev.length - 1, ctx));
    this.conv_norm_out = new GroupNorm(ctx.groups, first, ctx.eps);
    this.conv_out = new Conv2d(first, c.out_channels, 3, { padding: 1 });
  }
  /** z [N, L, h, w] -> [N, out, h f, w f] */
  forward(p: ParamsOf<Decoder>, z: Tensor): Tensor {
    let h = this.conv_in.forward(p.conv_in, z); // [N, C_last, h, w]
    h = this.mid_block.forward(p.mid_block, h);
    this.up_blocks.forEach((b, i) => (h = b.forward(p.up_blocks[i]!, h))); // [N, C0, H, W]
    const out = ACTIVATIONS[this.ctx.act](this.conv_norm_out.forward(p.conv_norm_out, h));
    return this.conv_out.forward(p.conv_out, out); // [N, out, H, W]
  }
}

// ---------------------------------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------------------------------

/** diffusers' DiagonalGaussianDistribution, as plain tensors (each [N, L, h, w]). */
export interface DiagonalGaussian {
  mean: Tensor;
  /** Clamped to [-30, 20], as diffusers does. */
  logvar: Tensor;
  /** exp(logvar / 2). */
  std: Tensor;
}

export class AutoencoderKL extends Module {
  readonly encoder: Encoder;
  readonly decoder: Decoder;
  readonly quant_conv?: Conv2d;
  readonly post_quant_conv?: Conv2d;
  readonly config: Readonly<AutoencoderKLConfig>;
  constructor(config: AutoencoderKLConfig) {
    super();
    this.config = Object.freeze({ ...config });
    const ctx = vaeBlockCtx(config.act_fn as Activation, config.norm_num_groups);
    const l = config.latent_channels;
    this.encoder = new Encoder(config, ctx);
    this.decoder = new Decoder(config, ctx);
    if (config.use_quant_conv) this.quant_conv = new Conv2d(2 * l, 2 * l, 1);
    if (config.use_post_quant_conv) this.post_quant_conv = new Conv2d(l, l, 1);
  }

  /** Spatial down-sampling factor between images and latents (8 for Stable Diffusion's VAE). */
  get downFactor(): number {
    return 2 ** (this.config.block_out_channels.length - 1);
  }

  /** x [N, in, H, W] (images in [-1, 1]) -> the posterior q(z | x), each [N, L, H/f, W/f]. */
  encode(p: ParamsOf<AutoencoderKL>, x: Tensor): DiagonalGaussian {
    let moments = this.encoder.forward(p.encoder, x); // [N, 2L, h, w]
    if (this.quant_conv) moments = this.quant_conv.forward(p.quant_conv!, moments);
    const l = this.config.latent_channels;
    const mean = ops.sliceAxis(moments, 1, 0, l); // [N, L, h, w]
    const logvar = ops.clamp(ops.sliceAxis(moments, 1, l, 2 * l), -30, 20); // [N, L, h, w]
    return { mean, logvar, std: ops.exp(ops.mul(logvar, 0.5)) };
  }

  /** A posterior sample mean + std * noise; noise [N, L, h, w] ~ N(0, 1) comes from the host
   *  RNG (diffusers draws it inside `sample(generator)`). */
  sample(posterior: DiagonalGaussian, noise: Tensor): Tensor {
    return ops.add(posterior.mean, ops.mul(posterior.std, noise));
  }

  /** z [N, L, h, w] (unscaled VAE latents) -> images [N, out, h f, w f]. */
  decode(p: ParamsOf<AutoencoderKL>, z: Tensor): Tensor {
    const h = this.post_quant_conv ? this.post_quant_conv.forward(p.post_quant_conv!, z) : z;
    return this.decoder.forward(p.decoder, h);
  }

  /**
   * KL(q(z|x) || N(0, I)) = 0.5 * sum over C, H, W of (mean^2 + var - 1 - logvar) per sample
   * (diffusers' `kl()`), then the MEAN over the batch (LDM's `sum(kl) / batch`): a scalar.
   */
  klLoss(posterior: DiagonalGaussian): Tensor {
    const { mean, logvar } = posterior;
    const terms = ops.sub(ops.add(ops.square(mean), ops.exp(logvar)),
      ops.add(logvar, 1)); // [N, L, h, w]
    return ops.mul(ops.mean(ops.sum(terms, [1, 2, 3])), 0.5);
  }

  /** VAE latents -> what the diffusion model sees: (z - m) * scaling_factor / s, with per-channel
   *  latents_mean / latents_std when set (m = shift_factor ?? 0 and s = 1 otherwise). */
  toLatent(z: Tensor): Tensor {
    const { shift, scale } = this.latentAffine();
    return ops.mul(shift === 0 ? z : ops.sub(z, shift), scale);
  }

  /** The inverse of toLatent: latent / scale + shift, before decode(). */
  fromLatent(latent: Tensor): Tensor {
    const { shift, scale } = this.latentAffine();
    const z = ops.div(latent, scale);
    return shift === 0 ? z : ops.add(z, shift);
  }

  /** z = latent / scale + shift: scale = scaling_factor / std, per channel [1, L, 1, 1]
   *  when latents_std is set, a plain number otherwise. */
  private latentAffine(): { shift: Tensor | number; scale: Tensor | number } {
    const c = this.config;
    if (c.latents_mean === null || c.latents_std === null) {
      return { shift: c.shift_factor ?? 0, scale: c.scaling_factor };
    }
    const perChannel = (v: number[]): Tensor =>
      ops.constant(new HostArray(Float32Array.from(v), [1, v.length, 1, 1]));
    return { shift: perChannel(c.latents_mean),
      scale: perChannel(c.latents_std.map((s) => c.scaling_factor / s)) };
  }
}

/**
 * Old diffusers names of the VAE mid-block attention (before the Attention refactor, still in
 * many hub checkpoints, e.g. `encoder.mid_block.attentions.0.query.weight`) -> the current ones
 * (`to_q`, `to_k`, `to_v`, `to_out.0`); `group_norm` kept its name. Pass it as
 * `loadStateDict(model, dict, { rename: renameLegacyVaeAttention })`.
 */
export function renameLegacyVaeAttention(name: string): string {
  const legacy = /^(.*\.mid_block\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$/;
  const m = legacy.exec(name);
  if (!m) return name;
  const to = { query: 'to_q', key: 'to_k', value: 'to_v', proj_attn: 'to_out.0' }[m[2]!]!;
  return `${m[1]}.${to}.${m[3]}`;
}

/** The class as Diffuse's model registry sees it: name, config reading, construction, saving. */
export const autoencoderKLClass = {
  className: CLASS_NAME,
  readConfig: readAutoencoderKLConfig,
  create: (config: AutoencoderKLConfig): AutoencoderKL => new AutoencoderKL(config),
  toConfig: (config: AutoencoderKLConfig) => toDiffusersConfig(CLASS_NAME, config),
} as const;

// ---------------------------------------------------------------------------------------------
// Presets
// ---------------------------------------------------------------------------------------------

const vae = (blocks: number[], over: Partial<AutoencoderKLConfig>): AutoencoderKLConfig => ({
  ...AUTOENCODER_KL_DEFAULTS,
  block_out_channels: blocks,
  down_block_types: blocks.map(() => 'DownEncoderBlock2D'),
  up_block_types: blocks.map(() => 'UpDecoderBlock2D'),
  ...over,
});

/** Named configs. `sd-vae` is Stable Diffusion's (stabilityai/sd-vae-ft-mse, 83.7M params,
 *  f = 8); `mnist-f4` maps 32x32x1 digits to 8x8x4 latents for latent diffusion on MNIST (624k
 *  params);
 *  `tiny` is the golden-file model (658,375 params, 32x32x3 -> 16x16x4). */
export const AUTOENCODER_KL_PRESETS: Readonly<Record<string, AutoencoderKLConfig>> = {
  'sd-vae': vae([128, 256, 512, 512], { layers_per_block: 2, sample_size: 256 }),
  'mnist-f4': vae([16, 32, 64], { in_channels: 1, out_channels: 1, norm_num_groups: 8,
    layers_per_block: 1, scaling_factor: 1 }), // diffuse train-vae computes the factor
  // DiffuseVAE's first stage on MNIST: 32x32x1 -> 4x4x4, a 64-number latent drawn from
  // the prior (train it with a KL weight that makes it a VAE, not an autoencoder).
  'mnist-f8': vae([16, 32, 64, 64], { in_channels: 1, out_channels: 1, norm_num_groups: 8,
    layers_per_block: 1, scaling_factor: 1 }),
  tiny: vae([32, 64], { norm_num_groups: 8 }),
};
