/**
 * @file The linear probe of representation-learning papers (DDAE, Xiang et al. 2023, linear.py):
 * a softmax regression on frozen features, trained with Adam (lr 1e-3, batch 128, 15 epochs,
 * cosine decay to 0, as the official code), on the host: a probe of a few hundred features is
 * too small for a compiled graph to pay off.
 *
 * One change from the official probe: features are standardised (per dimension, with the
 * training set's mean and standard deviation) before the linear layer. It is an affine map,
 * so the model class is the same linear classifier; it lets one learning rate suit every
 * block, whose pooled activations differ in scale by orders of magnitude.
 */
import { RngKey } from '../engine/random/philox.js';

export interface LinearProbeOptions {
  epochs: number;
  batchSize: number;
  lr: number;
  /** L2 penalty on the weights (decoupled, as AdamW). */
  weightDecay: number;
  seed: number;
}

export const LINEAR_PROBE_DEFAULTS: Readonly<LinearProbeOptions> = Object.freeze({
  epochs: 15, batchSize: 128, lr: 1e-3, weightDecay: 0, seed: 0,
});

export interface LinearProbe {
  dim: number;
  classes: number;
  /** Standardisation: x' = (x - mean) / std. */
  mean: Float64Array;
  std: Float64Array;
  /** [classes, dim] row-major, and [classes]. */
  weight: Float64Array;
  bias: Float64Array;
}

/** Rows [n, dim] of `features`: their mean and standard deviation per dimension (a constant
 *  dimension gets std 1, so it is centred and left alone). */
function standardisation(x: Float32Array, n: number, dim: number): { mean: Float64Array; std: Float64Array } {
  const mean = new Float64Array(dim);
  const std = new Float64Array(dim);
  for (let i = 0; i < n; i++) for (let d = 0; d < dim; d++) mean[d] += x[i * dim + d]! / n;
  for (let i = 0; i < n; i++) for (let d = 0; d < dim; d++) std[d] += (x[i * dim + d]! - mean[d]!) ** 2 / n;
  for (let d = 0; d < dim; d++) std[d] = std[d]! > 1e-12 ? Math.sqrt(std[d]!) : 1;
  return { mean, std };
}

/** Logits [classes] of row i of x (already standardised into `z`). */
function logitsOf(p: LinearProbe, z: Float64Array, out: Float64Array): void {
  for (let k = 0; k < p.classes; k++) {
    let s = p.bias[k]!;
    for (let d = 0; d < p.dim; d++) s += p.weight[k * p.dim + d]! * z[d]!;
    out[k] = s;
  }
}

function standardiseRow(p: Pick<LinearProbe, 'mean' | 'std' | 'dim'>, x: Float32Array, i: number,
  z: Float64Array): void {
  for (let d = 0; d < p.dim; d++) z[d] = (x[i * p.dim + d]! - p.mean[d]!) / p.std[d]!;
}

/** Softmax in place. */
export function softmaxInPlace(v: Float64Array): void {
  let m = -Infinity;
  for (const a of v) m = Math.max(m, a);
  let s = 0;
  for (let k = 0; k < v.length; k++) s += (v[k] = Math.exp(v[k]! - m));
  for (let k = 0; k < v.length; k++) v[k] = v[k]! / s;
}

/**
 * Trains a probe on features [n, dim] with integer labels in [0, classes). Returns the probe
 * and the mean cross-entropy of each epoch.
 */
export function trainLinearProbe(features: Float32Array, labels: ArrayLike<number>, dim: number,
  classes: number, options: Partial<LinearProbeOptions> = {}): { probe: LinearProbe; losses: number[] } {
  const o = { ...LINEAR_PROBE_DEFAULTS, ...options };
  const n = labels.length;
  if (features.length !== n * dim) {
    throw new RangeError(`linear probe: ${features.length} feature values for ${n} rows of ${dim}`);
  }
  for (let i = 0; i < n; i++) {
    const y = labels[i]!;
    if (!(Number.isInteger(y) && y >= 0 && y < classes)) {
      throw new RangeError(`linear probe: label ${y} of row ${i} is not in [0, ${classes})`);
    }
  }
  const probe: LinearProbe = { dim, classes, ...standardisation(features, n, dim),
    weight: new Float64Array(classes * dim), bias: new Float64Array(classes) };
  const params = [probe.weight, probe.bias];
  const m1 = params.map((p) => new Float64Array(p.length));
  const m2 = params.map((p) => new Float64Array(p.length));
  const grads = params.map((p) => new Float64Array(p.length));
  const [b1, b2, eps] = [0.9, 0.999, 1e-8];
  const key = RngKey.fromSeed(o.seed);
  const z = new Float64Array(dim);
  const prob = new Float64Array(classes);
  const losses: number[] = [];
  let step = 0;
  for (let e = 0; e < o.epochs; e++) {
    const order = key.fold(e).permutation(n);
    // Cosine annealing per epoch, as torch's CosineAnnealingLR(T_max = epochs) steps it.
    const lr = 0.5 * o.lr * (1 + Math.cos((Math.PI * e) / o.epochs));
    let lossSum = 0;
    for (let s = 0; s < n; s += o.batchSize) {
      const rows = order.subarray(s, Math.min(n, s + o.batchSize));
      grads.forEach((g) => g.fill(0));
      for (const i of rows) {
        standardiseRow(probe, features, i, z);
        logitsOf(probe, z, prob);
        const y = labels[i]!;
        softmaxInPlace(prob);
        lossSum -= Math.log(Math.max(prob[y]!, Number.MIN_VALUE));
        for (let k = 0; k < classes; k++) {
          const g = (prob[k]! - (k === y ? 1 : 0)) / rows.length;
          grads[1]![k] += g;
          for (let d = 0; d < dim; d++) grads[0]![k * dim + d] += g * z[d]!;
        }
      }
      step++;
      params.forEach((p, j) => {
        const [g, a, v] = [grads[j]!, m1[j]!, m2[j]!];
        for (let q = 0; q < p.length; q++) {
          a[q] = b1 * a[q]! + (1 - b1) * g[q]!;
          v[q] = b2 * v[q]! + (1 - b2) * g[q]! * g[q]!;
          const update = (a[q]! / (1 - b1 ** step)) / (Math.sqrt(v[q]! / (1 - b2 ** step)) + eps);
          p[q] = p[q]! - lr * (update + (j === 0 ? o.weightDecay * p[q]! : 0));
        }
      });
    }
    losses.push(lossSum / n);
  }
  return { probe, losses };
}

/** The predicted class of each row of features [n, dim]. */
export function probePredict(p: LinearProbe, features: Float32Array): Int32Array {
  const n = features.length / p.dim;
  if (!Number.isInteger(n)) throw new RangeError(`linear probe: ${features.length} values is not rows of ${p.dim}`);
  const out = new Int32Array(n);
  const z = new Float64Array(p.dim);
  const l = new Float64Array(p.classes);
  for (let i = 0; i < n; i++) {
    standardiseRow(p, features, i, z);
    logitsOf(p, z, l);
    let best = 0;
    for (let k = 1; k < p.classes; k++) if (l[k]! > l[best]!) best = k;
    out[i] = best;
  }
  return out;
}

/** Fraction of rows whose prediction equals the label. */
export function probeAccuracy(p: LinearProbe, features: Float32Array, labels: ArrayLike<number>): number {
  const pred = probePredict(p, features);
  let right = 0;
  for (let i = 0; i < pred.length; i++) if (pred[i] === labels[i]) right++;
  return right / pred.length;
}
