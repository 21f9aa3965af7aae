/**
 * @file The experiment behind `diffuse invdiff`: InvDiff (methods/invdiff.ts) on MNIST with a
 * spurious attribute (data/biased-mnist.ts: the first five digits bold with probability p, the
 * others with 1 - p). Stages, each kept in its folder under `out` and resumed from its
 * checkpoint when the command is run again (a finished one only rewrites its model/; one
 * whose checkpoint was made with other options is refused):
 *
 *   base/     a class-conditional model trained on the biased set (train.ts), unless given
 *   oracle/   optional: the same recipe on the 50/50 set (what unbiased data would give)
 *   module/   the lightweight module, trained with the base frozen on the inferred
 *             environments (runTraining: checkpoints, exact resume, log.jsonl)
 *
 * then the environments' agreement with the (hidden) attribute, and per arm (the biased
 * training set itself, plain CFG sampling of the base, InvDiff guidance, the oracle) the
 * share of bold images per class, the bias measures, class accuracy and MNIST-FID; a CSV and
 * a PNG grid (four rows per sampled arm, in the CSV's order, one column per class).
 *
 * The environments' score: image i's draw k uses t from the k-th of `draws` equal strata of
 * the training distribution and eps from the seed's key folded with i, so the scores do not
 * depend on the batching.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import type { Tree } from '../engine/tree.js';
import { noisySample, trainingPoints, trainingTarget } from '../diffusion/training.js';
import {
  biasedDataset, biasReport, boldFlags, realThreshold, splitBoldShares, type BiasReport,
} from '../data/biased-mnist.js';
import { datasetSize, subset, type ImageDataset } from '../data/dataset.js';
import { imageGrid, writeFileAtomic, writePng } from '../io/png.js';
import {
  environmentAgreement, environmentRows, environmentWeights, inferEnvironments,
  invariantObjective, meanShift,
} from '../methods/invdiff.js';
import { adamw } from '../nn/optim.js';
import { compileTrainStep } from '../nn/train.js';
import { mnistSplits } from './data.js';
import { prepareMnistFid, scoreImages } from './eval.js';
import { createImageModel, predictionOf, type ImageModel } from './image-models.js';
import {
  classCount, loadPipeline, requirePixelSpace, sampleImages, type Pipeline, type Provider,
} from './sample.js';
import { learningRate, progressGrid, train, type TrainOptions } from './train.js';
import { runTraining, type TrainEvents } from './training-loop.js';

/** What a stage reports: `done` of `total` units of `stage`. */
export type InvDiffProgress = (stage: string, done: number, total: number) => void;

// ---- models ----

/** The pipeline trained in `dir` by `o` on `data`, resumed from dir/checkpoint when one is
 *  there: the checkpoint must match `o` (train.ts checks), and a finished run only rewrites
 *  its model/ (nothing is compiled when no step is left). */
export async function trainedPipeline(dir: string, o: Omit<TrainOptions, 'out'>,
  data: ImageDataset, ev: TrainEvents = {}): Promise<Pipeline> {
  const r = await train({ ...o, out: dir }, data, existsSync(join(dir, 'checkpoint')), ev);
  if (r.interrupted) throw interrupted(r.state.step);
  return loadPipeline(join(dir, 'model'));
}

const interrupted = (step: number): Error =>
  new Error(`interrupted at step ${step}: run the same command again to continue`);

/** A trained module: its network and weights. */
export interface InvDiffModule {
  model: ImageModel;
  params: Tree<HostArray>;
}

/** The base pipeline sampled with InvDiff's guidance: base + scale x module. */
export function invariantPipeline(base: Pipeline, module: InvDiffModule, scale: number): Pipeline {
  const model: ImageModel = { ...base.model, apply: (p, x, t, labels) => {
    const q = p as { base: unknown; module: unknown };
    return { out: meanShift(predictionOf(base.model, q.base), predictionOf(module.model, q.module),
      scale)(x, t, labels) };
  } };
  return { ...base, model, notes: [], params: { base: base.params, module: module.params } };
}

// ---- bias identification ----

export interface LossOptions {
  /** (t, eps) draws per image. */
  draws: number;
  seed: number;
  /** Rows per graph call (default 256). */
  batchSize?: number;
  provider?: Provider;
  onProgress?: (done: number, total: number) => void;
}

/** Every image's conditional denoising loss under `p`, averaged over `draws` draws: the
 *  score environments are inferred from (methods/invdiff.ts inferEnvironments). */
export async function imageLosses(p: Pipeline, data: ImageDataset, o: LossOptions):
  Promise<Float64Array> {
  if (!classCount(p.model)) {
    throw new RangeError(`InvDiff needs a class-conditional model; ${p.modelFolder} is ` +
      'unconditional');
  }
  const predict = predictionOf(p.model, ops.constantTree(p.params));
  const graph = compile((x0: Tensor, eps: Tensor, t: Tensor, a: Tensor, s: Tensor, y: Tensor) => {
    const error = ops.sub(predict(noisySample(x0, eps, a, s), t, y),
      trainingTarget(p.scheduler.prediction, x0, eps, a, s)); // [B, C, H, W]
    return ops.mean(ops.square(error), [1, 2, 3]); // [B]
  }, { name: 'invdiff_losses', ...(o.provider ? { provider: o.provider } : {}) });
  const n = datasetSize(data);
  const [, c, h, w] = data.images.shape as [number, number, number, number];
  const per = c * h * w;
  const total = n * o.draws;
  const loss = new Float64Array(n);
  const batch = Math.max(1, Math.min(total, o.batchSize ?? 256));
  // Every image sees the same draws (common random numbers): draw d's t from stratum d of
  // [0, 1), its eps from the seed's key folded with d.
  const key = RngKey.fromSeed(o.seed);
  const draws = Array.from({ length: o.draws }, (_, d) =>
    ({ eps: key.fold(d).normal(per), u: (d + key.fold(d).fold(1).uniform(1)[0]!) / o.draws }));
  try {
    for (let start = 0; start < total; start += batch) {
      const rows = Math.min(batch, total - start);
      const x0 = new Float32Array(batch * per); // a short last batch is zero-padded
      const eps = new Float32Array(batch * per);
      const u = new Float64Array(batch);
      const y = new BigInt64Array(batch);
      for (let r = 0; r < rows; r++) {
        const [i, d] = [Math.floor((start + r) / o.draws), (start + r) % o.draws];
        x0.set(data.images.data.subarray(i * per, (i + 1) * per), r * per);
        eps.set(draws[d]!.eps, r * per);
        u[r] = draws[d]!.u;
        y[r] = BigInt(data.labels![i]!);
      }
      const pts = trainingPoints(p.scheduler, u);
      const shape = [batch, c, h, w];
      const out = await graph(new HostArray(x0, shape), new HostArray(eps, shape),
        new HostArray(pts.t, [batch]), new HostArray(pts.alpha, [batch, 1, 1, 1]),
        new HostArray(pts.sigma, [batch, 1, 1, 1]), new HostArray(y, [batch], 'int64'));
      const l = out.data as Float32Array;
      for (let r = 0; r < rows; r++) loss[Math.floor((start + r) / o.draws)]! += l[r]! / o.draws;
      o.onProgress?.(start + rows, total);
    }
  } finally {
    await graph.dispose();
  }
  return loss;
}

// ---- the module ----

export interface ModuleOptions {
  /** U-Net size preset of the module (image-models.ts). */
  size: string;
  steps: number;
  /** Rows per step, split evenly over the environments. */
  batchSize: number;
  lr: number;
  /** Weight of the variance of the environments' mean losses. */
  lambda: number;
  /** Share of label pairs replaced by the null label (the module learns the unconditional
   *  branch CFG uses too). */
  labelDropout: number;
  emaDecay: number;
  seed: number;
  out: string;
  checkpointEvery: number;
  sampleEvery: number;
}

/** The module's fresh weights: the preset's initialisation with the output conv zeroed, so
 *  training starts from the base model's own predictions (the official code's delta_init0). */
function moduleInit(model: ImageModel, key: RngKey): Tree<HostArray> {
  const w = model.module.init(key) as Record<string, Tree<HostArray>>;
  const out = w.conv_out as Record<string, HostArray>;
  return { ...w, conv_out: Object.fromEntries(Object.entries(out).map(([k, a]) =>
    [k, HostArray.zeros(a.shape)])) };
}

/**
 * Trains the module in `o.out` (resumed from its checkpoint when there, which must match `o`)
 * with the base frozen:
 * each step, B/2 images per environment sharing their (t, eps, dropout) draws, the objective
 * mean_e R_e + lambda Var_e R_e of the shifted prediction's losses.
 */
export async function trainModule(base: Pipeline, data: ImageDataset, env: Uint8Array,
  o: ModuleOptions, ev: TrainEvents = {}): Promise<InvDiffModule> {
  requirePixelSpace(base, 'InvDiff');
  const k = classCount(base.model);
  const module = createImageModel('unet', o.size, k, base.model.sampleShape);
  const groups = 2;
  const half = o.batchSize / groups;
  if (!Number.isInteger(half)) throw new RangeError(`module batch size ${o.batchSize} is not even`);
  const basePredict = predictionOf(base.model, ops.constantTree(base.params));
  const spec = base.scheduler;
  const loss = (trained: Tree<Tensor>, bt: Tree<Tensor>): Tensor => {
    const b = bt as Record<'x0' | 'eps' | 't' | 'a' | 's' | 'labels' | 'groups', Tensor>;
    const xt = noisySample(b.x0, b.eps, b.a, b.s); // [B, C, H, W]
    const target = trainingTarget(spec.prediction, b.x0, b.eps, b.a, b.s);
    const shifted = meanShift(basePredict, predictionOf(module, trained), 1)(xt, b.t, b.labels);
    const perSample = ops.mean(ops.square(ops.sub(shifted, target)), [1, 2, 3]); // [B]
    return invariantObjective(perSample, b.groups, o.lambda);
  };
  const trainer = compileTrainStep(loss, adamw({ lr: learningRate({ lr: o.lr, lrSchedule: 'cosine',
    steps: o.steps, warmupSteps: Math.min(100, Math.floor(o.steps / 10)) }), weightDecay: 0 }),
  { clipGradNorm: 1, ema: { maxDecay: o.emaDecay }, runtime: { name: 'invdiff_module_step' } });
  const key = RngKey.fromSeed(o.seed);
  const per = module.sampleShape.reduce((a, b) => a * b, 1);
  const batch = (step: number) => {
    const rows = environmentRows(env, groups, o.batchSize, key.fold(0).fold(step));
    const [kn, kt, kd] = key.fold(1).fold(step).split(3);
    const eps = kn!.normal(half * per);
    const pts = trainingPoints(spec, kt!.uniform(half));
    const drop = kd!.uniform(half);
    const twice = <T extends Float32Array>(a: T): Float32Array => Float32Array.from([...a, ...a]);
    const x = subset(data, rows);
    const labels = BigInt64Array.from(rows, (_, j) =>
      BigInt(drop[j % half]! < o.labelDropout ? k : x.labels![j]!));
    return {
      x0: x.images, eps: new HostArray(Float32Array.from([...eps, ...eps]), x.images.shape),
      t: new HostArray(twice(pts.t), [o.batchSize]),
      a: new HostArray(twice(pts.alpha), [o.batchSize, 1, 1, 1]),
      s: new HostArray(twice(pts.sigma), [o.batchSize, 1, 1, 1]),
      labels: new HostArray(labels, [o.batchSize], 'int64'),
      groups: environmentWeights(env, rows, groups),
    };
  };
  // What a resume must share, the environments included (by digest: other --draws or another
  // base give other environments).
  const run = { method: 'invdiff', size: o.size, batchSize: o.batchSize, lr: o.lr,
    lambda: o.lambda, labelDropout: o.labelDropout, emaDecay: o.emaDecay, seed: o.seed,
    base: base.modelFolder,
    environments: createHash('sha256').update(env).digest('hex').slice(0, 16) };
  const r = await runTraining({
    options: { steps: o.steps, batchSize: o.batchSize, out: o.out, logEvery: 10,
      sampleEvery: o.sampleEvery, checkpointEvery: o.checkpointEvery },
    files: { model: module, scheduler: spec, privateEntries: { _invdiff: run } },
    trainer, exported: 'ema', run,
    initialWeights: () => moduleInit(module, key.fold(2)),
    batch: (step) => batch(step) as unknown as Tree<HostArray>,
    grid: (ema) => progressGrid(invariantPipeline(base, { model: module, params: ema }, 1),
      { sampler: 'ddim', steps: 25, guidance: 1.5 }),
  }, existsSync(join(o.out, 'checkpoint')), ev);
  if (r.interrupted) throw interrupted(r.state.step);
  return { model: module, params: r.state.ema! };
}

// ---- measurement ----

export interface SampleSettings {
  sampler: string;
  steps: number;
  /** CFG weight (1: conditional alone). */
  guidance: number;
  /** Images per class. */
  perClass: number;
  seed: number;
  provider?: Provider;
}

/** perClass images of every class, classes cycled (image i has class i mod K). */
export async function sampleArm(p: Pipeline, o: SampleSettings,
  ev: { onStep?: (done: number, total: number) => void; signal?: AbortSignal } = {}):
  Promise<{ images: HostArray<'float32'>; labels: Int32Array; seconds: number }> {
  const k = classCount(p.model);
  const r = await sampleImages(p, { sampler: o.sampler, steps: o.steps, n: o.perClass * k,
    guidance: o.guidance, classes: 'all', seed: o.seed, ...ev,
    ...(o.provider ? { provider: o.provider } : {}) });
  return { images: r.images, labels: Int32Array.from({ length: o.perClass * k }, (_, i) => i % k),
    seconds: r.seconds };
}

// ---- the experiment ----

export interface InvDiffOptions {
  out: string;
  /** Bold share of digits 0-4 (1 - it for 5-9) in the biased training set. */
  aligned: number;
  dataSeed: number;
  /** A base pipeline already trained on this biased set (skips base/). */
  base?: string;
  /** The recipe of base/ (and oracle/). */
  recipe: Omit<TrainOptions, 'out'>;
  /** Also train (or load, when a path) the oracle. */
  oracle: boolean | string;
  draws: number;
  module: Omit<ModuleOptions, 'out'>;
  sample: SampleSettings;
  /** The shift's scale s at sampling. */
  scale: number;
  classifier?: string;
  signal?: AbortSignal;
}

export interface ArmScore extends BiasReport {
  arm: string;
  n: number;
  accuracy: number | null;
  fid: number | null;
  seconds: number;
}

export interface InvDiffResult {
  arms: ArmScore[];
  environments: { precision: number; recall: number; size: number };
  threshold: number;
  csv: string;
  png: string;
}

export const INVDIFF_CSV_COLUMNS = ['arm', 'n', 'bias', 'correlation',
  ...Array.from({ length: 10 }, (_, c) => `bold_share_${c}`), 'class_accuracy', 'mnist_fid',
  'seconds'];

const cell = (v: number | null): string =>
  (v === null || Number.isNaN(v) ? '' : String(+v.toFixed(5)));

export function invdiffCsv(arms: readonly ArmScore[]): string {
  const rows = arms.map((a) => [a.arm, a.n, cell(a.bias), cell(a.correlation),
    ...a.boldShare.map(cell), cell(a.accuracy), cell(a.fid), cell(a.seconds)].join(','));
  return `${[INVDIFF_CSV_COLUMNS.join(','), ...rows].join('\n')}\n`;
}

/** The whole experiment (see the file header); `progress` hears every stage. */
export async function runInvDiff(o: InvDiffOptions, progress: InvDiffProgress = () => {}):
  Promise<InvDiffResult> {
  const { train: real, heldOut } = mnistSplits();
  const classes = 10;
  const biased = biasedDataset(real, splitBoldShares(classes, o.aligned), o.dataSeed);
  const trainEvents = (stage: string, steps: number): TrainEvents => ({
    onStep: (s) => progress(stage, s.step, steps), ...(o.signal ? { signal: o.signal } : {}) });
  const recipe = { ...o.recipe, conditional: true };
  const trained = (stage: 'base' | 'oracle', data: ImageDataset) =>
    trainedPipeline(join(o.out, stage), recipe, data, trainEvents(stage, recipe.steps));
  const base = o.base ? await loadPipeline(o.base) : await trained('base', biased.data);
  requirePixelSpace(base, 'InvDiff');
  if (classCount(base.model) !== classes) {
    throw new RangeError(`the base model has ${classCount(base.model)} classes, not MNIST's 10`);
  }
  const balanced = () => biasedDataset(real, splitBoldShares(classes, 0.5), o.dataSeed).data;
  const oracle = o.oracle === false ? undefined : typeof o.oracle === 'string'
    ? await loadPipeline(o.oracle) : await trained('oracle', balanced());
  const provider = o.sample.provider ? { provider: o.sample.provider } : {};
  const losses = await imageLosses(base, biased.data, { draws: o.draws, seed: o.module.seed,
    onProgress: (d, t) => progress('losses', d, t), ...provider });
  if (o.signal?.aborted) throw new Error('interrupted after the losses (base/ is kept)');
  const { env } = inferEnvironments(losses, biased.data.labels!, classes);
  const half = Math.ceil(classes / 2);
  const conflicting = Uint8Array.from(biased.bold, (b, i) =>
    +(b !== +(biased.data.labels![i]! < half)));
  const module = await trainModule(base, biased.data, env,
    { ...o.module, out: join(o.out, 'module') }, trainEvents('module', o.module.steps));
  const threshold = realThreshold(heldOut);
  const fid = await prepareMnistFid({ n: o.sample.perClass * classes,
    ...(o.classifier ? { classifier: o.classifier } : {}) });
  const arms: ArmScore[] = [];
  const grids: HostArray[] = [];
  try {
    const pipelines: [string, Pipeline][] = [['cfg', base],
      ['invdiff', invariantPipeline(base, module, o.scale)],
      ...(oracle ? [['oracle', oracle] as [string, Pipeline]] : [])];
    const data = { images: biased.data.images, labels: biased.data.labels! };
    arms.push({ arm: 'training data', n: data.labels.length, accuracy: null, fid: null, seconds: 0,
      ...biasReport(boldFlags(data.images, threshold), data.labels, classes) });
    for (const [arm, p] of pipelines) {
      const s = await sampleArm(p, o.sample, { onStep: (d, t) => progress(`sample ${arm}`, d, t),
        ...(o.signal ? { signal: o.signal } : {}) });
      const score = await scoreImages(fid, s.images, s.labels);
      arms.push({ arm, n: s.labels.length, accuracy: score.accuracy, fid: score.fid,
        seconds: s.seconds, ...biasReport(boldFlags(s.images, threshold), s.labels, classes) });
      const shown = Math.min(4, o.sample.perClass) * classes; // the first rows: classes in turn
      grids.push(subset({ images: s.images }, Array.from({ length: shown }, (_, i) => i)).images);
    }
  } finally {
    await fid.dispose();
  }
  const csv = join(o.out, 'invdiff.csv');
  const png = join(o.out, 'invdiff.png');
  await writeFileAtomic(csv, invdiffCsv(arms));
  await writePng(png, imageGrid(stackBlocks(grids, classes), { cols: classes }));
  return { arms, environments: environmentAgreement(env, conflicting), threshold, csv, png };
}

/** The arms' blocks one under another, a row of blank (background) images between them. */
function stackBlocks(blocks: readonly HostArray[], cols: number): HostArray<'float32'> {
  const [, c, h, w] = blocks[0]!.shape as [number, number, number, number];
  const per = c * h * w;
  const rows = blocks.reduce((n, b) => n + b.shape[0]!, 0) + cols * (blocks.length - 1);
  const out = new Float32Array(rows * per).fill(-1);
  let at = 0;
  for (const b of blocks) {
    out.set(b.data as Float32Array, at * per);
    at += b.shape[0]! + cols;
  }
  return new HostArray(out, [rows, c, h, w]);
}
