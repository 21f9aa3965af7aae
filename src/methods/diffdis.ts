/**
 * @file DiffDis: Huang, Han, Lu, Liang, Zeng, Zhang & Xu, "DiffDis: Empowering Generative
 * Diffusion Model with Cross-Modal Discrimination Capability" (ICCV 2023, arXiv 2308.09306).
 *
 * The paper's claim: image-text discrimination can be cast as generation. A diffusion model
 * that denoises the TEXT EMBEDDING conditioned on the image (and classifies or retrieves by
 * which candidate text embedding the denoised one matches) can be trained jointly with the
 * usual text-to-image diffusion loss in one dual-stream network sharing the image branch; the
 * joint model beats both single-task models (abstract: +1.65% mean zero-shot accuracy over 12
 * datasets, 2.42 better zero-shot FID).
 *
 * What could be verified (search of public pages; no official code was found):
 * - the abstract (arXiv, CVF open access, ar5iv), and Figure 2's caption as a review quotes it:
 *   for image generation the latent z is noised and fed with the text condition c to predict
 *   eps_z; for alignment the text query e is noised and fed with the clean z to predict eps_e.
 * - The equations, only as a third-party re-implementation restates them (METU CENG 796 course
 *   project, github barissarpertezcan/CENG796, code/main.ipynb): e is the normalised global
 *   text representation; e_t = gamma sqrt(abar_t) e_0 + sqrt(1 - abar_t) eps_e with a scale
 *   gamma in (0, 1]; the model estimates e0_hat = Phi(e_t, t_e, z) (or eps_e); L_ITA is CLIP's
 *   symmetric InfoNCE over the batch on s = e0_hat^T e; L = L_IG + lambda L_ITA; Algorithm 1
 *   draws t_z and t_e independently and computes both losses on every pair, a mask erasing the
 *   text query for generation and the text condition for alignment.
 * - Not verified: the paper's own method section, lambda, gamma, the temperature, the sampler
 *   and step count used to classify, and whether the text encoder is trained.
 *
 * The MNIST stand-in: the text is the class label; the text embedding is a learned table of K
 * rows of E entries, trained with the model. One JointDiTModel (models/joint-dit.ts, built with
 * label_dim = E) does both tasks, the label token carrying the embedding:
 *
 * - generation: the image noised to x_s, the class row clean (noise level 0) as the label
 *   token; the image head's velocity is regressed (the class-conditional flow loss).
 * - discrimination: the image clean, the class row noised to e_s; the label head's velocity u
 *   gives e0_hat = e_s - s u (flow), scored by cosine against all K rows (L_ITA), and u is also
 *   regressed on its flow target (the embedding's own denoising loss, `denoiseWeight`).
 * - Each row of a batch does one task: the first round(N discFraction) rows discriminate (data
 *   order is random per step), the rest generate. The paper computes both losses on every pair;
 *   a split costs what one-task training does and equals it in expectation. The model time t
 *   is the noised modality's, and each head is trained only on rows where its modality is the
 *   noised one, so the single adaLN time of the JointDiTModel is never ambiguous; which task a
 *   row is the network reads from its inputs (which modality is clean), in place of the
 *   paper's masks.
 * - Classification (the paper's zero-shot rule): run the embedding's flow from unit noise to
 *   s = 0 given the clean image (flow Euler, a few steps) and take the class whose row has the
 *   largest cosine with the result.
 *
 * Collapse. A learned target invites the trivial solution: with the rows at 0 (or all equal),
 * e_s is noise around a known point and its velocity is exactly predictable, so the denoising
 * loss alone drives the table there. Two guards, both from the paper's own setting: the rows
 * are normalised (the text query is a normalised embedding), rescaled to per-entry RMS
 * label_scale, so the table cannot shrink; and L_ITA, a cross-entropy of cosines, is log K when
 * rows coincide, so it pushes them apart. Normalising alone would still allow rows to merge.
 *
 * L_ITA here is image-to-text only and contrasts against all K rows rather than the other
 * texts of the batch: with ten classes a batch repeats each class, and in-batch InfoNCE would
 * count the same class as a negative (the K-way form is CLIP's zero-shot classifier as a loss).
 * The cosines are divided by a fixed temperature (CLIP learns it; the restated equation shows
 * none).
 *
 * Measured (docs/diffdis.csv; DiT xs, E 32, 1,000 steps of 64, about 11 minutes on 2 loaded
 * cores): 52.7% of the 1,000 held-out digits with 1 or 2 steps, but 28.7% with 10; samples of
 * the asked class 10.6% (chance 10%), MNIST-FID 56.0: the budget's speckles, as a multi-task
 * run of that size shows (README). TODO: why more classification steps do worse at this budget
 * (the embedding's velocity away from s = 1 not yet learned, or the path leaving the
 * training marginals) is not yet known; a longer run should tell.
 *
 * Notation (paper -> code):
 *
 *   | paper                             | here                                               |
 *   |-----------------------------------|----------------------------------------------------|
 *   | latent image z                    | the digit x0 [N, C, H, W] (pixels, no VAE)         |
 *   | text y; condition c; query e      | class k; table row e_k [E], both roles             |
 *   | gamma e (scaled text query)       | e_k = label_scale sqrt(E) w_k / |w_k| (classTable) |
 *   | t_z, t_e                          | one s per row, for the row's noised modality       |
 *   | eps_z, eps_e                      | epsImage, epsLabel                                 |
 *   | Phi_u (UNet), Phi_theta (+ blocks)| one JointDiTModel: image head, label head          |
 *   | e0_hat                            | e_s - s u_label                                    |
 *   | L_IG                              | image term: flow MSE on generative rows            |
 *   | L_ITA, lambda                     | ita term (K-way, temperature), itaWeight           |
 *   | (none)                            | denoise term: flow MSE of u_label, denoiseWeight   |
 *   | DDPM eps-prediction               | rectified flow, x_s = (1 - s) x0 + s eps           |
 */
import * as ops from '../engine/ops.js';
import type { HostArray } from '../engine/host.js';
import type { RngKey } from '../engine/random/philox.js';
import type { Tensor } from '../engine/tensor.js';
import type { Tree } from '../engine/tree.js';
import type { Batch, Denoiser } from '../diffusion/denoiser.js';
import type { SchedulerSpec } from '../diffusion/diffusers/spec.js';
import { sample } from '../diffusion/sampling.js';
import { noisySample, trainingTarget, type TrainingPoints } from '../diffusion/training.js';
import {
  readConfig, requireConfig, toDiffusersConfig, type ReadConfigOptions,
} from '../models/config.js';
import { ditConfigJson } from '../models/dit-config.js';
import {
  checkJointDiTConfig, JOINT_DIT_DEFAULTS, jointDiTInitialize, JointDiTModel,
  type JointDiTConfig,
} from '../models/joint-dit.js';
import { Embedding } from '../nn/layers.js';
import type { ParamsOf } from '../nn/module.js';
import type { JointDenoiser, JointPredict } from './multi-task.js';

// ---- the model: a JointDiTModel and the class table ----

/** A joint DiT whose label modality is an E-entry class embedding (label_dim = E), the
 *  number of classes, and label_scale: the per-entry RMS every row is rescaled to. */
export type DiffDisConfig = JointDiTConfig & { num_classes: number };

export const DIFFDIS_CLASS_NAME = 'DiffDisModel';

/** Ten classes (MNIST) embedded in 32 entries of RMS 1 (the pixels' scale). */
export const DIFFDIS_DEFAULTS: DiffDisConfig = {
  ...JOINT_DIT_DEFAULTS, label_dim: 32, label_scale: 1, num_classes: 10,
};

export function checkDiffDisConfig(c: DiffDisConfig): void {
  const { num_classes: k, ...joint } = c;
  checkJointDiTConfig(joint);
  requireConfig(Number.isInteger(k) && k >= 2, DIFFDIS_CLASS_NAME, 'num_classes',
    'an integer >= 2', k);
}

export function readDiffDisConfig(raw: Record<string, unknown>,
  opts: ReadConfigOptions = {}): DiffDisConfig {
  const c = readConfig(DIFFDIS_CLASS_NAME, raw, DIFFDIS_DEFAULTS,
    { ...opts, nullable: { out_channels: 'number', dtr_alpha: 'number', ...opts.nullable } });
  checkDiffDisConfig(c);
  return c;
}

/**
 * The JointDiTModel, unchanged, plus the raw class table `class_embed.weight` [K, E]: saved
 * as a JointDiTModel's tensors and that one more. The table the tasks use is classTable's.
 */
export class DiffDisModel extends JointDiTModel {
  readonly class_embed: Embedding;
  readonly diffdis: DiffDisConfig;

  constructor(config: DiffDisConfig) {
    const { num_classes: _, ...joint } = config;
    super(joint);
    checkDiffDisConfig(config);
    this.diffdis = config;
    this.class_embed = new Embedding(config.num_classes, config.label_dim);
  }

  /** The class table the tasks use, [K, E]. */
  classTable(p: ParamsOf<DiffDisModel>): Tensor {
    return classTable(p.class_embed.weight, this.config.label_scale);
  }
}

/** Rows of x [N, D] divided by their Euclidean norms. */
function unitRows(x: Tensor): Tensor {
  return ops.div(x, ops.sqrt(ops.add(ops.sum(ops.square(x), [1], true), 1e-12))); // [N, D]
}

/** Raw rows w [K, E] rescaled to norm scale sqrt(E), i.e. per-entry RMS `scale`: the table
 *  can neither shrink to 0 nor grow (see the header, "Collapse"). */
export function classTable(w: Tensor, scale: number): Tensor {
  const e = w.shape[1];
  if (w.rank !== 2 || typeof e !== 'number') {
    throw new TypeError(`classTable: expected a table [K, E] with a known E, got ` +
      `[${w.shape.join(', ')}]`);
  }
  return ops.mul(unitRows(w), scale * Math.sqrt(e)); // [K, E]
}

/** The JointDiTModel's initialisation (DiT's; the label head zeroed); the table keeps the
 *  xavier draw it gets there, any direction being as good a start as another. */
export function diffdisInitialize<P extends Tree<HostArray>>(params: P, key: RngKey): P {
  return jointDiTInitialize(params, key);
}

/** The class as the diffusers loader and saver see it. */
export const diffdisClass = {
  className: DIFFDIS_CLASS_NAME,
  readConfig: readDiffDisConfig,
  create: (config: DiffDisConfig) => new DiffDisModel(config),
  toConfig: (config: DiffDisConfig) => {
    const { label_dim, label_scale, num_classes, ...dit } = config;
    return toDiffusersConfig(DIFFDIS_CLASS_NAME,
      { ...ditConfigJson(dit), label_dim, label_scale, num_classes });
  },
} as const;

// ---- the two tasks of a batch ----

/** Which rows of a batch of n discriminate (1) and which generate (0): the first
 *  round(n discFraction), kept in [1, n - 1] when discFraction is strictly between 0 and 1
 *  so that both tasks are in every batch. */
export function taskRows(n: number, discFraction: number): Uint8Array {
  if (!(discFraction >= 0 && discFraction <= 1)) {
    throw new RangeError(`taskRows: discFraction must be in [0, 1], got ${discFraction}`);
  }
  let k = Math.round(n * discFraction);
  if (discFraction > 0 && discFraction < 1 && n >= 2) k = Math.min(Math.max(k, 1), n - 1);
  return Uint8Array.from({ length: n }, (_, i) => (i < k ? 1 : 0));
}

/** Per row [N]: each modality's process coefficients (the noised one at the row's point, the
 *  clean one at alpha 1, sigma 0) and each term's weight (1 / rows of its task, 0 elsewhere,
 *  so each term is a mean over its own rows). */
export interface TaskCoefficients {
  imageAlpha: Float32Array;
  imageSigma: Float32Array;
  labelAlpha: Float32Array;
  labelSigma: Float32Array;
  imageWeight: Float32Array;
  labelWeight: Float32Array;
}

/** The coefficients of rows split by `disc` (taskRows) at training points `pts`. */
export function taskCoefficients(pts: TrainingPoints, disc: Uint8Array): TaskCoefficients {
  const n = disc.length;
  const nDisc = disc.reduce((a, v) => a + v, 0);
  const nGen = n - nDisc;
  const c: TaskCoefficients = {
    imageAlpha: new Float32Array(n), imageSigma: new Float32Array(n),
    labelAlpha: new Float32Array(n), labelSigma: new Float32Array(n),
    imageWeight: new Float32Array(n), labelWeight: new Float32Array(n),
  };
  for (let i = 0; i < n; i++) {
    const [a, s] = [pts.alpha[i]!, pts.sigma[i]!];
    if (disc[i]) {
      [c.imageAlpha[i], c.imageSigma[i], c.labelAlpha[i], c.labelSigma[i]] = [1, 0, a, s];
      c.labelWeight[i] = 1 / nDisc;
    } else {
      [c.imageAlpha[i], c.imageSigma[i], c.labelAlpha[i], c.labelSigma[i]] = [a, s, 1, 0];
      c.imageWeight[i] = 1 / nGen;
    }
  }
  return c;
}

/** One training batch: clean images, one-hot classes [N, K], both noises, the model times [N]
 *  (the noised modality's) and the task coefficients (all [N]). */
export interface DiffDisBatch<T> {
  x0: T;
  onehot: T;
  epsImage: T;
  epsLabel: T;
  t: T;
  imageAlpha: T;
  imageSigma: T;
  labelAlpha: T;
  labelSigma: T;
  imageWeight: T;
  labelWeight: T;
}

export interface DiffDisLossOptions {
  /** lambda: weight of L_ITA. */
  itaWeight: number;
  /** Weight of the embedding's flow regression (0: the paper's L_ITA alone). */
  denoiseWeight: number;
  /** Cosines are divided by this before the softmax over classes. */
  temperature: number;
}

/** The three terms of one batch, each a scalar: image (L_IG), denoise, ita (L_ITA). */
export interface DiffDisTerms {
  image: Tensor;
  denoise: Tensor;
  ita: Tensor;
}

/**
 * The terms of one batch, `table` [K, E] the class table (classTable). With e0 = onehot table,
 * x_in = a_x x0 + s_x eps_x and y_in = a_y e0 + s_y eps_y (per-row coefficients: one of the
 * two is clean), (u_x, u_y) = predict(x_in, y_in, t), e0_hat = y_in - s_y u_y:
 *
 *   image   = sum_i w_x,i mean_pixels |u_x - (eps_x - x0)|^2
 *   denoise = sum_i w_y,i mean_E |u_y - (eps_y - e0)|^2
 *   ita     = sum_i w_y,i [ -log softmax_k(cos(e0_hat_i, e_k) / temperature)_{class i} ]
 */
export function diffdisTerms(predict: JointPredict, table: Tensor, b: DiffDisBatch<Tensor>,
  temperature: number): DiffDisTerms {
  const n = b.x0.shape[0]!;
  const col4 = (v: Tensor) => ops.reshape(v, [n, 1, 1, 1]); // [N, 1, 1, 1]
  const col2 = (v: Tensor) => ops.reshape(v, [n, 1]); // [N, 1]
  const [ax, sx] = [col4(b.imageAlpha), col4(b.imageSigma)];
  const [ay, sy] = [col2(b.labelAlpha), col2(b.labelSigma)];
  const e0 = ops.matmul(b.onehot, table); // [N, E]
  const xIn = noisySample(b.x0, b.epsImage, ax, sx); // [N, C, H, W]
  const yIn = noisySample(e0, b.epsLabel, ay, sy); // [N, E]
  const out = predict(xIn, yIn, b.t);
  const imageErr = ops.mean(ops.square(ops.sub(out.image,
    trainingTarget('flow', b.x0, b.epsImage, ax, sx))), [1, 2, 3]); // [N]
  const labelErr = ops.mean(ops.square(ops.sub(out.label,
    trainingTarget('flow', e0, b.epsLabel, ay, sy))), [1]); // [N]
  const e0Hat = ops.sub(yIn, ops.mul(sy, out.label)); // [N, E]
  const cos = ops.matmul(unitRows(e0Hat), ops.transpose(unitRows(table))); // [N, K]
  const ce = ops.neg(ops.sum(ops.mul(b.onehot,
    ops.logSoftmax(ops.div(cos, temperature), 1)), [1])); // [N]
  const weighted = (w: Tensor, v: Tensor) => ops.sum(ops.mul(w, v));
  return { image: weighted(b.imageWeight, imageErr), denoise: weighted(b.labelWeight, labelErr),
    ita: weighted(b.labelWeight, ce) };
}

/** DiffDis's loss of one batch: image + denoiseWeight denoise + itaWeight ita. */
export function diffdisLoss(predict: JointPredict, table: Tensor, b: DiffDisBatch<Tensor>,
  o: DiffDisLossOptions): Tensor {
  const r = diffdisTerms(predict, table, b, o.temperature);
  return ops.add(r.image,
    ops.add(ops.mul(r.denoise, o.denoiseWeight), ops.mul(r.ita, o.itaWeight)));
}

// ---- the two tasks at sampling time ----

/** The embedding's denoiser given clean images [N, C, H, W]: the label head's velocity. */
export function embeddingDenoiser(net: JointDenoiser, images: Batch): Denoiser {
  return {
    prediction: 'flow',
    predict: async (e, t) => (await net.predict(images, e, t)).label,
  };
}

/** The image's denoiser given clean class rows [N, E]: the image head's velocity. */
export function imageDenoiser(net: JointDenoiser, rows: Batch): Denoiser {
  return {
    prediction: 'flow',
    predict: async (x, t) => (await net.predict(x, rows, t)).image,
  };
}

/** For each row of `vectors` [n * E], the class of `table` [K * E] with the largest cosine
 *  (the first on ties). */
export function nearestClass(vectors: ArrayLike<number>, table: ArrayLike<number>,
  dim: number): Int32Array {
  const k = table.length / dim;
  const n = vectors.length / dim;
  if (!Number.isInteger(k) || !Number.isInteger(n)) {
    throw new RangeError(`nearestClass: ${vectors.length} and ${table.length} values are not ` +
      `rows of ${dim}`);
  }
  const norm = (v: ArrayLike<number>, i: number) => {
    let q = 0;
    for (let j = 0; j < dim; j++) q += v[i * dim + j]! ** 2;
    return Math.sqrt(q) || 1;
  };
  const rowNorms = Array.from({ length: k }, (_, c) => norm(table, c));
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    let [best, bestCos] = [0, -Infinity];
    for (let c = 0; c < k; c++) {
      let dot = 0;
      for (let j = 0; j < dim; j++) dot += vectors[i * dim + j]! * table[c * dim + j]!;
      const cos = dot / rowNorms[c]!; // |v_i| is the same for every class: left out
      if (cos > bestCos) [best, bestCos] = [c, cos];
    }
    out[i] = best;
  }
  return out;
}

/**
 * DiffDis's classification: the embedding's flow from `start` (unit noise [N, E]) to s = 0 in
 * `steps` flow-Euler steps given the clean `images`, then the nearest class row (cosine) of
 * `table` [K * E]. `spec` is the model's flow scheduler.
 */
export async function classifyByDenoising(net: JointDenoiser, images: Batch, start: Batch,
  table: ArrayLike<number>, spec: SchedulerSpec, steps: number):
  Promise<{ labels: Int32Array; embeddings: Batch }> {
  const embeddings = await sample(embeddingDenoiser(net, images), start, spec,
    { sampler: 'flow-euler', steps });
  return { labels: nearestClass(embeddings.data, table, start.shape[1]!), embeddings };
}
