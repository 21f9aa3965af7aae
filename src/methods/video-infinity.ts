/**
 * @file Video-Infinity: Tan, Yang, Wang & Wang 2024, "Video-Infinity: Distributed Long Video
 * Generation" (official code: Yuanshi9815/Video-Infinity, src/video_infinity/plugins.py).
 *
 * Claim: a short-clip video model generates a long video when the video is split into clips,
 * one per worker (GPU), and at every step and temporal layer each worker's temporal attention
 * sees, beside its own frames, a local context (`padding` frames from each neighbour) and a
 * global context (frames sampled at a uniform stride across all workers, all-gathered),
 * blended by a dual-scope bias that favours the global keys early in sampling and the local
 * ones later: 2,300 frames in about 5 minutes on 8 GPUs.
 *
 * Here, what one worker's temporal attention needs, as plain functions:
 * - `contextPlan`: which frames of the whole video a clip takes as left / right / global
 *   context. Every clip gets the same number of context slots (so every worker runs the same
 *   compiled graph); a slot past either end of the video is empty and masked. The official
 *   code fills those with zeros that still take softmax mass; masking them is the fix.
 * - `dualScopeBias`: the official schedule, +10 on the logits of global keys while t >= 800
 *   (of 1000), +10 on local keys (the clip's own frames and its neighbours') after.
 * - `contextBias`: that schedule and the mask as one additive bias per key.
 * - `clipAttention`: temporal attention of a clip's frames over itself and its context.
 * The layer input x is exchanged, not K and V: the projections are per frame, so projecting
 * received frames is exact and sends half the data.
 */
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import type { Tensor } from '../engine/tensor.js';
import type { MultiHeadAttention } from '../nn/attention.js';
import type { ParamsOf } from '../nn/module.js';

/** An empty context slot (past an end of the video). */
export const EMPTY = -1;

export interface ContextPlan {
  /** Video frame indices of the `padding` frames before the clip (EMPTY before frame 0). */
  left: number[];
  /** The clip's own frames. */
  own: number[];
  /** The `padding` frames after the clip (EMPTY past the last frame). */
  right: number[];
  /** The global frames, the same for every clip: `perWorker` from each clip, evenly spaced. */
  global: number[];
}

export interface ClipLayout {
  /** Clips (workers); the video has clips x clipFrames frames. */
  clips: number;
  clipFrames: number;
  /** Frames taken from each neighbour. */
  padding: number;
  /** Frames each clip contributes to the global context. */
  globalPerClip: number;
}

function checkLayout(l: ClipLayout): void {
  for (const [k, min] of [['clips', 1], ['clipFrames', 1], ['padding', 0], ['globalPerClip', 0]] as const) {
    if (!(Number.isInteger(l[k]) && l[k] >= min)) throw new RangeError(`${k} must be an integer >= ${min}, got ${l[k]}`);
  }
  if (l.padding > l.clipFrames) {
    throw new RangeError(`padding (${l.padding}) cannot exceed clipFrames (${l.clipFrames}): a neighbour sends frames of its own clip`);
  }
  if (l.globalPerClip > l.clipFrames) {
    throw new RangeError(`globalPerClip (${l.globalPerClip}) cannot exceed clipFrames (${l.clipFrames})`);
  }
}

/**
 * The layout of `frames` frames over `workers` clips. Defaults: half a clip of padding from
 * each neighbour; 16 global frames in all as in the paper, at most a quarter of a clip from each
 * worker and at least one. `independent`: no context at all (the baseline).
 */
export function clipLayout(frames: number, workers: number,
  o: { padding?: number; globalPerClip?: number; independent?: boolean } = {}): ClipLayout {
  if (!(Number.isInteger(workers) && workers >= 1 && Number.isInteger(frames) && frames % workers === 0)) {
    throw new RangeError(`frames (${frames}) must be a multiple of workers (${workers})`);
  }
  const clipFrames = frames / workers;
  const padding = o.independent ? 0 : Math.min(o.padding ?? Math.floor(clipFrames / 2), clipFrames);
  const globalPerClip = o.independent || workers === 1 ? 0 : Math.min(o.globalPerClip ??
    Math.max(1, Math.min(Math.floor(16 / workers), Math.floor(clipFrames / 4))), clipFrames);
  return { clips: workers, clipFrames, padding, globalPerClip };
}

/** The frames of clip `c` that it contributes to the global context: evenly spaced. */
export function globalFramesOf(c: number, l: ClipLayout): number[] {
  return Array.from({ length: l.globalPerClip }, (_, i) =>
    c * l.clipFrames + Math.floor(((i + 0.5) * l.clipFrames) / l.globalPerClip));
}

/** What clip `c` attends to, as video frame indices. */
export function contextPlan(c: number, l: ClipLayout): ContextPlan {
  checkLayout(l);
  if (!(Number.isInteger(c) && c >= 0 && c < l.clips)) throw new RangeError(`clip ${c} is not in 0..${l.clips - 1}`);
  const n = l.clips * l.clipFrames;
  const start = c * l.clipFrames;
  const frame = (f: number) => (f >= 0 && f < n ? f : EMPTY);
  return {
    left: Array.from({ length: l.padding }, (_, i) => frame(start - l.padding + i)),
    own: Array.from({ length: l.clipFrames }, (_, i) => start + i),
    right: Array.from({ length: l.padding }, (_, i) => frame(start + l.clipFrames + i)),
    global: Array.from({ length: l.clips }, (_, k) => globalFramesOf(k, l)).flat(),
  };
}

/** The official dual-scope schedule at model time t of T: which scope gets the bonus. */
export function dualScopeBias(t: number, T = 1000, opts: { switchAt?: number; strength?: number } = {}):
  { local: number; global: number } {
  const strength = opts.strength ?? 10;
  const early = t >= (opts.switchAt ?? 0.8 * T);
  return { local: early ? 0 : strength, global: early ? strength : 0 };
}

/** Logit bias of a masked (empty) key: large enough to take no softmax mass, finite so that
 *  no NaN can arise. */
const MASKED = -1e9;

/**
 * One additive logit bias per key, in the order of `clipAttention`'s keys: left, own, right,
 * global. Empty slots are masked; the rest get the schedule's local or global bonus.
 */
export function contextBias(plan: ContextPlan, bias: { local: number; global: number }): HostArray<'float32'> {
  const local = [...plan.left, ...plan.own, ...plan.right].map((f) => (f === EMPTY ? MASKED : bias.local));
  const global = plan.global.map((f) => (f === EMPTY ? MASKED : bias.global));
  return new HostArray(Float32Array.from([...local, ...global]), [local.length + global.length]);
}

/**
 * Temporal attention of a clip over itself and its context. x [L, F, C]: the clip's frames at
 * L positions (batch x height x width); left, right [L, P, C] and global [L, G, C]: the
 * context's layer inputs (zeros in empty slots); bias [P + F + P + G] from contextBias.
 * Returns [L, F, C]: the attention output for the clip's own frames.
 */
export function clipAttention(attn: MultiHeadAttention, p: ParamsOf<MultiHeadAttention>, x: Tensor,
  context: { left: Tensor; right: Tensor; global: Tensor }, bias: Tensor): Tensor {
  const keys = ops.concat([context.left, x, context.right, context.global], 1); // [L, S, C]
  return attn.forward(p, x, keys, ops.reshape(bias, [1, 1, 1, -1]));
}

/**
 * The frames of the video `video` [L, N, C] at `frames` (EMPTY: zeros), as [L, frames, C]:
 * how a test (or a single process) builds the context a worker would receive.
 */
export function gatherFrames(video: HostArray<'float32'>, frames: readonly number[]): HostArray<'float32'> {
  const [l, n, c] = video.shape as [number, number, number];
  const out = new Float32Array(l * frames.length * c);
  for (let i = 0; i < l; i++) {
    frames.forEach((f, j) => {
      if (f === EMPTY) return;
      if (f < 0 || f >= n) throw new RangeError(`frame ${f} is not in 0..${n - 1}`);
      out.set(video.data.subarray((i * n + f) * c, (i * n + f + 1) * c), (i * frames.length + j) * c);
    });
  }
  return new HostArray(out, [l, frames.length, c]);
}
