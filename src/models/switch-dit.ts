/**
 * @file Switch-DiT: Park, Go, Kim, Woo, Ham & Kim 2024, "Switch Diffusion Transformer:
 * Synergizing Denoising Tasks with Sparse Mixture-of-Experts" (arXiv 2403.09176; official code
 * byeongjun-park/Switch-DiT: models/MoE.py, models/DiT/models.py, util/model_util.py,
 * config/routing/DMoE.yaml).
 *
 * Claim: each timestep is a denoising task; a sparse mixture of experts gated by the timestep
 * alone lets each block pick its own channel routing per task, and a "diffusion prior" pulls
 * the gates towards DTR's sliding windows while leaving which expert serves which tasks free.
 * ImageNet 256, FID-50K at guidance 1.5 after 400K steps: DiT-B 27.96 -> Switch-DiT-B 16.21
 * (DTR-B 16.58; README table).
 *
 * As the official code (DMoE routing): every block i has a router (official TaskMoE) of
 * E = 3 zero-initialised linear experts D -> D and a gate softmax(W SiLU(temb(t)) + b) over the
 * timestep embedding only (no label, no tokens); the top k = 2 gate probabilities, not
 * renormalised, weight the experts on the block input x: m = 1 + sum_top-k g_e (x W_e + b_e).
 * The block runs as DTR's (dit-routing.ts): block(x m) + x (1 - m); with zero experts m = 1 and
 * the model is the plain DiT. The prior (official DiffusionPrior) is DTR's window table over
 * the L E gate columns of all blocks: task i of T = 1000 has ones on units [s_i, s_i + L k),
 * s_i = round(linspace(0, 1, T)_i^4 (L E - L k)), rows normalised to sum 1. Each step, the
 * columns of the prior are matched one-to-one to the gate columns (across blocks) by a minimum
 * L1 assignment between the prior table and the top-k indicator map of all T tasks (scipy's
 * linear_sum_assignment there); the loss is w JSD(P, Q) with P the batch's gate probabilities
 * over all blocks divided by L, Q the matched prior rows of the batch's tasks, eps 1e-6 inside
 * the logs, mean over the batch, w = 1 (w_JSD), added to the diffusion loss.
 *
 * Departures, none of which changes what official weights compute: (1) diffusers' layout gives
 * every block its own timestep embedder, so block i's gate reads block i's (the official model
 * has one, which a conversion copies into every block); (2) the k experts are mixed per sample
 * before the product (W_n = sum g_e W_e: the gate is per sample and the experts linear), one
 * T D^2 product per block instead of k; (3) the assignment is solved inside the training graph
 * (`linearAssignment`), ties resolved deterministically, where the official shuffles the
 * columns first, which only randomises the choice among equal-cost matchings; (4) continuous
 * times (flow) gate at t itself and use prior row floor(t), as dtrMask does. Parameter names:
 * `router.f_gate` (official routers.i.f_gate.1) and `router.experts.weight` [E, D_in, D_out] /
 * `.bias` [E, D] (official experts.w / experts.b).
 *
 * Cost: the prior loss (training only: graphs that do not return it drop it) runs the T = 1000
 * tasks through L timestep MLPs and an assignment graph of n (n + 1) / 2 unrolled steps,
 * n = L E: about 4,400 small nodes for 4 blocks, ~10 ms a step here. At DiT-B's 36 columns the
 * graph has ~25,000 nodes and ORT takes ~19 s to build it. TODO: a host-side matching once the
 * training loop can feed a per-step input from the current weights.
 *
 * | here | official | meaning |
 * | --- | --- | --- |
 * | L, E, k | depth, num_experts, k | blocks, experts per block, experts per task |
 * | T, task | taskcount, active_task | 1000 tasks; floor of the model time |
 * | probs [N, L E] | torch.cat(probs_list, 1) | the batch's gate probabilities |
 * | taskMap [T, L E] | probs_full_quantized | top-k indicators of every task |
 * | prior [T, L E] | _unit_mapping | DTR's window table |
 */
import * as ops from '../engine/ops.js';
import { HostArray } from '../engine/host.js';
import type { Tensor } from '../engine/tensor.js';
import { zeros } from '../nn/init.js';
import { Linear } from '../nn/layers.js';
import { Module, Param, type ParamsOf } from '../nn/module.js';
import {
  ConfigError, readConfig, requireConfig, toDiffusersConfig, type ReadConfigOptions,
} from './config.js';
import {
  checkDiTConfig, DIT_DEFAULTS, DIT_PRESETS, ditConfigJson, DiTBase, DiTBlock, ditCond,
  type DiTCond, type DiTConfig, type KvSource,
} from './dit.js';
import { DTR_TASKS, routedBlock } from './dit-routing.js';

// ---- config ----

export type SwitchDiTConfig = DiTConfig & {
  /** Experts per block (official num_experts). */
  num_experts: number;
  /** k: experts each task uses (official k). */
  num_experts_per_tok: number;
  /** Weight of the diffusion-prior JSD in the training loss (official w_JSD). */
  prior_weight: number;
  /** Exponent of the prior's window start (official create_mask_tasks alpha). */
  prior_alpha: number;
};

export const SWITCH_DIT_DEFAULTS: SwitchDiTConfig = {
  ...DIT_DEFAULTS, num_experts: 3, num_experts_per_tok: 2, prior_weight: 1, prior_alpha: 4,
};

const CLASS_NAME = 'SwitchDiTTransformer2DModel';

function checkSwitchConfig(c: SwitchDiTConfig): void {
  checkDiTConfig(c, CLASS_NAME);
  const req = (ok: boolean, key: string, want: string, v: unknown) =>
    requireConfig(ok, CLASS_NAME, key, want, v);
  req(Number.isInteger(c.num_experts) && c.num_experts >= 1, 'num_experts', 'an integer >= 1',
    c.num_experts);
  req(Number.isInteger(c.num_experts_per_tok) && c.num_experts_per_tok >= 1 &&
    c.num_experts_per_tok <= c.num_experts, 'num_experts_per_tok',
  `an integer in [1, num_experts = ${c.num_experts}]`, c.num_experts_per_tok);
  req(c.prior_weight >= 0, 'prior_weight', 'a number >= 0', c.prior_weight);
  req(c.prior_alpha > 0, 'prior_alpha', 'a number > 0', c.prior_alpha);
}

export function readSwitchDiTConfig(raw: Record<string, unknown>,
  opts: ReadConfigOptions = {}): SwitchDiTConfig {
  const c = readConfig(CLASS_NAME, raw, SWITCH_DIT_DEFAULTS,
    { ...opts, nullable: { out_channels: 'number', ...opts.nullable } });
  checkSwitchConfig(c);
  return c;
}

// ---- the diffusion prior (host table) ----

/** numpy.round: half to even. */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * The official create_mask_tasks(units = L E, tasks, beta = k / E, alpha) as a 0/1 float32
 * table [tasks, L E]: task i has ones on [s_i, s_i + F), F = floor(L E * (k / E)) (= L k),
 * s_i = round(linspace(0, 1, tasks)_i^alpha (L E - F)), numpy's rounding and linspace.
 */
export function switchPriorTable(blocks: number, experts: number, k: number, alpha = 4,
  tasks = DTR_TASKS): HostArray<'float32'> {
  const units = blocks * experts;
  const filled = Math.floor(units * (k / experts));
  const step = 1 / (tasks - 1);
  const out = new Float32Array(tasks * units);
  for (let i = 0; i < tasks; i++) {
    const u = i === tasks - 1 ? 1 : i * step; // numpy.linspace sets the end point exactly
    const s = roundHalfEven(u ** alpha * (units - filled));
    out.fill(1, i * units + s, i * units + s + filled);
  }
  return new HostArray(out, [tasks, units]);
}

// ---- the assignment ----

/**
 * The minimum-cost one-to-one assignment of rows to columns of a square cost matrix [n, n]
 * (scipy's linear_sum_assignment), as a permutation matrix X [n, n], X[r, c] = 1 iff row r
 * takes column c; no gradient. The Hungarian method (Kuhn 1955) in its O(n^3) form with
 * potentials and shortest augmenting paths, one row added per phase; its data-dependent loops
 * are unrolled to their longest (phase i visits at most i columns and its augmenting path is
 * at most i long) with finished steps masked: n (n + 1) / 2 steps of O(n) vector ops. Exact
 * while the potentials are (integer costs below 2^24 / n, as the prior's L1 distances); among
 * equal-cost assignments the choice is deterministic.
 */
export function linearAssignment(cost: Tensor): Tensor {
  const n = cost.shape[0] as number;
  if (cost.rank !== 2 || cost.shape[1] !== n) {
    throw new RangeError('linearAssignment: cost must be square [n, n], got ' +
      `[${cost.shape.join(', ')}]`);
  }
  const m = n + 1; // index 0 is the dummy row and column
  const big = 1e9; // above any reduced cost the algorithm meets
  const a = ops.pad(ops.stopGradient(cost), [[1, 0], [1, 0]]); // [m, m]
  const idx = ops.arange(m, 'float32'); // [m]
  const [col0, real] = [ops.equal(idx, 0), ops.greater(idx, 0)];
  const at = (vec: Tensor, j: Tensor): Tensor => ops.gather(vec, ops.cast(j, 'int64'), 0); // []
  let u = ops.zeros([m]); // row potentials
  let v = ops.zeros([m]); // column potentials
  let p = ops.zeros([m]); // p[j]: the row holding column j (0: free)
  for (let i = 1; i <= n; i++) {
    p = ops.where(col0, i, p);
    let j0 = ops.scalarLike(0, 'float32'); // the column reached last
    let minv = ops.full([m], big);
    let used = ops.zeros([m]); // columns on the alternating tree
    let rows = ops.zeros([m]); // their rows (row i through column 0)
    let way = ops.zeros([m]);
    let done = ops.less(j0, 0); // false: no free column reached yet
    // After `done`, j0 (the path's end) and u, v are held; minv, used and rows are this
    // phase's, and way changes only at free columns, never on the path found.
    for (let step = 0; step < i; step++) {
      const act = ops.logicalNot(done);
      const i0 = at(p, j0);
      used = ops.where(ops.equal(idx, j0), 1, used);
      rows = ops.where(ops.equal(idx, i0), 1, rows);
      const r0 = ops.cast(i0, 'int64');
      const cur = ops.sub(ops.sub(ops.gather(a, r0, 0), ops.gather(u, r0, 0)), v); // row i0
      const free = ops.logicalAnd(ops.equal(used, 0), real);
      const better = ops.logicalAnd(free, ops.less(cur, minv));
      way = ops.where(better, j0, way);
      minv = ops.where(better, cur, minv);
      const cand = ops.where(free, minv, 3 * big);
      const delta = ops.min(cand);
      const j1 = ops.cast(ops.argmax(ops.neg(cand)), 'float32'); // the first least
      u = ops.where(act, ops.add(u, ops.mul(rows, delta)), u);
      v = ops.where(act, ops.sub(v, ops.mul(used, delta)), v);
      minv = ops.where(free, ops.sub(minv, delta), minv);
      j0 = ops.where(act, j1, j0);
      done = ops.logicalOr(done, ops.equal(at(p, j0), 0)); // reached a free column
    }
    for (let step = 0; step < i; step++) { // augment along way[] back to column 0
      const act = ops.greater(j0, 0);
      const back = at(way, j0);
      p = ops.where(ops.logicalAnd(act, ops.equal(idx, j0)), at(p, back), p);
      j0 = ops.where(act, back, j0);
    }
  }
  const cols = ops.sliceAxis(p, 0, 1, m); // [n]: 1-based row of each column
  const rowIds = ops.sliceAxis(idx, 0, 1, m);
  return ops.cast(ops.equal(ops.unsqueeze(rowIds, 1), ops.unsqueeze(cols, 0)), 'float32');
}

/**
 * The diffusion-prior loss (official DiffusionPrior.forward, unweighted): match the prior's
 * columns to the gate columns by the L1 distance between `prior` and `taskMap` over all tasks,
 * then JSD(probs / blocks, matched prior row / its sum), mean over the batch. probs [N, L E],
 * taskMap and prior [T, L E] (0/1), tasks int64 [N] -> the loss and the assignment [L E, L E]
 * (gate column r takes prior column c).
 */
export function diffusionPriorLoss(probs: Tensor, taskMap: Tensor, prior: HostArray,
  tasks: Tensor, blocks: number, eps = 1e-6): { loss: Tensor; assignment: Tensor } {
  const q = ops.stopGradient(taskMap);
  const u = ops.constant(prior); // [T, L E]
  // |q - u| = q + u - 2 q u on 0/1 entries: the L1 cost [L E, L E] as one product.
  const cost = ops.sub(ops.add(ops.unsqueeze(ops.sum(q, 0), 1), ops.unsqueeze(ops.sum(u, 0), 0)),
    ops.mul(ops.matmul(ops.transpose(q), u), 2));
  const assignment = linearAssignment(cost);
  const rows = ops.gather(u, tasks, 0); // [N, L E]
  const target = ops.div(ops.matmul(rows, ops.transpose(assignment)), ops.sum(rows, 1, true));
  const pg = ops.div(probs, blocks);
  const mid = ops.div(ops.add(pg, target), 2);
  const logM = ops.log(ops.add(mid, eps));
  const kl = (x: Tensor) => ops.sum(ops.mul(x, ops.sub(ops.log(ops.add(x, eps)), logM)), 1);
  return { loss: ops.mean(ops.div(ops.add(kl(pg), kl(target)), 2)), assignment };
}

// ---- the router and the block ----

/** Official ParallelExperts: E linear maps D -> D, x W_e + b_e; zero-initialised. */
export class LinearExperts extends Module {
  readonly weight: Param;
  readonly bias: Param;
  constructor(readonly experts: number, dim: number) {
    super();
    this.weight = new Param([experts, dim, dim], zeros);
    this.bias = new Param([experts, dim], zeros);
  }
}

/** Official TaskMoE: a timestep-only gate over E linear experts. */
export class TaskMoE extends Module {
  readonly f_gate: Linear;
  readonly experts: LinearExperts;
  constructor(dim: number, readonly numExperts: number, readonly topK: number) {
    super();
    this.f_gate = new Linear(dim, numExperts);
    this.experts = new LinearExperts(numExperts, dim);
  }

  /** Gate probabilities [N, E] = softmax(f_gate(SiLU(temb))) of timestep embeddings [N, D]. */
  probs(p: ParamsOf<TaskMoE>, temb: Tensor): Tensor {
    return ops.softmax(this.f_gate.forward(p.f_gate, ops.silu(temb)), -1);
  }

  /** The top-k indicators [N, E] of gate probabilities [N, E] (no gradient). */
  topMask(probs: Tensor): Tensor {
    const { indices } = ops.topk(probs, this.topK, -1); // [N, k]
    const hit = ops.equal(ops.unsqueeze(indices, -1), ops.arange(this.numExperts)); // [N, k, E]
    return ops.sum(ops.cast(hit, 'float32'), 1);
  }

  /** The routing mask m = 1 + sum_top-k g_e (x W_e + b_e) [N, T, D] of block inputs x
   *  [N, T, D], with the gate probabilities [N, E]. */
  forward(p: ParamsOf<TaskMoE>, x: Tensor, temb: Tensor): { mask: Tensor; probs: Tensor } {
    const [n, , d] = x.shape as [number, number, number];
    const probs = this.probs(p, temb); // [N, E]
    const g = ops.mul(probs, this.topMask(probs)); // [N, E]: gate values of the top k
    const flat = ops.reshape(p.experts.weight, [this.numExperts, d * d]);
    const w = ops.reshape(ops.matmul(g, flat), [n, d, d]); // [N, D, D]: the sample's mixture
    const b = ops.unsqueeze(ops.matmul(g, p.experts.bias), 1); // [N, 1, D]
    return { mask: ops.add(ops.add(ops.matmul(x, w), b), 1), probs };
  }
}

/** DiT's block (diffusers' names) with a router beside it, run as block(x m) + x (1 - m). */
export class SwitchDiTBlock extends DiTBlock {
  readonly router: TaskMoE;
  constructor(cfg: SwitchDiTConfig) {
    super(cfg);
    const dim = cfg.num_attention_heads * cfg.attention_head_dim;
    this.router = new TaskMoE(dim, cfg.num_experts, cfg.num_experts_per_tok);
  }

  /** This block's timestep embedding [N, D] (the gate's input). */
  temb(p: ParamsOf<SwitchDiTBlock>, c: DiTCond): Tensor {
    return this.norm1.emb.timestep_embedder.forward(p.norm1.emb.timestep_embedder, c.tproj);
  }

  /** x [N, T, D] -> the routed block's output [N, T, D] and the gate probabilities [N, E]. */
  route(p: ParamsOf<SwitchDiTBlock>, x: Tensor, c: DiTCond, index: number, kv?: KvSource):
    { out: Tensor; probs: Tensor } {
    const { mask, probs } = this.router.forward(p.router, x, this.temb(p, c));
    return { out: routedBlock(x, mask, (h) => this.forward(p, h, c, index, kv)), probs };
  }
}

// ---- model ----

export interface SwitchDiTOutput {
  /** [N, outC, H, W] */
  sample: Tensor;
  /** [N, L E]: every block's gate probabilities, block-major (each block's sum to 1). */
  probs: Tensor;
  /** Scalar: prior_weight * the diffusion-prior JSD (add it to the training loss). */
  priorLoss: Tensor;
}

export class SwitchDiTTransformer2DModel extends DiTBase<SwitchDiTBlock> {
  /** The prior table [T, L E] (official _unit_mapping). */
  readonly prior: HostArray<'float32'>;
  readonly switchConfig: SwitchDiTConfig;
  constructor(c: SwitchDiTConfig) {
    checkSwitchConfig(c);
    super(c, Array.from({ length: c.num_layers }, () => new SwitchDiTBlock(c)));
    this.switchConfig = c;
    this.prior = switchPriorTable(c.num_layers, c.num_experts, c.num_experts_per_tok,
      c.prior_alpha);
  }

  /** x [N, C, H, W], timestep [N], classLabels int64 [N] -> sample, gate probabilities and the
   *  weighted prior loss (left out of graphs that do not return it). */
  forward(p: ParamsOf<SwitchDiTTransformer2DModel>, x: Tensor, timestep: Tensor,
    classLabels: Tensor): SwitchDiTOutput {
    const [h, w] = this.tokenGrid(x);
    const c = ditCond(timestep, classLabels);
    const all: Tensor[] = [];
    let tokens = this.embed(p, x); // [N, T, D]
    this.transformer_blocks.forEach((blk, i) => {
      const r = blk.route(p.transformer_blocks[i]!, tokens, c, i);
      tokens = r.out;
      all.push(r.probs);
    });
    const probs = ops.concat(all, 1); // [N, L E]
    const sample = this.unpatchify(this.finalLayer(p, tokens, c), h, w);
    return { sample, probs, priorLoss: ops.mul(this.priorJsd(p, c.time, probs).loss,
      this.switchConfig.prior_weight) };
  }

  /** The top-k indicator map [T, L E] of every task 0..T-1 (official probs_full_quantized). */
  taskMap(p: ParamsOf<SwitchDiTTransformer2DModel>): Tensor {
    const tasks = this.prior.shape[0]!;
    const c = ditCond(ops.arange(tasks, 'float32'), ops.zeros([tasks], 'int64'));
    return ops.concat(this.transformer_blocks.map((blk, i) => {
      const pb = p.transformer_blocks[i]!;
      return blk.router.topMask(blk.router.probs(pb.router, blk.temb(pb, c)));
    }), 1);
  }

  /** The unweighted prior loss of gate probabilities [N, L E] at model times [N]. */
  priorJsd(p: ParamsOf<SwitchDiTTransformer2DModel>, time: Tensor, probs: Tensor):
    { loss: Tensor; assignment: Tensor } {
    const last = this.prior.shape[0]! - 1;
    const tasks = ops.cast(ops.clamp(ops.floor(ops.cast(time, 'float32')), 0, last), 'int64');
    return diffusionPriorLoss(probs, this.taskMap(p), this.prior, tasks,
      this.transformer_blocks.length);
  }
}

// ---- presets ----

/** Switch-DiT's naming: DiT's size, 3 experts per block, 2 per task. */
export const SWITCH_DIT_PRESETS = {
  /** The MNIST pixel DiT (dit.ts's DiT-S/2-mnist) with a router in every block. */
  'Switch-DiT-S/2-mnist': { ...DIT_PRESETS['DiT-S/2-mnist'] },
  /** The same on 16 x 16 x 4 latents. */
  'Switch-DiT-S/2-latent': { ...DIT_PRESETS['DiT-S/2-latent'] },
} satisfies Record<string, Partial<SwitchDiTConfig>>;

export type SwitchDiTPresetName = keyof typeof SWITCH_DIT_PRESETS;

export function switchDiTPreset(name: SwitchDiTPresetName,
  overrides: Partial<SwitchDiTConfig> = {}): SwitchDiTConfig {
  const base = SWITCH_DIT_PRESETS[name] as Partial<SwitchDiTConfig> | undefined;
  if (!base) {
    throw new ConfigError(`unknown Switch-DiT preset '${name}': expected one of ` +
      `${Object.keys(SWITCH_DIT_PRESETS).join(', ')}`);
  }
  const c = { ...SWITCH_DIT_DEFAULTS, ...base, ...overrides };
  checkSwitchConfig(c);
  return c;
}

/** The class as Diffuse's model registry sees it (a Diffuse class: diffusers has none). */
export const switchDiTClass = {
  className: CLASS_NAME,
  readConfig: readSwitchDiTConfig,
  create: (config: SwitchDiTConfig) => new SwitchDiTTransformer2DModel(config),
  toConfig: (config: SwitchDiTConfig) => toDiffusersConfig(CLASS_NAME, ditConfigJson(config)),
} as const;
