/**
 * @file DiT-MoE: Fei et al., "Scaling Diffusion Transformers to 16 Billion Parameters" (2024),
 * as feizc/DiT-MoE `models.py` implements it. The MLP of chosen blocks becomes a sparse mixture
 * of SwiGLU experts: a softmax gate over E experts per token, the top k kept with their gate
 * values as weights (not renormalised), plus shared SwiGLU experts every token passes through,
 * trained with the expert-balance loss. Everything else is dit.ts's DiT (diffusers' layout
 * and names); the mixture keeps DiT-MoE's names inside it: `ff.experts.{i}.{gate,up,down}_proj`,
 * `ff.gate.weight`, `ff.shared_experts.*`.
 *
 * Routing runs in the graph, with no host round trip and static shapes, in two forms:
 * - dense (default): every expert on every token as one wide product, combined through the
 *   [M, E] weight matrix that is zero outside each token's top k;
 * - routed: per expert, the tokens routed to it are picked by TopK over the weight matrix,
 *   gathered, run through batched expert products and scatter-added back. The capacity
 *   (tokens per expert) is static: all M tokens by default (exact), or capacity_factor * k M / E,
 *   which drops the lowest-weighted overflow as Switch Transformer does.
 *
 * | here | DiT-MoE | meaning |
 * | --- | --- | --- |
 * | M | bsz * seq_len | tokens, batch and sequence flattened |
 * | E, k | n_routed_experts, top_k | experts, experts per token |
 * | scores [M, E] | scores | softmax(gate(x)) |
 * | load [E] | ce * top_k | fraction of tokens routed to each expert (sums to k) |
 * | P [E] | Pi | mean gate probability per expert |
 * | balanceLoss | aux_loss | alpha * sum_i P_i * E * load_i / k |
 */
import * as ops from '../engine/ops.js';
import { ShapeError } from '../engine/shape.js';
import type { Tensor } from '../engine/tensor.js';
import { torchDefault } from '../nn/init.js';
import { Linear } from '../nn/layers.js';
import { Module, Param, type ParamsOf } from '../nn/module.js';
import {
  ConfigError, readConfig, requireConfig, toDiffusersConfig, type ReadConfigOptions,
} from './config.js';
import {
  AdaLnZeroBlock, checkDiTConfig, DIT_DEFAULTS, ditConfigJson, DiTBase, DiTBlock, ditCond, DIT_PRESETS,
  type DiTCond, type DiTConfig, type KvSource,
} from './dit.js';

// ---- config ----

export type DiTMoEConfig = DiTConfig & {
  num_experts: number;
  /** k: experts per token (DiT-MoE's num_experts_per_tok). */
  num_experts_per_tok: number;
  /** DiT-MoE's n_shared_experts: one shared SwiGLU MLP of width num_shared_experts * D
   *  (so 2 = DiT-MoE's 2D-wide shared expert); 0 = none. */
  num_shared_experts: number;
  /** Each routed expert's hidden width; null = 4 D (DiT-MoE's mlp_ratio * hidden_size). */
  expert_intermediate_size: number | null;
  /** Blocks whose MLP is a mixture; null = every block (DiT-MoE). */
  moe_layers: number[] | null;
  /** Weight of the balance loss (DiT-MoE's aux_loss_alpha). */
  aux_loss_alpha: number;
};

export const DIT_MOE_DEFAULTS: DiTMoEConfig = {
  ...DIT_DEFAULTS, num_experts: 8, num_experts_per_tok: 2, num_shared_experts: 2,
  expert_intermediate_size: null, moe_layers: null, aux_loss_alpha: 0.01,
};

const CLASS_NAME = 'DiTMoETransformer2DModel';

function checkMoEConfig(c: DiTMoEConfig): void {
  checkDiTConfig(c, CLASS_NAME);
  const req = (ok: boolean, key: string, want: string, v: unknown) =>
    requireConfig(ok, CLASS_NAME, key, want, v);
  const isCount = (v: number, min: number) => Number.isInteger(v) && v >= min;
  req(isCount(c.num_experts, 1), 'num_experts', 'an integer >= 1', c.num_experts);
  req(isCount(c.num_experts_per_tok, 1) && c.num_experts_per_tok <= c.num_experts,
    'num_experts_per_tok', `an integer in [1, num_experts = ${c.num_experts}]`,
    c.num_experts_per_tok);
  req(isCount(c.num_shared_experts, 0), 'num_shared_experts', 'an integer >= 0',
    c.num_shared_experts);
  req(c.expert_intermediate_size === null || isCount(c.expert_intermediate_size, 1),
    'expert_intermediate_size', 'null or an integer >= 1', c.expert_intermediate_size);
  const layers = c.moe_layers;
  req(layers === null || (new Set(layers).size === layers.length &&
    layers.every((i) => isCount(i, 0) && i < c.num_layers)), 'moe_layers',
  `null or distinct block indices in [0, ${c.num_layers})`, layers);
  req(c.aux_loss_alpha >= 0, 'aux_loss_alpha', 'a number >= 0', c.aux_loss_alpha);
}

export function readDiTMoEConfig(raw: Record<string, unknown>,
  opts: ReadConfigOptions = {}): DiTMoEConfig {
  const c = readConfig(CLASS_NAME, raw, DIT_MOE_DEFAULTS, { ...opts, nullable: {
    out_channels: 'number', expert_intermediate_size: 'number', moe_layers: 'array',
    ...opts.nullable,
  } });
  checkMoEConfig(c);
  return c;
}

// ---- the mixture of experts ----

/** DiT-MoE's MoeMLP: SwiGLU without biases, down(silu(gate(x)) * up(x)). */
export class MoeMLP extends Module {
  readonly gate_proj: Linear;
  readonly up_proj: Linear;
  readonly down_proj: Linear;
  constructor(dim: number, hidden: number) {
    super();
    this.gate_proj = new Linear(dim, hidden, { bias: false });
    this.up_proj = new Linear(dim, hidden, { bias: false });
    this.down_proj = new Linear(hidden, dim, { bias: false });
  }
  forward(p: ParamsOf<MoeMLP>, x: Tensor): Tensor {
    const g = ops.linear(x, p.gate_proj.weight);
    const h = ops.mul(ops.silu(g), ops.linear(x, p.up_proj.weight));
    return ops.linear(h, p.down_proj.weight);
  }
}

/** The router: logits = x W^T, W [E, D] (kaiming-uniform as torch's Linear, no bias). */
export class MoEGate extends Module {
  readonly weight: Param;
  constructor(dim: number, numExperts: number) {
    super();
    this.weight = new Param([numExperts, dim], torchDefault(dim));
  }
}

/** How tokens reach their experts; both forms compute the same function (up to capacity).
 *  Routed capacity (tokens per expert): min(M, ceil(capacityFactor k M / E)); none = M. */
export type MoeRouting = { kind: 'dense' } | { kind: 'routed'; capacityFactor?: number };

export interface MoeOutput {
  /** [N, T, D] */
  out: Tensor;
  /** Scalar: alpha * E / k * sum_i P_i load_i. */
  balanceLoss: Tensor;
  /** [E]: fraction of the tokens routed to each expert; sums to k. */
  load: Tensor;
}

export class SparseMoeBlock extends Module {
  readonly experts: MoeMLP[];
  readonly gate: MoEGate;
  readonly shared_experts?: MoeMLP;
  constructor(dim: number, readonly numExperts: number, readonly topK: number,
    readonly hidden: number, sharedHidden: number, readonly alpha: number) {
    super();
    this.experts = Array.from({ length: numExperts }, () => new MoeMLP(dim, hidden));
    this.gate = new MoEGate(dim, numExperts);
    if (sharedHidden > 0) this.shared_experts = new MoeMLP(dim, sharedHidden);
  }

  /** x [N, T, D] -> out [N, T, D], balance loss, load. */
  forward(p: ParamsOf<SparseMoeBlock>, x: Tensor,
    routing: MoeRouting = { kind: 'dense' }): MoeOutput {
    const [n, t, d] = x.shape;
    if (typeof n !== 'number' || typeof t !== 'number' || typeof d !== 'number') {
      throw new ShapeError('SparseMoeBlock',
        `routing needs a static [N, T, D], got [${x.shape.join(', ')}]`);
    }
    const [m, e, k] = [n * t, this.numExperts, this.topK];
    const xf = ops.reshape(x, [m, d]); // [M, D]
    const scores = ops.softmax(ops.linear(xf, p.gate.weight), -1); // [M, E]
    const { indices } = ops.topk(scores, k, -1); // [M, k]
    const picked = ops.equal(ops.unsqueeze(indices, -1), ops.arange(e)); // [M, k, E]
    const mask = ops.sum(ops.cast(picked, 'float32'), 1); // [M, E], k ones per row
    const w = ops.mul(scores, mask); // [M, E] combine weights: gate values of the top k
    let y = routing.kind === 'routed'
      ? this.routed(p, xf, w, capacity(routing.capacityFactor, k, m, e))
      : this.dense(p, xf, w);
    if (this.shared_experts && p.shared_experts) {
      y = ops.add(y, this.shared_experts.forward(p.shared_experts, xf));
    }
    const load = ops.mean(mask, 0); // [E]
    const balance = ops.sum(ops.mul(ops.mean(scores, 0), load)); // sum_i P_i load_i
    return { out: ops.reshape(y, [n, t, d]), load,
      balanceLoss: ops.mul(balance, this.alpha * e / k) };
  }

  /** Every expert on every token: [M, D] x [D, E H] twice, weighted, then [M, E H] x
   *  [E H, D]. (Two products rather than one and a Split: the Split's copy cost more.) */
  private dense(p: ParamsOf<SparseMoeBlock>, xf: Tensor, w: Tensor): Tensor {
    const [m, e, h] = [xf.shape[0] as number, this.numExperts, this.hidden];
    const g = ops.linear(xf, ops.concat(p.experts.map((x) => x.gate_proj.weight), 0)); // [M, E H]
    const u = ops.linear(xf, ops.concat(p.experts.map((x) => x.up_proj.weight), 0)); // [M, E H]
    const act = ops.reshape(ops.mul(ops.silu(g), u), [m, e, h]); // [M, E, H]
    const weighted = ops.reshape(ops.mul(act, ops.unsqueeze(w, -1)), [m, e * h]);
    const downs = ops.concat(p.experts.map((x) => x.down_proj.weight), 1); // [D, E H]
    return ops.linear(weighted, downs); // [M, D]
  }

  /** Per expert, its `cap` highest-weighted tokens (the routed ones first: the others weigh
   *  0), gathered, run as one batched product over experts, and scatter-added back. */
  private routed(p: ParamsOf<SparseMoeBlock>, xf: Tensor, w: Tensor, cap: number): Tensor {
    const { values, indices: tok } = ops.topk(ops.transpose(w), cap, -1); // [E, C] each
    const xe = ops.gather(xf, tok, 0); // [E, C, D]
    const stacked = (ws: Tensor[]) => ops.transpose(ops.stack(ws, 0), [0, 2, 1]); // [E, in, out]
    const g = ops.matmul(xe, stacked(p.experts.map((x) => x.gate_proj.weight))); // [E, C, H]
    const u = ops.matmul(xe, stacked(p.experts.map((x) => x.up_proj.weight))); // [E, C, H]
    const w2 = stacked(p.experts.map((x) => x.down_proj.weight)); // [E, H, D]
    const ye = ops.matmul(ops.mul(ops.silu(g), u), w2); // [E, C, D]
    return ops.scatterAdd(ops.zerosLike(xf), tok, ops.mul(ye, ops.unsqueeze(values, -1)));
  }
}

function capacity(factor: number | undefined, k: number, m: number, e: number): number {
  if (factor === undefined) return m;
  if (!(factor > 0)) {
    throw new RangeError(`MoE routing: capacityFactor must be > 0, got ${factor}`);
  }
  return Math.min(m, Math.ceil((factor * k * m) / e));
}

// ---- blocks and model ----

export class DiTMoEBlock extends AdaLnZeroBlock<SparseMoeBlock> {
  constructor(cfg: DiTMoEConfig) {
    const dim = cfg.num_attention_heads * cfg.attention_head_dim;
    super(cfg, new SparseMoeBlock(dim, cfg.num_experts, cfg.num_experts_per_tok,
      cfg.expert_intermediate_size ?? 4 * dim, cfg.num_shared_experts * dim, cfg.aux_loss_alpha));
  }
  forward(p: ParamsOf<DiTMoEBlock>, x: Tensor, c: DiTCond, index: number,
    opts: DiTMoEOptions = {}): MoeOutput {
    const r = this.pre(p, x, c, index, opts.kv);
    const moe = this.ff.forward(p.ff, r.mlpIn, opts.routing);
    return { ...moe, out: ops.add(r.x, ops.mul(r.gate, moe.out)) }; // [N, T, D]
  }
}

export interface DiTMoEOptions {
  routing?: MoeRouting;
  /** Replaces each block's keys and values (the RAS cache). */
  kv?: KvSource;
  /** Blocks whose outputs [N, T, D] to return in `hidden`. */
  hidden?: readonly number[];
}

export interface DiTMoEOutput {
  /** [N, outC, H, W] for forward; [N, T', D] for forwardTokens. */
  sample: Tensor;
  /** Scalar: the sum of the MoE blocks' balance losses (add it to the training loss). */
  balanceLoss: Tensor;
  /** [number of MoE blocks, E]: each block's fraction of tokens per expert (rows sum to k). */
  load: Tensor;
  hidden: Tensor[];
}

type Block = DiTBlock | DiTMoEBlock;

export class DiTMoETransformer2DModel extends DiTBase<Block> {
  /** Indices of the blocks whose MLP is a mixture of experts. */
  readonly moeLayers: readonly number[];
  readonly numExperts: number;
  constructor(config: DiTMoEConfig) {
    checkMoEConfig(config);
    const moe = new Set(config.moe_layers ?? [...Array(config.num_layers).keys()]);
    super(config, Array.from({ length: config.num_layers }, (_, i): Block =>
      (moe.has(i) ? new DiTMoEBlock(config) : new DiTBlock(config))));
    this.moeLayers = [...moe].sort((a, b) => a - b);
    this.numExperts = config.num_experts;
  }

  /** x [N, C, H, W], timestep [N], classLabels int64 [N] -> sample [N, outC, H, W], with the
   *  balance loss and the expert loads. */
  forward(p: ParamsOf<DiTMoETransformer2DModel>, x: Tensor, timestep: Tensor,
    classLabels: Tensor, opts: DiTMoEOptions = {}): DiTMoEOutput {
    const [h, w] = this.tokenGrid(x);
    const c = ditCond(timestep, classLabels);
    const r = this.run(p, this.embed(p, x), c, opts);
    return { ...r, sample: this.unpatchify(this.finalLayer(p, r.sample, c), h, w) };
  }

  /** The blocks over embedded tokens [N, T', D] (any subset; see DiT.forwardTokens). */
  forwardTokens(p: ParamsOf<DiTMoETransformer2DModel>, tokens: Tensor, timestep: Tensor,
    classLabels: Tensor, opts: DiTMoEOptions = {}): DiTMoEOutput {
    return this.run(p, tokens, ditCond(timestep, classLabels), opts);
  }

  /** The model on the tokens at tokenIdx only: sample = patch values [N, T', p * p * outC]. */
  forwardSubset(p: ParamsOf<DiTMoETransformer2DModel>, x: Tensor, timestep: Tensor,
    classLabels: Tensor, tokenIdx: Tensor, opts: DiTMoEOptions = {}): DiTMoEOutput {
    const c = ditCond(timestep, classLabels);
    const r = this.run(p, this.embed(p, x, tokenIdx), c, opts);
    return { ...r, sample: this.finalLayer(p, r.sample, c) };
  }

  private run(p: ParamsOf<DiTMoETransformer2DModel>, tokens: Tensor, c: DiTCond,
    opts: DiTMoEOptions): DiTMoEOutput {
    const keep = opts.hidden ?? [];
    this.checkBlocks(keep);
    const states: Tensor[] = [];
    const losses: Tensor[] = [];
    const loads: Tensor[] = [];
    let h = tokens;
    this.transformer_blocks.forEach((blk, i) => {
      const pb = p.transformer_blocks[i]!;
      if (blk instanceof DiTMoEBlock) {
        // sound: block i's parameters were built from block i's own class (init / loadStateDict).
        const r = blk.forward(pb as ParamsOf<DiTMoEBlock>, h, c, i, opts);
        h = r.out; // [N, T, D]
        losses.push(r.balanceLoss), loads.push(r.load);
      } else {
        h = blk.forward(pb as ParamsOf<DiTBlock>, h, c, i, opts.kv); // [N, T, D]
      }
      states.push(h);
    });
    return {
      sample: h, hidden: keep.map((i) => states[i]!),
      balanceLoss: losses.length ? losses.reduce((a, b) => ops.add(a, b)) : ops.zeros([]),
      load: loads.length ? ops.stack(loads, 0) : ops.zeros([0, this.numExperts]),
    };
  }
}

// ---- presets ----

/** DiT-MoE's naming: 8E2A = 8 experts, 2 active per token. */
export const DIT_MOE_PRESETS = {
  /** The MNIST pixel DiT (dit.ts's DiT-S/2-mnist) with DiT-MoE's mixture in every block. */
  'DiT-MoE-S/2-mnist-8E2A': { ...DIT_PRESETS['DiT-S/2-mnist'], num_experts: 8,
    num_experts_per_tok: 2 },
  /** The same on 16 x 16 x 4 latents. */
  'DiT-MoE-S/2-latent-8E2A': { ...DIT_PRESETS['DiT-S/2-latent'], num_experts: 8,
    num_experts_per_tok: 2 },
} satisfies Record<string, Partial<DiTMoEConfig>>;

export type DiTMoEPresetName = keyof typeof DIT_MOE_PRESETS;

export function ditMoEPreset(name: DiTMoEPresetName, overrides: Partial<DiTMoEConfig> = {}):
  DiTMoEConfig {
  const base = DIT_MOE_PRESETS[name] as Partial<DiTMoEConfig> | undefined;
  if (!base) {
    throw new ConfigError(`unknown DiT-MoE preset '${name}': expected one of ` +
      `${Object.keys(DIT_MOE_PRESETS).join(', ')}`);
  }
  const c = { ...DIT_MOE_DEFAULTS, ...base, ...overrides };
  checkMoEConfig(c);
  return c;
}

/** The class as Diffuse's model registry sees it (a Diffuse class: diffusers has no DiT-MoE). */
export const ditMoEClass = {
  className: CLASS_NAME,
  readConfig: readDiTMoEConfig,
  create: (config: DiTMoEConfig) => new DiTMoETransformer2DModel(config),
  toConfig: (config: DiTMoEConfig) => toDiffusersConfig(CLASS_NAME, ditConfigJson(config)),
} as const;
