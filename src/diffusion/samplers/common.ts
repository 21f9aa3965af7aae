/**
 * @file What the samplers share: x0 clipping and dynamic thresholding, the typed step report,
 * noise at the working precision, and the process-kind checks.
 */
import { asPrecisionOf, roundOf, type FloatArray } from '../arith.js';
import { torchQuantileF32 } from '../diffusers/numerics.js';
import { withData, type Batch, type SamplerOptions } from '../denoiser.js';
import type { ProcessKind } from '../process.js';
import type { Schedule } from '../schedule.js';

/**
 * Post-processing of the x0 estimate (diffusers' `clip_sample` / `thresholding`).
 * Dynamic thresholding: Saharia et al. 2022 (Imagen), sec. 2.3 — per sample, s = the `ratio`
 * quantile of |x0|, clamped to [1, maxValue]; x0 -> clamp(x0, -s, s) / s.
 */
export interface X0Options {
  /** Clamp x0 to [-clip, clip] (diffusers: clip_sample with clip_sample_range). */
  clipSample?: number | null;
  thresholding?: { ratio: number; maxValue: number } | null;
}

/** Applies thresholding (which wins, as in diffusers) or clipping to x0 in place. */
export function postprocessX0(x0: FloatArray, shape: readonly number[], o: X0Options): FloatArray {
  const r = roundOf(x0);
  if (o.thresholding) {
    const rows = shape[0] ?? 1;
    const per = x0.length / rows;
    for (let b = 0; b < rows; b++) {
      const row = x0.subarray(b * per, (b + 1) * per);
      const abs = row.map(Math.abs);
      const q =
        x0 instanceof Float32Array
          ? torchQuantileF32(abs, o.thresholding.ratio)
          : quantile64(abs, o.thresholding.ratio);
      const s = r(Math.min(Math.max(q, 1), o.thresholding.maxValue));
      for (let i = 0; i < per; i++) row[i] = r(Math.min(Math.max(row[i]!, -s), s) / s);
    }
  } else if (o.clipSample != null) {
    const c = r(o.clipSample);
    for (let i = 0; i < x0.length; i++) x0[i] = Math.min(Math.max(x0[i]!, -c), c);
  }
  return x0;
}

function quantile64(a: FloatArray, q: number): number {
  const s = Float64Array.from(a).sort();
  const rank = q * (s.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.min(lo + 1, s.length - 1);
  return s[lo]! + (rank - lo) * (s[hi]! - s[lo]!);
}

/** Noise for step `step` at the precision of `like`. */
export function drawNoise(opts: SamplerOptions, like: FloatArray, step: number): FloatArray {
  const z = opts.noise!(like.length, step);
  if (z.length !== like.length) {
    throw new RangeError(`noise source returned ${z.length} values, expected ${like.length}`);
  }
  return asPrecisionOf(z, like);
}

/**
 * Sends the typed step record when the caller asked for one; `point` is the schedule point
 * the step started from (default: `index`; DDIM inversion walks the points backwards).
 */
export function report(
  opts: SamplerOptions,
  sampler: string,
  schedule: Schedule,
  index: number,
  t: number,
  x: Batch,
  state: FloatArray,
  denoised: FloatArray,
  point: number = index,
): void {
  if (!opts.onStep) return;
  opts.onStep({
    sampler,
    index,
    total: schedule.timesteps.length,
    t,
    alpha: schedule.alphas[point]!,
    sigma: schedule.sigmas[point]!,
    x: withData(x, state.slice()),
    denoised: withData(x, denoised.slice()),
  });
}

/** Throws unless the schedule's process is one the sampler is defined for. */
export function requireProcess(s: Schedule, sampler: string, kinds: readonly ProcessKind[]): void {
  if (!kinds.includes(s.process)) {
    throw new TypeError(
      `${sampler}: schedule process '${s.process}' is not supported ` +
        `(expected ${kinds.join(' | ')})`,
    );
  }
}
