/**
 * @file Diffusion Classifier: Li, Prabhudesai, Duggal, Brown & Pathak 2023, "Your Diffusion
 * Model is Secretly a Zero-Shot Classifier" (official code: diffusion-classifier/
 * diffusion-classifier, eval_prob_adaptive.py).
 *
 * Claim: a class-conditional diffusion model is a classifier without any further training:
 * predict argmin_c E_{t, eps} || eps - eps_theta(x_t, t, c) ||^2, the class whose conditional
 * denoiser best explains the image (a Monte-Carlo estimate of the ELBO's class dependence).
 * With the adaptive strategy, most classes are ruled out after a few (t, eps) trials, so
 * the cost per image grows far slower than classes x trials.
 *
 * As the official code does it: the timesteps form one grid range(T/n/2, T, T/n) of
 * n = max(n_samples) points; round r evaluates a strided subset of n_samples[r] grid points
 * (points already seen are skipped), then keeps the to_keep[r] classes with the lowest mean
 * error over every point evaluated so far; the last round keeps one. Every class sees the
 * same (t, eps) pairs (the noise is drawn per grid point and trial, not per class): the
 * paper's variance reduction, switchable here for the ablation. Errors are the per-image mean
 * over pixels of L2, L1 or Huber (delta 1, as torch's huber_loss).
 *
 * Here a round is batched over images as well: every surviving (image, class, t, trial) row
 * of a batch of images goes through one model call (split only by memory), so a round is a
 * few large graph calls rather than one small call per image.
 */
import { RngKey } from '../engine/random/philox.js';

export type ErrorNorm = 'l2' | 'l1' | 'huber';
export const ERROR_NORMS: readonly ErrorNorm[] = ['l2', 'l1', 'huber'];

export interface DiffusionClassifierOptions {
  /** Timesteps evaluated per round (each a strided subset of one grid), e.g. [10, 50]. */
  samples: readonly number[];
  /** Classes kept after each round, e.g. [3, 1]; the last must be 1. */
  keep: readonly number[];
  /** Noise draws per timestep. */
  trials: number;
  norm: ErrorNorm;
  /** The same eps for every class at a (t, trial) (the paper's choice), or one per class. */
  sharedNoise: boolean;
}

export const DIFFUSION_CLASSIFIER_DEFAULTS: Readonly<DiffusionClassifierOptions> = Object.freeze({
  samples: [10, 50], keep: [3, 1], trials: 1, norm: 'l2', sharedNoise: true,
});

/** The noise levels the model is called at, and the coefficients x_t = alpha x0 + sigma eps. */
export interface NoiseLevels {
  /** Number of training timesteps T (the grid spans [0, T)). */
  T: number;
  coefficients(t: number): { alpha: number; sigma: number };
}

/** The model's noise prediction for rows x [n, per] at timesteps t [n] with class labels. */
export type EpsModel = (x: Float32Array, t: Float64Array, labels: Int32Array) =>
  Promise<Float32Array>;

/** The official grid: range(T / n / 2, T, T / n), first n points (integer division). */
export function timestepGrid(T: number, n: number): number[] {
  if (!(Number.isInteger(n) && n >= 1 && n <= T)) {
    throw new RangeError(`timestep grid: ${n} samples is not an integer in [1, ${T}]`);
  }
  const stride = Math.floor(T / n);
  const grid: number[] = [];
  for (let t = Math.floor(stride / 2); t < T && grid.length < n; t += stride) grid.push(t);
  return grid;
}

/** Grid indices round `samples` evaluates: the official strided slice
 *  grid[len / s / 2 :: len / s][:s], less indices already evaluated. */
export function roundIndices(gridLength: number, samples: number, evaluated: ReadonlySet<number>):
  number[] {
  const stride = Math.max(1, Math.floor(gridLength / samples));
  const out: number[] = [];
  for (let i = Math.floor(stride / 2); i < gridLength && out.length < samples; i += stride) {
    if (!evaluated.has(i)) out.push(i);
  }
  return out;
}

/** Checks the round schedule: as many `keep` as `samples`, keep decreasing to exactly 1. */
export function checkRounds(o: DiffusionClassifierOptions, classes: number, T: number): void {
  const { samples, keep } = o;
  if (samples.length === 0 || samples.length !== keep.length) {
    throw new RangeError(`diffusion classifier: samples (${samples.join(',')}) and keep ` +
      `(${keep.join(',')}) need one entry per round, as many of each`);
  }
  for (const s of samples) {
    if (!(Number.isInteger(s) && s >= 1 && s <= T)) {
      throw new RangeError(`diffusion classifier: samples per round must be integers in [1, ${T}], got ${s}`);
    }
  }
  keep.forEach((k, i) => {
    const before = i === 0 ? classes : keep[i - 1]!;
    if (!(Number.isInteger(k) && k >= 1 && k <= before)) {
      throw new RangeError(`diffusion classifier: keep[${i}] = ${k} must be an integer in ` +
        `[1, ${before}] (the classes left before that round)`);
    }
  });
  if (keep[keep.length - 1] !== 1) {
    throw new RangeError(`diffusion classifier: the last round must keep 1 class, got ${keep[keep.length - 1]}`);
  }
  if (!(Number.isInteger(o.trials) && o.trials >= 1)) {
    throw new RangeError(`diffusion classifier: trials must be an integer >= 1, got ${o.trials}`);
  }
  if (!ERROR_NORMS.includes(o.norm)) {
    throw new RangeError(`diffusion classifier: norm '${o.norm}' is not one of ${ERROR_NORMS.join(', ')}`);
  }
}

/** Mean over the `per` values of one row of the L2 / L1 / Huber error between a and b. */
export function rowError(a: Float32Array, b: Float32Array, offset: number, per: number,
  norm: ErrorNorm): number {
  let s = 0;
  for (let i = offset; i < offset + per; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    s += norm === 'l2' ? d * d : norm === 'l1' ? d : d < 1 ? 0.5 * d * d : d - 0.5;
  }
  return s / per;
}

export interface ImageVerdict {
  /** The predicted class. */
  prediction: number;
  /** Per class: mean error over the trials it was scored on (eliminated classes keep the mean
   *  at their elimination). */
  meanError: Float64Array;
  /** Per class: how many (t, trial) pairs it was scored on. */
  trials: Int32Array;
}

export interface BatchVerdict {
  images: ImageVerdict[];
  /** Model rows evaluated (each one image x class x t x trial). */
  rows: number;
}

/**
 * Classifies images x0 [B, per] (the first image has index `first`, which seeds its noise)
 * with a class-conditional model of `classes` classes. `noise(image, index)` draws the eps of
 * an image's grid point x trial (and class, without shared noise); by default a Philox key.
 */
export async function classifyBatch(model: EpsModel, levels: NoiseLevels, x0: Float32Array,
  per: number, classes: number, o: DiffusionClassifierOptions,
  noise: (image: number, index: number) => Float32Array):
  Promise<BatchVerdict> {
  checkRounds(o, classes, levels.T);
  const B = x0.length / per;
  if (!Number.isInteger(B)) throw new RangeError(`images: ${x0.length} values is not a multiple of ${per}`);
  const grid = timestepGrid(levels.T, Math.max(...o.samples));
  const sums = Array.from({ length: B }, () => new Float64Array(classes));
  const counts = Array.from({ length: B }, () => new Int32Array(classes));
  let remaining = Array.from({ length: B }, () => Array.from({ length: classes }, (_, c) => c));
  const evaluated = new Set<number>();
  let rowsDone = 0;
  for (let r = 0; r < o.samples.length; r++) {
    const points = roundIndices(grid.length, o.samples[r]!, evaluated);
    points.forEach((i) => evaluated.add(i));
    // Rows in order image, class, grid point, trial.
    const rows: { b: number; c: number; g: number; k: number }[] = [];
    for (let b = 0; b < B; b++) {
      for (const c of remaining[b]!) {
        for (const g of points) for (let k = 0; k < o.trials; k++) rows.push({ b, c, g, k });
      }
    }
    if (rows.length > 0) {
      const n = rows.length;
      const xt = new Float32Array(n * per);
      const eps = new Float32Array(n * per);
      const t = new Float64Array(n);
      const labels = new Int32Array(n);
      rows.forEach(({ b, c, g, k }, j) => {
        const index = (g * o.trials + k) * (o.sharedNoise ? 1 : classes) + (o.sharedNoise ? 0 : c);
        const e = noise(b, index);
        if (e.length !== per) throw new RangeError(`noise: expected ${per} values, got ${e.length}`);
        const { alpha, sigma } = levels.coefficients(grid[g]!);
        for (let i = 0; i < per; i++) xt[j * per + i] = alpha * x0[b * per + i]! + sigma * e[i]!;
        eps.set(e, j * per);
        t[j] = grid[g]!;
        labels[j] = c;
      });
      const pred = await model(xt, t, labels);
      if (pred.length !== n * per) {
        throw new RangeError(`model returned ${pred.length} values for ${n} rows of ${per}`);
      }
      rows.forEach(({ b, c }, j) => {
        sums[b]![c] += rowError(eps, pred, j * per, per, o.norm);
        counts[b]![c]++;
      });
      rowsDone += n;
    }
    const keep = o.keep[r]!;
    remaining = remaining.map((cs, b) => [...cs]
      .sort((p, q) => sums[b]![p]! / counts[b]![p]! - sums[b]![q]! / counts[b]![q]! || p - q)
      .slice(0, keep));
  }
  return {
    rows: rowsDone,
    images: remaining.map((cs, b) => ({
      prediction: cs[0]!,
      meanError: Float64Array.from(sums[b]!, (s, c) => s / counts[b]![c]!),
      trials: counts[b]!,
    })),
  };
}

/** Philox noise for image `first + b`: one key per image, one draw per index. */
export function philoxNoise(seed: number, first: number, per: number):
  (image: number, index: number) => Float32Array {
  const key = RngKey.fromSeed(seed);
  return (b, index) => key.fold(first + b).fold(index).normal(per);
}

/** Model rows per image the round schedule costs (shared by every image): sum over rounds of
 *  classes left x new grid points x trials. */
export function rowsPerImage(classes: number, T: number, o: DiffusionClassifierOptions): number {
  checkRounds(o, classes, T);
  const length = timestepGrid(T, Math.max(...o.samples)).length;
  const evaluated = new Set<number>();
  let left = classes;
  let rows = 0;
  o.samples.forEach((s, r) => {
    const pts = roundIndices(length, s, evaluated);
    pts.forEach((i) => evaluated.add(i));
    rows += left * pts.length * o.trials;
    left = o.keep[r]!;
  });
  return rows;
}
