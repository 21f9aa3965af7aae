/**
 * @file DivControl (Xie, Feng, Shi, Wang, Rui & Geng 2025, "DivControl: Knowledge Diversion for
 * Controllable Image Generation", arXiv 2507.23620) on a class-conditional DiT.
 *
 * Claims: a ControlNet whose weight matrices are SVD-factorised, W = sum_i u_i s_i v_i^T, with
 * the components split into condition-agnostic learngenes (shared by every condition) and
 * condition-specific tailors, soft-routed by a gate on the condition instruction's embedding,
 * gives unified multi-condition control (better than CtrLoRA on 8 base conditions at 36.4x less
 * training: 165 against 6,000 GPU hours), zero-shot control on unseen low-shift conditions
 * through the gate alone, and few-shot adaptation to high-shift ones by training only new
 * tailors (14M of 295M parameters, 3K steps on 200 images).
 *
 * Read (the paper's text; no official code was found): sec. 3.2.1, eq. 2, every projection of
 * the ControlNet's L transformer layers (q, k, v, o, MLP in, MLP out) factorised into rank-1
 * components; sec. 3.2.2, components i < N_G are learngenes, N_G <= i < N_G + N_T tailors; the
 * instruction's text embedding e goes through a light gate, alpha = softmax(G(e)) in R^{N_T}
 * (eq. 3), ONE alpha shared by every layer and projection, W~ = G + sum_k alpha_k T_k (eq. 4);
 * App. A.1: only the top-K tailors by alpha_i + b_i are kept (g_i = alpha_i, else 0), b a bias
 * per tailor moved after each batch against its usage (DeepSeek's loss-free balancing),
 * K = N_T / 2 in sec. 4.2 (288 of 576); sec. 3.3, eq. 5-6: REPA on the ControlNet's layer-4
 * features against a frozen vision encoder's features of the condition image, -mean cos per
 * patch through an MLP head, weight 0.05; sec. 3.4: zero-shot = the gate on the new
 * instruction; high-shift = new, randomly initialised tailors trained with the transferred
 * parameters frozen; Alg. 1: all of U, Sigma, V and the gate trained end to end from random.
 *
 * Assumed here (the paper does not say, or this scale forbids): the control blocks are copies
 * of the base's first blocks, started from the SVD of the base's own matrices (ControlNet's
 * trainable copy; Alg. 1 starts from random), so the learngenes are the largest components;
 * the tailor weights are N_T alpha on the kept tailors (a constant rescaling: a uniform gate
 * weighs a kept tailor 1, so the start is nearly the copy); the control blocks use the base's
 * adaLN modulation, frozen (the paper factorises only the six projections); the branch is
 * injected ControlNet-style (the paper builds on PixArt-delta and does not restate how): the
 * condition's patch embedding is added to the control stream's input tokens, and each control
 * block's output, through a zero-initialised Linear, is added after the base block of the same
 * index; the balancing bias moves by a zero-valued loss term whose gradient is the usage excess
 * (AdamW then steps it by about lr, DeepSeek's sign rule), entering the selection scaled by
 * BIAS_RATE (the paper gives no rate); REPA aligns the first control block's output (of 2; the
 * paper: layer 4 of 13) through a projector of width D to the shipped U-Net's mid-block features
 * of the condition image (pipelines/repa.ts's encoder; the paper: DINOv2); new tailors for
 * few-shot start with s = 0, so adaptation starts exactly at the zero-shot model. The
 * instruction's embedding is a hand-written descriptor per condition (divcontrol-conditions.ts),
 * there being no text encoder. Sizes here: D = 128, rank 128 per matrix, N_G = N_T = 64, K = 32.
 *
 * Files: divcontrol-svd.ts (the factorised layer, the host SVD), divcontrol-adapter.ts (few-shot
 * adaptation), divcontrol-conditions.ts (the MNIST conditions); this file: the gate, the
 * control branch, its initialisation, the controlled forward and the loss.
 *
 * Notation:
 * | paper                        | here                                                  |
 * |------------------------------|-------------------------------------------------------|
 * | u_i, sigma_i, v_i (i < N_G)  | SvdLinear learngene_u [out, N_G], _s [N_G], _v [in, N_G] |
 * | the same, N_G <= i < r       | SvdLinear tailor_u, tailor_s, tailor_v                |
 * | N_G, N_T, K                  | config learngenes, tailors, active_tailors            |
 * | e_txt, G, b_i                | descriptor, DivControlNet.gate, gate_bias             |
 * | alpha (eq. 3), g (eq. A.1)   | tailorWeights(...).alpha; weights = N_T g             |
 * | F, f_cond                    | DivControlNet, its tokens after control block 1       |
 */
import * as ops from '../engine/ops.js';
import { HostArray } from '../engine/host.js';
import type { Tensor } from '../engine/tensor.js';
import {
  ConfigError, readConfig, requireConfig, toDiffusersConfig, type ReadConfigOptions,
} from '../models/config.js';
import { ditCond, type DiTBlock, type DiTConfig, type DiTTransformer2DModel } from '../models/dit.js';
import { gridOf } from '../models/dit-blocks.js';
import { zeros } from '../nn/init.js';
import { Conv2d, Linear } from '../nn/layers.js';
import { Module, Param, type ParamsOf } from '../nn/module.js';
import type { AdapterBlock, DivControlAdapter } from './divcontrol-adapter.js';
import { projectionShape, PROJECTIONS, svdHost, SvdLinear, type Projection } from './divcontrol-svd.js';
import { repaLoss, type RepaProjector } from './repa.js';

export {
  composeWeight, composeWeightHost, projectionShape, PROJECTIONS, svdHost, SvdLinear, type Projection,
  type SvdParts,
} from './divcontrol-svd.js';
export {
  adapterFor, adapterInitialize, DivControlAdapter, divControlAdapterClass, type DivControlAdapterConfig,
} from './divcontrol-adapter.js';

// ---- the dynamic gate ----

/**
 * How fast the balancing bias moves against alpha (DeepSeek's gamma, which the paper does not
 * give): b enters the selection as BIAS_RATE b, so an AdamW step of about lr on b shifts it by
 * lr / 50 in alpha's units (alpha is about 1 / N_T): over a run of 1,500 steps at lr 5e-4 the
 * bias can move selection by about one alpha, not swamp the gate's own preferences.
 */
export const BIAS_RATE = 0.02;

/**
 * Tailor weights [N_T] for one instruction embedding `descriptor` [d_e]: alpha = softmax(G e)
 * (eq. 3); the K tailors of largest alpha + BIAS_RATE b kept (eq. A.1; b only selects, so no
 * gradient reaches it through here); weights = N_T alpha on the kept ones. `kept` is the 0/1
 * mask.
 */
export function tailorWeights(gate: ParamsOf<Linear>, bias: Tensor, descriptor: Tensor,
  active: number): { weights: Tensor; alpha: Tensor; kept: Tensor } {
  const tailors = gate.weight.shape[0] as number;
  const scores = ops.linear(ops.reshape(descriptor, [1, -1]), gate.weight, gate.bias); // [1, N_T]
  const alpha = ops.reshape(ops.softmax(scores, -1), [tailors]);
  if (active >= tailors) return { weights: ops.mul(alpha, tailors), alpha, kept: ops.onesLike(alpha) };
  const biased = ops.add(ops.stopGradient(alpha), ops.mul(bias, BIAS_RATE));
  const kth = ops.min(ops.topk(biased, active, -1).values); // the K-th largest
  const kept = ops.cast(ops.greaterEqual(biased, kth), 'float32');
  return { weights: ops.mul(ops.mul(alpha, kept), tailors), alpha, kept };
}

/**
 * Loss-free balancing (App. A.1) as a term of value 0 whose gradient in b is
 * scale (kept - K / N_T): an optimizer step then lowers the bias of the tailors this batch
 * used and raises the others'. `scale` only keeps it out of gradient clipping's way (AdamW
 * normalises it away).
 */
export function balanceTerm(bias: Tensor, kept: Tensor, scale = 1e-3): Tensor {
  const n = kept.shape[0] as number;
  const excess = ops.stopGradient(ops.sub(kept, ops.mean(kept))); // usage - K / N_T
  return ops.mul(ops.sum(ops.mul(ops.sub(bias, ops.stopGradient(bias)), excess)), scale / n);
}

// ---- the control branch ----

export const DIVCONTROL_CLASS_NAME = 'DivControlNet';

export interface DivControlConfig {
  /** Token width D, MLP inner width and patch size of the base DiT; condition channels. */
  dim: number;
  ff_inner: number;
  patch_size: number;
  in_channels: number;
  attention_bias: boolean;
  /** Control blocks: trainable copies of the base's first blocks, injected after each. */
  control_blocks: number;
  /** N_G, N_T (N_G + N_T <= min(D, ff_inner): the rank), K. */
  learngenes: number;
  tailors: number;
  active_tailors: number;
  /** d_e: width of a condition's instruction embedding (its descriptor). */
  descriptor_dim: number;
}

export const DIVCONTROL_DEFAULTS: DivControlConfig = {
  dim: 128, ff_inner: 512, patch_size: 4, in_channels: 1, attention_bias: true,
  control_blocks: 2, learngenes: 64, tailors: 64, active_tailors: 32, descriptor_dim: 4,
};

export function checkDivControlConfig(c: DivControlConfig): void {
  const need = (ok: boolean, key: keyof DivControlConfig, what: string) =>
    requireConfig(ok, DIVCONTROL_CLASS_NAME, key, what, c[key]);
  const posInt = (k: keyof DivControlConfig) => need(Number.isInteger(c[k]) && (c[k] as number) >= 1, k,
    'an integer >= 1');
  for (const k of ['dim', 'ff_inner', 'patch_size', 'in_channels', 'control_blocks', 'learngenes',
    'tailors', 'active_tailors', 'descriptor_dim'] as const) posInt(k);
  need(c.learngenes + c.tailors <= Math.min(c.dim, c.ff_inner), 'tailors',
    `at most min(dim, ff_inner) - learngenes = ${Math.min(c.dim, c.ff_inner) - c.learngenes} ` +
    '(the rank)');
  need(c.active_tailors <= c.tailors, 'active_tailors', `at most tailors (${c.tailors})`);
}

export function readDivControlConfig(raw: Record<string, unknown>,
  opts: ReadConfigOptions = {}): DivControlConfig {
  const c = readConfig(DIVCONTROL_CLASS_NAME, raw, DIVCONTROL_DEFAULTS, opts);
  checkDivControlConfig(c);
  return c;
}

/** The DivControl config for a base DiT. */
export function divControlConfigFor(base: DiTConfig, o: Partial<DivControlConfig> = {}):
  DivControlConfig {
  if (base.dtr_alpha !== null) {
    throw new ConfigError('DivControl: the base DiT routes its channels by timestep (dtr_alpha); ' +
      'the control branch is built for a plain DiT');
  }
  if (!['gelu', 'gelu-approximate'].includes(base.activation_fn)) {
    throw new ConfigError(`DivControl: the base DiT's MLP is ${base.activation_fn}; a plain ` +
      'GELU MLP (two matrices) is expected');
  }
  const dim = base.num_attention_heads * base.attention_head_dim;
  const c = { ...DIVCONTROL_DEFAULTS, dim, ff_inner: 4 * dim, patch_size: base.patch_size,
    in_channels: base.in_channels, attention_bias: base.attention_bias, ...o };
  if (c.control_blocks > base.num_layers) {
    throw new ConfigError(`DivControl: ${c.control_blocks} control blocks, the base has ` +
      `${base.num_layers}`);
  }
  checkDivControlConfig(c);
  return c;
}

export class ControlBlock extends Module {
  readonly to_q: SvdLinear;
  readonly to_k: SvdLinear;
  readonly to_v: SvdLinear;
  readonly to_out: SvdLinear;
  readonly ff_in: SvdLinear;
  readonly ff_out: SvdLinear;
  constructor(c: DivControlConfig) {
    super();
    const make = (p: Projection, bias: boolean) => {
      const [o, i] = projectionShape(p, c.dim, c.ff_inner);
      return new SvdLinear(i, o, c.learngenes, c.tailors, bias);
    };
    this.to_q = make('to_q', c.attention_bias);
    this.to_k = make('to_k', c.attention_bias);
    this.to_v = make('to_v', c.attention_bias);
    this.to_out = make('to_out', true);
    this.ff_in = make('ff_in', true);
    this.ff_out = make('ff_out', true);
  }
}

/** F: the condition's patch embedding, the factorised control blocks, ControlNet's zero
 *  projections (one per control block) and the gate. */
export class DivControlNet extends Module {
  readonly hint: Conv2d;
  readonly control_blocks: ControlBlock[];
  readonly zero_proj: Linear[];
  readonly gate: Linear;
  readonly gate_bias: Param;
  constructor(readonly config: DivControlConfig) {
    super();
    checkDivControlConfig(config);
    const c = config;
    this.hint = new Conv2d(c.in_channels, c.dim, c.patch_size, { stride: c.patch_size });
    this.control_blocks = Array.from({ length: c.control_blocks }, () => new ControlBlock(c));
    this.zero_proj = Array.from({ length: c.control_blocks }, () => new Linear(c.dim, c.dim));
    this.gate = new Linear(c.descriptor_dim, c.tailors);
    this.gate_bias = new Param([c.tailors], zeros);
  }
}

export const divControlClass = {
  className: DIVCONTROL_CLASS_NAME,
  readConfig: readDivControlConfig,
  create: (config: DivControlConfig) => new DivControlNet(config),
  toConfig: (config: DivControlConfig) => toDiffusersConfig(DIVCONTROL_CLASS_NAME, { ...config }),
} as const;

/** A DiT parameter tree as DivControl reads it. */
export type DiTParams = ParamsOf<DiTTransformer2DModel>;

/** The base block's weight and bias of projection `p` (diffusers' names). */
function baseProjection(blk: ParamsOf<DiTBlock, HostArray>, p: Projection):
  { weight: HostArray; bias: HostArray | undefined } {
  // sound: FeedForward's net is the [ActProj, Dropout, Linear] tuple (dit-blocks.ts).
  const net = blk.ff.net as unknown as [{ proj: { weight: HostArray; bias?: HostArray } }, unknown,
    { weight: HostArray; bias?: HostArray }];
  const lin = p === 'ff_in' ? net[0].proj : p === 'ff_out' ? net[2]
    : p === 'to_out' ? blk.attn1.to_out[0]! : blk.attn1[p];
  return { weight: lin.weight, bias: lin.bias };
}

/**
 * The control branch's starting weights: control block j is the SVD of the base's block j
 * (learngenes the N_G largest components, tailors the next N_T; ControlNet's trainable copy),
 * biases copied; zero projections 0 (the branch adds nothing at first); gate, gate bias and
 * hint as `fresh` has them.
 */
export function divControlInitialize(net: DivControlNet, fresh: ParamsOf<DivControlNet, HostArray>,
  base: ParamsOf<DiTTransformer2DModel, HostArray>): ParamsOf<DivControlNet, HostArray> {
  const { learngenes: g, tailors: t } = net.config;
  const cols = (src: Float64Array, rows: number, r: number, from: number, n: number) => {
    const out = new Float32Array(rows * n);
    for (let i = 0; i < rows; i++) for (let k = 0; k < n; k++) out[i * n + k] = src[i * r + from + k]!;
    return new HostArray(out, [rows, n]);
  };
  const values = (s: Float64Array, from: number, n: number) =>
    new HostArray(Float32Array.from(s.subarray(from, from + n)), [n]);
  const blocks = fresh.control_blocks.map((_, j) => {
    const blk = base.transformer_blocks[j] as unknown as ParamsOf<DiTBlock, HostArray>;
    const entries = PROJECTIONS.map((p) => {
      const { weight, bias } = baseProjection(blk, p);
      const [rows, inn] = weight.shape as [number, number];
      const { u, s, v } = svdHost(weight.data as Float32Array, rows, inn);
      const r = s.length;
      const lin = {
        learngene_u: cols(u, rows, r, 0, g), learngene_s: values(s, 0, g), learngene_v: cols(v, inn, r, 0, g),
        tailor_u: cols(u, rows, r, g, t), tailor_s: values(s, g, t), tailor_v: cols(v, inn, r, g, t),
        ...(bias ? { bias: bias.clone() } : {}),
      };
      return [p, lin] as const;
    });
    return Object.fromEntries(entries) as unknown as ParamsOf<ControlBlock, HostArray>;
  });
  const zeroProj = fresh.zero_proj.map((z) => ({ weight: HostArray.zeros(z.weight.shape),
    ...(z.bias ? { bias: HostArray.zeros(z.bias.shape) } : {}) }));
  return { ...fresh, control_blocks: blocks, zero_proj: zeroProj };
}

// ---- the controlled forward ----

export interface ControlInputs {
  net: DivControlNet;
  params: ParamsOf<DivControlNet>;
  /** Condition images [N, C, H, W] in [-1, 1]. */
  cond: Tensor;
  /** The condition's instruction embedding [d_e] (ignored with an adapter: its own is used). */
  descriptor: Tensor;
  adapter?: { module: DivControlAdapter; params: ParamsOf<DivControlAdapter> };
}

export interface ControlledOutput {
  /** The base's prediction [N, C, H, W] with the control residuals added. */
  sample: Tensor;
  /** The control tokens after control block `hiddenAfter` as a map [N, D, h, w] (REPA). */
  hidden?: Tensor;
  /** The tailors the gate kept [N_T] (0/1), for the balancing term. */
  kept: Tensor;
  /** The gate's soft weights alpha [N_T]. */
  alpha: Tensor;
}

/**
 * The base DiT with the control branch (x [N, C, H, W], model times t [N], labels int64 [N]):
 * tokens of x_t plus the condition's patch embedding run through the control blocks beside the
 * base's; after base block j < M, zero_proj_j of control block j's output is added to the base's
 * tokens. `hiddenAfter` (1..M) also returns control block hiddenAfter - 1's output.
 */
export function controlledForward(base: DiTTransformer2DModel, baseParams: DiTParams, x: Tensor,
  t: Tensor, labels: Tensor, ctl: ControlInputs, hiddenAfter?: number): ControlledOutput {
  const { net, params: p } = ctl;
  const [h, w] = gridOf(x, base.config.patch_size);
  const c = ditCond(t, labels);
  const descriptor = ctl.adapter ? ctl.adapter.params.descriptor : ctl.descriptor;
  const gate = tailorWeights(p.gate, p.gate_bias, descriptor, net.config.active_tailors);
  let hb = base.embed(baseParams, x); // [N, T, D]
  const n = x.shape[0] as number;
  const hint = net.hint.forward(p.hint, ctl.cond); // [N, D, h, w]
  const hintTokens = ops.transpose(ops.reshape(hint, [n, net.config.dim, h * w]), [0, 2, 1]);
  let hc = ops.add(hb, hintTokens); // [N, T, D]
  let hidden: Tensor | undefined;
  base.transformer_blocks.forEach((blk, j) => {
    const bp = baseParams.transformer_blocks[j]!;
    hb = blk.forward(bp, hb, c, j); // [N, T, D]
    if (j >= net.config.control_blocks) return;
    const cp = composedBlock(net.control_blocks[j]!, p.control_blocks[j]!, bp, gate.weights,
      ctl.adapter?.params.control_blocks[j]);
    hc = blk.forward(cp, hc, c, j); // [N, T, D]
    if (hiddenAfter === j + 1) {
      hidden = ops.reshape(ops.transpose(hc, [0, 2, 1]), [n, net.config.dim, h, w]); // [N, D, h, w]
    }
    hb = ops.add(hb, net.zero_proj[j]!.forward(p.zero_proj[j]!, hc));
  });
  const sample = base.unpatchify(base.finalLayer(baseParams, hb, c), h, w);
  return { sample, kept: gate.kept, alpha: gate.alpha, ...(hidden ? { hidden } : {}) };
}

/** The DiTBlock parameter tree of a control block: composed projections, the base's adaLN. */
function composedBlock(m: ControlBlock, p: ParamsOf<ControlBlock>, baseBlock: ParamsOf<DiTBlock>,
  weights: Tensor, extra?: ParamsOf<AdapterBlock>): ParamsOf<DiTBlock> {
  const lin = (k: Projection) => {
    const w = m[k].weight(p[k], weights, extra ? [extra[k]] : []);
    const b = p[k].bias;
    return b ? { weight: w, bias: b } : { weight: w };
  };
  const tree = {
    norm1: baseBlock.norm1,
    attn1: { to_q: lin('to_q'), to_k: lin('to_k'), to_v: lin('to_v'), to_out: [lin('to_out')] },
    ff: { net: [{ proj: lin('ff_in') }, {}, lin('ff_out')] },
  };
  // sound: the tree has DiTBlock's parameter names and shapes; norm3 (present only with
  // norm_elementwise_affine) is the base's, frozen like norm1.
  return (baseBlock.norm3 ? { ...tree, norm3: baseBlock.norm3 } : tree) as unknown as ParamsOf<DiTBlock>;
}

/** REPA's term of the loss (sec. 3.3): projector A, its weights, E_img's features of the
 *  condition image [N, z, h, w], lambda. */
export interface RepaTerm {
  projector: RepaProjector;
  params: ParamsOf<RepaProjector>;
  target: Tensor;
  weight: number;
}

/**
 * L_total = L_diff + lambda L_REPA (eq. 6): the mean squared error of the prediction against
 * its target, REPA on `out.hidden` when given, and, with `gateBias`, the balancing term (value
 * 0). `out` must carry `hidden` when `repa` is given.
 */
export function divControlLoss(out: ControlledOutput, target: Tensor, gateBias?: Tensor,
  repa?: RepaTerm): Tensor {
  let loss = ops.mean(ops.square(ops.sub(out.sample, target)));
  if (repa) {
    if (!out.hidden) throw new Error('divControlLoss: REPA needs the control tokens (hiddenAfter)');
    const align = repaLoss(repa.projector, repa.params, out.hidden, repa.target);
    loss = ops.add(loss, ops.mul(align, repa.weight));
  }
  return gateBias ? ops.add(loss, balanceTerm(gateBias, out.kept)) : loss;
}
