/**
 * @file DiTTransformer2DModel: the class-conditional Diffusion Transformer of Peebles & Xie,
 * "Scalable Diffusion Models with Transformers" (2023), in diffusers' layout and names (v0.31:
 * `dit_transformer_2d.py`, `BasicTransformerBlock` with norm_type 'ada_norm_zero',
 * `AdaLayerNormZero`, `PatchEmbed`, `CombinedTimestepLabelEmbeddings`), so checkpoints load
 * unchanged. Beyond diffusers' forward: the hidden states of chosen blocks (REPA), a forward
 * over a subset of tokens with an optional key/value source per block (Region-Adaptive
 * Sampling). The blocks and the pieces dit-moe.ts reuses (the adaLN-Zero block with a
 * pluggable MLP, and DiTBase: patch embedding, conditioning, final layer, unpatchify) live in
 * dit-blocks.ts, the config in dit-config.ts; this file holds the model, initialisation and
 * presets, and re-exports both files' public names.
 *
 * Departures from diffusers, none of which changes a checkpoint: QKV as one product (10%
 * faster attention here); the tanh GELU in the form ORT fuses; non-square inputs unpatchify
 * correctly (diffusers assumes square); dropout is the identity (eval mode), and label
 * dropout for CFG training is `dropClassLabels` on the host.
 */
import * as ops from '../engine/ops.js';
import { HostArray } from '../engine/host.js';
import type { RngKey } from '../engine/random/philox.js';
import type { Tensor } from '../engine/tensor.js';
import { mapTree, type Tree } from '../engine/tree.js';
import { normal, xavierUniform, zeros } from '../nn/init.js';
import type { ParamsOf } from '../nn/module.js';
import { ConfigError, toDiffusersConfig } from './config.js';
import { DiTBase, DiTBlock, ditCond, gridOf, type DiTCond, type KvSource } from './dit-blocks.js';
import {
  checkDiTConfig, DIT_CLASS_NAME, DIT_DEFAULTS, ditConfigJson, readDiTConfig, type DiTConfig,
} from './dit-config.js';
import { dtrMask, routedBlock } from './dit-routing.js';

export {
  AdaLayerNormZero, AdaLnZeroBlock, CombinedTimestepLabelEmbeddings, DiTBase, DiTBlock, ditCond,
  FeedForward, gatherTokens, geluTanh, LabelEmbedding, PatchEmbed, selfAttention,
  sincosPosEmbed2d, TimestepEmbedding,
} from './dit-blocks.js';
export type { AdaLnZeroParams, DiTBaseParams, DiTCond, KvSource } from './dit-blocks.js';
export { checkDiTConfig, DIT_DEFAULTS, ditConfigJson, readDiTConfig } from './dit-config.js';
export type { DiTConfig, FfActivation } from './dit-config.js';

export interface TokenOptions {
  /** Replaces each block's keys and values (the RAS cache). */
  kv?: KvSource;
}

/** What a training forward may add: CEP's shift of the label embeddings [N, D]. */
export interface TrainingInputs {
  labelShift?: Tensor;
}

export class DiTTransformer2DModel extends DiTBase<DiTBlock> {
  constructor(config: DiTConfig) {
    checkDiTConfig(config);
    super(config, Array.from({ length: config.num_layers }, () => new DiTBlock(config)));
  }

  /** x [N, C, H, W], timestep [N] (int64 or float32), classLabels int64 [N] -> [N, outC, H, W]. */
  forward(p: ParamsOf<DiTTransformer2DModel>, x: Tensor, timestep: Tensor,
    classLabels: Tensor, extra: TrainingInputs = {}): Tensor {
    return this.forwardWithHidden(p, x, timestep, classLabels, [], extra).sample;
  }

  /** forward, plus the outputs [N, T, D] of the blocks listed in `blocks` (e.g. REPA's). */
  forwardWithHidden(p: ParamsOf<DiTTransformer2DModel>, x: Tensor, timestep: Tensor,
    classLabels: Tensor, blocks: readonly number[], extra: TrainingInputs = {}):
    { sample: Tensor; hidden: Tensor[] } {
    const [h, w] = gridOf(x, this.config.patch_size);
    const c = ditCond(timestep, classLabels, extra.labelShift);
    const { out, hidden } = this.runBlocks(p, this.embed(p, x), c, {}, blocks);
    return { sample: this.unpatchify(this.finalLayer(p, out, c), h, w), hidden };
  }

  /** The blocks over tokens [N, T', D] (any subset, already embedded) -> [N, T', D]. */
  forwardTokens(p: ParamsOf<DiTTransformer2DModel>, tokens: Tensor, timestep: Tensor,
    classLabels: Tensor, opts: TokenOptions = {}): Tensor {
    return this.runBlocks(p, tokens, ditCond(timestep, classLabels), opts, []).out;
  }

  /** The whole model on the tokens at tokenIdx only (RAS): patch values [N, T', p * p * outC]
   *  of those tokens; without `kv`, they attend among themselves. */
  forwardSubset(p: ParamsOf<DiTTransformer2DModel>, x: Tensor, timestep: Tensor,
    classLabels: Tensor, tokenIdx: Tensor, opts: TokenOptions = {}): Tensor {
    const c = ditCond(timestep, classLabels);
    const { out } = this.runBlocks(p, this.embed(p, x, tokenIdx), c, opts, []);
    return this.finalLayer(p, out, c);
  }

  private runBlocks(p: ParamsOf<DiTTransformer2DModel>, tokens: Tensor, c: DiTCond,
    opts: TokenOptions, keep: readonly number[]): { out: Tensor; hidden: Tensor[] } {
    this.checkBlocks(keep);
    const states: Tensor[] = [];
    let h = tokens;
    const { dtr_alpha: alpha, dtr_beta: beta } = this.config;
    const mask = alpha === null ? null : dtrMask(c.time, this.innerDim, { alpha, beta }); // [N, 1, D]
    this.transformer_blocks.forEach((blk, i) => {
      const run = (x: Tensor) => blk.forward(p.transformer_blocks[i]!, x, c, i, opts.kv);
      h = mask ? routedBlock(h, mask, run) : run(h); // [N, T, D]
      states.push(h);
    });
    return { out: h, hidden: keep.map((i) => states[i]!) };
  }
}

/** Model output [N, 2C, H, W] of a learned-sigma DiT -> the prediction (first C channels) and
 *  the variance interpolation values (the rest). */
export function splitLearnedSigma(out: Tensor, inChannels: number):
  { pred: Tensor; sigma: Tensor } {
  const [pred, sigma] = ops.split(out, [inChannels, (out.shape[1] as number) - inChannels], 1);
  return { pred: pred!, sigma: sigma! };
}

/** Class labels with each replaced by the null class with probability `prob` (diffusers'
 *  LabelEmbedding.token_drop, with the draw from the host RNG): label dropout for CFG. */
export function dropClassLabels(labels: HostArray, key: RngKey, prob: number,
  nullClass: number): HostArray<'int64'> {
  const u = key.uniform(labels.size);
  const out = BigInt64Array.from({ length: labels.size }, (_, i) =>
    (u[i]! < prob ? BigInt(nullClass) : BigInt(labels.data[i]!)));
  return new HostArray(out, labels.shape, 'int64');
}

// ---- initialisation ----

/**
 * DiT's `initialize_weights` (facebookresearch/DiT models.py), by parameter name, for any DiT
 * variant's tree; unnamed groups keep torch's default from `Module.init`.
 */
export function ditInitialize<P extends Tree<HostArray>>(params: P, key: RngKey): P {
  let k = 0;
  const isHost = (x: unknown): x is HostArray => x instanceof HostArray;
  return mapTree(params, isHost, (a, path) => {
    const kk = key.fold(k++);
    // adaLN-Zero: every block starts as the identity and the output as zero.
    if (/(norm1\.linear|proj_out_[12])\.(weight|bias)$/.test(path)) return zeros(a.shape, kk);
    // Embeddings: N(0, 0.02), as DiT (labels and the timestep MLP weights).
    if (/(embedding_table|timestep_embedder\.linear_[12])\.weight$/.test(path)) {
      return normal(0.02)(a.shape, kk);
    }
    if (/\.bias$/.test(path)) return zeros(a.shape, kk);
    // The patch projection like a Linear over its flattened kernel.
    if (/pos_embed\.proj\.weight$/.test(path)) {
      return xavierUniform(a.size / a.shape[0]!, a.shape[0]!)(a.shape, kk);
    }
    // Linear weights (xavier); DiT-MoE's router weight keeps its kaiming init.
    if (a.shape.length === 2 && !/\.gate\.weight$/.test(path)) {
      return xavierUniform(a.shape[1]!, a.shape[0]!)(a.shape, kk);
    }
    return a;
  }) as P;
}

// ---- presets ----

/** Named configs; unnamed keys take diffusers' defaults. */
export const DIT_PRESETS = {
  /** The benchmark's pixel DiT (bench/models.ts; the golden DiT's config): 256 tokens, width
   *  128. num_embeds_ada_norm 1000 as the peer's; 10 (MNIST's classes) would save 760,320
   *  parameters. */
  'DiT-S/2-mnist': { sample_size: 32, in_channels: 1, patch_size: 2, num_layers: 6,
    num_attention_heads: 4, attention_head_dim: 32, num_embeds_ada_norm: 1000 },
  /** The benchmark's latent DiT: 16 x 16 x 4 latents (the tiny VAE's), 64 tokens. */
  'DiT-S/2-latent': { sample_size: 16, in_channels: 4, patch_size: 2, num_layers: 6,
    num_attention_heads: 4, attention_head_dim: 32, num_embeds_ada_norm: 1000 },
  /** facebook/DiT-XL-2-256: diffusers' defaults with learned sigma. */
  'DiT-XL/2-256': { out_channels: 8 },
} satisfies Record<string, Partial<DiTConfig>>;

export type DiTPresetName = keyof typeof DIT_PRESETS;

export function ditPreset(name: DiTPresetName, overrides: Partial<DiTConfig> = {}): DiTConfig {
  const base = DIT_PRESETS[name] as Partial<DiTConfig> | undefined;
  if (!base) {
    throw new ConfigError(`unknown DiT preset '${name}': expected one of ` +
      `${Object.keys(DIT_PRESETS).join(', ')}`);
  }
  const c = { ...DIT_DEFAULTS, ...base, ...overrides };
  checkDiTConfig(c);
  return c;
}

/** The class as Diffuse's model registry sees it: name, config reading, construction, saving.
 *  Hub DiT checkpoints (facebook/DiT-XL-2-256) carry diffusers' older name Transformer2DModel. */
export const ditClass = {
  className: DIT_CLASS_NAME,
  aliases: ['Transformer2DModel'],
  readConfig: readDiTConfig,
  create: (config: DiTConfig) => new DiTTransformer2DModel(config),
  toConfig: (config: DiTConfig) => toDiffusersConfig(DIT_CLASS_NAME, ditConfigJson(config)),
} as const;
