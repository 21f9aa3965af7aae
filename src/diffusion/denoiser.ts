/**
 * @file The only view samplers have of a network: a Denoiser maps (x_t, t, condition) to a
 * prediction of a declared type. Plus the options every sampler shares (noise source,
 * typed step record, abort signal).
 *
 * What `t` means is the model's business and the schedule's: `Schedule.timesteps` holds the
 * values the model was trained with. For DDPM-family models (discrete VP) it is the training
 * timestep index in [0, T) (fractional between table entries for Euler-type schedules, as in
 * diffusers); for EDM / VE models it is sigma itself; for rectified-flow models it is s * T
 * (diffusers' FlowMatch convention, T = num_train_timesteps); for continuous VP processes it is
 * t in [0, 1]. The state x_t handed to the model is always in the process frame,
 * x_t = alpha_t x0 + sigma_t eps (any input preconditioning, such as EDM's c_in, belongs to the
 * Denoiser).
 */
import { HostArray } from '../engine/host.js';
import type { FloatArray } from './arith.js';
import type { Prediction } from './predictions.js';

/**
 * A batch on the host: rows along axis 0. A float32 `HostArray` is one; float64 batches
 * (plain objects) let tests solve ODEs without float32 rounding.
 */
export interface Batch {
  readonly data: FloatArray;
  readonly shape: readonly number[];
}

export interface Denoiser {
  /** What `predict` returns: eps (noise), x0 (clean sample), v (alpha eps - sigma x0), or
   * flow (the rectified-flow velocity eps - x0). */
  readonly prediction: Prediction;
  /** x: [B, ...] at model times t (one per row). Returns a batch of x's shape. */
  predict(x: Batch, t: Float64Array, condition?: unknown): Promise<Batch>;
}

/**
 * Standard normal noise for sampler step `step` (0-based; the initial latent is the caller's).
 * An `RngKey` adapts as `(n, step) => key.fold(step).normal(n)`.
 */
export type NoiseSource = (n: number, step: number) => Float32Array;

/** What a sampler reports after each step. */
export interface StepRecord {
  readonly sampler: string;
  /** 0-based step index and the number of steps. */
  readonly index: number;
  readonly total: number;
  /** Model time of the (last) evaluation in this step. */
  readonly t: number;
  /** Process coefficients at the start of the step: x = alpha x0 + sigma eps. */
  readonly alpha: number;
  readonly sigma: number;
  /** State after the step, and the x0 estimate used for it. */
  readonly x: Batch;
  readonly denoised: Batch;
}

export interface SamplerOptions {
  /** Passed through to the denoiser unchanged. */
  condition?: unknown;
  /** Required by stochastic samplers (ancestral, churn, eta > 0). */
  noise?: NoiseSource;
  onStep?: (record: StepRecord) => void;
  /** Changes the state in place before step `step`'s model call, in the sampler's own frame
   *  (the level frame for Euler): Faster Diffusion's prior noise injection. One-call-per-step
   *  samplers (not Heun) honour it. */
  perturb?: (state: FloatArray, step: number, t: number) => void;
  signal?: AbortSignal;
}

/** A batch with new data and the same shape; float32 data comes back as a HostArray. */
export function withData(like: Batch, data: FloatArray): Batch {
  if (data.length !== like.data.length) {
    throw new RangeError(`withData: ${data.length} values for shape [${like.shape.join(', ')}]`);
  }
  if (data instanceof Float32Array) return new HostArray<'float32'>(data, like.shape, 'float32');
  return { data, shape: like.shape };
}

/**
 * The rows of each call when `n` rows go in calls of at most `rows`: as few calls as that
 * allows, each of ceil(n / calls) rows but the last (64 rows at most 21 go as 16 + 16 + 16 +
 * 16, not 21 + 21 + 21 + 1: one compiled shape where one fits, and no call of one row).
 */
export function callRows(n: number, rows: number): number[] {
  if (!(rows >= 1)) throw new RangeError(`rows per call must be >= 1, got ${rows}`);
  const calls = Math.max(1, Math.ceil(n / rows));
  const size = Math.ceil(n / calls);
  return Array.from({ length: calls }, (_, i) => Math.min(size, n - i * size));
}

/** The same denoiser making its calls as callRows splits them. The condition, when given, is
 *  one class label per row. */
export function inBatches(base: Denoiser, rows: number): Denoiser {
  if (!Number.isInteger(rows) || rows < 1) throw new RangeError(`inBatches: rows must be an integer >= 1, got ${rows}`);
  return {
    prediction: base.prediction,
    async predict(x: Batch, t: Float64Array, condition?: unknown): Promise<Batch> {
      const n = x.shape[0]!;
      if (n <= rows) return base.predict(x, t, condition);
      const per = x.data.length / n;
      const out = new Float32Array(x.data.length);
      let i = 0;
      for (const size of callRows(n, rows)) {
        const j = i + size;
        // A float32 batch's rows go on as a HostArray, which compiled graphs take.
        const data = x.data.slice(i * per, j * per);
        const xb = withData({ data, shape: [size, ...x.shape.slice(1)] }, data);
        const cb = condition === undefined ? undefined : conditionLabels(condition).slice(i, j);
        out.set((await base.predict(xb, t.subarray(i, j), cb)).data, i * per);
        i = j;
      }
      return withData(x, out);
    },
  };
}

/**
 * The class labels a denoiser's condition carries, one per row: an Int32Array, a number[] or
 * an int64 HostArray (what graph-backed denoisers take).
 */
export function conditionLabels(c: unknown): number[] {
  const values = c instanceof HostArray ? Array.from(c.data as ArrayLike<number | bigint>, Number)
    : Array.isArray(c) || ArrayBuffer.isView(c) ? Array.from(c as ArrayLike<number>, Number) : null;
  if (!values) throw new TypeError(`class labels: expected a list of labels (one per row), got ${typeof c}`);
  return values;
}

/** Labels as the int64 [rows] array a compiled graph takes. */
export function int64Labels(values: readonly number[]): HostArray<'int64'> {
  return new HostArray(BigInt64Array.from(values, (v) => BigInt(v)), [values.length], 'int64');
}

/** Rows [i, j) of a batch and their model times as float32 arrays for a compiled graph. */
export function rowSlice(x: Batch, t: Float64Array, i: number, j: number):
  { x: HostArray<'float32'>; t: HostArray<'float32'> } {
  const per = x.data.length / x.shape[0]!;
  return {
    x: new HostArray(Float32Array.from(x.data.subarray(i * per, j * per)),
      [j - i, ...x.shape.slice(1)], 'float32'),
    t: new HostArray(Float32Array.from(t.subarray(i, j)), [j - i], 'float32'),
  };
}

/** Calls the denoiser at one model time for every row and checks the result's shape. */
export async function evaluate(
  denoiser: Denoiser,
  x: Batch,
  t: number,
  condition: unknown,
): Promise<FloatArray> {
  const rows = x.shape[0] ?? 1;
  const out = await denoiser.predict(x, new Float64Array(rows).fill(t), condition);
  if (out.data.length !== x.data.length) {
    throw new RangeError(
      `denoiser returned shape [${out.shape.join(', ')}] for input [${x.shape.join(', ')}]`,
    );
  }
  return out.data;
}

export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) {
    throw signal.reason instanceof Error ? signal.reason : new Error('sampling aborted');
  }
}

/** The noise source, or an error naming the sampler and option that need it. */
export function requireNoise(opts: SamplerOptions, sampler: string, why: string): NoiseSource {
  if (!opts.noise) throw new TypeError(`${sampler}: opts.noise is required (${why})`);
  return opts.noise;
}
