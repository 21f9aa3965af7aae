/**
 * @file Multi-task diffusion over an image and its class: Chen, Ding, Sisman, Xu, Xie, Yao,
 * Tran & Zeng, "Diffusion Models for Multi-Task Generative Modeling" (arXiv 2407.17571; the
 * ICLR 2024 paper and arXiv v2 are titled "... for Multi-Modal Generative Modeling").
 *
 * The paper's claim: one diffusion model can learn several modalities at once (an image and
 * its label, an image and its representation, ...), generating them jointly or one given the
 * other, when (1) the forward process aggregates all of them into one shared diffusion space,
 * q(z_t | z_{t-1}, x_1..x_N) = N(sqrt(a_t) (z_{t-1} + w_t E(x_1..x_N)), (1 - a_t) I), with E
 * built from modality-specific encoders, (2) the reverse process is one shared denoising
 * backbone with a decoder head per modality, and (3) training minimises a multi-task loss,
 * the terms of a multi-modal variational bound: a denoising term plus one term per modality.
 *
 * What Diffuse implements, at MNIST scale (image [1, 32, 32] and a 10-way label):
 *
 * - Followed: one shared backbone (a DiT, models/joint-dit.ts) with a modality-specific input
 *   embedding for each modality (the DiT's patch embedding; a Linear for the label) and a
 *   decoder head for each (the DiT's final layer; a LayerNorm + Linear for the label); a
 *   multi-task loss, the sum of one regression term per modality; generation of both
 *   modalities together, or of one given the other.
 * - Simplified: each modality is diffused in its own space rather than aggregated into one
 *   shared latent z_t. The label is a continuous vector y0 = labelScale (2 onehot(k) - 1)
 *   (+s for the class, -s elsewhere: in [-s, s] as pixels are in [-1, 1]), diffused at the
 *   same time as the image with one shared time per sample; the "shared space" is the DiT's
 *   token sequence, in which the label is one extra token. Why: with separate spaces the
 *   forward process of each modality stays the plain rectified flow Diffuse already trains
 *   and samples (diffusion/training.ts), each decoder's target is that modality's own
 *   velocity, and conditioning on a known modality is exact replacement of its part of the
 *   state (below), which an aggregated z_t does not offer (there every coordinate mixes both
 *   modalities). A one-hot label is the "analog bits" treatment of a discrete variable (Chen,
 *   Zhang & Hinton, ICLR 2023, without the binary code: ten classes fit in ten entries);
 *   classification is the argmax.
 * - Process: rectified flow (flow matching) for both modalities, x_s = (1 - s) x0 + s eps,
 *   model time t = s T (diffusers' FlowMatch), in place of the paper's DDPM/ELBO terms; the
 *   loss is the flow-matching regression per modality, not the variational bound's weights.
 * - Not implemented: the paper's other settings (image transition, masked-image training,
 *   image-representation pairs), and its conditional procedure (replaced by the one below).
 *
 * Notation (paper -> code):
 *
 *   | paper                      | here                                                     |
 *   |----------------------------|----------------------------------------------------------|
 *   | x_1 (image), x_2 (label)   | x0 [N, C, H, W], y0 [N, K] (labelVectors)                |
 *   | t, shared across modalities| s in [0, 1] per sample (model time s T), both modalities |
 *   | z_t                        | the pair (x_s, y_s), each (1 - s) x0 + s eps             |
 *   | E_i (encoders)             | DiT patch embedding; label_embed (Linear K -> D)         |
 *   | shared backbone            | the DiT blocks over T image tokens + 1 label token       |
 *   | decoder heads D_i          | DiT final layer + unpatchify; label_head                 |
 *   | multi-task loss            | jointFlowLoss: image term + labelWeight * label term     |
 *
 * Conditional sampling by replacement (inpainting; Song et al. 2021, "Score-Based Generative
 * Modeling through SDEs", app. I.2): the known modality is not integrated; before every model
 * call its part of the state is set to its exact forward-noised value at the current s,
 * (1 - s) known + s eps, with eps the noise that modality's start state was drawn as, and at
 * the end to the known value itself. The unknown modality follows the joint model's velocity.
 * Classification is label-given-image sampling followed by the argmax of the generated label.
 *
 * Replacement with one shared time is asymmetric, and the tests show it on an exact two-class
 * problem: the generated modality reads its own noisy state as evidence, so whichever
 * modality becomes legible first (at higher noise) decides the class. There (16 pixels, two
 * label entries at scale 1) plain replacement labels every held-out image right but draws
 * images of the asked class little more often than chance; more pixels only make the image
 * the stronger side. Two levers: a larger label scale (the label legible earlier: helps
 * image-given-label, hurts label-given-image) and RePaint's resampling (Lugmayr et al. 2022,
 * "RePaint", sec. 4.2: each step taken `resample` times, the generated modality noised back
 * from s_next to s in between, so it can agree with the known one), which helps both at a
 * cost of `resample` model calls per step. UniDiffuser's per-modality times (Bao et al. 2023)
 * would make both conditionals exact (the known modality at time 0); the shared time is the
 * paper's choice and is kept.
 */
import * as ops from '../engine/ops.js';
import type { Tensor } from '../engine/tensor.js';
import { roundOf, zerosLike, type FloatArray } from '../diffusion/arith.js';
import { throwIfAborted, withData, type Batch, type NoiseSource } from '../diffusion/denoiser.js';
import type { Schedule } from '../diffusion/schedule.js';
import { flowEulerStep } from '../diffusion/samplers/flow.js';
import { noisySample, trainingTarget } from '../diffusion/training.js';

// ---- labels as a diffused modality ----

/** Class indices -> label vectors [n * K]: +scale at the class, -scale elsewhere. */
export function labelVectors(labels: ArrayLike<number | bigint>, classes: number,
  scale = 1): Float32Array {
  const out = new Float32Array(labels.length * classes).fill(-scale);
  for (let i = 0; i < labels.length; i++) {
    const k = Number(labels[i]);
    if (!(Number.isInteger(k) && k >= 0 && k < classes)) {
      throw new RangeError(`labelVectors: label ${k} of row ${i} is not a class in ` +
        `[0, ${classes})`);
    }
    out[i * classes + k] = scale;
  }
  return out;
}

/** The class of each label vector: argmax of rows [n * K] (the first on ties). */
export function argmaxRows(v: ArrayLike<number>, classes: number): Int32Array {
  const n = v.length / classes;
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let k = 1; k < classes; k++) if (v[i * classes + k]! > v[i * classes + best]!) best = k;
    out[i] = best;
  }
  return out;
}

// ---- the multi-task loss ----

/** The model in a training graph: noisy image [N, C, H, W], noisy label [N, K], model
 *  times [N] -> velocity predictions of both. */
export type JointPredict = (x: Tensor, y: Tensor, t: Tensor) => { image: Tensor; label: Tensor };

/** One training batch: clean data, the noise of each modality, and per row the model time and
 *  the process coefficients alpha = 1 - s, sigma = s (all [N]). */
export interface JointTrainingBatch<T> {
  x0: T;
  epsImage: T;
  y0: T;
  epsLabel: T;
  t: T;
  alpha: T;
  sigma: T;
}

/**
 * The multi-task flow-matching loss: for x_s = (1 - s) x0 + s eps_x and y_s likewise (one s
 * per row),
 *
 *   L = mean_rows [ mean_pixels |u_x - (eps_x - x0)|^2
 *                   + labelWeight mean_K |u_y - (eps_y - y0)|^2 ].
 *
 * Each term is a per-element mean, so labelWeight 1 weighs the two tasks equally whatever
 * their sizes (1,024 pixels against 10 label entries).
 */
export function jointFlowLoss(predict: JointPredict, b: JointTrainingBatch<Tensor>,
  labelWeight: number): Tensor {
  const n = b.x0.shape[0]!;
  const [a4, s4] = [b.alpha, b.sigma].map((v) => ops.reshape(v, [n, 1, 1, 1])); // [N, 1, 1, 1]
  const [a2, s2] = [b.alpha, b.sigma].map((v) => ops.reshape(v, [n, 1])); // [N, 1]
  const xt = noisySample(b.x0, b.epsImage, a4!, s4!); // [N, C, H, W]
  const yt = noisySample(b.y0, b.epsLabel, a2!, s2!); // [N, K]
  const out = predict(xt, yt, b.t);
  const imageTarget = trainingTarget('flow', b.x0, b.epsImage, a4!, s4!); // eps - x0
  const labelTarget = trainingTarget('flow', b.y0, b.epsLabel, a2!, s2!);
  const imageErr = ops.mean(ops.square(ops.sub(out.image, imageTarget)), [1, 2, 3]); // [N]
  const labelErr = ops.mean(ops.square(ops.sub(out.label, labelTarget)), [1]); // [N]
  const perRow = ops.add(imageErr, ops.mul(labelErr, labelWeight));
  return ops.mean(perRow);
}

// ---- sampling ----

/** An image batch and a label batch, rows paired. */
export interface JointState {
  image: Batch;
  label: Batch;
}

/** The sampler's view of the joint model: both rectified-flow velocities (eps - x0) at model
 *  times t (one per row). */
export interface JointDenoiser {
  predict(image: Batch, label: Batch, t: Float64Array): Promise<JointState>;
}

export type Modality = 'image' | 'label';

export interface JointStepRecord {
  index: number;
  total: number;
  /** Model time and s of the step's model call. */
  t: number;
  s: number;
  /** The state the model was called on. */
  input: JointState;
}

export interface JointSampleOptions {
  /** The modality given (clean, shaped like its start state): replaced, not generated. */
  known?: { modality: Modality; value: Batch };
  /** With `known`: RePaint's resampling, each step taken this many times (default 1: plain
   *  replacement), the generated modality noised back from s_next to s between tries. */
  resample?: number;
  /** Unit noise for resampling, `(n, k)` for the k-th renoising (0-based). */
  noise?: NoiseSource;
  onStep?: (r: JointStepRecord) => void;
  signal?: AbortSignal;
}

/** (1 - s) x0 + s eps as the flow process writes it, alpha x0 + sigma eps, at the precision of
 *  eps. */
export function forwardNoised(x0: FloatArray, eps: FloatArray, alpha: number,
  sigma: number): FloatArray {
  if (x0.length !== eps.length) {
    throw new RangeError(`forwardNoised: ${x0.length} clean values for ${eps.length} noise values`);
  }
  const r = roundOf(eps);
  const out = zerosLike(eps);
  for (let i = 0; i < eps.length; i++) out[i] = r(r(alpha * x0[i]!) + r(sigma * eps[i]!));
  return out;
}

/**
 * Flow Euler over both modalities at once, x <- x + (s_next - s) u for each, from `start` (unit
 * noise for both; for a known modality, the noise its forward path uses). With `known`, that
 * modality is replaced before every model call by its forward-noised value at the step's s and
 * set to the known value at the end (conditional sampling by replacement; see the header).
 * `schedule` is a flow schedule (FlowMatchEuler's: samplerSchedule('flow-euler', ...)).
 */
export async function sampleJointFlow(denoiser: JointDenoiser, start: JointState,
  schedule: Schedule, opts: JointSampleOptions = {}): Promise<JointState> {
  if (schedule.process !== 'flow') {
    throw new RangeError('sampleJointFlow: needs a flow-matching schedule, got ' +
      `'${schedule.process}'`);
  }
  const known = opts.known;
  const rows = start.image.shape[0]!;
  let x: FloatArray = start.image.data.slice();
  let y: FloatArray = start.label.data.slice();
  const replace = (i: number): void => {
    if (!known) return;
    const [a, s] = [schedule.alphas[i]!, schedule.sigmas[i]!];
    if (known.modality === 'image') x = forwardNoised(known.value.data, start.image.data, a, s);
    else y = forwardNoised(known.value.data, start.label.data, a, s);
  };
  const tries = known ? opts.resample ?? 1 : 1;
  if (!(Number.isInteger(tries) && tries >= 1) || (tries > 1 && !opts.noise)) {
    throw new RangeError(`sampleJointFlow: resample must be an integer >= 1 (${tries}), and ` +
      'needs a noise source when above 1');
  }
  const n = schedule.timesteps.length;
  let renoised = 0;
  for (let i = 0; i < n; i++) {
    const t = schedule.timesteps[i]!;
    const [s, next] = [schedule.sigmas[i]!, schedule.sigmas[i + 1]!];
    for (let k = 0; k < tries; k++) {
      throwIfAborted(opts.signal);
      replace(i);
      const input = { image: withData(start.image, x), label: withData(start.label, y) };
      const u = await denoiser.predict(input.image, input.label, new Float64Array(rows).fill(t));
      opts.onStep?.({ index: i, total: n, t, s, input });
      x = flowEulerStep(x, u.image.data, s, next);
      y = flowEulerStep(y, u.label.data, s, next);
      if (k + 1 < tries) {
        const z = opts.noise!(known!.modality === 'image' ? y.length : x.length, renoised++);
        if (known!.modality === 'image') y = renoise(y, z, next, s);
        else x = renoise(x, z, next, s);
      }
    }
  }
  replace(n);
  return { image: withData(start.image, x), label: withData(start.label, y) };
}

/** A flow state at s' noised forward to s > s' with fresh unit noise z: the transition
 *  q(x_s | x_s') = N(c x_s', (s^2 - c^2 s'^2) I), c = (1 - s) / (1 - s') (RePaint's
 *  renoising, for x_s = (1 - s) x0 + s eps). */
export function renoise(x: FloatArray, z: FloatArray, from: number, to: number): FloatArray {
  const c = (1 - to) / (1 - from);
  const sd = Math.sqrt(Math.max(to * to - c * c * from * from, 0));
  const r = roundOf(x);
  const out = zerosLike(x);
  for (let i = 0; i < x.length; i++) out[i] = r(c * x[i]! + sd * z[i]!);
  return out;
}
