/**
 * @file The D2NWG experiment (methods/d2nwg.ts) at MNIST scale, behind `diffuse d2nwg`: linear
 * heads on the shipped classifier's frozen penultimate features, trained from many seeds on
 * random subsets for random numbers of epochs (the spread of the weight distribution), each
 * flattened at unit RMS; a VAE over them; the ToyMlp denoiser (DDPM linear betas, v-prediction
 * by default) over the VAE's standardised posterior means; generated heads = decode(sampled
 * latents). About 480 lines: the experiment's stages, its scoring and its picture in one file.
 *
 * Every head is scored on the held-out features, by source:
 *   trained        the weight dataset itself;
 *   generated      decode(diffusion samples), the method;
 *   vae-prior      decode(z ~ N(0, I)), the VAE alone as a generator: what the diffusion
 *                  prior adds over it;
 *   reconstructed  decode(encoder mean of each trained head): what the VAE's bottleneck loses;
 *   random         torch's nn.Linear initialisation (the probe itself starts at zero, which
 *                  scores one class's share: every row is class 0).
 * Beside accuracy: each head's RMS distance to the nearest trained head (leave-one-out for
 * trained ones) in the VAE's scaled coordinates, which says whether generation copies the
 * dataset; and per source, the Wasserstein-1 distance of its accuracies to the trained ones',
 * which says whether it reproduces their spread rather than only their best.
 *
 * Unconditional: the paper conditions on a dataset embedding; here all heads solve one task.
 */
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { RngStream } from '../engine/random/stream.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import type { Tree } from '../engine/tree.js';
import { sample, samplersFor } from '../diffusion/sampling.js';
import {
  noisySample, trainingPoints, trainingScheduler, trainingTarget,
} from '../diffusion/training.js';
import { mnistSplits } from '../data/mnist.js';
import { linePlot, type Rgb } from '../io/plot.js';
import { writePng, type Image } from '../io/png.js';
import {
  flattenHead, fromScaled, headLength, headSpace, latentScaling, rebase, scaleLatents, toScaled,
  unflattenHead, unitScale, vaeLoss, vectorScaling, WeightVae, type HeadSpace, type HeadVector,
  type VaeBatch,
} from '../methods/d2nwg.js';
import { probeAccuracy, trainLinearProbe } from '../methods/linear-probe.js';
import { ToyMlp } from '../models/toy-mlp.js';
import { torchDefault } from '../nn/init.js';
import type { ParamsOf } from '../nn/module.js';
import { adamw } from '../nn/optim.js';
import { cosineLr } from '../nn/schedules.js';
import { compileTrainStep } from '../nn/train.js';
import { writeFileAtomic } from '../util/atomic.js';
import { graphDenoiser } from './graph-denoiser.js';
import { featureExtractor, loadMetricClassifier } from './metrics.js';

/** The samplers of the latent diffusion's process, DDPM linear betas (as `diffuse toy`). */
export const D2NWG_SAMPLERS = samplersFor(trainingScheduler('eps'));

/**
 * What the denoiser predicts. Not eps by default: in the default MNIST run (seed 0) the eps
 * model's generated heads scored 86.9% on average, 56.4% at the 10% quantile, 0% at worst
 * (DDIM samples far outside the training latents, up to 3-6 times the largest one's norm, in
 * an earlier run without unitScale); the v model's 96.3%, 94.2% and 57.2%. An x0 model also
 * stayed within the data's range.
 */
export const D2NWG_PREDICTIONS = ['v', 'eps', 'x0'] as const;
export type D2nwgPrediction = (typeof D2NWG_PREDICTIONS)[number];

export const SOURCES = ['trained', 'generated', 'vae-prior', 'reconstructed', 'random'] as const;
export type Source = (typeof SOURCES)[number];

/** Features [n, dim] and labels of a classification task: what the heads are trained on. */
export interface HeadTask {
  dim: number;
  classes: number;
  train: { features: Float32Array; labels: ArrayLike<number> };
  test: { features: Float32Array; labels: ArrayLike<number> };
}

export interface D2nwgOptions {
  /** Trained heads: the weight dataset. */
  heads: number;
  /** Each head sees a random subset of the training rows, of a fraction drawn log-uniformly
   *  in [minFraction, 1], for an epoch count drawn uniformly in 1..maxEpochs: heads from a
   *  few dozen rows generalise worse, which spreads the accuracies of the weight dataset. */
  minFraction: number;
  maxEpochs: number;
  /** The probe's Adam learning rate (linear-probe.ts's default, 1e-3). */
  probeLr: number;
  latent: number;
  vaeHidden: number;
  vaeLayers: number;
  vaeSteps: number;
  beta: number;
  /** Std of the Gaussian noise added to the encoder's input, in scaled coordinates. */
  inputNoise: number;
  diffusionSteps: number;
  diffusionHidden: number;
  prediction: D2nwgPrediction;
  /** Rows per step, for both the VAE and the diffusion model (drawn with replacement). */
  batchSize: number;
  lr: number;
  sampler: string;
  samplingSteps: number;
  /** Heads of each generated source (generated, vae-prior, random). */
  samples: number;
  seed: number;
  csv?: string;
  png?: string;
}

export const D2NWG_DEFAULTS: Readonly<D2nwgOptions> = Object.freeze({
  heads: 200, minFraction: 0.001, maxEpochs: 3, probeLr: 1e-3,
  latent: 16, vaeHidden: 256, vaeLayers: 2, vaeSteps: 2000, beta: 1e-3, inputNoise: 0.05,
  diffusionSteps: 3000, diffusionHidden: 256, prediction: 'v', batchSize: 64, lr: 1e-3,
  sampler: 'ddim', samplingSteps: 50, samples: 200, seed: 0,
});

export type D2nwgStage = 'features' | 'heads' | 'vae' | 'diffusion' | 'sample' | 'evaluate';

/** A progress report: `done` of `total` units of a stage; training stages carry the loss. */
export interface D2nwgProgress {
  stage: D2nwgStage;
  done: number;
  total: number;
  loss?: number;
}

export interface HeadRow {
  source: Source;
  index: number;
  accuracy: number;
  /** RMS distance (scaled coordinates) to the nearest trained head, itself excluded. */
  nearest: number;
}

export interface SourceStats {
  source: Source;
  n: number;
  mean: number;
  min: number;
  q10: number;
  median: number;
  q90: number;
  max: number;
  /** Median over the source's heads of `nearest`. */
  nearest: number;
  /** Wasserstein-1 distance between the source's accuracies and the trained heads' (how
   *  closely the source reproduces their distribution; 0 for trained). */
  w1: number;
}

export interface D2nwgResult {
  stats: SourceStats[];
  rows: HeadRow[];
  /** Every scored head by source, in `space` (unflattenHead loads one). */
  heads: Record<Source, HeadVector[]>;
  space: HeadSpace;
  /** The last step's VAE loss (MSE + beta KL) and denoiser loss. */
  losses: { vae: number; diffusion: number };
  seconds: Record<D2nwgStage, number>;
}

type Report = (p: D2nwgProgress) => void;

// ---- the weight dataset ----

/** `o.heads` probes in one shared space, each on its own subset, epochs and batch order. */
export function trainHeads(task: HeadTask, space: HeadSpace, o: D2nwgOptions, report: Report):
  HeadVector[] {
  const n = task.train.labels.length;
  const key = RngKey.fromSeed(o.seed).fold(1);
  return Array.from({ length: o.heads }, (_, i) => {
    const k = key.fold(i);
    const fraction = o.minFraction ** (1 - k.fold(0).uniform(1)[0]!); // log-uniform
    const epochs = 1 + k.fold(1).uniformInt(1, o.maxEpochs)[0]!;
    const rows = k.fold(2).permutation(n).subarray(0, Math.max(1, Math.round(fraction * n)));
    const features = gatherRows(task.train.features, task.dim, rows);
    const labels = Int32Array.from(rows, (r) => task.train.labels[r]!);
    const { probe } = trainLinearProbe(features, labels, task.dim, task.classes,
      { epochs, lr: o.probeLr, seed: k.fold(3).bits(1)[0]! });
    report({ stage: 'heads', done: i + 1, total: o.heads });
    return unitScale(flattenHead(rebase(probe, space)));
  });
}

/** Rows `idx` of a row-major table [*, width]. */
function gatherRows(table: Float32Array, width: number, idx: ArrayLike<number>): Float32Array {
  const out = new Float32Array(idx.length * width);
  for (let j = 0; j < idx.length; j++) {
    out.set(table.subarray(idx[j]! * width, (idx[j]! + 1) * width), j * width);
  }
  return out;
}

// ---- training ----

/**
 * `steps` AdamW steps (warm-up, cosine decay, gradient norm clipped to 1) of `loss` from
 * `init` over batches from `batchAt`: the loop the VAE and the denoiser share. With `ema`, the
 * returned parameters are the EMA (decay up to 0.995), as `diffuse toy` samples with.
 */
async function fit(loss: (p: Tree<Tensor>, b: Tree<Tensor>) => Tensor, init: Tree<HostArray>,
  steps: number, batchAt: () => Tree<HostArray>, o: D2nwgOptions, stage: D2nwgStage,
  report: Report, ema = false): Promise<{ params: Tree<HostArray>; loss: number }> {
  const warmup = Math.min(100, Math.floor(steps / 10));
  const trainer = compileTrainStep(loss, adamw({ lr: cosineLr(o.lr, steps, warmup, 1e-5),
    weightDecay: 0 }), { clipGradNorm: 1, ...(ema ? { ema: { maxDecay: 0.995 } } : {}),
    runtime: { name: `d2nwg_${stage}` } });
  let state = trainer.init(init);
  let last = NaN;
  try {
    for (let i = 0; i < steps; i++) {
      const r = await trainer.step(state, batchAt());
      state = r.state;
      last = r.metrics.loss;
      report({ stage, done: i + 1, total: steps, loss: last });
    }
  } finally {
    await trainer.dispose();
  }
  return { params: ema ? state.ema! : state.params, loss: last };
}

/** A VAE over rows [n, P] of scaled head vectors; the encoder sees them noised. */
async function trainVae(rows: Float32Array, n: number, o: D2nwgOptions, report: Report):
  Promise<{ vae: WeightVae; params: ParamsOf<WeightVae, HostArray>; loss: number }> {
  const width = rows.length / n;
  const vae = new WeightVae({ in_features: width, hidden: o.vaeHidden, layers: o.vaeLayers,
    latent: o.latent });
  const key = RngKey.fromSeed(o.seed).fold(2);
  const data = new RngStream(key.fold(1));
  const b = o.batchSize;
  const batchAt = () => {
    const target = gatherRows(rows, width, data.uniformInt(b, n)); // [B, P]
    const noise = data.normal32(target.length);
    return { input: new HostArray(target.map((v, j) => v + o.inputNoise * noise[j]!), [b, width]),
      target: new HostArray(target, [b, width]),
      eps: new HostArray(data.normal32(b * o.latent), [b, o.latent]) };
  };
  const r = await fit((p, batch) => vaeLoss(vae, p as ParamsOf<WeightVae>,
    batch as unknown as VaeBatch<Tensor>, o.beta), vae.init(key.fold(0)), o.vaeSteps, batchAt, o,
  'vae', report);
  return { vae, params: r.params as ParamsOf<WeightVae, HostArray>, loss: r.loss };
}

/** The ToyMlp denoiser trained on latents [n, d] as pipelines/toy.ts trains it on 2-D points. */
async function trainDenoiser(latents: Float32Array, n: number, o: D2nwgOptions, report: Report):
  Promise<{ model: ToyMlp; params: ParamsOf<ToyMlp, HostArray>; loss: number }> {
  const d = o.latent;
  const scheduler = trainingScheduler(o.prediction);
  const model = new ToyMlp({ in_features: d, hidden: o.diffusionHidden, layers: 3,
    time_features: 32 });
  const loss = (p: Tree<Tensor>, b: Tree<Tensor>): Tensor => {
    const { x0, eps, t, alpha, sigma } = b as Record<string, Tensor>;
    const xt = noisySample(x0!, eps!, alpha!, sigma!); // [B, d]
    const target = trainingTarget(scheduler.prediction, x0!, eps!, alpha!, sigma!);
    return ops.mean(ops.square(ops.sub(model.forward(p as ParamsOf<ToyMlp>, xt, t!), target)));
  };
  const key = RngKey.fromSeed(o.seed).fold(3);
  const data = new RngStream(key.fold(1));
  const b = o.batchSize;
  const batchAt = () => {
    const pts = trainingPoints(scheduler, data.uniform(b));
    return { x0: new HostArray(gatherRows(latents, d, data.uniformInt(b, n)), [b, d]),
      eps: new HostArray(data.normal32(b * d), [b, d]), t: new HostArray(pts.t, [b]),
      alpha: new HostArray(pts.alpha, [b, 1]), sigma: new HostArray(pts.sigma, [b, 1]) };
  };
  const r = await fit(loss, model.init(key.fold(0)), o.diffusionSteps, batchAt, o, 'diffusion',
    report, true);
  return { model, params: r.params as ParamsOf<ToyMlp, HostArray>, loss: r.loss };
}

/** n latents [n, d] from the denoiser with the options' sampler, in its standardised frame. */
async function sampleLatents(m: { model: ToyMlp; params: ParamsOf<ToyMlp, HostArray> }, n: number,
  o: D2nwgOptions, report: Report): Promise<Float32Array> {
  const scheduler = trainingScheduler(o.prediction);
  const consts = ops.constantTree(m.params as Tree<HostArray>) as ParamsOf<ToyMlp>;
  const denoiser = graphDenoiser((x, t) => m.model.forward(consts, x, t), scheduler.prediction,
    { name: 'd2nwg_denoiser' });
  const key = RngKey.fromSeed(o.seed).fold(4);
  const noise = (k: number, step: number): Float32Array => key.fold(step + 1).normal(k);
  try {
    const x = new HostArray<'float32'>(noise(n * o.latent, -1), [n, o.latent], 'float32');
    const out = await sample(denoiser, x, scheduler, { sampler: o.sampler, steps: o.samplingSteps,
      noise, onStep: (r) => report({ stage: 'sample', done: r.index + 1, total: r.total }) });
    return Float32Array.from(out.data);
  } finally {
    await denoiser.dispose();
  }
}

// ---- scoring ----

/** numpy's default (linear) quantile of sorted values. */
function quantile(sorted: readonly number[], q: number): number {
  const pos = q * (sorted.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, sorted.length - 1);
  return sorted[lo]! + (pos - lo) * (sorted[hi]! - sorted[lo]!);
}

/** For each row of `a`, the RMS distance to its nearest row of `b` (skipping b's row i when
 *  `a` is `b`, leave-one-out). Rows [*, width]. */
function nearestDistances(a: Float32Array, b: Float32Array, width: number): number[] {
  const [na, nb] = [a.length / width, b.length / width];
  return Array.from({ length: na }, (_, i) => {
    let best = Infinity;
    for (let j = 0; j < nb; j++) {
      if (a === b && i === j) continue;
      let s = 0;
      for (let k = 0; k < width; k++) s += (a[i * width + k]! - b[j * width + k]!) ** 2;
      best = Math.min(best, s);
    }
    return Math.sqrt(best / width);
  });
}

/** W1 between two samples of sorted values: the mean gap of their quantile functions, at
 *  1,000 levels. */
function wasserstein1(a: readonly number[], b: readonly number[]): number {
  let s = 0;
  for (let i = 0; i < 1000; i++) {
    const q = (i + 0.5) / 1000;
    s += Math.abs(quantile(a, q) - quantile(b, q));
  }
  return s / 1000;
}

export function sourceStats(rows: readonly HeadRow[]): SourceStats[] {
  const sorted = (source: Source, key: 'accuracy' | 'nearest') =>
    rows.filter((r) => r.source === source).map((r) => r[key]).sort((x, y) => x - y);
  const trained = sorted('trained', 'accuracy');
  return SOURCES.flatMap((source) => {
    const acc = sorted(source, 'accuracy');
    if (acc.length === 0) return [];
    return [{ source, n: acc.length, mean: acc.reduce((s, v) => s + v, 0) / acc.length,
      min: acc[0]!, q10: quantile(acc, 0.1), median: quantile(acc, 0.5), q90: quantile(acc, 0.9),
      max: acc[acc.length - 1]!, nearest: quantile(sorted(source, 'nearest'), 0.5),
      w1: trained.length ? wasserstein1(acc, trained) : NaN }];
  });
}

export const D2NWG_CSV_COLUMNS = ['source', 'index', 'accuracy', 'nearest_trained_rms'] as const;

export function d2nwgCsv(rows: readonly HeadRow[]): string {
  const lines = rows.map((r) =>
    `${r.source},${r.index},${r.accuracy.toFixed(4)},${r.nearest.toFixed(4)}`);
  return `${[D2NWG_CSV_COLUMNS.join(','), ...lines].join('\n')}\n`;
}

/** Two images side by side on white, tops aligned. */
function beside(a: Image, b: Image): Image {
  const [w, h] = [a.width + b.width, Math.max(a.height, b.height)];
  const data = new Uint8Array(w * h * 3).fill(255);
  for (const [img, x0] of [[a, 0], [b, a.width]] as const) {
    for (let y = 0; y < img.height; y++) {
      data.set(img.data.subarray(y * img.width * 3, (y + 1) * img.width * 3), (y * w + x0) * 3);
    }
  }
  return { width: w, height: h, channels: 3, data };
}

/** One colour per source in both panels (trained drawn last, on top). */
const COLORS: Record<Source, Rgb> = {
  trained: [31, 119, 180], generated: [255, 127, 14], 'vae-prior': [44, 160, 44],
  reconstructed: [160, 160, 160], random: [148, 103, 189],
};

/** Each source's accuracies as a quantile curve (sorted, against (rank + 1/2) / n): every
 *  source on the left, all but the random heads on the right. */
export function d2nwgPlot(rows: readonly HeadRow[]): Image {
  const curve = (source: Source) => {
    const acc = rows.filter((r) => r.source === source).map((r) => r.accuracy)
      .sort((x, y) => x - y);
    return { label: source, color: COLORS[source],
      points: acc.flatMap((v, i) => [(i + 0.5) / acc.length, v]) };
  };
  const order: Source[] = ['random', 'reconstructed', 'vae-prior', 'generated', 'trained'];
  const axes = { xLabel: 'quantile', yLabel: 'held-out accuracy', width: 560, height: 420 };
  return beside(
    linePlot(order.map(curve), { ...axes, title: 'D2NWG heads: accuracy by source' }),
    linePlot(order.slice(1).map(curve), { ...axes, title: 'without the random heads' }));
}

// ---- the experiment ----

/** Heads of `space` drawn from torch's nn.Linear initialisation. */
function randomHeads(space: HeadSpace, n: number, key: RngKey): HeadVector[] {
  const init = torchDefault(space.dim);
  return Array.from({ length: n }, (_, i) =>
    Float64Array.from(init([headLength(space)], key.fold(i)).data));
}

/** Runs the whole experiment on `task`; writes o.csv and o.png when given. */
export async function runD2nwg(task: HeadTask, options: Partial<D2nwgOptions> = {},
  report: Report = () => {}): Promise<D2nwgResult> {
  const o = { ...D2NWG_DEFAULTS, ...options };
  if (!(D2NWG_SAMPLERS as readonly string[]).includes(o.sampler)) {
    throw new RangeError(`d2nwg: sampler '${o.sampler}' does not fit a DDPM-trained model; ` +
      `expected one of ${D2NWG_SAMPLERS.join(', ')}`);
  }
  const seconds = { features: 0, heads: 0, vae: 0, diffusion: 0, sample: 0, evaluate: 0 };
  let clock = performance.now();
  const lap = (stage: D2nwgStage) => {
    const now = performance.now();
    seconds[stage] += (now - clock) / 1000;
    clock = now;
  };
  const space = headSpace(task.train.features, task.train.labels, task.dim, task.classes);
  const trained = trainHeads(task, space, o, report);
  lap('heads');

  const scaling = vectorScaling(trained);
  const scaled = toScaled(trained, scaling); // [heads, P]
  const vaeModel = await trainVae(scaled, o.heads, o, report);
  const p = ops.constantTree(vaeModel.params as Tree<HostArray>) as ParamsOf<WeightVae>;
  const encode = compile((x: Tensor) => vaeModel.vae.encode(p, x).mean, { name: 'd2nwg_encode' });
  const decodeGraph = compile((z: Tensor) => vaeModel.vae.decode(p, z), { name: 'd2nwg_decode' });
  const decode = async (z: Float32Array) => Float32Array.from((await decodeGraph(
    new HostArray(z, [z.length / o.latent, o.latent]))).data as Float32Array); // [n, P]
  const table: Partial<Record<Source, Float32Array>> = { trained: scaled };
  let diffusionLoss = NaN;
  try {
    const means = Float32Array.from((await encode(new HostArray(scaled, [o.heads, scaled.length /
      o.heads]))).data as Float32Array); // [heads, L]
    table.reconstructed = await decode(means);
    table['vae-prior'] = await decode(RngKey.fromSeed(o.seed).fold(5).normal(o.samples * o.latent));
    lap('vae');
    const ls = latentScaling(means, o.latent);
    const denoiser = await trainDenoiser(scaleLatents(means, ls), o.heads, o, report);
    diffusionLoss = denoiser.loss;
    lap('diffusion');
    table.generated = await decode(scaleLatents(await sampleLatents(denoiser, o.samples, o, report),
      ls, true));
    lap('sample');
  } finally {
    await Promise.all([encode.dispose(), decodeGraph.dispose()]);
  }
  table.random = toScaled(randomHeads(space, o.samples, RngKey.fromSeed(o.seed).fold(6)), scaling);

  const rows: HeadRow[] = [];
  const heads = {} as Record<Source, HeadVector[]>;
  for (const source of SOURCES) {
    const near = nearestDistances(table[source]!, scaled, scaling.centre.length);
    heads[source] = source === 'trained' ? trained : fromScaled(table[source]!, scaling);
    heads[source].forEach((v, index) => {
      const accuracy = probeAccuracy(unflattenHead(v, space), task.test.features, task.test.labels);
      rows.push({ source, index, accuracy, nearest: near[index]! });
    });
    report({ stage: 'evaluate', done: SOURCES.indexOf(source) + 1, total: SOURCES.length });
  }
  const stats = sourceStats(rows);
  if (o.csv) await writeFileAtomic(o.csv, d2nwgCsv(rows));
  if (o.png) await writePng(o.png, d2nwgPlot(rows));
  lap('evaluate');
  return { stats, rows, heads, space, seconds,
    losses: { vae: vaeModel.loss, diffusion: diffusionLoss } };
}

/** The MNIST task: the shipped classifier's penultimate features of the 9,000-digit train
 *  split and of the 1,000 held-out digits. */
export async function mnistHeadTask(report: Report = () => {}, classifierDir?: string):
  Promise<HeadTask> {
  const extractor = featureExtractor(await loadMetricClassifier(classifierDir));
  const { train, heldOut } = mnistSplits();
  try {
    report({ stage: 'features', done: 0, total: 2 });
    const a = await extractor.outputs(train.images);
    report({ stage: 'features', done: 1, total: 2 });
    const b = await extractor.outputs(heldOut.images);
    report({ stage: 'features', done: 2, total: 2 });
    return { dim: a.dim, classes: a.classes, train: { features: a.features, labels: train.labels! },
      test: { features: b.features, labels: heldOut.labels! } };
  } finally {
    await extractor.dispose();
  }
}

/** The experiment on MNIST, feature extraction timed as its own stage. */
export async function runD2nwgMnist(options: Partial<D2nwgOptions> = {},
  report: Report = () => {}): Promise<D2nwgResult & { task: HeadTask }> {
  const start = performance.now();
  const task = await mnistHeadTask(report);
  const features = (performance.now() - start) / 1000;
  const r = await runD2nwg(task, options, report);
  return { ...r, seconds: { ...r.seconds, features }, task };
}
