/**
 * @file Parameter-efficient fine-tuning as reparameterisations of a model's weights
 * (nn/reparam.ts): the optimiser sees a small tree, the rest of the model is frozen, and the
 * exported model is a plain one with the trained parts merged in.
 *
 * - BitFit (Ben Zaken et al. 2021, "BitFit: Simple Parameter-efficient Fine-tuning for
 *   Transformer-based Masked Language-models"): train only the bias terms.
 * - DiffFit (Xie et al. 2023, arXiv 2304.06648, ICCV 2023): claims that fine-tuning only the
 *   bias terms and newly added scale factors "in specific layers" of a pre-trained DiT adapts
 *   it to a new domain about as well as full fine-tuning, training about 0.12% of DiT-XL/2's
 *   parameters, about 2x faster, and reaches FID 3.02 on ImageNet 512 from the 256 model.
 *   Here: every bias, every norm scale (rank-1 weight), every class-embedding table, and a
 *   per-channel gamma (init 1) on the attention branch and on the MLP branch of the first half
 *   of the DiT blocks: x + gamma_1 * gate_msa * attn(..), x + gamma_2 * gate_mlp * mlp(..).
 *   In the adaLN-Zero block the gates are rows [2D, 3D) and [5D, 6D) of norm1.linear, so
 *   gamma * gate is that Linear with those rows (weight and bias) scaled by gamma: `apply`
 *   scales them in the graph, `merge` bakes the scale in, and the export is a plain DiT.
 * - Diffscaler (Nair, Valanarasu & Patel 2024, arXiv 2404.09976): claims that one frozen
 *   DiT can serve several datasets through small per-task parameters in every layer (its
 *   "Affiner": a learned scale of the frozen weight, init at the identity, a learned shift,
 *   and a small added low-rank subspace for directions the pre-training data lacked), close
 *   to full fine-tuning per task. Here, for every weight W (Linear, Conv, norm scale; not the
 *   embedding tables): W' = diag(gamma) W + B A with gamma [out] (init 1) and B A a rank-r
 *   LoRA term (B = 0 at init; nn/lora.ts), and the bias trained as the shift (bias + beta with
 *   beta from 0 follows the same AdamW path, without weight decay, as training the bias).
 * - full: every weight trained (the control).
 *
 * What was checked, and against what. The papers' method sections could not be read here (the
 * search reaches their abstracts and secondary sources only), so:
 * - DiffFit, verified from its abstract (arXiv; ICCV open access): bias terms plus newly added
 *   scale factors in specific layers; ~0.12%; 2x; FID 3.02 at 512 after 25 epochs. From a
 *   third-party PEFT benchmark quoting the paper: it fine-tunes "the bias terms and the LN
 *   blocks" and "inserts learnable scale factors gamma ... after the MSA and the MLP blocks".
 *   From an unofficial implementation (mkshing/DiffFit-pytorch) quoting it: "a learning rate
 *   10x greater than pre-training yields the best result" (`diffuse finetune`'s default).
 *   NOT verified, from memory of the paper: that the class embedding is trained too, that
 *   gamma is per channel and starts at 1, and that gamma goes into the first half of the
 *   blocks (its ablation on the placement); `gammaBlocks` changes the last.
 * - Diffscaler, verified from its abstract and two summaries: a frozen base, task parameters
 *   in every layer that reuse the pre-trained weights' subspaces and add new task-specific
 *   (low-rank) ones. NOT verified: the exact form. One summary writes a layer as
 *   y = (1 + a) W x + b + beta + s W_up ReLU(W_down x); whether `a` is per channel, which
 *   layers get it, the rank and the initialisation are our choices (per output channel;
 *   every weight but the embedding tables; rank 1; the layer starts as the pre-trained one).
 *   A ReLU branch cannot be folded into a plain model, which the export must be, so the
 *   added subspace here is linear (LoRA).
 *
 * Model-agnostic by parameter path, like nn/lora.ts. On the U-Net: full, BitFit and Diffscaler
 * as above; DiffFit trains biases, GroupNorm scales and the class embedding but adds no gamma
 * (the paper defines it for DiT blocks only; a U-Net has no norm1.linear gates).
 */
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import type { RngKey } from '../engine/random/philox.js';
import type { Tensor } from '../engine/tensor.js';
import { flatten, unflatten, type Flat, type Tree } from '../engine/tree.js';
import { applyLora, loraInit, loraScale, mergeLoraHost, type LoraTree } from '../nn/lora.js';
import type { Reparameterisation } from '../nn/reparam.js';

export type PeftMethod = 'full' | 'bitfit' | 'difffit' | 'diffscaler';
export const PEFT_METHODS: readonly PeftMethod[] = ['full', 'bitfit', 'difffit', 'diffscaler'];

export interface PeftOptions {
  /** DiffFit: how many DiT blocks, from the first, get the gammas (default: half, rounded
   *  up; 0: none). */
  gammaBlocks?: number;
  /** Diffscaler: rank of the added low-rank subspace per weight (default 1; 0: none). */
  rank?: number;
  /** Also train, in place, every leaf whose dotted path matches (an ablation beyond the
   *  paper's set, e.g. the patch embedding and output projection a method would freeze). */
  alsoTrain?: RegExp;
}

/** The optimised tree of every method. */
export interface PeftTree<T> {
  /** Model leaves trained in place, by dotted path (biases, norm scales, class embeddings;
   *  every leaf for 'full'). */
  free: { readonly [path: string]: T };
  /** Scale factors (init 1) by name; each scales some rows of one weight (RowScale). */
  scale: { readonly [name: string]: T };
  /** Diffscaler's added subspace: LoRA factors keyed by weight path. */
  lowRank: LoraTree<T>;
}

/** gamma (`name` in the tree, [rows]) scales rows [start, start + rows) of `weight`, and of
 *  its bias too when `bias`. */
interface RowScale { name: string; weight: string; start: number; rows: number; bias: boolean }

/** What a method trains of one base tree, fixed by `init`. */
interface Plan { base: Flat<HostArray>; free: string[]; scales: RowScale[]; lowRank: string[] }

const isHost = (x: unknown): x is HostArray => x instanceof HostArray;
const CLASS_TABLE = /(class_embedder\.embedding_table|class_embedding)\.weight$/;
const EMBEDDING = /(embedding_table|class_embedding)\.weight$/;
const ADALN = /^transformer_blocks\.(\d+)\.norm1\.linear\.weight$/;
const biasOf = (weight: string): string => weight.replace(/\.weight$/, '.bias');

/** DiffFit's gammas: rows [2D, 3D) (gate_msa) and [5D, 6D) (gate_mlp) of each adaLN-Zero
 *  norm1.linear [6D, D] in the first `blocks` blocks. */
function gateScales(base: Flat<HostArray>, blocks: number | undefined): RowScale[] {
  const adaln = base.paths.map((p, i) => ({ p, i, m: ADALN.exec(p) })).filter((r) => r.m);
  const n = blocks ?? Math.ceil(adaln.length / 2);
  return adaln.filter((r) => Number(r.m![1]) < n).flatMap(({ p, i, m }) => {
    const [rows, d] = base.leaves[i]!.shape as [number, number];
    if (rows !== 6 * d) {
      throw new RangeError(`difffit: ${p} is [${rows}, ${d}], expected adaLN-Zero's [6D, D]`);
    }
    const block = `transformer_blocks.${m![1]}`;
    return [{ name: `${block}.gamma_msa`, weight: p, start: 2 * d, rows: d, bias: true },
      { name: `${block}.gamma_mlp`, weight: p, start: 5 * d, rows: d, bias: true }];
  });
}

function planOf(method: PeftMethod, base: Flat<HostArray>, o: PeftOptions): Plan {
  const plan = methodPlan(method, base, o);
  const extra = o.alsoTrain;
  if (!extra) return plan;
  if (!base.paths.some((p) => extra.test(p))) {
    throw new RangeError(`peft: alsoTrain ${extra} matches no parameter path (paths look ` +
      `like ${base.paths[0]})`);
  }
  const added = base.paths.filter((p) => extra.test(p) && !plan.free.includes(p));
  // Trained in place, so the low-rank and row-scale terms must not also claim them.
  return { ...plan, free: [...plan.free, ...added],
    lowRank: plan.lowRank.filter((p) => !added.includes(p)),
    scales: plan.scales.filter((s) => !added.includes(s.weight)) };
}

function methodPlan(method: PeftMethod, base: Flat<HostArray>, o: PeftOptions): Plan {
  const { paths, leaves } = base;
  const pick = (f: (p: string, a: HostArray) => boolean) =>
    paths.filter((p, i) => f(p, leaves[i]!));
  const isBias = (p: string) => p.endsWith('.bias');
  switch (method) {
    case 'full': return { base, free: [...paths], scales: [], lowRank: [] };
    case 'bitfit': return { base, free: pick(isBias), scales: [], lowRank: [] };
    case 'difffit':
      return { base, free: pick((p, a) => a.shape.length === 1 || CLASS_TABLE.test(p)),
        scales: gateScales(base, o.gammaBlocks), lowRank: [] };
    case 'diffscaler': {
      const weights = pick((p) => !isBias(p) && !EMBEDDING.test(p));
      return { base, free: pick(isBias), lowRank: weights.filter((p) =>
        leaves[paths.indexOf(p)]!.shape.length >= 2),
      scales: weights.map((p) => ({ name: p, weight: p, start: 0, bias: false,
        rows: leaves[paths.indexOf(p)]!.shape[0]! })) };
    }
  }
}

/** Each weight's factor per row: its RowScales in row order, 1 elsewhere. */
function rowFactors<T>(plan: Plan, scale: PeftTree<T>['scale'], one: (n: number) => T,
  join: (parts: T[]) => T): Map<string, { f: T; bias: boolean }> {
  const out = new Map<string, { f: T; bias: boolean }>();
  const byWeight = new Map<string, RowScale[]>();
  for (const s of plan.scales) byWeight.set(s.weight, [...byWeight.get(s.weight) ?? [], s]);
  for (const [weight, specs] of byWeight) {
    const rows = plan.base.leaves[plan.base.paths.indexOf(weight)]!.shape[0]!;
    const parts: T[] = [];
    let at = 0;
    for (const s of [...specs].sort((a, b) => a.start - b.start)) {
      if (s.start > at) parts.push(one(s.start - at));
      parts.push(scale[s.name]!);
      at = s.start + s.rows;
    }
    if (at < rows) parts.push(one(rows - at));
    out.set(weight, { f: parts.length === 1 ? parts[0]! : join(parts), bias: specs[0]!.bias });
  }
  return out;
}

/** Throws unless `t` holds exactly the plan's leaves, each of its shape. */
function checkTree(plan: Plan, t: PeftTree<{ shape: readonly unknown[] }>, where: string): void {
  const shapeOf = (p: string) => plan.base.leaves[plan.base.paths.indexOf(p)]!.shape;
  const want = new Map<string, readonly number[]>([
    ...plan.free.map((p) => [`free ${p}`, shapeOf(p)] as const),
    ...plan.scales.map((s) => [`scale ${s.name}`, [s.rows]] as const)]);
  const got = new Map<string, readonly unknown[]>([
    ...Object.entries(t.free).map(([p, a]) => [`free ${p}`, a.shape] as const),
    ...Object.entries(t.scale).map(([p, a]) => [`scale ${p}`, a.shape] as const)]);
  for (const [k, shape] of want) {
    const g = got.get(k);
    if (!g) throw new RangeError(`${where}: the trained tree lacks ${k}`);
    if (g.join() !== shape.join()) {
      throw new RangeError(`${where}: ${k} is [${g.join(', ')}], expected [${shape.join(', ')}]`);
    }
  }
  const extra = [...got.keys()].find((k) => !want.has(k));
  if (extra) {
    throw new RangeError(`${where}: the trained tree has ${extra}, which this method lacks`);
  }
  const lr = Object.keys(t.lowRank);
  if (lr.length !== plan.lowRank.length || lr.some((p) => !plan.lowRank.includes(p))) {
    throw new RangeError(`${where}: low-rank factors for [${lr.join(', ')}], expected ` +
      `[${plan.lowRank.join(', ')}]`);
  }
}

/**
 * The reparameterisation `method` trains. `init` fixes the frozen base (the weights it is
 * given) for the `apply` and `merge` calls after it; both refuse a tree of another shape.
 */
export function peft(method: PeftMethod, opts: PeftOptions = {}): Reparameterisation {
  const rank = opts.rank ?? 1;
  if (!Number.isInteger(rank) || rank < 0) {
    throw new RangeError(`peft: rank must be an integer >= 0, got ${rank}`);
  }
  if (opts.gammaBlocks !== undefined && !(Number.isInteger(opts.gammaBlocks) &&
    opts.gammaBlocks >= 0)) {
    throw new RangeError(`peft: gammaBlocks must be an integer >= 0, got ${opts.gammaBlocks}`);
  }
  const name = (method === 'diffscaler' ? `diffscaler:rank=${rank}`
    : method === 'difffit' && opts.gammaBlocks !== undefined
      ? `difffit:gamma-blocks=${opts.gammaBlocks}` : method) +
    (opts.alsoTrain ? `+${opts.alsoTrain.source}` : '');
  let plan: Plan | undefined;
  const planned = (where: string): Plan => {
    if (!plan) throw new Error(`${name}: ${where} before init (init fixes the frozen weights)`);
    return plan;
  };
  const s = loraScale(Math.max(rank, 1));
  return {
    name,
    init(model, key) {
      const base = flatten(model, isHost);
      const p = planOf(method, base, opts);
      if (rank === 0) p.lowRank = [];
      plan = p;
      const at = (q: string) => base.leaves[base.paths.indexOf(q)]!;
      const lowRank = rank === 0 || p.lowRank.length === 0 ? {} : loraInit(model,
        { rank, match: (q) => p.lowRank.includes(q) }, key);
      const tree: PeftTree<HostArray> = {
        free: Object.fromEntries(p.free.map((q) => [q, at(q).clone()])),
        scale: Object.fromEntries(p.scales.map((r) => [r.name, HostArray.ones([r.rows])])),
        lowRank,
      };
      return tree as unknown as Tree<HostArray>; // sound: a PeftTree is a tree of host arrays
    },
    apply(trained) {
      const p = planned('apply');
      const t = trained as unknown as PeftTree<Tensor>; // sound: the tree init made, traced
      checkTree(p, t, name);
      const leaves = p.base.paths.map((q, i) => t.free[q] ?? ops.constant(p.base.leaves[i]!));
      const factors = rowFactors(p, t.scale, (n) => ops.full([n], 1), (xs) => ops.concat(xs, 0));
      for (const [weight, { f, bias }] of factors) {
        const i = p.base.paths.indexOf(weight);
        const w = leaves[i]!;
        leaves[i] = ops.mul(w, ops.reshape(f, [w.shape[0]!, ...w.shape.slice(1).map(() => 1)]));
        const j = p.base.paths.indexOf(biasOf(weight));
        if (bias && j >= 0) leaves[j] = ops.mul(leaves[j]!, f);
      }
      const tree = unflatten(p.base.def, leaves) as Tree<Tensor>;
      if (p.lowRank.length === 0) return tree;
      return applyLora(tree, t.lowRank, s);
    },
    merge(trained) {
      const p = planned('merge');
      const t = trained as unknown as PeftTree<HostArray>; // sound: as in apply, on the host
      checkTree(p, t, name);
      const leaves = p.base.paths.map((q, i) => (t.free[q] ?? p.base.leaves[i]!).clone());
      const factors = rowFactors(p, t.scale, (n) => HostArray.ones([n]), (xs) =>
        new HostArray(Float32Array.from(xs.flatMap((x) => [...(x.data as Float32Array)])),
          [xs.reduce((n, x) => n + x.size, 0)]));
      for (const [weight, { f, bias }] of factors) {
        const i = p.base.paths.indexOf(weight);
        scaleRows(leaves[i]!, f);
        const j = p.base.paths.indexOf(biasOf(weight));
        if (bias && j >= 0) scaleRows(leaves[j]!, f);
      }
      const tree = unflatten(p.base.def, leaves) as Tree<HostArray>;
      if (p.lowRank.length === 0) return tree;
      return mergeLoraHost(tree, t.lowRank, s);
    },
  };
}

/** w[r, ...] *= f[r] in place, rounded to float32 as the graph's Mul rounds it (the product of
 *  two float32 values is exact in float64, so one rounding gives the same bits). */
function scaleRows(w: HostArray, f: HostArray): void {
  const [data, fs] = [w.data as Float32Array, f.data as Float32Array];
  const per = w.size / w.shape[0]!;
  for (let i = 0; i < data.length; i++) data[i] = Math.fround(data[i]! * fs[Math.floor(i / per)]!);
}

/** The number of trained values in a trained tree (any reparameterisation's). */
export function trainableCount(trained: Tree<HostArray>): number {
  return flatten(trained, isHost).leaves.reduce((n, a) => n + a.size, 0);
}

/** Trained values, model values, and their ratio (the share `diffuse finetune` prints). */
export function trainableShare(trained: Tree<HostArray>, model: Tree<HostArray>):
  { trainable: number; total: number; share: number } {
  const trainable = trainableCount(trained);
  const total = trainableCount(model);
  return { trainable, total, share: trainable / total };
}
