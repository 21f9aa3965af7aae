/**
 * @file The image models the pipelines train and sample, behind one interface: the U-Net,
 * the DiT, the DiT-MoE and the Switch-DiT, each with its diffusers class, its folder name in a
 * pipeline (`unet` or `transformer`), its class-conditioning convention and its size presets.
 *
 * Class conditioning: labels are 0..numClasses-1 and the CFG null class is numClasses. For a
 * UNet2DModel that is the last row of a table of num_class_embeds = numClasses + 1 rows; for a
 * DiT it is row num_embeds_ada_norm, as in diffusers.
 */
import * as ops from '../engine/ops.js';
import type { Tensor } from '../engine/tensor.js';
import type { ModelClass } from '../io/diffusers.js';
import { ConfigError } from '../models/config.js';
import { ditClass, ditPreset, DiTTransformer2DModel, type DiTConfig } from '../models/dit.js';
import { ditMoEClass, ditMoEPreset, DiTMoETransformer2DModel, type DiTMoEConfig } from '../models/dit-moe.js';
import {
  switchDiTClass, switchDiTPreset, SwitchDiTTransformer2DModel, type SwitchDiTConfig,
} from '../models/switch-dit.js';
import { UNET2D_CLASS, UNET2D_PRESETS, UNet2DModel, type UNet2DConfig } from '../models/unet2d.js';
import type { Module, ParamsOf } from '../nn/module.js';
import { blockNode, unetBlocks } from '../methods/ddae.js';

export type ModelFamily = 'unet' | 'dit' | 'dit-moe' | 'switch-dit';
export const MODEL_FAMILIES: readonly ModelFamily[] = ['unet', 'dit', 'dit-moe', 'switch-dit'];

/** What a training forward may ask beyond the prediction. */
export interface ApplyOptions {
  /** Added to the class embedding [B, labelEmbedDim] (CEP's condition corruption). */
  labelShift?: Tensor;
  /** Also return the hidden state after the first `hiddenAfter` blocks in forward order (DiT:
   *  transformer blocks; U-Net: down.0, down.1, ..., mid, up.0, ...) as a map [B, C, h, w]
   *  (REPA's alignment point). */
  hiddenAfter?: number;
}

export interface ImageModel {
  readonly family: ModelFamily;
  readonly cls: ModelClass<Module, unknown>;
  readonly config: UNet2DConfig | DiTConfig | DiTMoEConfig | SwitchDiTConfig;
  readonly module: Module;
  /** Folder of the model inside a pipeline folder. */
  readonly component: 'unet' | 'transformer';
  /** Number of classes (0: unconditional); the null class is numClasses. */
  readonly numClasses: number;
  /** [C, H, W] of one sample. */
  readonly sampleShape: readonly [number, number, number];
  /** Width of the class embedding a label shift adds to. */
  readonly labelEmbedDim: number;
  /** The prediction for x [B, C, H, W] at model times t [B] (float32), labels int64 [B];
   *  `aux` is an extra training loss (DiT-MoE's expert balance, Switch-DiT's diffusion prior). */
  apply(p: unknown, x: Tensor, t: Tensor, labels?: Tensor, opts?: ApplyOptions):
    { out: Tensor; aux?: Tensor; hidden?: Tensor };
}

/** Tokens [N, h w, D] of an h x w grid -> map [N, D, h, w]. */
function tokenMap(tokens: Tensor, h: number, w: number): Tensor {
  const [n, , d] = tokens.shape as [number, number, number];
  return ops.reshape(ops.transpose(tokens, [0, 2, 1]), [n, d, h, w]);
}

/** The families whose apply takes a label shift and gives a hidden state (CEP, REPA). */
export const TRAINING_INPUT_FAMILIES: readonly ModelFamily[] = ['unet', 'dit'];

function refuseTrainingInputs(model: string, o: ApplyOptions): void {
  if (o.labelShift || o.hiddenAfter !== undefined) {
    throw new Error(`${model}: condition corruption and hidden states (CEP, REPA) are ` +
      'implemented for the U-Net and the DiT');
  }
}

function checkHiddenAfter(family: string, k: number, blocks: number): void {
  if (!(Number.isInteger(k) && k >= 1 && k <= blocks)) {
    throw new RangeError(`${family}: the hidden state after ${k} blocks was asked for; the ` +
      `model has ${blocks} (expected 1 to ${blocks})`);
  }
}

export function imageModelOf(family: ModelFamily, config: unknown): ImageModel {
  switch (family) {
    case 'unet': {
      const c = config as UNet2DConfig;
      const m = new UNet2DModel(c);
      const numClasses = c.num_class_embeds ? c.num_class_embeds - 1 : 0;
      const blocks = unetBlocks(c);
      return { family, cls: UNET2D_CLASS as unknown as ModelClass<Module, unknown>, config: c, module: m,
        component: 'unet', numClasses, sampleShape: unetSampleShape(c),
        labelEmbedDim: 4 * c.block_out_channels[0]!,
        apply: (p, x, t, labels, o = {}) => {
          const pp = p as ParamsOf<UNet2DModel>;
          const y = numClasses ? labels : undefined;
          if (o.hiddenAfter === undefined) return { out: m.forward(pp, x, t, y, o.labelShift) };
          checkHiddenAfter('UNet2DModel', o.hiddenAfter, blocks.length);
          const r = m.intermediates(pp, x, t, y, o.labelShift);
          const node = blockNode(blocks[o.hiddenAfter - 1]!, c);
          return { out: r.sample, hidden: r.features.get(node)! };
        } };
    }
    case 'dit': {
      const c = config as DiTConfig;
      const m = new DiTTransformer2DModel(c);
      return { family, cls: ditClass as unknown as ModelClass<Module, unknown>, config: c, module: m,
        component: 'transformer', numClasses: c.num_embeds_ada_norm,
        sampleShape: [c.in_channels, c.sample_size, c.sample_size] as const,
        labelEmbedDim: m.innerDim,
        apply: (p, x, t, labels, o = {}) => {
          const pp = p as ParamsOf<DiTTransformer2DModel>;
          const y = labels ?? nullLabels(x, c.num_embeds_ada_norm);
          const extra = o.labelShift ? { labelShift: o.labelShift } : {};
          if (o.hiddenAfter === undefined) return { out: m.forward(pp, x, t, y, extra) };
          checkHiddenAfter('DiT', o.hiddenAfter, c.num_layers);
          const r = m.forwardWithHidden(pp, x, t, y, [o.hiddenAfter - 1], extra);
          const [h, w] = m.tokenGrid(x);
          return { out: r.sample, hidden: tokenMap(r.hidden[0]!, h, w) };
        } };
    }
    case 'dit-moe': {
      const c = config as DiTMoEConfig;
      const m = new DiTMoETransformer2DModel(c);
      return { family, cls: ditMoEClass as unknown as ModelClass<Module, unknown>, config: c, module: m,
        component: 'transformer', numClasses: c.num_embeds_ada_norm,
        sampleShape: [c.in_channels, c.sample_size, c.sample_size] as const,
        labelEmbedDim: m.innerDim,
        apply: (p, x, t, labels, o = {}) => {
          refuseTrainingInputs('DiT-MoE', o);
          const r = m.forward(p as ParamsOf<DiTMoETransformer2DModel>, x, t, labels ?? nullLabels(x, c.num_embeds_ada_norm));
          return { out: r.sample, aux: r.balanceLoss };
        } };
    }
    case 'switch-dit': {
      const c = config as SwitchDiTConfig;
      const m = new SwitchDiTTransformer2DModel(c);
      return { family, cls: switchDiTClass as unknown as ModelClass<Module, unknown>, config: c,
        module: m, component: 'transformer', numClasses: c.num_embeds_ada_norm,
        sampleShape: [c.in_channels, c.sample_size, c.sample_size] as const,
        labelEmbedDim: m.innerDim,
        apply: (p, x, t, labels, o = {}) => {
          refuseTrainingInputs('Switch-DiT', o);
          const r = m.forward(p as ParamsOf<SwitchDiTTransformer2DModel>, x, t,
            labels ?? nullLabels(x, c.num_embeds_ada_norm));
          // aux: prior_weight (the paper's 1) * the prior JSD; graphs that do not return it
          // (sampling) drop it.
          return { out: r.sample, aux: r.priorLoss };
        } };
    }
  }
}

/** The blocks `hiddenAfter` counts: DiT blocks, or the U-Net's down, mid and up blocks. */
export function blockCount(model: ImageModel): number {
  if (model.family === 'unet') return unetBlocks(model.config as UNet2DConfig).length;
  return (model.config as DiTConfig).num_layers;
}

/** Channels of the hidden state after `after` blocks (ApplyOptions.hiddenAfter). */
export function hiddenWidth(model: ImageModel, after: number): number {
  checkHiddenAfter(model.family, after, blockCount(model));
  if (model.family !== 'unet') {
    const c = model.config as DiTConfig;
    return c.num_attention_heads * c.attention_head_dim;
  }
  const c = model.config as UNet2DConfig;
  const widths = c.block_out_channels;
  const down = widths.length;
  if (after <= down) return widths[after - 1]!; // down.i
  if (after === down + 1) return widths[down - 1]!; // mid
  return [...widths].reverse()[after - down - 2]!; // up.i
}

/** The model's prediction over rows as a function of x, t and labels alone: `params` bound,
 *  and a learned-sigma output (DiT's out_channels = 2C, variance after the mean) cut to the
 *  mean, the part samplers and losses use. */
export function predictionOf(model: ImageModel, params: unknown):
  (x: Tensor, t: Tensor, labels?: Tensor) => Tensor {
  const c = model.sampleShape[0];
  return (x, t, labels) => {
    const out = model.apply(params, x, t, labels).out; // [B, C', H, W]
    return out.shape[1] === c ? out : ops.sliceAxis(out, 1, 0, c);
  };
}

function unetSampleShape(c: UNet2DConfig): readonly [number, number, number] {
  const s = c.sample_size;
  if (s === null) throw new ConfigError('UNet2DModel config: sample_size is needed to sample (got null)');
  const [h, w] = typeof s === 'number' ? [s, s] : s;
  return [c.in_channels, h, w];
}

/** All-null labels for unconditional calls of a class-conditional transformer. */
function nullLabels(x: Tensor, nullClass: number): Tensor {
  return ops.full([x.shape[0]!], nullClass, 'int64');
}

const unetBase = UNET2D_PRESETS['mnist-s'];
type Shape3 = readonly [number, number, number];
const unetIo = (k: number, [c, h]: Shape3) =>
  ({ in_channels: c, out_channels: c, sample_size: h, num_class_embeds: k ? k + 1 : null });
const ditIo = (k: number, [c, h]: Shape3) => ({ in_channels: c, sample_size: h, num_embeds_ada_norm: Math.max(k, 1) });

/** Size presets by family, for images of shape [C, H, W] (MNIST: [1, 32, 32]). `s` is the
 *  benchmark U-Net's config (bench/models.ts); `xs` is about 4x cheaper per image (a U-Net
 *  with attention only at the lowest resolution, a DiT with 4x4 patches); `tiny` is for tests
 *  and smoke runs. */
const PRESETS: Record<ModelFamily, Record<string, (classes: number, shape: Shape3) => unknown>> = {
  unet: {
    s: (k, x) => ({ ...unetBase, ...unetIo(k, x) }),
    xs: (k, x) => ({ ...unetBase, block_out_channels: [32, 64, 64], layers_per_block: 1,
      down_block_types: ['DownBlock2D', 'DownBlock2D', 'AttnDownBlock2D'],
      up_block_types: ['AttnUpBlock2D', 'UpBlock2D', 'UpBlock2D'], ...unetIo(k, x) }),
    tiny: (k, x) => ({ ...unetBase, block_out_channels: [8, 16], layers_per_block: 1, norm_num_groups: 4,
      down_block_types: ['DownBlock2D', 'AttnDownBlock2D'], up_block_types: ['AttnUpBlock2D', 'UpBlock2D'],
      ...unetIo(k, x) }),
  },
  dit: {
    s: (k, x) => ditPreset('DiT-S/2-mnist', ditIo(k, x)),
    xs: (k, x) => ditPreset('DiT-S/2-mnist', { ...ditIo(k, x), patch_size: 4, num_layers: 4 }),
    tiny: (k, x) => ditPreset('DiT-S/2-mnist', { ...ditIo(k, x), num_layers: 2, num_attention_heads: 2,
      attention_head_dim: 8 }),
  },
  'dit-moe': {
    s: (k, x) => ditMoEPreset('DiT-MoE-S/2-mnist-8E2A', ditIo(k, x)),
    // dit xs with 8 SwiGLU experts, top 2, and one shared expert of width D, each routed
    // expert 5D/6 wide: 6 D (5D/6) + 3 D^2 = 8 D^2, the active multiply-adds per token of
    // dit xs's 4D GELU MLP (plus the router's D x 8), for A/B runs at equal active compute.
    xs: (k, x) => ditMoEPreset('DiT-MoE-S/2-mnist-8E2A', { ...ditIo(k, x), patch_size: 4,
      num_layers: 4, num_shared_experts: 1, expert_intermediate_size: Math.round((5 * 128) / 6) }),
    tiny: (k, x) => ditMoEPreset('DiT-MoE-S/2-mnist-8E2A', { ...ditIo(k, x), num_layers: 2,
      num_attention_heads: 2, attention_head_dim: 8, num_experts: 4 }),
  },
  // The dit sizes with a 3-expert, top-2 router in every block (Switch-DiT's setting).
  'switch-dit': {
    s: (k, x) => switchDiTPreset('Switch-DiT-S/2-mnist', ditIo(k, x)),
    xs: (k, x) => switchDiTPreset('Switch-DiT-S/2-mnist', { ...ditIo(k, x), patch_size: 4,
      num_layers: 4 }),
    tiny: (k, x) => switchDiTPreset('Switch-DiT-S/2-mnist', { ...ditIo(k, x), num_layers: 2,
      num_attention_heads: 2, attention_head_dim: 8 }),
  },
};

export function presetNames(family: ModelFamily): string[] {
  return Object.keys(PRESETS[family]);
}

/** A fresh model of a family and size for [C, H, W] images and `classes` classes (0: none). */
export function createImageModel(family: ModelFamily, size: string, classes: number,
  shape: Shape3 = [1, 32, 32]): ImageModel {
  const make = PRESETS[family]?.[size];
  if (!make) {
    throw new ConfigError(`unknown ${family} size '${size}': expected one of ${presetNames(family).join(', ')}`);
  }
  return imageModelOf(family, make(classes, shape));
}

/** The family a diffusers `_class_name` belongs to. */
export function familyOfClass(className: string): ModelFamily {
  if (className === UNET2D_CLASS.className) return 'unet';
  if (className === ditClass.className || (ditClass.aliases as readonly string[]).includes(className)) return 'dit';
  if (className === ditMoEClass.className) return 'dit-moe';
  if (className === switchDiTClass.className) return 'switch-dit';
  throw new ConfigError(`model class '${className}' is not one Diffuse samples: expected ` +
    `${UNET2D_CLASS.className}, ${ditClass.className}, ${ditMoEClass.className} or ` +
    `${switchDiTClass.className}`);
}
