/**
 * @file Long videos by clip parallelism (Video-Infinity; methods/video-infinity.ts): the video
 * is cut into clips, one per worker; every worker runs the same sampler on its clip, and at
 * every model call and every temporal layer of the video U-Net it sends its neighbours the
 * layer input of its boundary frames, contributes its global frames to an all-gather, and
 * attends over its own frames and what it received. The model runs as compiled pieces cut at
 * the temporal layers (models/video-unet.ts), with the exchange between them.
 *
 * Every worker draws its clip's part of the noise of the whole video (the same seed gives the
 * same video whatever the number of workers), and samples with the same schedule, so the
 * workers' model calls pair up one to one; the exchanges are tagged by call and layer.
 */
import { Worker } from 'node:worker_threads';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile, type RuntimeOptions } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import type { Tree } from '../engine/tree.js';
import type { Batch, Denoiser } from '../diffusion/denoiser.js';
import { sample } from '../diffusion/sampling.js';
import {
  localCollective, localCollectives, transferablePorts, type Collective,
} from '../distributed/collective.js';
import { threadsPerSlot } from '../distributed/thread-runner.js';
import {
  contextBias, contextPlan, dualScopeBias, gatherFrames, globalFramesOf, type ClipLayout, type ContextPlan,
} from '../methods/video-infinity.js';
import { relativeIndex, type DiffuseVideoUNet, type VideoState } from '../models/video-unet.js';
import type { ParamsOf } from '../nn/module.js';
import type { VideoPipeline } from './video.js';
import type { ClipThreadData } from './video-infinity-thread.js';

export interface ClipParallelOptions {
  layout: ClipLayout;
  steps: number;
  seed: number;
  sampler?: string;
  /** The dual-scope schedule (the paper's: switch at 0.8 T, strength 10); false: no scope bias. */
  scope?: { switchAt?: number; strength?: number } | false;
  runtime?: RuntimeOptions;
  /** Called after each model call of the clip (sampleLongVideo and the threads: clip 0's). */
  onCall?: (call: number) => void;
}

/** Parts received from several ranks, each [L, k, C], joined along the frame axis. */
function joinFrames(parts: readonly Float32Array[], l: number, c: number): HostArray<'float32'> {
  const sizes = parts.map((p) => p.length / (l * c));
  const total = sizes.reduce((a, b) => a + b, 0);
  const out = new Float32Array(l * total * c);
  let at = 0;
  parts.forEach((p, r) => {
    for (let i = 0; i < l; i++) out.set(p.subarray(i * sizes[r]! * c, (i + 1) * sizes[r]! * c), (i * total + at) * c);
    at += sizes[r]!;
  });
  return new HostArray(out, [l, total, c]);
}

/**
 * The denoiser of clip `clip`: the video U-Net in pieces, exchanging each temporal layer's
 * input over `collective` (rank = clip). Rows of x are videos of this clip's frames.
 */
export function clipDenoiser(p: VideoPipeline, clip: number, o: ClipParallelOptions, collective: Collective):
  Denoiser & { dispose(): Promise<void> } {
  const net: DiffuseVideoUNet = p.model.module;
  const { layout } = o;
  const F = layout.clipFrames;
  const plan: ContextPlan = contextPlan(clip, layout);
  const consts = (): ParamsOf<DiffuseVideoUNet> => ops.constantTree(p.params) as unknown as ParamsOf<DiffuseVideoUNet>;
  const K = net.temporalLayers.length;
  const runtime = { ...o.runtime, name: `clip_${clip}` };
  const P = layout.padding;
  const G = plan.global.length;
  const keyFrames = [...plan.left, ...plan.own, ...plan.right, ...plan.global];
  const rel = relativeIndex(plan.own, keyFrames, net.config.max_relative_distance);
  const first = compile((x: Tensor, t: Tensor) => net.segment(consts(), net.begin(consts(), x, t), 0), runtime);
  const inputs = net.temporalLayers.map(({ layer, params }) =>
    compile((s: VideoState) => layer.layerInput(params(consts()), s.h, F), runtime));
  // A layer with its context, then the segment up to the next layer (the last: to the output).
  const applies = net.temporalLayers.map(({ layer, params }, k) => compile((s: VideoState, left: Tensor,
    right: Tensor, global: Tensor, relIndex: Tensor, bias: Tensor) => {
    const pp = params(consts());
    const own = layer.layerInput(pp, s.h, F);
    const keys = ops.concat([...(P ? [left] : []), own, ...(P ? [right] : []), ...(G ? [global] : [])], 1);
    const next = net.segment(consts(), { ...s, h: layer.apply(pp, s.h, F, keys, relIndex, bias) }, k + 1);
    return k === K - 1 ? net.end(consts(), next, F) : next;
  }, { ...runtime, argNames: ['state', 'left', 'right', 'global', 'rel', 'bias'] }));
  const whole = K === 0 ? compile((x: Tensor, t: Tensor) => net.forward(consts(), x, t), runtime) : undefined;
  let calls = 0;
  const localFrames = { toLeft: Array.from({ length: P }, (_, i) => i), toRight: Array.from({ length: P }, (_, i) => F - P + i) };
  const globalOwn = globalFramesOf(clip, layout).map((f) => f - clip * F);
  return {
    prediction: p.scheduler.prediction,
    async predict(x: Batch, t: Float64Array): Promise<Batch> {
      const xs = new HostArray<'float32'>(Float32Array.from(x.data), x.shape, 'float32');
      const ts = new HostArray(Float32Array.from(t), [t.length]);
      if (whole) return (await whole(xs, ts)) as HostArray<'float32'>;
      const call = calls++;
      const scope = o.scope === false ? { local: 0, global: 0 } : dualScopeBias(t[0]!,
        p.scheduler.config.num_train_timesteps as number, o.scope ?? {});
      const bias = contextBias(plan, scope);
      let state = (await first(xs, ts)) as unknown as Tree<HostArray>;
      for (let k = 0; k < K; k++) {
        const y = (await inputs[k]!(state as never)) as HostArray<'float32'>; // [L, F, C]
        const [l, , c] = y.shape as [number, number, number];
        const tag = `call ${call} layer ${k}`;
        const [near, far] = await Promise.all([
          P ? collective.neighbourExchange(tag, gatherFrames(y, localFrames.toLeft).data, gatherFrames(y, localFrames.toRight).data)
            : Promise.resolve({ fromLeft: null, fromRight: null }),
          G ? collective.allGather(tag, gatherFrames(y, globalOwn).data) : Promise.resolve([]),
        ]);
        const empty = new HostArray(new Float32Array(l * P * c), [l, P, c]);
        const side = (d: Float32Array | null) => (d ? new HostArray(d, [l, P, c]) : empty);
        state = (await applies[k]!(state as never, side(near.fromLeft), side(near.fromRight),
          G ? joinFrames(far, l, c) : new HostArray(new Float32Array(0), [l, 0, c]), rel, bias)) as unknown as Tree<HostArray>;
      }
      o.onCall?.(call);
      return state as unknown as HostArray<'float32'>;
    },
    dispose: async () => {
      const all: { dispose(): Promise<void> }[] = [first, ...inputs, ...applies, ...(whole ? [whole] : [])];
      await Promise.all(all.map((f) => f.dispose()));
    },
  };
}

/** The initial noise of the whole video [1, C, N, H, W] from `seed`, cut into clip `clip`'s frames. */
function clipNoise(key: RngKey, shape: readonly [number, number, number, number], clip: number, clipFrames: number,
  stream: number): Float32Array {
  const [c, n, h, w] = shape;
  const all = key.fold(stream).normal(c * n * h * w);
  const out = new Float32Array(c * clipFrames * h * w);
  for (let k = 0; k < c; k++) {
    out.set(all.subarray((k * n + clip * clipFrames) * h * w, (k * n + (clip + 1) * clipFrames) * h * w),
      k * clipFrames * h * w);
  }
  return out;
}

/** Samples clip `clip` of the video over `collective`: [C, F, H, W] values in [-1, 1]. */
export async function sampleClip(p: VideoPipeline, clip: number, o: ClipParallelOptions, collective: Collective):
  Promise<Float32Array> {
  const { layout } = o;
  const c = p.model.config;
  const n = layout.clips * layout.clipFrames;
  const [side, ch] = [c.sample_size, c.in_channels];
  const key = RngKey.fromSeed(o.seed);
  const d = clipDenoiser(p, clip, o, collective);
  try {
    const sampler = o.sampler ?? (p.scheduler.family === 'flow' ? 'flow-euler' : 'ddim');
    const x0 = new HostArray<'float32'>(clipNoise(key, [ch, n, side, side], clip, layout.clipFrames, 0),
      [1, ch, layout.clipFrames, side, side], 'float32');
    const x = await sample(d, x0, p.scheduler, { sampler, steps: o.steps,
      noise: (_, step) => clipNoise(key, [ch, n, side, side], clip, layout.clipFrames, step + 1) });
    return Float32Array.from(x.data, (v) => Math.min(1, Math.max(-1, v)));
  } catch (e) {
    collective.fail((e as Error).message); // the other clips stop waiting for this one
    throw e;
  } finally {
    await d.dispose();
  }
}

/** Clips [C, F, H, W] side by side as one video [1, C, clips F, H, W]. */
function joinClips(clips: readonly Float32Array[], p: VideoPipeline, layout: ClipLayout): HostArray<'float32'> {
  const { sample_size: side, in_channels: ch } = p.model.config;
  const n = layout.clips * layout.clipFrames;
  const per = layout.clipFrames * side * side;
  const out = new Float32Array(ch * n * side * side);
  clips.forEach((x, clip) => {
    for (let k = 0; k < ch; k++) out.set(x.subarray(k * per, (k + 1) * per), (k * n + clip * layout.clipFrames) * side * side);
  });
  return new HostArray(out, [1, ch, n, side, side]);
}

/**
 * One video of layout.clips x layout.clipFrames frames, its clips sampled side by side in this
 * thread over an in-process collective (no parallel speed-up: for tests and small videos).
 */
export async function sampleLongVideo(p: VideoPipeline, o: ClipParallelOptions): Promise<HostArray<'float32'>> {
  const collectives = localCollectives(o.layout.clips).map((l) => localCollective(l));
  try {
    const { onCall, ...quiet } = o; // progress from clip 0 only
    const clips = await Promise.all(collectives.map((col, clip) => sampleClip(p, clip, clip ? quiet : { ...quiet,
      ...(onCall ? { onCall } : {}) }, col)));
    return joinClips(clips, p, o.layout);
  } finally {
    collectives.forEach((col) => col.close());
  }
}

/**
 * This process's clip of a video sampled by ranks anywhere (a networked Collective: each rank
 * runs this with its own rank); the clips are all-gathered at the end, so every rank returns
 * the whole video.
 */
export async function sampleLongVideoRank(p: VideoPipeline, o: ClipParallelOptions, collective: Collective):
  Promise<HostArray<'float32'>> {
  if (collective.size !== o.layout.clips) {
    throw new RangeError(`the collective has ${collective.size} ranks for ${o.layout.clips} clips`);
  }
  const clip = await sampleClip(p, collective.rank, o, collective);
  return joinClips(await collective.allGather('clips', clip), p, o.layout);
}

/**
 * The same video with each clip in its own worker thread (ONNX Runtime's cores shared out
 * among them), loading the pipeline folder `model`. A clip that fails stops the others.
 */
export async function sampleLongVideoThreads(model: string, p: VideoPipeline, o: ClipParallelOptions,
  opts: { timeoutMs?: number } = {}): Promise<HostArray<'float32'>> {
  const { layout } = o;
  const links = localCollectives(layout.clips);
  const { onCall, runtime: _, ...options } = o;
  const threads = links.map((l, clip) => new Worker(new URL('./video-infinity-thread.js', import.meta.url), {
    workerData: { model, clip, links: l, options, threads: threadsPerSlot(layout.clips),
      timeoutMs: opts.timeoutMs ?? 60_000 } satisfies ClipThreadData,
    transferList: transferablePorts(l),
  }));
  const stopAll = (reason: string) => threads.forEach((t) => t.postMessage({ type: 'abort', reason }));
  try {
    const clips = await Promise.all(threads.map((t, clip) => new Promise<Float32Array>((resolve, reject) => {
      t.on('message', (m: { type: string; call?: number; data?: Float32Array; message?: string }) => {
        if (m.type === 'call' && clip === 0) onCall?.(m.call!);
        if (m.type === 'clip') resolve(m.data!);
        if (m.type === 'error') reject(new Error(`clip ${clip}: ${m.message}`));
      });
      t.once('error', (e) => reject(new Error(`clip ${clip}: ${e.message}`)));
      t.once('exit', (code) => reject(new Error(`clip ${clip}: its thread exited (code ${code}) without a result`)));
    }).catch((e: Error) => {
      stopAll(e.message);
      throw e;
    })));
    return joinClips(clips, p, layout);
  } finally {
    await Promise.all(threads.map((t) => t.terminate()));
  }
}
