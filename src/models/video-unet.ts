/**
 * @file A small video U-Net: the 2-D U-Net's resnets applied to every frame, and temporal
 * attention over the frames at each pixel, with a learned bias per head and frame distance
 * (clipped to +-max_relative_distance) as its only sense of order. No layer mixes frames
 * otherwise (no temporal conv, and LayerNorm per token rather than a GroupNorm over frames),
 * so a clip's frames depend on other clips only through the temporal attention's keys: the
 * one place Video-Infinity (methods/video-infinity.ts) exchanges frames between workers.
 *
 * The pass is a flat list of steps with the temporal layers as breaks: `begin`, then
 * `segment(k)` up to temporal layer k, that layer, ..., `end`. `forward` runs them all in one
 * graph; a clip-parallel sampler compiles the segments and layers apart and exchanges each
 * layer's input between them.
 */
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import type { Tensor } from '../engine/tensor.js';
import { MultiHeadAttention } from '../nn/attention.js';
import { zeros } from '../nn/init.js';
import { Conv2d, GroupNorm, LayerNorm } from '../nn/layers.js';
import { Module, Param, type ParamsOf } from '../nn/module.js';
import { readConfig, requireConfig, toDiffusersConfig, type ReadConfigOptions } from './config.js';
import { TimestepEmbedding } from './embeddings.js';
import {
  Downsample2D, ResnetBlock2D, Timesteps, Upsample2D, type BlockCtx,
} from './unet2d-blocks.js';

const CLASS_NAME = 'DiffuseVideoUNet';

export type VideoUNetConfig = {
  in_channels: number;
  out_channels: number;
  /** Frame height and width. */
  sample_size: number;
  /** Frames of the training clips (sampling may use any number). */
  num_frames: number;
  block_out_channels: number[];
  /** Whether each level (and, if any is, the middle) has temporal attention. */
  temporal_levels: boolean[];
  layers_per_block: number;
  attention_heads: number;
  norm_num_groups: number;
  /** Frame distances beyond this share one bias. */
  max_relative_distance: number;
};

export const VIDEO_UNET_DEFAULTS: Readonly<VideoUNetConfig> = Object.freeze({
  in_channels: 1, out_channels: 1, sample_size: 32, num_frames: 16,
  block_out_channels: [32, 64, 64], temporal_levels: [false, true, true], layers_per_block: 1,
  attention_heads: 4, norm_num_groups: 8, max_relative_distance: 16,
});

const isPosInt = (v: unknown): boolean => typeof v === 'number' && Number.isInteger(v) && v > 0;

export function readVideoUNetConfig(raw: Record<string, unknown>,
  opts: Pick<ReadConfigOptions, 'warn'> = {}): VideoUNetConfig {
  const c = readConfig(CLASS_NAME, raw, { ...VIDEO_UNET_DEFAULTS }, opts);
  const need = (ok: boolean, key: keyof VideoUNetConfig, expected: string): void =>
    requireConfig(ok, CLASS_NAME, key, expected, c[key]);
  for (const key of ['in_channels', 'out_channels', 'sample_size', 'num_frames', 'layers_per_block',
    'attention_heads', 'norm_num_groups', 'max_relative_distance'] as const) need(isPosInt(c[key]), key, 'a positive integer');
  need(c.block_out_channels.length > 0 && c.block_out_channels.every((ch) => isPosInt(ch) &&
    ch % c.norm_num_groups === 0 && ch % c.attention_heads === 0), 'block_out_channels',
  `channel counts divisible by norm_num_groups (${c.norm_num_groups}) and attention_heads (${c.attention_heads})`);
  need(c.temporal_levels.length === c.block_out_channels.length, 'temporal_levels',
    `one flag per level (${c.block_out_channels.length})`);
  need(c.sample_size % 2 ** (c.block_out_channels.length - 1) === 0, 'sample_size',
    `divisible by 2^${c.block_out_channels.length - 1} (one halving per level after the first)`);
  return c;
}

// ---------------------------------------------------------------------------------------------
// Temporal attention
// ---------------------------------------------------------------------------------------------

/** [B F, C, H, W] -> tokens [B H W, F, C] */
export function frameTokens(x: Tensor, frames: number): Tensor {
  const [bf, c, h, w] = x.shape as [number, number, number, number];
  const b = bf / frames;
  return ops.reshape(ops.transpose(ops.reshape(x, [b, frames, c, h, w]), [0, 3, 4, 1, 2]), [b * h * w, frames, c]);
}

/** tokens [B H W, F, C] -> [B F, C, H, W] */
function tokenFrames(t: Tensor, frames: number, h: number, w: number): Tensor {
  const [bhw, , c] = t.shape as [number, number, number];
  const b = bhw / (h * w);
  return ops.reshape(ops.transpose(ops.reshape(t, [b, h, w, frames, c]), [0, 3, 4, 1, 2]), [b * frames, c, h, w]);
}

/** Indices into the relative bias table for query frames `queries` and key frames `keys`
 *  (video frame numbers; keys may include any placeholder, which a mask must then cover). */
export function relativeIndex(queries: readonly number[], keys: readonly number[], maxDistance: number):
  HostArray<'int64'> {
  const out = new BigInt64Array(queries.length * keys.length);
  queries.forEach((q, i) => keys.forEach((k, j) => {
    out[i * keys.length + j] = BigInt(Math.min(Math.max(k - q, -maxDistance), maxDistance) + maxDistance);
  }));
  return new HostArray(out, [queries.length, keys.length], 'int64');
}

/**
 * x + attention over frames: queries from this clip's frames, keys and values from `keys`
 * (LayerNorm'd layer inputs; by default the clip's own), logits biased per head by frame
 * distance and by `keyBias` (Video-Infinity's scope bias and mask).
 */
export class TemporalAttention extends Module {
  readonly norm: LayerNorm;
  readonly attn: MultiHeadAttention;
  readonly relative_bias: Param;
  constructor(readonly channels: number, readonly heads: number, readonly maxDistance: number) {
    super();
    this.norm = new LayerNorm(channels);
    this.attn = new MultiHeadAttention(channels, { heads });
    this.relative_bias = new Param([heads, 2 * maxDistance + 1], zeros);
  }
  /** What clip-parallel workers exchange: the normalised tokens [B H W, F, C] of x [B F, C, H, W]. */
  layerInput(p: ParamsOf<TemporalAttention>, x: Tensor, frames: number): Tensor {
    return this.norm.forward(p.norm, frameTokens(x, frames));
  }
  /** x [B F, C, H, W]; keys [B H W, S, C]; relIndex int64 [F, S]; keyBias [S] -> like x */
  apply(p: ParamsOf<TemporalAttention>, x: Tensor, frames: number, keys: Tensor, relIndex: Tensor,
    keyBias?: Tensor): Tensor {
    const [, , h, w] = x.shape as [number, number, number, number];
    const y = this.layerInput(p, x, frames);
    let bias = ops.unsqueeze(ops.gather(p.relative_bias, relIndex, 1), 0); // [1, heads, F, S]
    if (keyBias) bias = ops.add(bias, ops.reshape(keyBias, [1, 1, 1, -1]));
    const out = this.attn.forward(p.attn, y, keys, bias); // [B H W, F, C]
    return ops.add(x, tokenFrames(out, frames, h, w));
  }
  /** Over the clip's own frames. */
  forward(p: ParamsOf<TemporalAttention>, x: Tensor, frames: number): Tensor {
    const own = Array.from({ length: frames }, (_, i) => i);
    return this.apply(p, x, frames, this.layerInput(p, x, frames),
      ops.constant(relativeIndex(own, own, this.maxDistance)));
  }
}

// ---------------------------------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------------------------------

/** What flows between the steps of a pass: frames folded into the batch. */
export interface VideoState {
  h: Tensor;
  skips: Tensor[];
  /** act(time embedding) per frame [B F, E]. */
  temb: Tensor;
}

type Params = ParamsOf<DiffuseVideoUNet>;
type Step = { run: (p: Params, s: VideoState) => VideoState } | { temporal: number };

class VideoLevel extends Module {
  readonly resnets: ResnetBlock2D[];
  readonly temporal: TemporalAttention[];
  constructor(resnets: ResnetBlock2D[], temporal: TemporalAttention[]) {
    super();
    this.resnets = resnets;
    this.temporal = temporal;
  }
}

export class DiffuseVideoUNet extends Module {
  readonly conv_in: Conv2d;
  readonly time_embedding: TimestepEmbedding;
  readonly down: VideoLevel[];
  readonly downsamplers: Downsample2D[];
  readonly mid: VideoLevel;
  readonly up: VideoLevel[];
  readonly upsamplers: Upsample2D[];
  readonly conv_norm_out: GroupNorm;
  readonly conv_out: Conv2d;
  readonly config: Readonly<VideoUNetConfig>;
  /** The temporal layers in pass order. */
  readonly temporalLayers: { layer: TemporalAttention; params: (p: Params) => ParamsOf<TemporalAttention> }[] = [];
  private readonly steps: Step[] = [];
  private readonly timesteps: Timesteps;

  constructor(config: VideoUNetConfig) {
    super();
    this.config = Object.freeze({ ...config, block_out_channels: [...config.block_out_channels],
      temporal_levels: [...config.temporal_levels] });
    const ch = config.block_out_channels;
    const n = ch.length;
    const embed = 4 * ch[0]!;
    const ctx: BlockCtx = { act: 'silu', groups: config.norm_num_groups, eps: 1e-5, tembChannels: embed,
      timeScaleShift: 'default', headDim: null };
    const temporal = (c: number) => new TemporalAttention(c, config.attention_heads, config.max_relative_distance);
    this.timesteps = new Timesteps(ch[0]!, true, 0);
    this.time_embedding = new TimestepEmbedding(ch[0]!, embed);
    this.conv_in = new Conv2d(config.in_channels, ch[0]!, 3, { padding: 1 });
    const L = config.layers_per_block;
    this.down = ch.map((c, l) => new VideoLevel(
      Array.from({ length: L }, (_, j) => new ResnetBlock2D(j ? c : l ? ch[l - 1]! : ch[0]!, c, ctx)),
      config.temporal_levels[l] ? Array.from({ length: L }, () => temporal(c)) : []));
    this.downsamplers = ch.slice(0, -1).map((c) => new Downsample2D(c, 1));
    const top = ch[n - 1]!;
    const anyTemporal = config.temporal_levels.some(Boolean);
    this.mid = new VideoLevel([new ResnetBlock2D(top, top, ctx), new ResnetBlock2D(top, top, ctx)],
      anyTemporal ? [temporal(top)] : []);
    // Skip widths in push order: conv_in, each level's resnets, each downsampler.
    const skipWidths = [ch[0]!, ...ch.flatMap((c, l) => [...Array(L).fill(c), ...(l < n - 1 ? [c] : [])])];
    const widths = [...skipWidths];
    const upLevels: VideoLevel[] = [];
    let prev = top;
    for (let l = n - 1; l >= 0; l--) {
      const c = ch[l]!;
      upLevels.push(new VideoLevel(Array.from({ length: L + 1 }, (_, j) => {
        const block = new ResnetBlock2D((j ? c : prev) + widths.pop()!, c, ctx);
        return block;
      }), config.temporal_levels[l] ? Array.from({ length: L + 1 }, () => temporal(c)) : []));
      prev = c;
    }
    this.up = upLevels;
    this.upsamplers = ch.slice(1).reverse().map((c) => new Upsample2D(c));
    this.conv_norm_out = new GroupNorm(config.norm_num_groups, ch[0]!, 1e-5);
    this.conv_out = new Conv2d(ch[0]!, config.out_channels, 3, { padding: 1 });
    this.buildSteps();
  }

  private addTemporal(layer: TemporalAttention, params: (p: Params) => ParamsOf<TemporalAttention>): void {
    this.steps.push({ temporal: this.temporalLayers.length });
    this.temporalLayers.push({ layer, params });
  }

  private buildSteps(): void {
    const run = (f: (p: Params, s: VideoState) => VideoState) => this.steps.push({ run: f });
    const n = this.down.length;
    this.down.forEach((level, l) => {
      level.resnets.forEach((r, j) => {
        run((p, s) => ({ ...s, h: r.forward(p.down[l]!.resnets[j]!, s.h, s.temb) }));
        const t = level.temporal[j];
        if (t) this.addTemporal(t, (p) => p.down[l]!.temporal[j]!);
        run((p, s) => ({ ...s, skips: [...s.skips, s.h] }));
      });
      if (l < n - 1) {
        run((p, s) => {
          const h = this.downsamplers[l]!.forward(p.downsamplers[l]!, s.h);
          return { ...s, h, skips: [...s.skips, h] };
        });
      }
    });
    run((p, s) => ({ ...s, h: this.mid.resnets[0]!.forward(p.mid.resnets[0]!, s.h, s.temb) }));
    if (this.mid.temporal[0]) this.addTemporal(this.mid.temporal[0], (p) => p.mid.temporal[0]!);
    run((p, s) => ({ ...s, h: this.mid.resnets[1]!.forward(p.mid.resnets[1]!, s.h, s.temb) }));
    this.up.forEach((level, u) => {
      level.resnets.forEach((r, j) => {
        run((p, s) => {
          const skip = s.skips[s.skips.length - 1]!;
          return { ...s, h: r.forward(p.up[u]!.resnets[j]!, ops.concat([s.h, skip], 1), s.temb),
            skips: s.skips.slice(0, -1) };
        });
        const t = level.temporal[j];
        if (t) this.addTemporal(t, (p) => p.up[u]!.temporal[j]!);
      });
      if (u < n - 1) run((p, s) => ({ ...s, h: this.upsamplers[u]!.forward(p.upsamplers[u]!, s.h) }));
    });
  }

  /** x [B, C, F, H, W], t [B] -> the state before the first step (frames folded into the batch). */
  begin(p: Params, x: Tensor, t: Tensor): VideoState {
    const [b, c, f, h, w] = x.shape as [number, number, number, number, number];
    const folded = ops.reshape(ops.transpose(x, [0, 2, 1, 3, 4]), [b * f, c, h, w]);
    const emb = ops.silu(this.time_embedding.forward(p.time_embedding, this.timesteps.forward(t))); // [B, E]
    const temb = ops.reshape(ops.broadcastTo(ops.unsqueeze(emb, 1), [b, f, emb.shape[1]!]), [b * f, -1]);
    const h0 = this.conv_in.forward(p.conv_in, folded);
    return { h: h0, skips: [h0], temb };
  }

  /** Runs the steps after temporal layer k - 1 up to temporal layer k (k = temporal count: to the end). */
  segment(p: Params, s: VideoState, k: number): VideoState {
    let seen = 0;
    for (const step of this.steps) {
      if ('temporal' in step) {
        if (seen++ === k) break;
        continue;
      }
      if (seen === k) s = step.run(p, s);
    }
    return s;
  }

  /** The state after the last step -> the prediction [B, C, F, H, W]. */
  end(p: Params, s: VideoState, frames: number): Tensor {
    const h = this.conv_out.forward(p.conv_out, ops.silu(this.conv_norm_out.forward(p.conv_norm_out, s.h)));
    const [bf, c, hh, w] = h.shape as [number, number, number, number];
    return ops.transpose(ops.reshape(h, [bf / frames, frames, c, hh, w]), [0, 2, 1, 3, 4]);
  }

  /** The whole pass over clips x [B, C, F, H, W] at model times t [B]. */
  forward(p: Params, x: Tensor, t: Tensor): Tensor {
    const frames = x.shape[2] as number;
    let s = this.begin(p, x, t);
    this.temporalLayers.forEach(({ layer, params }, k) => {
      s = this.segment(p, s, k);
      s = { ...s, h: layer.forward(params(p), s.h, frames) };
    });
    return this.end(p, this.segment(p, s, this.temporalLayers.length), frames);
  }
}

export const videoUNetClass = {
  className: CLASS_NAME,
  readConfig: readVideoUNetConfig,
  create: (config: VideoUNetConfig): DiffuseVideoUNet => new DiffuseVideoUNet(config),
  toConfig: (config: VideoUNetConfig) => toDiffusersConfig(CLASS_NAME, config),
} as const;

/** Sizes: `xs` (the shipped one) and `s` for 32x32 moving MNIST, `tiny` for tests. */
export const VIDEO_UNET_PRESETS: Readonly<Record<string, VideoUNetConfig>> = {
  xs: { ...VIDEO_UNET_DEFAULTS, block_out_channels: [16, 32, 32] },
  s: { ...VIDEO_UNET_DEFAULTS },
  tiny: { ...VIDEO_UNET_DEFAULTS, sample_size: 8, num_frames: 4, block_out_channels: [8, 16],
    temporal_levels: [true, true], attention_heads: 2, norm_num_groups: 4, max_relative_distance: 4 },
};
