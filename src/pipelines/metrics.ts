/**
 * @file MNIST-FID and class accuracy (README, "Shipped models"), computed with the project's
 * own MNIST classifier (`models/mnist-classifier`, trained by `diffuse train-classifier`).
 *
 * MNIST-FID is the Fréchet distance between Gaussians fitted to that classifier's penultimate
 * features (128 numbers per image) of two image sets. It is NOT Inception-FID: its numbers
 * are on another scale and are comparable only with MNIST-FID from the same classifier
 * weights. Statistics of the training split are cached on disk, keyed by a SHA-256 of the
 * classifier (config and weight bytes) and of the dataset's pixels.
 *
 * Fréchet distance between N(mu1, S1) and N(mu2, S2) (Dowson & Landau 1982; as FID in Heusel
 * et al. 2017, "GANs Trained by a Two Time-Scale Update Rule ...", section 3):
 *
 *   d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}).
 *
 * S1 S2 is not symmetric, and pytorch-fid's scipy `sqrtm` of it can come back complex. Here
 * tr (S1 S2)^{1/2} = tr (S1^{1/2} S2 S1^{1/2})^{1/2}: the two matrices are similar
 * (S1^{1/2} S2 S1^{1/2} = S1^{-1/2} (S1 S2) S1^{1/2} for invertible S1, and by continuity
 * otherwise), and the right one is symmetric positive semi-definite, so its eigenvalues are
 * real and >= 0. Both square roots use a float64 Jacobi eigen-solver; eigenvalues that
 * round-off makes slightly negative are taken as 0.
 */
import { createHash } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { compile, type RuntimeOptions } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import type { Tree } from '../engine/tree.js';
import { packageRoot } from '../util/package-root.js';
import { meanAndCovariance, symmetricEigen } from '../data/analytic/linalg.js';
import type { ImageDataset } from '../data/dataset.js';
import { loadModel, toPythonJson } from '../io/diffusers.js';
import { SafetensorsFile, writeSafetensors } from '../io/safetensors.js';
import {
  classifierClass, CLEAN_LOG_SNR, DiffuseClassifier, type ClassifierConfig,
} from '../models/classifier.js';
import { stateDict, type ParamsOf } from '../nn/module.js';

// ---------------------------------------------------------------------------------------------
// Where things are
// ---------------------------------------------------------------------------------------------

/** The shipped metrics classifier, `models/mnist-classifier` in the package. */
const defaultClassifierDir = (): string => join(packageRoot(), 'models', 'mnist-classifier');
/** Where reference statistics are cached unless told otherwise: `.cache/diffuse/`. */
const defaultCacheDir = (): string => join(packageRoot(), '.cache', 'diffuse');


// ---------------------------------------------------------------------------------------------
// The classifier and its features
// ---------------------------------------------------------------------------------------------

export interface MetricClassifier {
  readonly model: DiffuseClassifier;
  readonly params: ParamsOf<DiffuseClassifier, HostArray>;
  /** SHA-256 (hex) of the config and of every weight's name, shape and bytes. */
  readonly hash: string;
}

/** Wraps a classifier for the metrics, hashing its config and weights. */
export function metricClassifier(config: ClassifierConfig,
  params: ParamsOf<DiffuseClassifier, HostArray>): MetricClassifier {
  const h = createHash('sha256');
  h.update(toPythonJson(classifierClass.toConfig(config)));
  const dict = stateDict(params as unknown as Tree<HostArray>);
  for (const name of [...dict.keys()].sort()) {
    const a = dict.get(name)!;
    const bytes = new Uint8Array(a.data.buffer, a.data.byteOffset, a.data.byteLength);
    h.update(`\n${name} ${a.dtype} [${a.shape.join(',')}]\n`).update(bytes);
  }
  return { model: new DiffuseClassifier(config), params, hash: h.digest('hex') };
}

/** Loads the metrics classifier (default: the shipped `models/mnist-classifier`). */
export async function loadMetricClassifier(dir = defaultClassifierDir()):
  Promise<MetricClassifier> {
  const { config, params } = await loadModel(dir, classifierClass);
  return metricClassifier(config, params);
}

/** Penultimate features [n, dim] and logits [n, classes] of n images, row-major. */
export interface ClassifierOutputs {
  n: number;
  dim: number;
  classes: number;
  features: Float32Array;
  logits: Float32Array;
}

export interface FeatureExtractor {
  readonly classifier: MetricClassifier;
  /** Features and logits of images [N, C, H, W] in [-1, 1]. `noiseLevel` (log-SNR, for a
   *  noise-conditioned classifier only) defaults to CLEAN_LOG_SNR. */
  outputs(images: HostArray, opts?: { noiseLevel?: number }): Promise<ClassifierOutputs>;
  dispose(): Promise<void>;
}

/**
 * A compiled classifier graph (weights baked in) run over images in batches of `batchSize`
 * (default 250); a short last batch is zero-padded (rows are independent: GroupNorm is per
 * image), so image sets of any size from `batchSize` up share one ORT session.
 */
export function featureExtractor(c: MetricClassifier,
  opts: { batchSize?: number; runtime?: RuntimeOptions } = {}): FeatureExtractor {
  const { model } = c;
  const cfg = model.config;
  const p = ops.constantTree(c.params as unknown as Tree<HostArray>) as
    unknown as ParamsOf<DiffuseClassifier>;
  const heads = (f: Tensor) => ({ features: f, logits: model.head.forward(p.head, f) });
  const runtime = { ...opts.runtime, name: opts.runtime?.name ?? 'classifier_features' };
  const clean = compile((x: Tensor) => heads(model.features(p, x)), runtime);
  const noisy = compile((x: Tensor, level: Tensor) => heads(model.features(p, x, level)), runtime);
  const maxBatch = opts.batchSize ?? 250;
  return {
    classifier: c,
    async outputs(images, o = {}) {
      const [n, ch, h, w] = images.shape as [number, number, number, number];
      if (images.shape.length !== 4 || ch !== cfg.in_channels || images.dtype !== 'float32') {
        throw new RangeError(`MNIST-FID features: expected float32 images [N, ` +
          `${cfg.in_channels}, H, W], got ${images.dtype} [${images.shape.join(', ')}]`);
      }
      if (o.noiseLevel !== undefined && !cfg.noise_conditioning) {
        throw new TypeError('MNIST-FID features: a noise level was given but the classifier ' +
          'has noise_conditioning: false');
      }
      const [dim, classes] = [cfg.hidden_dim, cfg.num_classes];
      const features = new Float32Array(n * dim);
      const logits = new Float32Array(n * classes);
      const batch = Math.max(1, Math.min(maxBatch, n));
      const per = ch * h * w;
      const src = images.data as Float32Array;
      const level = HostArray.full([batch], o.noiseLevel ?? CLEAN_LOG_SNR);
      for (let start = 0; start < n; start += batch) {
        const rows = Math.min(batch, n - start);
        const x = new Float32Array(batch * per); // zero rows pad a short last batch
        x.set(src.subarray(start * per, (start + rows) * per));
        const xs = new HostArray(x, [batch, ch, h, w]);
        const out = cfg.noise_conditioning ? await noisy(xs, level) : await clean(xs);
        features.set((out.features.data as Float32Array).subarray(0, rows * dim), start * dim);
        logits.set((out.logits.data as Float32Array).subarray(0, rows * classes), start * classes);
      }
      return { n, dim, classes, features, logits };
    },
    dispose: async () => {
      await Promise.all([clean.dispose(), noisy.dispose()]);
    },
  };
}

/** Fraction of rows whose argmax logit is the requested label. */
export function classAccuracy(o: Pick<ClassifierOutputs, 'n' | 'classes' | 'logits'>,
  labels: ArrayLike<number>): number {
  if (labels.length !== o.n) {
    throw new RangeError(`classAccuracy: ${labels.length} labels for ${o.n} images`);
  }
  let correct = 0;
  for (let i = 0; i < o.n; i++) {
    let best = 0;
    for (let k = 1; k < o.classes; k++) {
      if (o.logits[i * o.classes + k]! > o.logits[i * o.classes + best]!) best = k;
    }
    if (best === Number(labels[i])) correct++;
  }
  return o.n ? correct / o.n : NaN;
}

// ---------------------------------------------------------------------------------------------
// Gaussian statistics and the Fréchet distance
// ---------------------------------------------------------------------------------------------

/** Mean and covariance (float64, row-major dim x dim) of n feature vectors. */
export interface GaussianStats {
  n: number;
  dim: number;
  mu: Float64Array;
  sigma: Float64Array;
}

/** Mean and unbiased covariance (divided by n - 1, as numpy's cov in pytorch-fid) in float64. */
export function gaussianStats(features: ArrayLike<number>, n: number, dim: number): GaussianStats {
  if (n < 2 || features.length !== n * dim) {
    throw new RangeError(`gaussianStats: need n >= 2 rows of ${dim}, got ${features.length} ` +
      `values for n = ${n}`);
  }
  const { mean, cov } = meanAndCovariance(features, n, dim);
  for (let i = 0; i < cov.length; i++) cov[i] = (cov[i]! * n) / (n - 1);
  return { n, dim, mu: mean, sigma: cov };
}

/** A V diag(f(values)) V^T for a symmetric A = V diag(values) V^T. */
function symmetricFunction(a: Float64Array, d: number, f: (v: number) => number): Float64Array {
  const { values, vectors: v } = symmetricEigen(a, d);
  const fv = values.map(f);
  const out = new Float64Array(d * d);
  for (let i = 0; i < d; i++) {
    for (let j = i; j < d; j++) {
      let s = 0;
      for (let k = 0; k < d; k++) s += v[i * d + k]! * fv[k]! * v[j * d + k]!;
      out[i * d + j] = out[j * d + i] = s;
    }
  }
  return out;
}

/** Row-major d x d product. */
function matmul(a: Float64Array, b: Float64Array, d: number): Float64Array {
  const out = new Float64Array(d * d);
  for (let i = 0; i < d; i++) {
    for (let k = 0; k < d; k++) {
      const aik = a[i * d + k]!;
      if (aik === 0) continue;
      for (let j = 0; j < d; j++) out[i * d + j] = out[i * d + j]! + aik * b[k * d + j]!;
    }
  }
  return out;
}

/**
 * Fréchet distance |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}) between two Gaussians, in
 * the symmetric form of the file header. Round-off below zero is returned as 0.
 */
export function frechetDistance(a: GaussianStats, b: GaussianStats): number {
  const d = a.dim;
  if (b.dim !== d) throw new RangeError(`frechetDistance: dims differ (${a.dim} vs ${b.dim})`);
  let dist = 0;
  for (let i = 0; i < d; i++) dist += (a.mu[i]! - b.mu[i]!) ** 2;
  for (let i = 0; i < d; i++) dist += a.sigma[i * d + i]! + b.sigma[i * d + i]!;
  const rootA = symmetricFunction(a.sigma, d, (v) => Math.sqrt(Math.max(v, 0)));
  const m = matmul(matmul(rootA, b.sigma, d), rootA, d); // S1^1/2 S2 S1^1/2
  for (let i = 0; i < d; i++) {
    for (let j = i + 1; j < d; j++) {
      m[i * d + j] = m[j * d + i] = (m[i * d + j]! + m[j * d + i]!) / 2;
    }
  }
  const { values } = symmetricEigen(m, d);
  for (const v of values) dist -= 2 * Math.sqrt(Math.max(v, 0));
  return Math.max(dist, 0);
}

// ---------------------------------------------------------------------------------------------
// Cached reference statistics
// ---------------------------------------------------------------------------------------------

export interface ReferenceStats {
  stats: GaussianStats;
  /** The cache file. */
  path: string;
  /** Whether the statistics came from the cache (false: computed now, and written there). */
  cached: boolean;
}

/** SHA-256 (hex) of the classifier's hash, the dataset's name and its pixels. */
export function referenceKey(c: MetricClassifier, data: ImageDataset, name: string): string {
  const px = data.images.data;
  return createHash('sha256')
    .update(`diffuse MNIST-FID reference v1\n${c.hash}\n${name}\n`)
    .update(`[${data.images.shape.join(',')}]\n`)
    .update(new Uint8Array(px.buffer, px.byteOffset, px.byteLength))
    .digest('hex');
}

async function readStats(path: string, key: string): Promise<GaussianStats | undefined> {
  let file: SafetensorsFile;
  try {
    file = await SafetensorsFile.open(path);
  } catch {
    return undefined; // absent or unreadable: recompute and overwrite
  }
  try {
    if (file.metadata.key !== key) return undefined;
    const mu = await file.read('mu');
    const sigma = await file.read('sigma');
    if (mu.dtype !== 'F64' || sigma.dtype !== 'F64') return undefined;
    const dim = mu.shape[0]!;
    return { n: Number(file.metadata.n), dim, mu: mu.data, sigma: sigma.data };
  } catch {
    return undefined;
  } finally {
    await file.close();
  }
}

/**
 * The feature statistics of a dataset (the training split, for MNIST-FID), from
 * `cacheDir/mnist-fid-<name>-<key>.safetensors` when present, else computed and written there
 * atomically. `name` is part of the key and of the file name (e.g. 'mnist-train').
 */
export async function referenceStats(ex: FeatureExtractor, data: ImageDataset, name: string,
  opts: { cacheDir?: string } = {}): Promise<ReferenceStats> {
  const key = referenceKey(ex.classifier, data, name);
  const dir = opts.cacheDir ?? defaultCacheDir();
  const path = join(dir, `mnist-fid-${name.replace(/[^A-Za-z0-9_-]/g, '_')}-${key.slice(0, 16)}` +
    '.safetensors');
  const hit = await readStats(path, key);
  if (hit) return { stats: hit, path, cached: true };
  const out = await ex.outputs(data.images);
  const stats = gaussianStats(out.features, out.n, out.dim);
  await mkdir(dir, { recursive: true });
  await writeSafetensors(path, {
    mu: { dtype: 'F64', shape: [stats.dim], data: stats.mu },
    sigma: { dtype: 'F64', shape: [stats.dim, stats.dim], data: stats.sigma },
  }, { key, n: String(stats.n), dataset: name, classifier: ex.classifier.hash });
  return { stats, path, cached: false };
}
