/**
 * @file The blocks of diffusers' UNet2DModel, with diffusers' parameter names (v0.31:
 * `resnet.py` ResnetBlock2D, `attention_processor.py` Attention as the U-Net blocks build it,
 * `downsampling.py` Downsample2D, `upsampling.py` Upsample2D, `embeddings.py`
 * TimestepEmbedding and GaussianFourierProjection, `unet_2d_blocks.py` DownBlock2D,
 * AttnDownBlock2D, UpBlock2D, AttnUpBlock2D and UNetMidBlock2D). The model, its config and
 * the dispatch from config strings to these classes are in unet2d.ts.
 *
 * DownBlock2D and AttnDownBlock2D differ only in the attention after each resnet, so one
 * class serves both (an empty `attentions` list holds no parameters); likewise for the up
 * blocks. The resnets take the time embedding already passed through the activation: diffusers
 * applies it inside every resnet, to the same tensor, so the model does it once.
 */
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import type { Tensor } from '../engine/tensor.js';
import { normal } from '../nn/init.js';
import { Conv2d, GroupNorm, Linear } from '../nn/layers.js';
import { Module, Param, type ParamsOf } from '../nn/module.js';
import { TimestepEmbedding } from './embeddings.js';

export { TimestepEmbedding };

// ---------------------------------------------------------------------------------------------
// Shared settings
// ---------------------------------------------------------------------------------------------

/** softplus(x) = log(1 + e^x), written so that e^x never overflows. */
const softplus = (x: Tensor): Tensor =>
  ops.add(ops.relu(x), ops.log(ops.add(ops.exp(ops.neg(ops.abs(x))), 1)));

/** diffusers' `get_activation` table (`act_fn`); gelu is torch's exact (erf) GELU. */
export const ACTIVATIONS = {
  silu: ops.silu,
  swish: ops.silu,
  relu: ops.relu,
  gelu: (x: Tensor): Tensor => ops.gelu(x),
  mish: (x: Tensor): Tensor => ops.mul(x, ops.tanh(softplus(x))),
} as const satisfies Record<string, (x: Tensor) => Tensor>;
export type Activation = keyof typeof ACTIVATIONS;

/** What every block of one U-Net shares (diffusers threads these as separate arguments). */
export interface BlockCtx {
  act: Activation;
  /** norm_num_groups and norm_eps, used by every GroupNorm (attention included). */
  groups: number;
  eps: number;
  /** Width of the time embedding the resnets project; null: the resnets take no time input. */
  tembChannels: number | null;
  /** 'default' adds the projected embedding before norm2; 'scale_shift' modulates after it. */
  timeScaleShift: 'default' | 'scale_shift';
  /** attention_head_dim; null: a single head as wide as the block. */
  headDim: number | null;
}

/** How a block changes resolution: a strided/nearest conv, or a resnet that resamples. */
export type ResampleType = 'conv' | 'resnet';

/** torch's avg_pool2d(kernel 2, stride 2), floor mode: odd trailing rows/columns dropped. */
function avgPool2x2(x: Tensor): Tensor {
  const [n, c, h, w] = x.shape as [number | string, number, number, number];
  const even = ops.slice(x, [null, null, [0, h - (h % 2)], [0, w - (w % 2)]]);
  const blocks = ops.reshape(even, [n, c, h >> 1, 2, w >> 1, 2]); // [N, C, H/2, 2, W/2, 2]
  return ops.mean(blocks, [3, 5]); // [N, C, H/2, W/2]
}

// ---------------------------------------------------------------------------------------------
// Resnet, attention, resampling
// ---------------------------------------------------------------------------------------------

/**
 * ResnetBlock2D (pre-norm):
 * out = (skip(x) + conv2(act(norm2'(conv1(act(norm1 x)))))) / output_scale_factor, where
 * norm2' is norm2(h + proj(act temb)) ('default') or norm2(h) (1 + scale) + shift
 * ('scale_shift'); with `resample`, x and the hidden state are both resampled after norm1.
 * Dropout (before conv2) is the identity here: Diffuse runs diffusers' eval mode.
 */
export class ResnetBlock2D extends Module {
  readonly norm1: GroupNorm;
  readonly conv1: Conv2d;
  readonly time_emb_proj?: Linear;
  readonly norm2: GroupNorm;
  readonly conv2: Conv2d;
  readonly conv_shortcut?: Conv2d;
  constructor(inC: number, readonly outC: number, private readonly ctx: BlockCtx,
    private readonly opts: { outputScaleFactor?: number; resample?: 'up' | 'down' } = {}) {
    super();
    this.norm1 = new GroupNorm(ctx.groups, inC, ctx.eps);
    this.conv1 = new Conv2d(inC, outC, 3, { padding: 1 });
    if (ctx.tembChannels !== null) {
      const width = ctx.timeScaleShift === 'scale_shift' ? 2 * outC : outC;
      this.time_emb_proj = new Linear(ctx.tembChannels, width);
    }
    this.norm2 = new GroupNorm(ctx.groups, outC, ctx.eps);
    this.conv2 = new Conv2d(outC, outC, 3, { padding: 1 });
    if (inC !== outC) this.conv_shortcut = new Conv2d(inC, outC, 1);
  }

  /** x [N, Cin, H, W], tembAct = act(temb) [N, T] -> [N, Cout, H', W'] */
  forward(p: ParamsOf<ResnetBlock2D>, x: Tensor, tembAct?: Tensor): Tensor {
    const act = ACTIVATIONS[this.ctx.act];
    const resample = this.opts.resample === 'up' ? ops.upsampleNearest2x
      : this.opts.resample === 'down' ? avgPool2x2 : (y: Tensor) => y;
    let h = resample(act(this.norm1.forward(p.norm1, x))); // [N, Cin, H', W']
    h = this.conv1.forward(p.conv1, h); // [N, Cout, H', W']
    if (this.time_emb_proj) {
      if (!tembAct) throw new TypeError('ResnetBlock2D: this block needs the time embedding');
      const e = this.time_emb_proj.forward(p.time_emb_proj!, tembAct); // [N, Cout or 2 Cout]
      const n = e.shape[0]!;
      if (this.ctx.timeScaleShift === 'scale_shift') {
        const [scale, shift] = ops.split(ops.reshape(e, [n, 2 * this.outC, 1, 1]), 2, 1);
        h = ops.add(ops.mul(this.norm2.forward(p.norm2, h), ops.add(scale!, 1)), shift!);
      } else {
        h = this.norm2.forward(p.norm2, ops.add(h, ops.reshape(e, [n, this.outC, 1, 1])));
      }
    } else {
      h = this.norm2.forward(p.norm2, h);
    }
    h = this.conv2.forward(p.conv2, act(h)); // [N, Cout, H', W']
    const skip = this.conv_shortcut ? this.conv_shortcut.forward(p.conv_shortcut!, resample(x))
      : resample(x);
    const out = ops.add(skip, h);
    const s = this.opts.outputScaleFactor ?? 1;
    return s === 1 ? out : ops.div(out, s);
  }
}

/**
 * diffusers' Attention as AttnDown/AttnUp/mid blocks build it (`_from_deprecated_attn_block`):
 * spatial self-attention over the H*W positions, heads = floor(C / head_dim) of width head_dim
 * (so the inner width may be below C), optional GroupNorm on the input, biases everywhere,
 * residual connection, output divided by rescale_output_factor.
 *
 * Computed channels-first: q, k, v come from one product W [3I, C] @ x [N, C, T], so the
 * tokens are never transposed to [N, T, C]; only the small [D, T] head slices of q and v (ORT
 * fuses those into FusedMatMul) and the output are, never the [T, T] scores. The 1/sqrt(d)
 * scale is folded into the query weights (a constant fold in inference graphs), and so is the
 * group norm's per-channel affine (W (g z + beta) = (W g) z + W beta), which saves two passes
 * over [N, C, T] forward and four backward (measured: about 5% of a training step of the
 * block; neutral in inference).
 */
export class SpatialAttention extends Module {
  readonly group_norm?: GroupNorm;
  readonly to_q: Linear;
  readonly to_k: Linear;
  readonly to_v: Linear;
  readonly to_out: [Linear];
  readonly heads: number;
  readonly headDim: number;
  private readonly rescale: number;
  constructor(readonly channels: number, ctx: Pick<BlockCtx, 'eps' | 'headDim'>,
    opts: { groups: number | null; rescaleOutputFactor?: number }) {
    super();
    this.headDim = ctx.headDim ?? channels;
    this.heads = Math.floor(channels / this.headDim);
    if (this.heads < 1) {
      throw new RangeError(`SpatialAttention: head width ${this.headDim} > ${channels} channels`);
    }
    const inner = this.heads * this.headDim;
    if (opts.groups !== null) this.group_norm = new GroupNorm(opts.groups, channels, ctx.eps);
    this.to_q = new Linear(channels, inner);
    this.to_k = new Linear(channels, inner);
    this.to_v = new Linear(channels, inner);
    this.to_out = [new Linear(inner, channels)];
    this.rescale = opts.rescaleOutputFactor ?? 1;
  }

  /** x [N, C, H, W] -> [N, C, H, W] */
  forward(p: ParamsOf<SpatialAttention>, x: Tensor): Tensor {
    const [n, c, hh, ww] = x.shape as [number | string, number, number, number];
    const [heads, d, t] = [this.heads, this.headDim, hh * ww];
    let y = ops.reshape(x, [n, c, t]); // [N, C, T]
    const s = 1 / Math.sqrt(d);
    let w = ops.concat([ops.mul(p.to_q.weight, s), p.to_k.weight, p.to_v.weight], 0); // [3I, C]
    let b = ops.concat([ops.mul(p.to_q.bias!, s), p.to_k.bias!, p.to_v.bias!], 0); // [3I]
    const gn = this.group_norm;
    if (gn) {
      // The norm's affine folds into the projection: W (g * z + beta) = (W g) z + W beta.
      y = ops.groupNorm(y, gn.numGroups, { eps: gn.eps }); // z
      const { weight: gw, bias: gb } = p.group_norm!;
      if (gb) b = ops.add(b, ops.reshape(ops.matmul(w, ops.reshape(gb, [c, 1])), [3 * heads * d]));
      if (gw) w = ops.mul(w, ops.reshape(gw, [1, c]));
    }
    const qkv = ops.add(ops.matmul(w, y), ops.reshape(b, [3 * heads * d, 1])); // [N, 3I, T]
    const [q, k, v] = ops.split(ops.reshape(qkv, [n, 3 * heads, d, t]), 3, 1); // [N, H, D, T]
    // The scale is in the q projection; the heads stay channel-first, [N, H, D, T].
    const o = ops.attention(q!, k!, v!, { scale: 1, layout: 'channels' });
    const merged = ops.reshape(o, [n, heads * d, t]); // [N, I, T]
    const out = ops.add(ops.matmul(p.to_out[0]!.weight, merged),
      ops.reshape(p.to_out[0]!.bias!, [c, 1])); // [N, C, T]
    const res = ops.add(ops.reshape(out, x.shape), x); // [N, C, H, W]
    return this.rescale === 1 ? res : ops.div(res, this.rescale);
  }
}

/** Downsample2D(use_conv=True, name="op"): a stride-2 3x3 conv; padding 0 means diffusers'
 *  pad of one row and column at the bottom/right, folded into the conv's asymmetric pads. */
export class Downsample2D extends Module {
  readonly conv: Conv2d;
  constructor(channels: number, private readonly padding: number) {
    super();
    this.conv = new Conv2d(channels, channels, 3, { stride: 2 });
  }
  /** x [N, C, H, W] -> [N, C, H/2, W/2] */
  forward(p: ParamsOf<Downsample2D>, x: Tensor): Tensor {
    const q = this.padding;
    const pads = q === 0 ? [0, 0, 1, 1] as const : [q, q, q, q] as const;
    return ops.conv2d(x, p.conv.weight, { stride: 2, padding: pads, bias: p.conv.bias });
  }
}

/** Upsample2D(use_conv=True): nearest-neighbour x2, then a 3x3 conv. */
export class Upsample2D extends Module {
  readonly conv: Conv2d;
  constructor(channels: number) {
    super();
    this.conv = new Conv2d(channels, channels, 3, { padding: 1 });
  }
  /** x [N, C, H, W] -> [N, C, 2H, 2W] */
  forward(p: ParamsOf<Upsample2D>, x: Tensor): Tensor {
    return this.conv.forward(p.conv, ops.upsampleNearest2x(x));
  }
}

// ---------------------------------------------------------------------------------------------
// Time embedding
// ---------------------------------------------------------------------------------------------

/**
 * diffusers' Timesteps / get_timestep_embedding (DDPM's sinusoidal features): for i < half,
 * f_i = exp(-ln(10^4) i / (half - shift)), features [sin(t f), cos(t f)] ([cos, sin] when
 * flipped), zero-padded to an odd width. The float32 table replays torch's order of operations
 * (product and quotient exactly; its SLEEF exp may differ from ours by 1 ulp).
 */
export class Timesteps {
  private readonly freqs: HostArray;
  constructor(readonly channels: number, readonly flipSinToCos: boolean, shift: number) {
    const f = Math.fround;
    const [c, half] = [f(-Math.log(10000)), channels >> 1];
    const d = f(half - shift);
    const table = Float32Array.from({ length: half }, (_, i) => f(Math.exp(f(f(c * i) / d))));
    this.freqs = new HostArray(table, [1, half]);
  }
  /** t [N] float32 -> [N, channels] */
  forward(t: Tensor): Tensor {
    const args = ops.mul(ops.unsqueeze(t, 1), ops.constant(this.freqs)); // [N, half]
    const [sin, cos] = [ops.sin(args), ops.cos(args)];
    const emb = ops.concat(this.flipSinToCos ? [cos, sin] : [sin, cos], 1);
    return this.channels % 2 ? ops.pad(emb, [[0, 0], [0, 1]]) : emb;
  }
}

/**
 * GaussianFourierProjection(embedding_size=C, scale=16) as UNet2DModel builds it (NCSN++,
 * Song et al. 2021): [sin, cos](2 pi log(sigma) w), never flipped (UNet2DModel does not pass
 * flip_sin_to_cos to it). `weight` is frozen in diffusers (requires_grad=False): its gradient
 * is stopped here, but AdamW's weight decay still shrinks it. TODO: a frozen flag on Param.
 */
export class GaussianFourierProjection extends Module {
  readonly weight: Param;
  constructor(size: number) {
    super();
    this.weight = new Param([size], normal(16));
  }
  /** sigma [N] float32 -> [N, 2 size] */
  forward(p: ParamsOf<GaussianFourierProjection>, sigma: Tensor): Tensor {
    const w = ops.unsqueeze(ops.stopGradient(p.weight), 0); // [1, size]
    const x = ops.mul(ops.mul(ops.mul(ops.unsqueeze(ops.log(sigma), 1), w), 2), Math.PI);
    return ops.concat([ops.sin(x), ops.cos(x)], 1);
  }
}

// ---------------------------------------------------------------------------------------------
// Down, up and mid blocks
// ---------------------------------------------------------------------------------------------

/** A down block's output: diffusers' (hidden_states, output_states). */
export interface DownOutput {
  hidden: Tensor;
  /** One per resnet, then the downsampler's output if there is one. */
  skips: Tensor[];
}

/** DownBlock2D / AttnDownBlock2D: `layers` resnets (each followed by attention in the Attn
 *  kind), then an optional downsampler (a strided conv, or a resnet with avg-pooling). */
export class UNetDownBlock extends Module {
  readonly resnets: ResnetBlock2D[];
  readonly attentions: SpatialAttention[];
  readonly downsamplers?: [Downsample2D] | [ResnetBlock2D];
  constructor(o: { inC: number; outC: number; layers: number; attention: boolean;
    downsample: ResampleType | null; padding: number }, ctx: BlockCtx) {
    super();
    this.resnets = Array.from({ length: o.layers },
      (_, i) => new ResnetBlock2D(i === 0 ? o.inC : o.outC, o.outC, ctx));
    this.attentions = o.attention ? this.resnets.map(() =>
      new SpatialAttention(o.outC, ctx, { groups: ctx.groups })) : [];
    if (o.downsample === 'conv') this.downsamplers = [new Downsample2D(o.outC, o.padding)];
    if (o.downsample === 'resnet') {
      this.downsamplers = [new ResnetBlock2D(o.outC, o.outC, ctx, { resample: 'down' })];
    }
  }

  /** x [N, Cin, H, W] -> hidden [N, Cout, H', W'] and the skips the up path consumes. */
  forward(p: ParamsOf<UNetDownBlock>, x: Tensor, tembAct?: Tensor): DownOutput {
    const skips: Tensor[] = [];
    let h = x;
    this.resnets.forEach((r, i) => {
      h = r.forward(p.resnets[i]!, h, tembAct); // [N, Cout, H, W]
      if (this.attentions.length) h = this.attentions[i]!.forward(p.attentions[i]!, h);
      skips.push(h);
    });
    if (this.downsamplers) {
      h = resampleWith(this.downsamplers[0], p.downsamplers![0], h, tembAct); // [N, C, H/2, W/2]
      skips.push(h);
    }
    return { hidden: h, skips };
  }
}

/** UpBlock2D / AttnUpBlock2D: `layers` resnets, each on [hidden, last unused skip]
 *  concatenated along channels (plus attention in the Attn kind), then an optional upsampler. */
export class UNetUpBlock extends Module {
  readonly resnets: ResnetBlock2D[];
  readonly attentions: SpatialAttention[];
  readonly upsamplers?: [Upsample2D] | [ResnetBlock2D];
  constructor(o: { inC: number; prevC: number; outC: number; layers: number; attention: boolean;
    upsample: ResampleType | null }, ctx: BlockCtx) {
    super();
    this.resnets = Array.from({ length: o.layers }, (_, i) => {
      const skipC = i === o.layers - 1 ? o.inC : o.outC;
      return new ResnetBlock2D((i === 0 ? o.prevC : o.outC) + skipC, o.outC, ctx);
    });
    this.attentions = o.attention ? this.resnets.map(() =>
      new SpatialAttention(o.outC, ctx, { groups: ctx.groups })) : [];
    if (o.upsample === 'conv') this.upsamplers = [new Upsample2D(o.outC)];
    if (o.upsample === 'resnet') {
      this.upsamplers = [new ResnetBlock2D(o.outC, o.outC, ctx, { resample: 'up' })];
    }
  }

  /** x [N, Cprev, H, W] and diffusers' res_hidden_states_tuple (one per resnet, used from the
   *  last) -> [N, Cout, H', W']. `resnets` [from, to) runs part of the block (DeepCache cuts
   *  inside it): one skip per resnet run, and the upsampler only after the last resnet. */
  forward(p: ParamsOf<UNetUpBlock>, x: Tensor, skips: readonly Tensor[],
    tembAct?: Tensor, resnets: readonly [number, number] = [0, this.resnets.length]): Tensor {
    const [from, to] = resnets;
    if (!(Number.isInteger(from) && Number.isInteger(to) && from >= 0 && from <= to
      && to <= this.resnets.length)) {
      throw new RangeError(`UNetUpBlock: resnets [${from}, ${to}) outside [0, ${this.resnets.length}]`);
    }
    if (skips.length !== to - from) {
      throw new RangeError(`UNetUpBlock: needs ${to - from} skips, got ${skips.length}`);
    }
    let h = x;
    for (let i = from; i < to; i++) {
      const skip = skips[skips.length - 1 - (i - from)]!;
      h = this.resnets[i]!.forward(p.resnets[i]!, ops.concat([h, skip], 1), tembAct); // [N, Cout, H, W]
      if (this.attentions.length) h = this.attentions[i]!.forward(p.attentions[i]!, h);
    }
    const last = to === this.resnets.length && from < to;
    return last && this.upsamplers ? resampleWith(this.upsamplers[0], p.upsamplers![0], h, tembAct)
      : h;
  }
}

/** UNetMidBlock2D(num_layers=1): resnet, [attention], resnet, all at one width. */
export class UNetMidBlock2D extends Module {
  readonly attentions: SpatialAttention[];
  readonly resnets: ResnetBlock2D[];
  constructor(channels: number, ctx: BlockCtx,
    o: { outputScaleFactor: number; attnGroups: number | null; addAttention: boolean }) {
    super();
    const rescaleOutputFactor = o.outputScaleFactor;
    this.attentions = o.addAttention
      ? [new SpatialAttention(channels, ctx, { groups: o.attnGroups, rescaleOutputFactor })] : [];
    this.resnets = [0, 1].map(() => new ResnetBlock2D(channels, channels, ctx,
      { outputScaleFactor: o.outputScaleFactor }));
  }
  /** x [N, C, H, W] -> [N, C, H, W] */
  forward(p: ParamsOf<UNetMidBlock2D>, x: Tensor, tembAct?: Tensor): Tensor {
    let h = this.resnets[0]!.forward(p.resnets[0]!, x, tembAct);
    if (this.attentions.length) h = this.attentions[0]!.forward(p.attentions[0]!, h);
    return this.resnets[1]!.forward(p.resnets[1]!, h, tembAct);
  }
}

/** Runs a down/up block's resampler, a conv module or a resampling resnet. */
function resampleWith(m: Downsample2D | Upsample2D | ResnetBlock2D, p: unknown, x: Tensor,
  tembAct?: Tensor): Tensor {
  // Casts are sound: p is the parameter tree of m, built from m's own fields.
  if (m instanceof ResnetBlock2D) return m.forward(p as ParamsOf<ResnetBlock2D>, x, tembAct);
  if (m instanceof Downsample2D) return m.forward(p as ParamsOf<Downsample2D>, x);
  return m.forward(p as ParamsOf<Upsample2D>, x);
}

// ---------------------------------------------------------------------------------------------
// Legacy names
// ---------------------------------------------------------------------------------------------

/**
 * Old diffusers attention names (before the Attention refactor; many hub checkpoints, e.g.
 * google/ddpm-cifar10-32, still carry them): `attentions.N.{query,key,value,proj_attn}` ->
 * `to_q`, `to_k`, `to_v`, `to_out.0`. `group_norm` kept its name. For loadStateDict's rename.
 */
export function renameLegacyAttention(name: string): string {
  const m = /^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$/.exec(name);
  if (!m) return name;
  const to = { query: 'to_q', key: 'to_k', value: 'to_v', proj_attn: 'to_out.0' }[m[2]!]!;
  return `${m[1]}.${to}.${m[3]}`;
}
