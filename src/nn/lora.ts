/**
 * @file LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", sec. 4.1)
 * as a reparameterisation of any parameter tree: a matched weight W [out, in'] is used as
 *
 *     W' = W + (alpha / r) B A,   B [out, r] (zeros at init), A [r, in'] (small random)
 *
 * and only A and B are trained, so W' equals W at the start. A Linear weight is [out, in]; a
 * Conv2d weight [out, in, kh, kw] is treated as [out, in kh kw] (B A reshaped back), as
 * loralib's ConvLoRA does. A is initialised as loralib does (kaiming_uniform with a = sqrt 5,
 * i.e. U(-1/sqrt(in'), 1/sqrt(in'))): torch's default for a Linear of in' inputs.
 *
 * Model-agnostic: the factors are a flat record keyed by the weight's dotted path in the base
 * tree (`blocks.0.conv.weight` -> { a, b }), so any Module's parameter tree adapts without
 * knowing its layers. `applyLora` builds W' in graph ops (differentiable in A and B, the base
 * usually baked in as constants); `mergeLoraHost` does the same on host arrays, for saving a
 * merged model that loads like any other.
 */
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import type { RngKey } from '../engine/random/philox.js';
import { isTensor, type Tensor } from '../engine/tensor.js';
import { flatten, mapTree, type Tree } from '../engine/tree.js';
import { torchDefault } from './init.js';

/** The factors of one adapted weight W [out, ...]: W' = W + scale reshape(b a). */
export interface LoraFactors<T> {
  /** [rank, in'] with in' the product of W's trailing axes. */
  readonly a: T;
  /** [out, rank]. */
  readonly b: T;
}

/** The factors of every adapted weight, keyed by its dotted path in the base tree. */
export type LoraTree<T> = { readonly [path: string]: LoraFactors<T> };

export interface LoraOptions {
  /** r: the rank of every update (>= 1). */
  rank: number;
  /** Which weights to adapt (default: all). Only weights of rank >= 2 are ever adapted, so
   *  biases and norm scales stay as they are whatever this says. */
  match?: (path: string, shape: readonly number[]) => boolean;
}

const isHost = (x: unknown): x is HostArray => x instanceof HostArray;

/** LoRA's scale alpha / r (Hu et al. sec. 4.1; alpha = r, the default, gives 1). */
export function loraScale(rank: number, alpha = rank): number {
  return alpha / rank;
}

/** [out, in'] of a weight: its leading axis against the product of the rest. */
function matrixShape(shape: readonly number[]): [number, number] {
  return [shape[0]!, shape.slice(1).reduce((a, b) => a * b, 1)];
}

/**
 * Fresh factors for the matched weights of `params`: a ~ U(-1/sqrt(in'), 1/sqrt(in')) from
 * `key` folded with the weight's index in the flattened tree, b = 0.
 */
export function loraInit(params: Tree<HostArray>, opts: LoraOptions, key: RngKey):
  LoraTree<HostArray> {
  const { rank } = opts;
  if (!Number.isInteger(rank) || rank < 1) {
    throw new RangeError(`loraInit: rank must be an integer >= 1, got ${rank}`);
  }
  const { leaves, paths } = flatten(params, isHost);
  const out: Record<string, LoraFactors<HostArray>> = {};
  leaves.forEach((w, i) => {
    const path = paths[i]!;
    if (w.shape.length < 2 || !(opts.match?.(path, w.shape) ?? true)) return;
    const [rows, cols] = matrixShape(w.shape);
    out[path] = { a: torchDefault(cols)([rank, cols], key.fold(i)),
      b: HostArray.zeros([rows, rank]) };
  });
  return out;
}

/** The number of trainable values in `lora` (r (out + in') per adapted weight). */
export function loraParameterCount(lora: LoraTree<HostArray>): number {
  return Object.values(lora).reduce((n, f) => n + f.a.size + f.b.size, 0);
}

/** Checks that every factor names a weight of `shapes` and fits it; returns nothing. */
function checkFactors(lora: LoraTree<{ readonly shape: readonly unknown[] }>,
  shapes: ReadonlyMap<string, readonly number[]>, where: string): void {
  for (const [path, { a, b }] of Object.entries(lora)) {
    const shape = shapes.get(path);
    if (!shape) throw new RangeError(`${where}: factors for '${path}', which the base lacks`);
    const [rows, cols] = matrixShape(shape);
    const r = a.shape[0];
    if (a.shape.length !== 2 || b.shape.length !== 2 || a.shape[1] !== cols ||
      b.shape[0] !== rows || b.shape[1] !== r) {
      throw new RangeError(`${where}: factors of '${path}' [${shape.join(', ')}] must be ` +
        `a [r, ${cols}] and b [${rows}, r], got a [${a.shape.join(', ')}] and ` +
        `b [${b.shape.join(', ')}]`);
    }
  }
}

/**
 * The adapted tree in graph ops: W + scale reshape(b @ a, W.shape) for each weight with
 * factors, every other leaf as it is. Differentiable in the factors (and in the base).
 */
export function applyLora<T extends Tree<Tensor>>(base: T, lora: LoraTree<Tensor>,
  scale: number): T {
  const flat = flatten(base as Tree<Tensor>, isTensor);
  checkFactors(lora, new Map(flat.paths.map((p, i) => [p, flat.leaves[i]!.shape as number[]])),
    'applyLora');
  // Sound: mapTree keeps the tree's structure, and each leaf stays a Tensor of its shape.
  return mapTree(base as Tree<Tensor>, isTensor, (w, path) => {
    const f = Object.hasOwn(lora, path) ? lora[path] : undefined;
    if (!f) return w;
    const delta = ops.reshape(ops.matmul(f.b, f.a), w.shape); // [out, in'] -> W's shape
    return ops.add(w, ops.mul(delta, scale));
  }) as unknown as T;
}

/** applyLora on host arrays (float64 sums, rounded once): the merged weights to save. */
export function mergeLoraHost<T extends Tree<HostArray>>(base: T, lora: LoraTree<HostArray>,
  scale: number): T {
  const flat = flatten(base as Tree<HostArray>, isHost);
  checkFactors(lora, new Map(flat.paths.map((p, i) => [p, flat.leaves[i]!.shape])),
    'mergeLoraHost');
  // Sound: as in applyLora, the structure and every leaf's shape are kept.
  return mapTree(base as Tree<HostArray>, isHost, (w, path) => {
    const f = Object.hasOwn(lora, path) ? lora[path] : undefined;
    if (!f) return w.clone();
    const [rows, cols] = matrixShape(w.shape);
    const r = f.a.shape[0]!;
    const [a, b, src] = [f.a.data as Float32Array, f.b.data as Float32Array,
      w.data as Float32Array];
    const out = new Float32Array(rows * cols);
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < cols; j++) {
        let s = 0;
        for (let k = 0; k < r; k++) s += b[i * r + k]! * a[k * cols + j]!;
        out[i * cols + j] = src[i * cols + j]! + scale * s;
      }
    }
    return new HostArray(out, w.shape);
  }) as unknown as T;
}
