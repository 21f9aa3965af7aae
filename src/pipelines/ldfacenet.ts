/**
 * @file The runs behind `diffuse ldfacenet`: LDFaceNet's guided swap (methods/ldfacenet.ts, the
 * paper and the MNIST stand-in) on a loaded DDPM-family pipeline, latent or pixel-space, and
 * the experiment that compares four guidance arms on held-out MNIST pairs.
 *
 * A swap: encode the target (the VAE's posterior mean, scaled as the model's latents), noise it
 * to t0 and sample back to 0 with DDIM (eta 0) along the DPM-Encoder's walk (SDEdit, methods/
 * dpm-encoder.ts), the unconditional model (the null label of a class-conditional one) guided
 * by energyGuidance with the swap energy; then decode. The energy's constants (source features,
 * targets, keep masks) are baked into its graph, so each batch of rows compiles its own
 * guidance graph (TODO: energyGuidance taking host inputs would let batches share one).
 *
 * Noise: image i's start noise is the slice [i * per, (i + 1) * per) of stream 0 of the seed's
 * Philox key, as in encode.ts, so an image does not depend on the batch size and every arm of
 * the experiment starts from the same x_t0.
 *
 * Measured (docs/ldfacenet.csv and .png; the model: an xs U-Net, class-conditional with label
 * dropout, trained 6000 steps on the 4x8x8 latents of a `diffuse train-vae` MNIST VAE; 100
 * pairs, t0 600, 25 steps, w_id 50, w_struct 500, band 2): outputs classified as the source's
 * class, none 7%, identity 94%, structure 4%, both 79%; keep-mask MSE 0.041, 0.066, 0.0001,
 * 0.0005; ink IoU with the target 0.32, 0.27, 0.40, 0.34. The combined arm gives up some
 * transfer for the layout.
 */
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import type { Tensor } from '../engine/tensor.js';
import { subset } from '../data/dataset.js';
import type { NoiseSource } from '../diffusion/denoiser.js';
import { energyGuidance } from '../diffusion/gradient-guidance.js';
import { processOf } from '../diffusion/training.js';
import { imageGrid, writePng } from '../io/png.js';
import {
  inkMask, keepMask, keepMse, maskIou, rowCosines, swapEnergy,
} from '../methods/ldfacenet.js';
import { sdedit } from '../methods/dpm-encoder.js';
import type { AutoencoderKL } from '../models/autoencoder-kl.js';
import type { ParamsOf } from '../nn/module.js';
import { writeFileAtomic } from '../util/atomic.js';
import { mnistSplits } from './data.js';
import { alphasCumprodOf } from './encode.js';
import { predictionOf } from './image-models.js';
import { latentCoder } from './latent.js';
import {
  featureExtractor, loadMetricClassifier, type ClassifierOutputs, type MetricClassifier,
} from './metrics.js';
import { pipelineImageShape, type Pipeline, type Provider } from './sample.js';

// ---- one swap ----

export interface SwapOptions {
  /** The identity network (the shipped MNIST classifier, loadMetricClassifier). */
  classifier: MetricClassifier;
  /** w_id and w_struct of the energy (0 and 0: plain SDEdit, no gradient graph). */
  identity: number;
  structure: number;
  /** SDEdit's start timestep (default 600 of 1000). */
  t0?: number;
  /** DDIM steps from t0 to the image (default 25). */
  steps?: number;
  /** Pixels the target's ink is dilated by to give the region the swap may redraw (default 2). */
  band?: number;
  seed?: number;
  /** Rows per guided graph (default 100). */
  batchSize?: number;
  provider?: Provider;
  /** After each model call: calls done and the run's total. */
  onStep?: (done: number, total: number) => void;
}

export const SWAP_DEFAULTS = { t0: 600, steps: 25, band: 2, seed: 0, batchSize: 100 } as const;

export interface SwapResult {
  /** The swapped images [N, C, H, W] in [-1, 1]. */
  images: HostArray<'float32'>;
  /** The keep mask the structure term used [N, 1, H, W]. */
  keep: HostArray<'float32'>;
  seconds: number;
}

function checkWeight(v: number, what: string): void {
  if (!(Number.isFinite(v) && v >= 0)) {
    throw new RangeError(`${what} must be a number >= 0, got ${v}`);
  }
}

/** The VAE's scaled latents (what the model samples) of images, and the decoder in ops. */
async function latentsOf(p: Pipeline, images: HostArray<'float32'>, provider?: Provider):
  Promise<{ x: HostArray<'float32'>; decode?: (x0: Tensor) => Tensor }> {
  if (!p.vae) return { x: images };
  const net = p.vae.model;
  const runtime = provider ? { provider } : {};
  const coder = latentCoder(p.vae, { runtime });
  try {
    const x = await coder.encodeLatents(images);
    const vp = ops.constantTree(p.vae.params) as unknown as ParamsOf<AutoencoderKL>;
    return { x, decode: (l) => net.decode(vp, net.fromLatent(l)) };
  } finally {
    await coder.dispose();
  }
}

const rowsOf = (a: HostArray<'float32'>, first: number, count: number): HostArray<'float32'> => {
  const per = a.size / a.shape[0]!;
  return new HostArray(a.data.slice(first * per, (first + count) * per),
    [count, ...a.shape.slice(1)], 'float32');
};

/**
 * Swaps `sources` onto `targets` (both [N, C, H, W] in [-1, 1], the pipeline's image shape):
 * the target noised to t0 and denoised with the swap energy's guidance (file header).
 */
export async function swapDigits(p: Pipeline, sources: HostArray<'float32'>,
  targets: HostArray<'float32'>, options: SwapOptions): Promise<SwapResult> {
  const D = SWAP_DEFAULTS;
  const o = { ...options, t0: options.t0 ?? D.t0, steps: options.steps ?? D.steps,
    band: options.band ?? D.band, seed: options.seed ?? D.seed,
    batchSize: options.batchSize ?? D.batchSize };
  const start = performance.now();
  const shape = pipelineImageShape(p);
  for (const [name, a] of [['sources', sources], ['targets', targets]] as const) {
    if (a.shape.length !== 4 || a.shape.slice(1).join() !== shape.join()) {
      throw new RangeError(`${name} [${a.shape.join(', ')}] do not fit ${p.modelFolder}, which ` +
        `makes [N, ${shape.join(', ')}]`);
    }
  }
  const n = targets.shape[0]!;
  if (sources.shape[0] !== n) throw new RangeError(`${sources.shape[0]} sources for ${n} targets`);
  if (p.ensemble) {
    throw new RangeError(`ldfacenet guides one model; ${p.modelFolder} is an ensemble`);
  }
  checkWeight(o.identity, 'identity');
  checkWeight(o.structure, 'structure');
  if (!(Number.isInteger(o.batchSize) && o.batchSize >= 1)) {
    throw new RangeError(`batchSize must be an integer >= 1, got ${o.batchSize}`);
  }
  const acp = alphasCumprodOf(p); // refuses flow models
  const keep = keepMask(targets, o.band);
  const runtime = o.provider ? { provider: o.provider } : {};
  const extractor = featureExtractor(o.classifier, { runtime });
  const sourceFeatures = (await extractor.outputs(sources)).features;
  await extractor.dispose();
  const { x, decode } = await latentsOf(p, targets, o.provider);
  const per = x.size / n;
  const fdim = sourceFeatures.length / n;

  const model = predictionOf(p.model, ops.constantTree(p.params));
  const conditional = p.model.numClasses > 0;
  const guided = o.identity > 0 || o.structure > 0;
  const key = RngKey.fromSeed(o.seed);
  const out = new Float32Array(x.size);
  const batches = Math.ceil(n / o.batchSize);
  for (let b = 0; b < batches; b++) {
    const first = b * o.batchSize;
    const count = Math.min(o.batchSize, n - first);
    const den = energyGuidance({
      // The unconditional model: the null label of a class-conditional one.
      model: (xs, t) => model(xs, t, conditional
        ? ops.full([xs.shape[0]!], p.model.numClasses, 'int64') : undefined),
      prediction: p.scheduler.prediction,
      process: processOf(p.scheduler),
      energy: swapEnergy({ classifier: o.classifier.model, params: o.classifier.params,
        ...(decode ? { decode } : {}), identity: o.identity, structure: o.structure,
        sourceFeatures: new HostArray(sourceFeatures.slice(first * fdim, (first + count) * fdim),
          [count, fdim], 'float32'),
        targets: rowsOf(targets, first, count), keep: rowsOf(keep, first, count) }),
      scale: guided ? 1 : 0,
      runtime,
    });
    const noise: NoiseSource = (size, k) => key.fold(k + 1).normal(size, first * per);
    try {
      const z = await sdedit(den, acp, rowsOf(x, first, count), { steps: o.steps, t0: o.t0, noise,
        onStep: (done, total) => o.onStep?.(b * total + done, batches * total) });
      out.set(z.data, first * per);
    } finally {
      await den.dispose();
    }
  }
  let images: HostArray<'float32'>;
  if (p.vae) {
    const coder = latentCoder(p.vae, { runtime });
    try {
      images = await coder.decodeLatents(new HostArray(out, x.shape, 'float32'));
    } finally {
      await coder.dispose();
    }
  } else {
    images = new HostArray(out.map((v) => Math.min(1, Math.max(-1, v))), x.shape, 'float32');
  }
  return { images, keep, seconds: (performance.now() - start) / 1000 };
}

// ---- the experiment ----

/** The arms: no guidance (plain SDEdit), identity only, structure only, both. */
export const LDFACENET_ARMS = ['none', 'identity', 'structure', 'both'] as const;
export type LdfacenetArm = (typeof LDFACENET_ARMS)[number];

export interface LdfacenetOptions extends Omit<SwapOptions, 'classifier' | 'onStep'> {
  /** Source / target pairs from the held-out MNIST split. */
  n: number;
  /** The identity network's folder (default: the shipped models/mnist-classifier). */
  classifierDir?: string;
  csv?: string;
  png?: string;
  /** Pairs shown in the PNG strip (default min(n, 12)). */
  columns?: number;
}

/** One pair in one arm: what the shipped classifier and the masks say of the output. */
export interface PairRow {
  arm: LdfacenetArm | 'target';
  pair: number;
  /** Indices into the held-out split. */
  source: number;
  target: number;
  sourceClass: number;
  targetClass: number;
  predicted: number;
  /** Cosine of the output's features to the source's. */
  cosine: number;
  /** IoU of the output's ink with the target's. */
  iou: number;
  /** MSE to the target over the keep mask. */
  keepMse: number;
}

export interface ArmSummary {
  arm: PairRow['arm'];
  n: number;
  /** Fraction classified as the source's class (identity transfer) / the target's. */
  identityTransfer: number;
  targetClass: number;
  cosine: number;
  iou: number;
  keepMse: number;
  seconds: number;
}

export interface LdfacenetResult {
  arms: ArmSummary[];
  rows: PairRow[];
  seconds: number;
}

/**
 * n pairs of held-out digits of different classes. A seeded permutation splits the split in
 * halves; source i is the i-th digit of the first, its target the next unused digit of the
 * second whose class differs. The first k pairs do not depend on n.
 */
export function heldOutPairs(n: number, seed: number): { source: number[]; target: number[] } {
  const labels = mnistSplits().heldOut.labels!;
  const half = Math.floor(labels.length / 2);
  if (!(Number.isInteger(n) && n >= 1 && n <= half)) {
    throw new RangeError(`n must be an integer from 1 to ${half} (pairs of the ${labels.length} ` +
      `held-out digits), got ${n}`);
  }
  const order = RngKey.fromSeed(seed).fold(7).permutation(labels.length);
  const source = Array.from(order.subarray(0, n));
  const pool = Array.from(order.subarray(half));
  const target = source.map((s) =>
    pool.splice(pool.findIndex((t) => labels[t] !== labels[s]), 1)[0]!);
  return { source, target };
}

function argmaxRows(o: ClassifierOutputs): number[] {
  return Array.from({ length: o.n }, (_, i) => {
    let best = 0;
    for (let k = 1; k < o.classes; k++) {
      if (o.logits[i * o.classes + k]! > o.logits[i * o.classes + best]!) best = k;
    }
    return best;
  });
}

const mean = (xs: readonly number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;

export function summarize(rows: readonly PairRow[], arm: PairRow['arm'], seconds: number):
  ArmSummary {
  const r = rows.filter((x) => x.arm === arm);
  const avg = (f: (x: PairRow) => number): number => mean(r.map(f));
  return { arm, n: r.length, identityTransfer: avg((x) => +(x.predicted === x.sourceClass)),
    targetClass: avg((x) => +(x.predicted === x.targetClass)), cosine: avg((x) => x.cosine),
    iou: avg((x) => x.iou), keepMse: avg((x) => x.keepMse), seconds };
}

export const LDFACENET_CSV_COLUMNS = ['arm', 'pair', 'source_index', 'target_index', 'source_class',
  'target_class', 'predicted', 'identity_transfer', 'cosine', 'iou', 'keep_mse'] as const;

export function ldfacenetCsv(rows: readonly PairRow[]): string {
  const lines = rows.map((r) => [r.arm, r.pair, r.source, r.target, r.sourceClass, r.targetClass,
    r.predicted, +(r.predicted === r.sourceClass), r.cosine.toFixed(4), r.iou.toFixed(4),
    r.keepMse.toFixed(5)].join(','));
  return `${[LDFACENET_CSV_COLUMNS.join(','), ...lines].join('\n')}\n`;
}

/**
 * Runs the four arms on n held-out pairs (the arms' weights: `identity` and `structure`, each
 * 0 where the arm leaves it out), scores them with the shipped classifier and the masks, and
 * writes o.csv (one row per pair and arm, plus the unchanged targets as arm 'target') and
 * o.png (rows: sources, targets, then each arm's outputs).
 */
export async function runLdfacenet(p: Pipeline, o: LdfacenetOptions,
  onStep?: (arm: LdfacenetArm, done: number, total: number) => void): Promise<LdfacenetResult> {
  const start = performance.now();
  const classifier = await loadMetricClassifier(o.classifierDir);
  const { heldOut } = mnistSplits();
  const pairs = heldOutPairs(o.n, o.seed ?? SWAP_DEFAULTS.seed);
  const sources = subset(heldOut, pairs.source).images as HostArray<'float32'>;
  const targets = subset(heldOut, pairs.target).images as HostArray<'float32'>;
  const labels = heldOut.labels!;
  const extractor = featureExtractor(classifier,
    o.provider ? { runtime: { provider: o.provider } } : {});
  const rows: PairRow[] = [];
  const arms: ArmSummary[] = [];
  const outputs: HostArray<'float32'>[] = [];
  try {
    const src = await extractor.outputs(sources);
    const keep = keepMask(targets, o.band ?? SWAP_DEFAULTS.band);
    const targetInk = inkMask(targets);
    const score = async (arm: PairRow['arm'], images: HostArray<'float32'>, seconds: number) => {
      const out = await extractor.outputs(images);
      const predicted = argmaxRows(out);
      const cos = rowCosines(out.features, src.features, o.n);
      const iou = maskIou(inkMask(images), targetInk, o.n);
      const mse = keepMse(images, targets, keep);
      for (let i = 0; i < o.n; i++) {
        rows.push({ arm, pair: i, source: pairs.source[i]!, target: pairs.target[i]!,
          sourceClass: labels[pairs.source[i]!]!, targetClass: labels[pairs.target[i]!]!,
          predicted: predicted[i]!, cosine: cos[i]!, iou: iou[i]!, keepMse: mse[i]! });
      }
      arms.push(summarize(rows, arm, seconds));
    };
    await score('target', targets, 0);
    const weights: Record<LdfacenetArm, [number, number]> = { none: [0, 0],
      identity: [o.identity, 0], structure: [0, o.structure], both: [o.identity, o.structure] };
    for (const arm of LDFACENET_ARMS) {
      const [identity, structure] = weights[arm];
      const r = await swapDigits(p, sources, targets, { ...o, classifier, identity, structure,
        onStep: (done, total) => onStep?.(arm, done, total) });
      outputs.push(r.images);
      await score(arm, r.images, r.seconds);
    }
  } finally {
    await extractor.dispose();
  }
  if (o.csv) await writeFileAtomic(o.csv, ldfacenetCsv(rows));
  if (o.png) {
    const cols = Math.min(o.n, o.columns ?? 12);
    const strip = [sources, targets, ...outputs].map((a) => rowsOf(a, 0, cols));
    const per = strip[0]!.size;
    const all = new Float32Array(per * strip.length);
    strip.forEach((a, i) => all.set(a.data, i * per));
    const shape = [cols * strip.length, ...sources.shape.slice(1)];
    await writePng(o.png, imageGrid(new HostArray(all, shape), { cols }));
  }
  return { arms, rows, seconds: (performance.now() - start) / 1000 };
}
