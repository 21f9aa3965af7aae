/**
 * @file Guidance as Denoiser wrappers, so samplers stay unaware of it.
 *
 * - Classifier-free guidance (Ho & Salimans 2022): p = p_u + w (p_c - p_u), with the
 *   conditional and unconditional predictions from ONE batched model call ([x; x] with
 *   [c; u]). Works on any prediction type (the combination is affine).
 * - Guidance rescale (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are
 *   Flawed", sec. 3.4): p_r = p * std(p_c) / std(p) per sample, then phi p_r + (1 - phi) p.
 * - Guidance interval (Kynkaanniemi et al. 2024, "Applying Guidance in a Limited Interval
 *   Improves Sample and Distribution Quality"): guide only for model times in [lo, hi];
 *   elsewhere one conditional call.
 * - A hook for gradient guidance: a function (x, t, denoised) -> correction added to the x0
 *   estimate. Classifier guidance (Dhariwal & Nichol 2021) is the correction
 *   (sigma^2 / alpha) s grad_x log p(y | x_t), i.e. score + s grad log p(y | x_t).
 */
import { zerosLike, type FloatArray } from './arith.js';
import { withData, type Batch, type Denoiser } from './denoiser.js';
import { fromX0Eps, toEps, toX0 } from './predictions.js';
import type { Process } from './process.js';

export interface CfgOptions {
  /** Guidance weight w (1 = conditional only, 0 = unconditional only). */
  scale: number;
  /** The condition that means "no condition" (diffusers: empty prompt, null class). */
  uncondition: unknown;
  /** phi in [0, 1]; 0 (default) disables rescaling. */
  rescale?: number;
  /** Apply CFG only for model times t with lo <= t <= hi. */
  interval?: readonly [number, number];
  /** Batches [cond; uncond] for the model (default: concatenates batches or arrays by rows). */
  concat?: (cond: unknown, uncond: unknown) => unknown;
}

function isBatch(c: unknown): c is Batch {
  return typeof c === 'object' && c !== null && 'data' in c && 'shape' in c;
}

/** Row-wise concatenation of two conditions: batches, arrays, or both absent. */
export function concatConditions(a: unknown, b: unknown): unknown {
  if (a == null && b == null) return undefined;
  if (isBatch(a) && isBatch(b)) {
    const data = zerosLike(a.data, a.data.length + b.data.length);
    data.set(a.data);
    data.set(b.data, a.data.length);
    return withData(
      { data, shape: [(a.shape[0] ?? 1) + (b.shape[0] ?? 1), ...a.shape.slice(1)] },
      data,
    );
  }
  if (Array.isArray(a) && Array.isArray(b)) return [...a, ...b];
  throw new TypeError(
    'classifierFreeGuidance: conditions must both be batches, both arrays, or both absent; ' +
      'pass opts.concat for other forms',
  );
}

/** Rows per sample: standard deviation over all but the first axis. */
function rowStd(a: FloatArray, rows: number): Float64Array {
  const per = a.length / rows;
  return Float64Array.from({ length: rows }, (_, b) => {
    let m = 0;
    for (let i = b * per; i < (b + 1) * per; i++) m += a[i]! / per;
    let v = 0;
    for (let i = b * per; i < (b + 1) * per; i++) v += (a[i]! - m) ** 2;
    return Math.sqrt(v / Math.max(per - 1, 1));
  });
}

/** Wraps a denoiser with classifier-free guidance. */
export function classifierFreeGuidance(base: Denoiser, opts: CfgOptions): Denoiser {
  const concat = opts.concat ?? concatConditions;
  const phi = opts.rescale ?? 0;
  return {
    prediction: base.prediction,
    async predict(x: Batch, t: Float64Array, condition?: unknown): Promise<Batch> {
      const [lo, hi] = opts.interval ?? [-Infinity, Infinity];
      if (opts.scale === 1 || t.some((v) => v < lo || v > hi))
        return base.predict(x, t, condition);
      const n = x.data.length;
      const rows = x.shape[0] ?? 1;
      const xx = zerosLike(x.data, 2 * n);
      xx.set(x.data);
      xx.set(x.data, n);
      const tt = new Float64Array(2 * rows);
      tt.set(t);
      tt.set(t, rows);
      const both = await base.predict(
        withData({ data: xx, shape: [2 * rows, ...x.shape.slice(1)] }, xx),
        tt,
        concat(condition, opts.uncondition),
      );
      const c = both.data.subarray(0, n);
      const u = both.data.subarray(n);
      const g = zerosLike(x.data);
      for (let i = 0; i < n; i++) g[i] = u[i]! + opts.scale * (c[i]! - u[i]!);
      if (phi > 0) {
        const sc = rowStd(c, rows);
        const sg = rowStd(g, rows);
        const per = n / rows;
        for (let i = 0; i < n; i++) {
          const b = Math.floor(i / per);
          const k = sg[b]! > 0 ? sc[b]! / sg[b]! : 1;
          g[i] = phi * g[i]! * k + (1 - phi) * g[i]!;
        }
      }
      return withData(x, g);
    },
  };
}

/**
 * Correction to the x0 estimate for rows of x at times t (alpha / sigma per row given);
 * return one value per element of x.
 */
export type GuidanceFn = (
  x: Batch,
  t: Float64Array,
  denoised: FloatArray,
  coefficients: { alpha: Float64Array; sigma: Float64Array },
) => FloatArray | Promise<FloatArray>;

/** Wraps a denoiser so its x0 estimate is shifted by `guide` (in its own prediction type). */
export function withGuidance(base: Denoiser, process: Process, guide: GuidanceFn): Denoiser {
  return {
    prediction: base.prediction,
    async predict(x: Batch, t: Float64Array, condition?: unknown): Promise<Batch> {
      const p = (await base.predict(x, t, condition)).data;
      const rows = x.shape[0] ?? 1;
      const per = x.data.length / rows;
      const alpha = Float64Array.from(t, (v) => process.at(v).alpha);
      const sigma = Float64Array.from(t, (v) => process.at(v).sigma);
      const x0 = zerosLike(x.data);
      const rowOf = (a: FloatArray, b: number): FloatArray => a.subarray(b * per, (b + 1) * per);
      for (let b = 0; b < rows; b++) {
        x0.set(
          toX0(base.prediction, rowOf(x.data, b), rowOf(p, b), alpha[b]!, sigma[b]!),
          b * per,
        );
      }
      const corr = await guide(x, t, x0, { alpha, sigma });
      const out = zerosLike(x.data);
      for (let b = 0; b < rows; b++) {
        const g = rowOf(x0, b).map((v, i) => v + corr[b * per + i]!);
        const eps = toEps('x0', rowOf(x.data, b), g, alpha[b]!, sigma[b]!);
        out.set(fromX0Eps(base.prediction, g, eps, alpha[b]!, sigma[b]!), b * per);
      }
      return withData(x, out);
    },
  };
}
