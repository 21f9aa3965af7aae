/**
 * @file UNet2DModel: the DDPM U-Net (Ho et al. 2020, "Denoising Diffusion Probabilistic
 * Models", appendix B), with NCSN++'s Fourier time features as an option (Song et al. 2021),
 * under diffusers' config keys and parameter names (diffusers v0.31 `unet_2d.py`), so configs
 * and checkpoints move both ways. Sections: config, model, presets and the class record; the
 * blocks are in unet2d-blocks.ts.
 *
 * Besides forward, the pass comes in pieces for methods that cache or read features. A
 * UNet2DState is diffusers' (sample, down_block_res_samples) between two stages, so
 *   forward(x, t) = head(decode(encode(x, c), c).hidden, c) with c = embed(t):
 * - DeepCache (Ma et al. 2024) keeps `decode(.., {toUpBlock: k}).hidden` of a full step; at
 *   cached steps it runs `encode(.., {downBlocks: n - k, mid: false})`, keeps the first
 *   `skipCount(k)` skips and decodes `{hidden: cached, skips}` from up block k.
 * - Faster Diffusion (Li et al. 2023) keeps `encode()`'s state from a key step and decodes it
 *   with the embedding of later steps.
 * - DDAE (Xiang et al. 2023) pools a decoder block's output from `intermediates()`; graphs
 *   hold only what their outputs reach, so the blocks after it are never computed.
 *
 * About 480 lines, over the 400 budget: the checks of diffusers' 26 config keys (validate)
 * belong beside the config, and the staged pass adds its types and range checks to forward.
 */
import * as ops from '../engine/ops.js';
import { fmtShape, ShapeError, type Dim } from '../engine/shape.js';
import type { Tensor } from '../engine/tensor.js';
import { Conv2d, Embedding, GroupNorm } from '../nn/layers.js';
import { Module, type ParamsOf } from '../nn/module.js';
import { readConfig, requireConfig, toDiffusersConfig, type ReadConfigOptions } from './config.js';
import {
  ACTIVATIONS, GaussianFourierProjection, TimestepEmbedding, UNetDownBlock, UNetMidBlock2D,
  UNetUpBlock, renameLegacyAttention, Timesteps, type Activation, type BlockCtx, type ResampleType,
} from './unet2d-blocks.js';

export { renameLegacyAttention };

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

const CLASS_NAME = 'UNet2DModel';

/** The block kinds, with what sets them apart. DownBlock2D/UpBlock2D always resample with a
 *  conv; the Attn kinds follow downsample_type/upsample_type (as diffusers' get_*_block). */
const DOWN_BLOCKS = {
  DownBlock2D: { attention: false, followsResampleType: false },
  AttnDownBlock2D: { attention: true, followsResampleType: true },
} as const;
const UP_BLOCKS = {
  UpBlock2D: { attention: false, followsResampleType: false },
  AttnUpBlock2D: { attention: true, followsResampleType: true },
} as const;
export type DownBlockType = keyof typeof DOWN_BLOCKS;
export type UpBlockType = keyof typeof UP_BLOCKS;

/** diffusers' UNet2DModel constructor arguments. */
export type UNet2DConfig = {
  /** Read by pipelines only. */
  sample_size: number | [number, number] | null;
  in_channels: number;
  out_channels: number;
  /** x -> 2x - 1 before conv_in. */
  center_input_sample: boolean;
  time_embedding_type: 'positional' | 'fourier' | 'learned';
  /** Of the positional features (see Timesteps); the Fourier ones ignore both. */
  freq_shift: number;
  flip_sin_to_cos: boolean;
  down_block_types: DownBlockType[];
  up_block_types: UpBlockType[];
  block_out_channels: number[];
  /** Resnets per down block; up blocks have one more. */
  layers_per_block: number;
  /** Divides the mid block's resnet and attention outputs. */
  mid_block_scale_factor: number;
  /** Padding of the stride-2 down convs; 0 pads one row/column at the bottom/right only. */
  downsample_padding: number;
  downsample_type: ResampleType;
  upsample_type: ResampleType;
  /** In the resnets; inference ignores it, as diffusers' eval mode does. */
  dropout: number;
  act_fn: Activation;
  /** Head width of every attention; null: one head per attention. */
  attention_head_dim: number | null;
  norm_num_groups: number;
  /** Groups of the mid-block attention's norm; null: norm_num_groups with the 'default'
   *  resnet_time_scale_shift, and no norm at all with 'scale_shift' (diffusers' rule). */
  attn_norm_num_groups: number | null;
  norm_eps: number;
  resnet_time_scale_shift: 'default' | 'scale_shift';
  /** Attention in the mid block. */
  add_attention: boolean;
  /** null (with num_class_embeds): a label table; 'timestep': labels go through time_proj and
   *  their own TimestepEmbedding; 'identity': [N, 4 C0] label vectors are added as they are. */
  class_embed_type: 'timestep' | 'identity' | null;
  /** Rows of the label table. For classifier-free guidance train with classes + 1 rows: the
   *  last (label = classes) is the null class, as in DiT. */
  num_class_embeds: number | null;
  /** Rows of the 'learned' time table. */
  num_train_timesteps: number | null;
};

/** diffusers v0.31 UNet2DModel defaults. */
export const UNET2D_DEFAULTS: Readonly<UNet2DConfig> = Object.freeze({
  sample_size: null, in_channels: 3, out_channels: 3, center_input_sample: false,
  time_embedding_type: 'positional', freq_shift: 0, flip_sin_to_cos: true,
  down_block_types: ['DownBlock2D', 'AttnDownBlock2D', 'AttnDownBlock2D', 'AttnDownBlock2D'],
  up_block_types: ['AttnUpBlock2D', 'AttnUpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'],
  block_out_channels: [224, 448, 672, 896], layers_per_block: 2, mid_block_scale_factor: 1,
  downsample_padding: 1, downsample_type: 'conv', upsample_type: 'conv', dropout: 0,
  act_fn: 'silu', attention_head_dim: 8, norm_num_groups: 32, attn_norm_num_groups: null,
  norm_eps: 1e-5, resnet_time_scale_shift: 'default', add_attention: true,
  class_embed_type: null, num_class_embeds: null, num_train_timesteps: null,
} satisfies UNet2DConfig);

const NULLABLE = {
  attn_norm_num_groups: 'number', class_embed_type: 'string',
  num_class_embeds: 'number', num_train_timesteps: 'number',
} as const;

/** `training`: the model will be trained, so options that act only then must be supported. */
export interface UNet2DOptions { training?: boolean }

/** Checks what the JSON kinds cannot: enumerations, sizes, and their agreement. */
function validate(c: UNet2DConfig, opts: UNet2DOptions): void {
  const need = (ok: boolean, key: string, expected: string, value: unknown): void =>
    requireConfig(ok, CLASS_NAME, key, expected, value);
  const oneOf = (key: string, value: unknown, allowed: readonly unknown[]): void =>
    need(allowed.includes(value), key, `one of ${allowed.map(String).join(', ')}`, value);
  const posInt = (key: string, v: unknown): void =>
    need(Number.isInteger(v) && (v as number) > 0, key, 'a positive integer', v);
  const optInt = (key: string, v: unknown): void => (v === null ? undefined : posInt(key, v));
  const ch = c.block_out_channels;
  const n = ch.length;
  need(n > 0, 'block_out_channels', 'a non-empty list', ch);
  ch.forEach((v, i) => posInt(`block_out_channels[${i}]`, v));
  for (const [key, list, table] of [['down_block_types', c.down_block_types, DOWN_BLOCKS],
    ['up_block_types', c.up_block_types, UP_BLOCKS]] as const) {
    need(list.length === n, key, `${n} entries, one per block_out_channels entry`, list);
    list.forEach((t, i) => oneOf(`${key}[${i}]`, t, Object.keys(table)));
  }
  (['in_channels', 'out_channels', 'layers_per_block', 'norm_num_groups'] as const)
    .forEach((k) => posInt(k, c[k]));
  ['attention_head_dim', 'attn_norm_num_groups', 'num_class_embeds', 'num_train_timesteps']
    .forEach((k) => optInt(k, c[k as keyof UNet2DConfig]));
  const divides = (g: number | null, key: string, width: number): void =>
    need(g === null || width % g === 0, key, `a divisor of ${width} (block width)`, g);
  ch.forEach((v) => divides(c.norm_num_groups, 'norm_num_groups', v));
  divides(c.attn_norm_num_groups, 'attn_norm_num_groups', ch[n - 1]!);
  const attnWidths = [...ch.filter((_, i) => DOWN_BLOCKS[c.down_block_types[i]!].attention),
    ...[...ch].reverse().filter((_, i) => UP_BLOCKS[c.up_block_types[i]!].attention),
    ...(c.add_attention ? [ch[n - 1]!] : [])];
  const narrowest = Math.min(...attnWidths);
  need(c.attention_head_dim === null || c.attention_head_dim <= narrowest, 'attention_head_dim',
    `at most ${narrowest} (the narrowest attention block)`, c.attention_head_dim);
  oneOf('time_embedding_type', c.time_embedding_type, ['positional', 'fourier', 'learned']);
  if (c.time_embedding_type === 'learned') posInt('num_train_timesteps', c.num_train_timesteps);
  need(c.time_embedding_type !== 'positional' || Math.floor(ch[0]! / 2) !== c.freq_shift,
    'freq_shift', `not half of block_out_channels[0] (a division by zero)`, c.freq_shift);
  oneOf('class_embed_type', c.class_embed_type, [null, 'timestep', 'identity']);
  oneOf('downsample_type', c.downsample_type, ['conv', 'resnet']);
  oneOf('upsample_type', c.upsample_type, ['conv', 'resnet']);
  oneOf('act_fn', c.act_fn, Object.keys(ACTIVATIONS));
  oneOf('resnet_time_scale_shift', c.resnet_time_scale_shift, ['default', 'scale_shift']);
  need(c.dropout >= 0 && c.dropout < 1, 'dropout', 'in [0, 1)', c.dropout);
  need(!opts.training || c.dropout === 0, 'dropout', '0 to train (the U-Net draws no dropout ' +
    'masks yet; inference ignores dropout, as diffusers\' eval mode)', c.dropout);
  need(c.norm_eps > 0, 'norm_eps', 'positive', c.norm_eps);
  need(c.mid_block_scale_factor !== 0, 'mid_block_scale_factor', 'non-zero', 0);
  need(Number.isInteger(c.downsample_padding) && c.downsample_padding >= 0, 'downsample_padding',
    'a non-negative integer', c.downsample_padding);
  const s = c.sample_size;
  const size = (v: unknown): boolean => Number.isInteger(v) && (v as number) > 0;
  need(s === null || size(s) || (Array.isArray(s) && s.length === 2 && s.every(size)),
    'sample_size', 'null, a positive integer or [height, width]', s);
}

/** Parses and validates a diffusers UNet2DModel config.json. */
export function readUNet2DConfig(raw: Record<string, unknown>,
  opts: Pick<ReadConfigOptions, 'warn'> = {}): UNet2DConfig {
  // attention_head_dim defaults to 8 but may be null, which readConfig's `nullable` (for
  // null defaults) cannot say: it is read here and checked by validate.
  const { attention_head_dim: headDim, ...rest } = raw;
  const c = readConfig(CLASS_NAME, rest, UNET2D_DEFAULTS as UNet2DConfig,
    { ...opts, nullable: NULLABLE });
  if (headDim !== undefined) c.attention_head_dim = headDim as number | null;
  validate(c, {});
  return c;
}

// ---------------------------------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------------------------------

/** diffusers' module names, under which forward hooks see these tensors. */
export type UNet2DNode = 'time_proj' | 'time_embedding' | 'conv_in' | `down_blocks.${number}`
  | 'mid_block' | `up_blocks.${number}` | 'conv_norm_out' | 'conv_act' | 'conv_out';
/** Receives intermediate tensors as the pass builds them. */
export type Tap = (node: UNet2DNode, value: Tensor) => void;

/** What one denoising step shares across blocks. */
export interface UNet2DCond {
  /** Time (+ class) embedding [N, 4 C0], before the resnets' activation. */
  temb: Tensor;
  /** t as float32 [N] (the Fourier variant divides its output by it). */
  timesteps: Tensor;
}

/** The pass between two stages: diffusers' `sample` and `down_block_res_samples`. */
export interface UNet2DState {
  hidden: Tensor;
  /** Skip tensors in the order diffusers appends them; up blocks take theirs from the end. */
  skips: readonly Tensor[];
}

/** classLabels: int64 [N] (label table), [N] ('timestep') or [N, 4 C0] ('identity'); batch:
 *  the size a scalar or [1] t is broadcast to. */
export interface EmbedOptions {
  classLabels?: Tensor; batch?: Dim; tap?: Tap;
  /** Added to the class embedding [N, time_embed_dim] (condition corruption, CEP). */
  labelShift?: Tensor;
}
/** conv_in, then `downBlocks` down blocks (default all), then the mid block (default: when
 *  all down blocks ran). */
export interface EncodeOptions { downBlocks?: number; mid?: boolean; tap?: Tap }
/** The mid block if `mid`, then up blocks [fromUpBlock, toUpBlock) (default all), which take
 *  skipCount(from) - skipCount(to) skips from the end; running to the end uses them all. */
export interface DecodeOptions {
  mid?: boolean; fromUpBlock?: number; toUpBlock?: number; tap?: Tap;
}

const integer = (t: Tensor): boolean => t.dtype === 'int64' || t.dtype === 'int32';

export class UNet2DModel extends Module {
  readonly conv_in: Conv2d;
  readonly time_proj?: GaussianFourierProjection | Embedding;
  readonly time_embedding: TimestepEmbedding;
  readonly class_embedding?: Embedding | TimestepEmbedding;
  readonly down_blocks: UNetDownBlock[];
  readonly mid_block: UNetMidBlock2D;
  readonly up_blocks: UNetUpBlock[];
  readonly conv_norm_out: GroupNorm;
  readonly conv_out: Conv2d;
  /** diffusers' Timesteps (no parameters) when time_embedding_type is 'positional'. */
  private readonly sinusoidal?: Timesteps;

  constructor(readonly config: Readonly<UNet2DConfig>, opts: UNet2DOptions = {}) {
    super();
    validate(config, opts);
    const c = config;
    const ch = c.block_out_channels;
    const [n, c0, temb] = [ch.length, ch[0]!, 4 * ch[0]!];
    this.conv_in = new Conv2d(c.in_channels, c0, 3, { padding: 1 });
    const type = c.time_embedding_type;
    if (type === 'fourier') this.time_proj = new GaussianFourierProjection(c0);
    if (type === 'learned') this.time_proj = new Embedding(c.num_train_timesteps!, c0);
    if (type === 'positional') {
      this.sinusoidal = new Timesteps(c0, c.flip_sin_to_cos, c.freq_shift);
    }
    const projC = type === 'fourier' ? 2 * c0 : c0;
    this.time_embedding = new TimestepEmbedding(projC, temb);
    if (c.class_embed_type === 'timestep') {
      this.class_embedding = new TimestepEmbedding(projC, temb);
    } else if (c.class_embed_type === null && c.num_class_embeds !== null) {
      this.class_embedding = new Embedding(c.num_class_embeds, temb);
    }
    const ctx: BlockCtx = { act: c.act_fn, groups: c.norm_num_groups, eps: c.norm_eps,
      tembChannels: temb, timeScaleShift: c.resnet_time_scale_shift,
      headDim: c.attention_head_dim };
    const last = (i: number): boolean => i === n - 1;
    this.down_blocks = c.down_block_types.map((kind, i) => new UNetDownBlock({
      inC: ch[Math.max(i - 1, 0)]!, outC: ch[i]!, layers: c.layers_per_block,
      attention: DOWN_BLOCKS[kind].attention, padding: c.downsample_padding,
      downsample: last(i) ? null
        : DOWN_BLOCKS[kind].followsResampleType ? c.downsample_type : 'conv',
    }, ctx));
    this.mid_block = new UNetMidBlock2D(ch[n - 1]!, ctx, {
      outputScaleFactor: c.mid_block_scale_factor, addAttention: c.add_attention,
      attnGroups: c.attn_norm_num_groups
        ?? (c.resnet_time_scale_shift === 'default' ? c.norm_num_groups : null),
    });
    const rev = [...ch].reverse();
    this.up_blocks = c.up_block_types.map((kind, i) => new UNetUpBlock({
      inC: rev[Math.min(i + 1, n - 1)]!, prevC: rev[Math.max(i - 1, 0)]!, outC: rev[i]!,
      layers: c.layers_per_block + 1, attention: UP_BLOCKS[kind].attention,
      upsample: last(i) ? null
        : UP_BLOCKS[kind].followsResampleType ? c.upsample_type : 'conv',
    }, ctx));
    this.conv_norm_out = new GroupNorm(c.norm_num_groups, c0, c.norm_eps);
    this.conv_out = new Conv2d(c0, c.out_channels, 3, { padding: 1 });
  }

  /** x [N, in, H, W], t [N] or [] (float32 or int64) -> [N, out, H, W]. */
  forward(p: ParamsOf<UNet2DModel>, x: Tensor, t: Tensor, classLabels?: Tensor,
    labelShift?: Tensor): Tensor {
    return this.run(p, x, t, classLabels, undefined, labelShift);
  }

  /** The output and every tensor diffusers' forward hooks would see, by module name. */
  intermediates(p: ParamsOf<UNet2DModel>, x: Tensor, t: Tensor, classLabels?: Tensor,
    labelShift?: Tensor): { sample: Tensor; features: Map<UNet2DNode, Tensor> } {
    const features = new Map<UNet2DNode, Tensor>();
    const sample = this.run(p, x, t, classLabels, (k, v) => features.set(k, v), labelShift);
    return { sample, features };
  }

  private run(p: ParamsOf<UNet2DModel>, x: Tensor, t: Tensor, classLabels?: Tensor,
    tap?: Tap, labelShift?: Tensor): Tensor {
    const c = this.embed(p, t, { classLabels, batch: x.shape[0], tap, labelShift });
    return this.head(p, this.decode(p, this.encode(p, x, c, { tap }), c, { tap }).hidden, c, tap);
  }

  /** Time embedding, plus the class embedding when the model has one. */
  embed(p: ParamsOf<UNet2DModel>, t: Tensor, opts: EmbedOptions = {}): UNet2DCond {
    let ts = t.rank === 0 ? ops.reshape(t, [1]) : t; // [N] or [1]
    if (ts.rank !== 1) {
      throw new ShapeError(CLASS_NAME, `t must be [N] or a scalar, got ${fmtShape(t.shape)}`);
    }
    const batch = opts.batch ?? ts.shape[0]!;
    if (ts.shape[0] === 1 && batch !== 1) ts = ops.broadcastTo(ts, [batch]);
    if (ts.shape[0] !== batch) {
      throw new ShapeError(CLASS_NAME, `${ts.shape[0]} timesteps for a batch of ${batch}`);
    }
    const proj = this.project(p, ts); // [N, C0] (Fourier: [N, 2 C0])
    opts.tap?.('time_proj', proj);
    let temb = this.time_embedding.forward(p.time_embedding, proj); // [N, 4 C0]
    opts.tap?.('time_embedding', temb);
    const labels = opts.classLabels;
    const conditional = this.class_embedding !== undefined
      || this.config.class_embed_type !== null;
    if (conditional !== (labels !== undefined)) {
      throw new TypeError(conditional ? `${CLASS_NAME}: class labels are required (the model ` +
        'has a class embedding)' : `${CLASS_NAME}: class labels given, but the model has no ` +
        'class embedding (num_class_embeds / class_embed_type)');
    }
    // Casts are sound: the parameter tree mirrors the module's own fields.
    if (this.class_embedding instanceof TimestepEmbedding) {
      const cp = p.class_embedding as ParamsOf<TimestepEmbedding>;
      temb = ops.add(temb, this.class_embedding.forward(cp, this.project(p, labels!)));
    } else if (this.class_embedding) {
      if (!integer(labels!)) throw new TypeError(`${CLASS_NAME}: class labels must be int64`);
      const cp = p.class_embedding as ParamsOf<Embedding>;
      temb = ops.add(temb, this.class_embedding.forward(cp, labels!));
    } else if (labels) {
      temb = ops.add(temb, labels); // 'identity'
    }
    if (opts.labelShift) {
      if (!conditional) throw new TypeError(`${CLASS_NAME}: a label shift needs a class embedding`);
      temb = ops.add(temb, opts.labelShift);
    }
    return { temb, timesteps: ops.cast(ts, 'float32') };
  }

  /** diffusers' time_proj: sinusoidal, Fourier or learned features of t [N] -> [N, C0 | 2 C0]. */
  private project(p: ParamsOf<UNet2DModel>, t: Tensor): Tensor {
    if (this.time_proj instanceof Embedding) {
      if (!integer(t)) throw new TypeError(`${CLASS_NAME}: learned time embedding needs int64 t`);
      return this.time_proj.forward(p.time_proj as ParamsOf<Embedding>, t);
    }
    const tf = ops.cast(t, 'float32');
    if (this.sinusoidal) return this.sinusoidal.forward(tf);
    return this.time_proj!.forward(p.time_proj as ParamsOf<GaussianFourierProjection>, tf);
  }

  /** conv_in, down blocks, optionally the mid block. */
  encode(p: ParamsOf<UNet2DModel>, x: Tensor, cond: UNet2DCond, opts: EncodeOptions = {}):
    UNet2DState {
    const n = this.down_blocks.length;
    const stop = opts.downBlocks ?? n;
    const mid = opts.mid ?? stop === n;
    checkIndex('encode', 'downBlocks', stop, 0, n);
    if (mid && stop !== n) throw new RangeError(`${CLASS_NAME}.encode: mid needs all down blocks`);
    const scale = 2 ** (n - 1);
    if (x.shape.slice(2).some((d) => typeof d === 'number' && d % scale !== 0)) {
      throw new ShapeError(CLASS_NAME, `height and width must be multiples of ${scale}, got ` +
        `${fmtShape(x.shape)}`);
    }
    const ta = ACTIVATIONS[this.config.act_fn](cond.temb);
    let h = this.config.center_input_sample ? ops.sub(ops.mul(x, 2), 1) : x;
    h = this.conv_in.forward(p.conv_in, h); // [N, C0, H, W]
    opts.tap?.('conv_in', h);
    const skips = [h];
    for (let i = 0; i < stop; i++) {
      const out = this.down_blocks[i]!.forward(p.down_blocks[i]!, h, ta);
      h = out.hidden; // [N, C_i, H / 2^(i+1), W / 2^(i+1)] (the last block keeps its size)
      skips.push(...out.skips);
      opts.tap?.(`down_blocks.${i}`, h);
    }
    if (mid) {
      h = this.mid_block.forward(p.mid_block, h, ta);
      opts.tap?.('mid_block', h);
    }
    return { hidden: h, skips };
  }

  /** Skips consumed by up blocks fromUpBlock..n-1 (DeepCache keeps this many). */
  skipCount(fromUpBlock = 0): number {
    return this.up_blocks.slice(fromUpBlock).reduce((s, b) => s + b.resnets.length, 0);
  }

  /** Optionally the mid block, then up blocks [fromUpBlock, toUpBlock). */
  decode(p: ParamsOf<UNet2DModel>, state: UNet2DState, cond: UNet2DCond,
    opts: DecodeOptions = {}): UNet2DState {
    const n = this.up_blocks.length;
    const [from, to] = [opts.fromUpBlock ?? 0, opts.toUpBlock ?? n];
    checkIndex('decode', 'fromUpBlock', from, 0, n);
    checkIndex('decode', 'toUpBlock', to, from, n);
    if (opts.mid && from !== 0) {
      throw new RangeError(`${CLASS_NAME}.decode: mid runs before up block 0, not ${from}`);
    }
    const need = this.skipCount(from) - this.skipCount(to);
    const got = state.skips.length;
    if (got < need || (to === n && got !== need)) {
      throw new RangeError(`${CLASS_NAME}.decode: up blocks ${from}..${to - 1} take ${need} ` +
        `skips${to === n ? ', and nothing may be left over,' : ''} but ${got} were given`);
    }
    const ta = ACTIVATIONS[this.config.act_fn](cond.temb);
    let h = state.hidden;
    if (opts.mid) {
      h = this.mid_block.forward(p.mid_block, h, ta);
      opts.tap?.('mid_block', h);
    }
    const skips = [...state.skips];
    for (let i = from; i < to; i++) {
      const block = this.up_blocks[i]!;
      const taken = skips.splice(skips.length - block.resnets.length);
      h = block.forward(p.up_blocks[i]!, h, taken, ta); // [N, C_(n-1-i), 2x size except last]
      opts.tap?.(`up_blocks.${i}`, h);
    }
    return { hidden: h, skips };
  }

  /** Resnets of the up path, counted in running order (up block 0's first is 0). */
  upResnetCount(): number {
    return this.skipCount(0);
  }

  /** Skips conv_in and the first `downBlocks` down blocks append (see encode). */
  encodedSkips(downBlocks: number): number {
    return 1 + this.down_blocks.slice(0, downBlocks)
      .reduce((s, b) => s + b.resnets.length + (b.downsamplers ? 1 : 0), 0);
  }

  /**
   * The up path from resnet `from` to resnet `to` (exclusive; counted as upResnetCount), on
   * `state.hidden`, taking one skip per resnet from the end of `state.skips`. A block's
   * upsampler runs after its last resnet. DeepCache cuts the path between any two resnets.
   */
  decodeResnets(p: ParamsOf<UNet2DModel>, state: UNet2DState, cond: UNet2DCond, from: number,
    to: number): UNet2DState {
    checkIndex('decodeResnets', 'from', from, 0, this.upResnetCount());
    checkIndex('decodeResnets', 'to', to, from, this.upResnetCount());
    if (state.skips.length < to - from) {
      throw new RangeError(`${CLASS_NAME}.decodeResnets: resnets ${from}..${to - 1} take ` +
        `${to - from} skips, but ${state.skips.length} were given`);
    }
    const ta = ACTIVATIONS[this.config.act_fn](cond.temb);
    let h = state.hidden;
    const skips = [...state.skips];
    let start = 0;
    this.up_blocks.forEach((block, i) => {
      const n = block.resnets.length;
      const [a, b] = [Math.max(from, start) - start, Math.min(to, start + n) - start];
      start += n;
      if (a >= b) return;
      const taken = skips.splice(skips.length - (b - a));
      h = block.forward(p.up_blocks[i]!, h, taken, ta, [a, b]);
    });
    return { hidden: h, skips };
  }

  /** conv_norm_out, SiLU (always, whatever act_fn), conv_out; Fourier models divide by t. */
  head(p: ParamsOf<UNet2DModel>, hidden: Tensor, cond: UNet2DCond, tap?: Tap): Tensor {
    let h = this.conv_norm_out.forward(p.conv_norm_out, hidden); // [N, C0, H, W]
    tap?.('conv_norm_out', h);
    h = ops.silu(h);
    tap?.('conv_act', h);
    h = this.conv_out.forward(p.conv_out, h); // [N, out, H, W]
    tap?.('conv_out', h);
    if (this.config.time_embedding_type !== 'fourier') return h;
    return ops.div(h, ops.reshape(cond.timesteps, [h.shape[0]!, 1, 1, 1]));
  }
}

function checkIndex(method: string, name: string, v: number, lo: number, hi: number): void {
  if (!Number.isInteger(v) || v < lo || v > hi) {
    throw new RangeError(`${CLASS_NAME}.${method}: ${name} must be an integer in ` +
      `[${lo}, ${hi}], got ${v}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Presets, legacy names, the class record
// ---------------------------------------------------------------------------------------------

const preset = (over: Partial<UNet2DConfig>): UNet2DConfig => ({ ...UNET2D_DEFAULTS, ...over });
const mnistS = preset({
  sample_size: 32, in_channels: 1, out_channels: 1, block_out_channels: [32, 64, 128],
  down_block_types: ['DownBlock2D', 'AttnDownBlock2D', 'AttnDownBlock2D'],
  up_block_types: ['AttnUpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'], norm_num_groups: 8,
});

/**
 * Named configs. `mnist-s` is the benchmark U-Net of bench/models.ts (4,023,233 params,
 * 1.2 GFLOP per 32x32 image); `mnist-s-cond` adds a label table of 11 rows, the digits and the CFG null class 10;
 * `ddpm-cifar10` is google/ddpm-cifar10-32 (35,746,307 params; one attention head, the
 * original DDPM layout).
 */
export const UNET2D_PRESETS: Readonly<Record<'mnist-s' | 'mnist-s-cond' | 'ddpm-cifar10',
  UNet2DConfig>> = {
  'mnist-s': mnistS,
  'mnist-s-cond': { ...mnistS, num_class_embeds: 11 },
  'ddpm-cifar10': preset({
    sample_size: 32, block_out_channels: [128, 256, 256, 256],
    down_block_types: ['DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D', 'DownBlock2D'],
    up_block_types: ['UpBlock2D', 'UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'],
    downsample_padding: 0, flip_sin_to_cos: false, freq_shift: 1, norm_eps: 1e-6,
    attention_head_dim: null,
  }),
};

/** The class as Diffuse's model loader sees it: name, config reading, construction, saving. */
export const UNET2D_CLASS = {
  className: CLASS_NAME,
  readConfig: readUNet2DConfig,
  create: (config: UNet2DConfig, opts?: UNet2DOptions) => new UNet2DModel(config, opts),
  toConfig: (config: UNet2DConfig) => toDiffusersConfig(CLASS_NAME, config),
  rename: renameLegacyAttention,
} as const;
