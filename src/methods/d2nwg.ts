/**
 * @file D2NWG: Soro, Andreis, Lee, Jeong, Chong, Hutter & Hwang 2024, "Diffusion-Based Neural
 * Network Weights Generation" (ICLR 2025).
 *
 * Claim: a latent diffusion model fitted to the weights of many trained networks generates new
 * weights that, loaded as they are, perform on par with (or better than) the trained ones, and
 * that serve as good initialisations for fine-tuning. The recipe: flatten each network's
 * weights into one vector; train a VAE over those vectors; train a diffusion model over the
 * VAE's latents (conditioned, in the paper, on an embedding of the target dataset); sample
 * latents, decode them, load the decoded vectors as weights.
 *
 * Here the networks are linear classifier heads (methods/linear-probe.ts) on frozen features.
 * Every head is expressed in one shared feature standardisation (a HeadSpace), so that the
 * coordinates of two flattened heads mean the same thing; the probe standardises with its own
 * training subset's statistics, and `rebase` folds that into the shared one exactly.
 *
 * Notation (paper -> here):
 *
 *     w          a flattened head                   HeadVector (weight rows, then bias)
 *     E, D       VAE encoder and decoder            WeightVae.encode, WeightVae.decode
 *     mu, log s2 posterior mean, log-variance       mean, logvar   ([B, latent])
 *     z          latent, mu + s eps                 z
 *     beta       weight of the KL term              beta
 *
 * The VAE loss, per batch of B vectors of size P (target w, encoder input w~ = w + noise):
 *
 *     L = mean_{b,p} (D(z_b)_p - w_{b,p})^2
 *         + beta * mean_b 1/2 sum_l (mu_{b,l}^2 + exp(logvar_{b,l}) - 1 - logvar_{b,l}).
 *
 * The reconstruction term is a per-element mean (so beta does not scale with P); the KL term
 * is KL(N(mu, s2) || N(0, I)) summed over latent dimensions, averaged over the batch.
 *
 * TODO: whether (and how much) the paper noise-augments the VAE's inputs or latents, as p-diff
 * (Wang et al. 2024) does, we could not confirm from the text we read; noise on the encoder's
 * input (`input` above) is our choice, and its scale too. The paper flattens a model whole
 * (zero-padded to a common length) or layer by layer; a head is small enough to be one vector.
 */
import * as ops from '../engine/ops.js';
import type { Tensor } from '../engine/tensor.js';
import { Linear } from '../nn/layers.js';
import { Module, type ParamsOf } from '../nn/module.js';
import { trainLinearProbe, type LinearProbe } from './linear-probe.js';

// ---- heads as vectors ----

/** The shared input standardisation every head of one experiment is expressed in. */
export interface HeadSpace {
  dim: number;
  classes: number;
  mean: Float64Array;
  std: Float64Array;
}

/** A head flattened: weight [classes, dim] row-major, then bias [classes]. */
export type HeadVector = Float64Array;

/** The standardisation of features [n, dim]: that of a probe trained for zero epochs, which
 *  carries the statistics alone (one implementation of them, linear-probe.ts's). */
export function headSpace(features: Float32Array, labels: ArrayLike<number>, dim: number,
  classes: number): HeadSpace {
  const { probe } = trainLinearProbe(features, labels, dim, classes, { epochs: 0 });
  return { dim, classes, mean: probe.mean, std: probe.std };
}

/**
 * The same classifier expressed in `space`. A probe with standardisation (m, s) computes
 * b + W (x - m) / s; with x = M + S z (z the input standardised by the space's M, S) that is
 * b' + W' z with W'_kd = W_kd S_d / s_d and b'_k = b_k + sum_d W_kd (M_d - m_d) / s_d.
 */
export function rebase(p: LinearProbe, space: HeadSpace): LinearProbe {
  if (p.dim !== space.dim || p.classes !== space.classes) {
    throw new RangeError(`rebase: a head of [${p.classes}, ${p.dim}] into a space of ` +
      `[${space.classes}, ${space.dim}]`);
  }
  const weight = new Float64Array(p.weight.length);
  const bias = Float64Array.from(p.bias);
  for (let k = 0; k < p.classes; k++) {
    for (let d = 0; d < p.dim; d++) {
      const w = p.weight[k * p.dim + d]! / p.std[d]!;
      weight[k * p.dim + d] = w * space.std[d]!;
      bias[k] = bias[k]! + w * (space.mean[d]! - p.mean[d]!);
    }
  }
  return { dim: p.dim, classes: p.classes, mean: space.mean, std: space.std, weight, bias };
}

/** Length of a flattened head: classes * dim weights and classes biases. */
export const headLength = (s: Pick<HeadSpace, 'dim' | 'classes'>): number =>
  s.classes * (s.dim + 1);

/** A head (already in its experiment's space) as one vector. */
export function flattenHead(p: LinearProbe): HeadVector {
  const v = new Float64Array(headLength(p));
  v.set(p.weight);
  v.set(p.bias, p.weight.length);
  return v;
}

/** A vector back into a head of `space` (any ArrayLike: a decoder's float32 rows too). */
export function unflattenHead(v: ArrayLike<number>, space: HeadSpace): LinearProbe {
  const n = headLength(space);
  if (v.length !== n) {
    throw new RangeError(`unflattenHead: expected ${n} values (${space.classes} x ` +
      `(${space.dim} + 1)), got ${v.length}`);
  }
  const all = Float64Array.from(v);
  return { dim: space.dim, classes: space.classes, mean: space.mean, std: space.std,
    weight: all.slice(0, space.classes * space.dim), bias: all.slice(space.classes * space.dim) };
}

/**
 * v / RMS(v): the same classifier (argmax is unchanged by a positive scale of weight and bias
 * together) at unit RMS. Probes trained from zero by Adam for a few to a few hundred steps
 * differ in scale about as much as in step count; in one weight space the smallest would be
 * lost in the decoder's error, though their predictions are as good as their direction.
 */
export function unitScale(v: HeadVector): HeadVector {
  let sq = 0;
  for (const x of v) sq += x * x;
  const rms = Math.sqrt(sq / v.length);
  return rms > 0 ? v.map((x) => x / rms) : Float64Array.from(v);
}

// ---- the VAE's coordinates ----

/**
 * Vectors as the VAE sees them: u = (w - centre) / scale, with a centre per coordinate and ONE
 * scale for all (the RMS of the centred values). A per-coordinate scale would blow up
 * coordinates that barely vary across heads (and the decoder's error in them with it).
 */
export interface VectorScaling {
  centre: Float64Array;
  scale: number;
}

export function vectorScaling(vectors: readonly HeadVector[]): VectorScaling {
  const n = vectors.length;
  if (n === 0) throw new RangeError('vectorScaling: no vectors');
  const centre = new Float64Array(vectors[0]!.length);
  for (const v of vectors) for (let i = 0; i < v.length; i++) centre[i] += v[i]! / n;
  let sq = 0;
  for (const v of vectors) for (let i = 0; i < v.length; i++) sq += (v[i]! - centre[i]!) ** 2;
  const rms = Math.sqrt(sq / (n * centre.length));
  return { centre, scale: rms > 1e-12 ? rms : 1 };
}

/** Rows [n, P] of scaled vectors, float32 for the graphs. */
export function toScaled(vectors: readonly HeadVector[], s: VectorScaling): Float32Array {
  const p = s.centre.length;
  const out = new Float32Array(vectors.length * p);
  vectors.forEach((v, j) => {
    for (let i = 0; i < p; i++) out[j * p + i] = (v[i]! - s.centre[i]!) / s.scale;
  });
  return out;
}

/** Rows [n, P] of scaled values back into head vectors. */
export function fromScaled(rows: ArrayLike<number>, s: VectorScaling): HeadVector[] {
  const p = s.centre.length;
  return Array.from({ length: rows.length / p }, (_, j) => {
    const v = new Float64Array(p);
    for (let i = 0; i < p; i++) v[i] = rows[j * p + i]! * s.scale + s.centre[i]!;
    return v;
  });
}

/** Per-dimension mean and std of latents [n, d]: the diffusion model sees (z - mean) / std,
 *  as image LDMs scale their VAE's latents to unit variance. */
export interface LatentScaling {
  mean: Float64Array;
  std: Float64Array;
}

export function latentScaling(z: ArrayLike<number>, d: number): LatentScaling {
  const n = z.length / d;
  const mean = new Float64Array(d);
  const std = new Float64Array(d);
  for (let i = 0; i < n * d; i++) mean[i % d] += z[i]! / n;
  for (let i = 0; i < n * d; i++) std[i % d] += (z[i]! - mean[i % d]!) ** 2 / n;
  for (let j = 0; j < d; j++) std[j] = Math.sqrt(std[j]!) || 1;
  return { mean, std };
}

/** (z - mean) / std, row-major [n, d]; `inverse` maps back. */
export function scaleLatents(z: Float32Array, s: LatentScaling, inverse = false): Float32Array {
  const d = s.mean.length;
  return z.map((v, i) => {
    const [m, sd] = [s.mean[i % d]!, s.std[i % d]!];
    return inverse ? v * sd + m : (v - m) / sd;
  });
}

// ---- the VAE ----

export type WeightVaeConfig = {
  /** P, the length of a flattened head. */
  in_features: number;
  hidden: number;
  /** Hidden layers of the encoder, and of the decoder. */
  layers: number;
  latent: number;
};

export class WeightVae extends Module {
  readonly encoder: Linear[];
  readonly to_mean: Linear;
  readonly to_logvar: Linear;
  readonly decoder: Linear[];
  readonly out: Linear;
  constructor(readonly config: WeightVaeConfig) {
    super();
    const c = config;
    if (c.layers < 1) throw new RangeError(`WeightVae: layers must be >= 1, got ${c.layers}`);
    const stack = (first: number) => Array.from({ length: c.layers }, (_, i) =>
      new Linear(i === 0 ? first : c.hidden, c.hidden));
    this.encoder = stack(c.in_features);
    this.to_mean = new Linear(c.hidden, c.latent);
    this.to_logvar = new Linear(c.hidden, c.latent);
    this.decoder = stack(c.latent);
    this.out = new Linear(c.hidden, c.in_features);
  }

  /** w [B, P] -> posterior mean and log-variance, each [B, L]. */
  encode(p: ParamsOf<WeightVae>, w: Tensor): { mean: Tensor; logvar: Tensor } {
    let h = w;
    this.encoder.forEach((l, i) => (h = ops.silu(l.forward(p.encoder[i]!, h)))); // [B, H]
    return { mean: this.to_mean.forward(p.to_mean, h), // [B, L]
      logvar: this.to_logvar.forward(p.to_logvar, h) }; // [B, L]
  }

  /** z [B, L] -> w [B, P] */
  decode(p: ParamsOf<WeightVae>, z: Tensor): Tensor {
    let h = z;
    this.decoder.forEach((l, i) => (h = ops.silu(l.forward(p.decoder[i]!, h)))); // [B, H]
    return this.out.forward(p.out, h); // [B, P]
  }
}

/** One VAE batch: encoder input (noised), clean target, reparameterisation noise [B, L]. */
export interface VaeBatch<T> {
  input: T;
  target: T;
  eps: T;
}

/** The two terms of the file header's loss, each a scalar. */
export function vaeTerms(vae: WeightVae, p: ParamsOf<WeightVae>, b: VaeBatch<Tensor>):
  { mse: Tensor; kl: Tensor } {
  const { mean, logvar } = vae.encode(p, b.input); // [B, L]
  const z = ops.add(mean, ops.mul(ops.exp(ops.mul(logvar, 0.5)), b.eps)); // [B, L]
  const mse = ops.mean(ops.square(ops.sub(vae.decode(p, z), b.target)));
  const perRow = ops.sum(ops.sub(ops.add(ops.square(mean), ops.exp(logvar)),
    ops.add(logvar, 1)), 1); // [B]
  return { mse, kl: ops.mul(ops.mean(perRow), 0.5) };
}

/** MSE + beta * KL (file header). */
export function vaeLoss(vae: WeightVae, p: ParamsOf<WeightVae>, b: VaeBatch<Tensor>,
  beta: number): Tensor {
  const { mse, kl } = vaeTerms(vae, p, b);
  return ops.add(mse, ops.mul(kl, beta));
}
