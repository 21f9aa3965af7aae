/**
 * @file Gradient guidance through the engine's `grad`: the correction to the x0 estimate is
 * computed by a compiled graph that differentiates a traced function of x_t.
 *
 * - Classifier guidance (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image
 *   Synthesis", sec. 4, Algorithms 1-2): sampling with the score plus s grad_x log p(y | x_t)
 *   samples p(x | y) at s = 1 (the sum is the conditional score, by Bayes) and a sharper
 *   p(x) p(y | x)^s for s > 1.
 * - Energy guidance of the clean estimate: the gradient of E(x0hat(x_t)) taken through a
 *   traced denoiser, i.e. exp(-E(x0hat)) used as the likelihood of x_t. This is the
 *   "forward guidance" of Bansal et al. 2023 ("Universal Guidance for Diffusion Models",
 *   eq. 6), the gradient step of Chung et al. 2023 ("Diffusion Posterior Sampling", Algorithm
 *   1) in score form, and the hook that plug-and-play guidance (Graikos et al. 2022; Go et al.
 *   2023, PPAP) builds on: E is then -log p_phi(y | x0hat) of an off-the-shelf model.
 *
 * Units. With x_t = alpha x0 + sigma eps, Tweedie's formula gives the denoiser in terms of the
 * score: x0hat = (x_t + sigma^2 grad log p_t(x_t)) / alpha. Adding s g to the score (g = grad_x
 * log p(y | x_t)) therefore adds (sigma^2 / alpha) s g to x0hat, which is what a GuidanceFn
 * returns (withGuidance adds it to the x0 estimate). Read back as eps = (x_t - alpha x0) /
 * sigma, the guided eps is eps - sigma s g: Dhariwal & Nichol's eq. 14, sign included. The
 * energy's correction is the same with g = -grad_x E. Where alpha = 0 (the pure-noise end of a
 * flow) x_t says nothing about x0 and the correction is taken as 0.
 */
import { grad, valueAndGrad } from '../engine/autodiff.js';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { compile, type RuntimeOptions } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { asPrecisionOf, zerosLike, type FloatArray } from './arith.js';
import { int64Labels, withData, type Batch, type Denoiser } from './denoiser.js';
import { withGuidance, type GuidanceFn } from './guidance.js';
import type { Prediction } from './predictions.js';
import type { Process } from './process.js';

/** A guidance scale: constant, or a function of the step's model time (scale per step). */
export type GuidanceScale = number | ((t: number) => number);

/** Something that holds compiled sessions; release them when sampling is done. */
export interface Releasable {
  dispose(): Promise<void>;
}

/**
 * Per-row factor (sigma^2 / alpha) s(t) that turns a gradient of a log-likelihood in x_t into
 * a correction of the x0 estimate (see the header); 0 where alpha = 0 or s(t) = 0.
 */
function guidanceFactors(
  t: Float64Array,
  c: { alpha: Float64Array; sigma: Float64Array },
  scale: GuidanceScale,
): Float64Array {
  return Float64Array.from(t, (tb, b) => {
    const s = typeof scale === 'number' ? scale : scale(tb);
    const a = c.alpha[b]!;
    return s === 0 || a === 0 ? 0 : (c.sigma[b]! ** 2 / a) * s;
  });
}

/** k[b] * g per row, in the precision of `like`. */
function scaleRows(g: ArrayLike<number>, k: Float64Array, like: FloatArray): FloatArray {
  const out = zerosLike(like);
  const per = out.length / k.length;
  for (let i = 0; i < out.length; i++) out[i] = k[Math.floor(i / per)]! * g[i]!;
  return out;
}

/** A batch's data as a float32 host array of its shape (the graphs compute in float32). */
function hostOf(x: Batch): HostArray<'float32'> {
  return new HostArray<'float32'>(Float32Array.from(x.data), x.shape, 'float32');
}

function coefficients(process: Process, t: Float64Array): {
  alpha: Float64Array;
  sigma: Float64Array;
} {
  return {
    alpha: Float64Array.from(t, (v) => process.at(v).alpha),
    sigma: Float64Array.from(t, (v) => process.at(v).sigma),
  };
}

const times = (t: Float64Array): HostArray<'float32'> =>
  new HostArray<'float32'>(Float32Array.from(t), [t.length], 'float32');

// ---------------------------------------------------------------------------------------------
// Classifier guidance

export interface ClassifierGuidanceOptions {
  /**
   * log p(y | x_t) per row, in engine ops: x [B, ...], t [B] float32 model times, y the
   * labels (see `labels`) -> [B]. Must be differentiable in x.
   */
  logProb: (x: Tensor, t: Tensor, y: Tensor) => Tensor;
  /**
   * The labels y. A GuidanceFn does not see the sampler's condition (withGuidance passes only
   * x, t and the x0 estimate), so they are fixed here: one class for every row, one class per
   * row (int64 [B]), or a host array whose first axis is the batch, passed to logProb as is
   * (one-hot rows, embeddings); or a function read at every call, for a sampler that moves
   * on to other images (and classes) without recompiling the gradient graph.
   */
  labels: number | readonly number[] | HostArray | (() => number | readonly number[] | HostArray);
  scale: GuidanceScale;
  /** Options for the compiled gradient graph (provider, threads). */
  runtime?: RuntimeOptions;
}

function labelArray(given: ClassifierGuidanceOptions['labels'], rows: number): HostArray {
  const labels = typeof given === 'function' ? given() : given;
  if (labels instanceof HostArray) {
    if (labels.shape[0] !== rows) {
      throw new RangeError(
        `classifierGuidance: labels have shape [${labels.shape.join(', ')}] ` +
          `for a batch of ${rows} rows`,
      );
    }
    return labels;
  }
  const list = typeof labels === 'number' ? new Array<number>(rows).fill(labels) : labels;
  if (list.length !== rows) {
    throw new RangeError(`classifierGuidance: ${list.length} labels for a batch of ${rows} rows`);
  }
  return int64Labels(list);
}

/**
 * Classifier guidance (Dhariwal & Nichol 2021, sec. 4) as a GuidanceFn for `withGuidance`:
 * the correction (sigma^2 / alpha) s(t) grad_x log p(y | x_t), per row. The gradient graph
 * (x, t, y) -> grad_x sum(logProb) is compiled once per input shape; when every row's factor
 * is 0 (s(t) = 0 or alpha = 0) no graph runs.
 */
export function classifierGuidance(opts: ClassifierGuidanceOptions): GuidanceFn & Releasable {
  const gradient = compile(
    (x: Tensor, t: Tensor, y: Tensor) =>
      grad((xx: Tensor) => ops.sum(opts.logProb(xx, t, y)))(x) as Tensor, // [B, ...]
    { name: 'classifier-guidance', ...opts.runtime },
  );
  const guide: GuidanceFn = async (x, t, denoised, c) => {
    const k = guidanceFactors(t, c, opts.scale);
    if (k.every((v) => v === 0)) return zerosLike(denoised);
    const g = await gradient(hostOf(x), times(t), labelArray(opts.labels, t.length));
    return scaleRows(g.data as Float32Array, k, denoised); // the gradient of float32 x
  };
  return Object.assign(guide, { dispose: () => gradient.dispose() });
}

// ---------------------------------------------------------------------------------------------
// Energy guidance

/** The x0 estimate of a prediction, in ops: the same formulas as predictions.ts's toX0. */
export function x0FromPrediction(
  pred: Prediction,
  x: Tensor, // [B, ...]
  p: Tensor, // [B, ...]
  alpha: Tensor, // [B]
  sigma: Tensor, // [B]
): Tensor {
  const row = [x.shape[0]!, ...x.shape.slice(1).map(() => 1)];
  const a = ops.reshape(alpha, row);
  const s = ops.reshape(sigma, row);
  switch (pred) {
    case 'eps':
      return ops.div(ops.sub(x, ops.mul(s, p)), a);
    case 'x0':
      return p;
    case 'v':
      return ops.div(
        ops.sub(ops.mul(a, x), ops.mul(s, p)),
        ops.add(ops.mul(a, a), ops.mul(s, s)),
      );
    case 'flow':
      return ops.div(ops.sub(x, ops.mul(s, p)), ops.add(a, s));
  }
}

/** A model's forward in engine ops: x [B, ...], t [B] float32 model times -> prediction. */
export type TracedModel = (x: Tensor, t: Tensor) => Tensor;

/** A Denoiser running a traced model, compiled once per input shape (the unguided sampler). */
export function tracedDenoiser(
  model: TracedModel,
  prediction: Prediction,
  runtime: RuntimeOptions = {},
): Denoiser & Releasable {
  const forward = compile(model, { name: 'denoiser', ...runtime });
  return {
    prediction,
    async predict(x: Batch, t: Float64Array): Promise<Batch> {
      const p = await forward(hostOf(x), times(t));
      return withData(x, asPrecisionOf(p.data as Float32Array, x.data)); // float32 graph
    },
    dispose: () => forward.dispose(),
  };
}

export interface EnergyGuidanceOptions {
  /** The model's forward in ops; its prediction type and process. */
  model: TracedModel;
  prediction: Prediction;
  process: Process;
  /** E(x0hat) per row, in ops: x0 [B, ...], t [B] -> [B]. Differentiable in x0. */
  energy: (x0: Tensor, t: Tensor) => Tensor;
  scale: GuidanceScale;
  runtime?: RuntimeOptions;
}

/**
 * Energy guidance: a Denoiser whose x0 estimate is shifted by -(sigma^2 / alpha) s(t) grad_x
 * E(x0hat(x_t)), the gradient taken through the traced model. One compiled graph returns the
 * prediction and the gradient; steps where s(t) is 0 for every row run the forward graph alone,
 * so a scale of 0 reproduces `tracedDenoiser` exactly. The sampler's condition is not passed
 * to the model or the energy (TODO: thread a host-array condition through both graphs).
 */
export function energyGuidance(opts: EnergyGuidanceOptions): Denoiser & Releasable {
  const plain = tracedDenoiser(opts.model, opts.prediction, opts.runtime);
  const both = compile(
    (x: Tensor, t: Tensor, alpha: Tensor, sigma: Tensor) => {
      const f = (xx: Tensor): [Tensor, Tensor] => {
        const p = opts.model(xx, t); // [B, ...]
        const x0 = x0FromPrediction(opts.prediction, xx, p, alpha, sigma);
        return [ops.sum(opts.energy(x0, t)), p];
      };
      const [[, prediction], g] = valueAndGrad(f, { hasAux: true })(x);
      return { prediction, grad: g as Tensor };
    },
    { name: 'energy-guidance', ...opts.runtime },
  );
  // The gradient of each evaluation, keyed by the batch withGuidance hands to both calls.
  const grads = new WeakMap<Batch, Float32Array>();
  const base: Denoiser = {
    prediction: opts.prediction,
    async predict(x: Batch, t: Float64Array): Promise<Batch> {
      const c = coefficients(opts.process, t);
      const out = await both(hostOf(x), times(t), times(c.alpha), times(c.sigma));
      // float32 outputs: the graph's inputs are float32
      grads.set(x, out.grad.data as Float32Array);
      return withData(x, asPrecisionOf(out.prediction.data as Float32Array, x.data));
    },
  };
  const guide: GuidanceFn = (x, t, denoised, c) => {
    const g = grads.get(x);
    if (!g) throw new Error('energyGuidance: no gradient recorded for this batch');
    grads.delete(x);
    return scaleRows(g, guidanceFactors(t, c, opts.scale).map((v) => -v), denoised);
  };
  const guided = withGuidance(base, opts.process, guide);
  return {
    prediction: opts.prediction,
    predict(x: Batch, t: Float64Array, condition?: unknown): Promise<Batch> {
      const k = guidanceFactors(t, coefficients(opts.process, t), opts.scale);
      return k.every((v) => v === 0) ? plain.predict(x, t) : guided.predict(x, t, condition);
    },
    dispose: async () => {
      await Promise.all([plain.dispose(), both.dispose()]);
    },
  };
}
