/**
 * @file Faster Diffusion (Li, Hu, Khan, Li, Yang, Wang, Cheng, Yang 2023, "Faster Diffusion:
 * Rethinking the Role of the Encoder for Diffusion Model Inference"). Claim: the U-Net
 * encoder's features change little between adjacent steps while the decoder's change a lot,
 * so the encoder (conv_in, down blocks, mid block) can run at a few key steps only and the
 * decoder at every step on the key step's features; since the non-key steps then no longer
 * depend on each other's outputs, their decoder passes run as one batch (the parallel
 * decoder). Stable Diffusion DDIM-50 about 1.8x faster at similar FID and CLIP score
 * (official README), 41% in the abstract.
 *
 * As the official code does it (hutaiHang/Faster-Diffusion, utils_sd.py): key steps are the
 * 50-step list [0, 1, 2, 3, 5, 10, 15, 25, 35] or every k-th step; a key step runs the whole
 * U-Net and keeps the mid block's output and every skip; the steps up to the next key step
 * run the up path on those features with their own time embedding, batched into one call
 * with the key step's (features repeated, timesteps tiled); the scheduler then takes the
 * steps in order. Prior noise injection adds 0.003 x_T to the state while t < T / 2; here it
 * is added before the step's model call (the official sequential pipeline's place; its
 * parallel pipeline adds it after the key step's call, which only the key steps can see).
 */
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { compile, type RuntimeOptions } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { countFlops } from '../engine/flops.js';
import { roundOf, type FloatArray } from '../diffusion/arith.js';
import {
  conditionLabels, int64Labels, rowSlice, withData, type Batch, type Denoiser,
} from '../diffusion/denoiser.js';
import type { Prediction } from '../diffusion/predictions.js';
import type { UNet2DModel } from '../models/unet2d.js';
import type { ParamsOf } from '../nn/module.js';

/** The paper's key steps of a 50-step run (the official '50ls' mode). */
export const PAPER_KEY_STEPS = [0, 1, 2, 3, 5, 10, 15, 25, 35] as const;

export interface FasterDiffusionOptions {
  /** 'paper' (PAPER_KEY_STEPS) or k: every k-th step is a key step (1: every step, plain). */
  keySteps: 'paper' | number;
  /** Batch the decoder passes of a key step's group into one call (default true). */
  parallel?: boolean;
  /** Prior noise injection: x += 0.003 x_T before each step with t < T / 2 (default true). */
  noiseInjection?: boolean;
}

/** Which of `steps` steps are key steps (step 0 always is). */
export function keyStepSchedule(steps: number, keySteps: FasterDiffusionOptions['keySteps']):
  boolean[] {
  if (keySteps !== 'paper' && !(Number.isInteger(keySteps) && keySteps >= 1)) {
    throw new RangeError(`Faster Diffusion key steps must be 'paper' or an integer k >= 1 ` +
      `(every k-th step), got ${keySteps}`);
  }
  const paper = new Set<number>(PAPER_KEY_STEPS);
  return Array.from({ length: steps }, (_, j) =>
    (keySteps === 'paper' ? paper.has(j) : j % keySteps === 0));
}

/** The groups the parallel decoder runs: each key step with the non-key steps after it. */
export function keyStepGroups(isKey: readonly boolean[]): number[][] {
  const groups: number[][] = [];
  isKey.forEach((key, j) => {
    if (key || groups.length === 0) groups.push([j]);
    else groups[groups.length - 1]!.push(j);
  });
  return groups;
}

/**
 * The two traced passes: `key` runs the encoder once at the key step's time and the decoder
 * at g times (the key step's first), rows ordered time-major ([g * N, C, H, W]); it also
 * returns the encoder's features. `decoder` runs the up path alone on given features.
 */
export function fasterDiffusionPasses(unet: UNet2DModel, params: ParamsOf<UNet2DModel>,
  conditional: boolean) {
  const cond = (t: Tensor, batch: number, y?: Tensor) =>
    unet.embed(params, t, { batch, ...(conditional ? { classLabels: y } : {}) });
  const tile = (x: Tensor, g: number) => (g === 1 ? x : ops.concat(new Array<Tensor>(g).fill(x), 0));
  const decodeAt = (hidden: Tensor, skips: readonly Tensor[], ts: Tensor, ys?: Tensor) => {
    const g = (ts.shape[0] as number) / (hidden.shape[0] as number);
    const c = cond(ts, ts.shape[0]! as number, ys);
    const out = unet.decode(params, { hidden: tile(hidden, g), skips: skips.map((s) => tile(s, g)) }, c);
    return unet.head(params, out.hidden, c);
  };
  /** x [N], t [N]; ts [g * N] (time-major), ys [g * N] -> predictions [g * N], features. */
  const key = (x: Tensor, t: Tensor, ts: Tensor, y?: Tensor, ys?: Tensor) => {
    const state = unet.encode(params, x, cond(t, x.shape[0]! as number, y));
    return { out: decodeAt(state.hidden, state.skips, ts, ys), hidden: state.hidden,
      skips: [...state.skips] };
  };
  return { key, decoder: decodeAt };
}

export interface FasterDiffusionDenoiser extends Denoiser {
  readonly stats: { calls: number; keyCalls: number; rowCalls: number };
  /** FLOPs of a decoder-only pass over the full U-Net's, for an input of this shape. */
  decoderFlops(shape: readonly number[]): number;
  /** The prior noise injection for SamplerOptions.perturb (records x_T at step 0). */
  readonly perturb?: (state: FloatArray, step: number, t: number) => void;
  /** Forgets the features and restarts the schedule (a new batch of images). */
  reset(): void;
  dispose(): Promise<void>;
}

/**
 * A Denoiser over a U-Net that runs its encoder at key steps only. `times` are the model
 * times of the sampler's steps, known in advance (one model call per step), so a key step can
 * decode its whole group at once; every call checks that it comes at the planned time.
 * Rows are split into slices of at most `rows`; a group's decoder passes are batched up to
 * `maxRows` rows a call (the pipeline passes its batch size: on a CPU a bigger batch runs no
 * faster, and every new group size is a new graph shape to compile; `sample --batch-size`
 * raises it). Each slice keeps its own features and outputs.
 */
export function fasterDiffusionDenoiser(unet: UNet2DModel, params: ParamsOf<UNet2DModel>,
  prediction: Prediction, o: FasterDiffusionOptions & { conditional: boolean; rows: number;
    times: readonly number[]; trainTimesteps: number; maxRows?: number;
    runtime?: RuntimeOptions }): FasterDiffusionDenoiser {
  const isKey = keyStepSchedule(o.times.length, o.keySteps);
  const parallel = o.parallel ?? true;
  /** The steps from each step to the end of its group. */
  const rest = new Map<number, number[]>();
  for (const g of keyStepGroups(isKey)) g.forEach((s, k) => rest.set(s, g.slice(k)));
  const { key, decoder } = fasterDiffusionPasses(unet, params, o.conditional);
  const rt = { ...o.runtime, name: 'faster_diffusion' };
  const keyPlain = compile((x: Tensor, t: Tensor, ts: Tensor) => key(x, t, ts), rt);
  const keyLabelled = compile((x: Tensor, t: Tensor, ts: Tensor, y: Tensor, ys: Tensor) =>
    key(x, t, ts, y, ys), rt);
  const decPlain = compile((h: Tensor, s: Tensor[], ts: Tensor) => decoder(h, s, ts), rt);
  const decLabelled = compile((h: Tensor, s: Tensor[], ts: Tensor, ys: Tensor) =>
    decoder(h, s, ts, ys), rt);
  type Features = { hidden: HostArray; skips: HostArray[] };
  const features = new Map<number, Features>();
  /** Predictions decoded ahead, by slice and step. */
  const ahead = new Map<string, Float32Array>();
  const stats = { calls: 0, keyCalls: 0, rowCalls: 0 };
  let xT: FloatArray | undefined;
  /** The labels once per decoded step (rows are time-major). */
  const tiled = (v: number[], g: number) => int64Labels(new Array<number[]>(g).fill(v).flat());
  return {
    prediction,
    stats,
    async predict(x: Batch, t: Float64Array, condition?: unknown): Promise<Batch> {
      const step = stats.calls++;
      if (step >= o.times.length) {
        throw new RangeError(`Faster Diffusion planned ${o.times.length} model calls; call ` +
          `${step + 1} is one more (a sampler with one model call per step is needed)`);
      }
      if (t.some((v) => Math.abs(v - o.times[step]!) > 1e-6 * Math.max(1, Math.abs(v)))) {
        throw new RangeError(`Faster Diffusion: step ${step} was planned at model time ` +
          `${o.times[step]}, but the sampler asked for ${t[0]}`);
      }
      const keyStep = isKey[step]!;
      if (keyStep) stats.keyCalls++;
      const n = x.shape[0]!;
      const per = x.data.length / n;
      const out = new Float32Array(x.data.length);
      const labels = o.conditional ? conditionLabels(condition) : undefined;
      for (let i = 0, slice = 0; i < n; i += o.rows, slice++) {
        const j = Math.min(n, i + o.rows);
        const rows = j - i;
        const ys = labels?.slice(i, j);
        const stored = ahead.get(`${slice}:${step}`);
        if (stored) {
          ahead.delete(`${slice}:${step}`);
          out.set(stored, i * per);
          continue;
        }
        stats.rowCalls++;
        // The steps this call decodes: the rest of the group, as many as maxRows allows.
        const most = parallel ? Math.max(1, Math.floor((o.maxRows ?? Infinity) / rows)) : 1;
        const steps = rest.get(step)!.slice(0, most);
        const ts = new HostArray(Float32Array.from(steps.flatMap((s) =>
          new Array<number>(rows).fill(o.times[s]!))), [steps.length * rows]);
        let pred: Float32Array;
        if (keyStep || !features.has(slice)) {
          const { x: xs, t: tk } = rowSlice(x, t, i, j);
          const r = (ys ? await keyLabelled(xs, tk, ts, int64Labels(ys), tiled(ys, steps.length))
            : await keyPlain(xs, tk, ts)) as { out: HostArray; hidden: HostArray;
            skips: HostArray[] };
          features.set(slice, { hidden: r.hidden, skips: r.skips });
          pred = r.out.data as Float32Array;
        } else {
          const f = features.get(slice)!;
          pred = ((ys ? await decLabelled(f.hidden, f.skips, ts, tiled(ys, steps.length))
            : await decPlain(f.hidden, f.skips, ts)) as HostArray).data as Float32Array;
        }
        const size = rows * per;
        out.set(pred.subarray(0, size), i * per);
        steps.slice(1).forEach((s, k) =>
          ahead.set(`${slice}:${s}`, pred.slice((k + 1) * size, (k + 2) * size)));
      }
      return withData(x, out);
    },
    decoderFlops(shape) {
      const xs = { shape: [...shape] };
      const ts = { shape: [shape[0]!] };
      const ys = { shape: [shape[0]!], dtype: 'int64' as const };
      const keyGraph = o.conditional ? keyLabelled.trace(xs, ts, ts, ys, ys)
        : keyPlain.trace(xs, ts, ts);
      const [h, ...skips] = keyGraph.outputs.slice(1).map((v) => ({ shape: v.shape.map(Number) }));
      const decGraph = o.conditional ? decLabelled.trace(h!, skips, ts, ys)
        : decPlain.trace(h!, skips, ts);
      return countFlops(decGraph) / countFlops(keyGraph);
    },
    ...((o.noiseInjection ?? true) ? {
      perturb(state: FloatArray, step: number, time: number) {
        if (step === 0) xT = state.slice();
        if (time / o.trainTimesteps >= 0.5 || !xT) return;
        const r = roundOf(state);
        for (let k = 0; k < state.length; k++) state[k] = r(state[k]! + r(0.003 * xT[k]!));
      },
    } : {}),
    reset() {
      features.clear();
      ahead.clear();
      stats.calls = 0;
      xT = undefined;
    },
    dispose: async () => {
      await Promise.all([keyPlain, keyLabelled, decPlain, decLabelled].map((c) => c.dispose()));
    },
  };
}
