/**
 * @file The runs behind `diffuse diffdis train|eval`: a DiffDisModel (methods/diffdis.ts: a
 * JointDiTModel plus a learned class-embedding table) trained on labelled images with both
 * DiffDis tasks, its classification by denoising the class embedding given the image, its
 * class-conditional samples, and the numbers that measure them: held-out accuracy of the
 * discriminative path, and class accuracy and MNIST-FID of the samples.
 *
 * Training runs in training-loop.ts's loop (run lock, exact resume, atomic checkpoints, log,
 * grids of class-conditional samples). Checkpoints and model/ hold the model in diffusers'
 * layout as its own class (`transformer/` with _class_name DiffDisModel: a JointDiTModel's
 * tensors and `class_embed.weight`), beside a FlowMatchEulerDiscreteScheduler.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import type { Tree } from '../engine/tree.js';
import type { Batch } from '../diffusion/denoiser.js';
import type { SchedulerSpec } from '../diffusion/diffusers/spec.js';
import { sample } from '../diffusion/sampling.js';
import { trainingPoints, trainingScheduler } from '../diffusion/training.js';
import { batchAt, type ImageDataset } from '../data/dataset.js';
import { mnistSplits } from '../data/mnist.js';
import { loadModel } from '../io/diffusers.js';
import {
  classifyByDenoising, classTable, DIFFDIS_DEFAULTS, diffdisClass, diffdisInitialize,
  diffdisLoss, DiffDisModel, imageDenoiser, taskCoefficients, taskRows, type DiffDisBatch,
  type DiffDisConfig, type DiffDisLossOptions,
} from '../methods/diffdis.js';
import type { JointDenoiser } from '../methods/multi-task.js';
import type { DiTConfig } from '../models/dit.js';
import type { ParamsOf } from '../nn/module.js';
import { adamw } from '../nn/optim.js';
import { compileTrainStep } from '../nn/train.js';
import type { PipelineFiles, SavedModel } from './checkpoint.js';
import { prepareMnistFid, scoreImages } from './eval.js';
import { createImageModel, presetNames } from './image-models.js';
import { agreement, flowSchedulerAt, jointDenoiser } from './multi-task.js';
import { learningRate, trainingImageShape, type TrainOptions } from './train.js';
import { runTraining, type TrainEvents, type TrainResult } from './training-loop.js';

/** The DiT size presets the backbone can take (image-models.ts's DiT table). */
export const DIFFDIS_SIZES: readonly string[] = presetNames('dit');

/** The optimisation options, as `diffuse train` has them. */
type LoopKeys = 'batchSize' | 'steps' | 'lr' | 'lrSchedule' | 'warmupSteps' | 'gradClip' |
  'emaDecay' | 'seed' | 'out' | 'logEvery' | 'sampleEvery' | 'checkpointEvery';

export interface DiffDisTrainOptions extends Pick<TrainOptions, LoopKeys>, DiffDisLossOptions {
  /** A DiT size preset (DIFFDIS_SIZES). */
  size: string;
  /** E: entries of a class embedding. */
  embedDim: number;
  /** Per-entry RMS of every class embedding (the paper's gamma, up to sqrt(E)). */
  labelScale: number;
  /** Fraction of each batch doing the discriminative task (0: generation only; 1: only
   *  discrimination). */
  discFraction: number;
}

/** Options a resumed run must share with its checkpoint. */
const RUN_KEYS = ['size', 'embedDim', 'labelScale', 'discFraction', 'itaWeight', 'denoiseWeight',
  'temperature', 'batchSize', 'lr', 'lrSchedule', 'warmupSteps', 'gradClip', 'emaDecay', 'seed',
] as const satisfies readonly (keyof DiffDisTrainOptions)[];

/** A DiffDis model for a dataset's images and classes at a DiT size preset. */
export function diffdisConfig(size: string, classes: number,
  shape: readonly [number, number, number], embedDim: number, labelScale: number): DiffDisConfig {
  const dit = createImageModel('dit', size, 0, shape).config as DiTConfig;
  return { ...DIFFDIS_DEFAULTS, ...dit, num_embeds_ada_norm: 1, label_dim: embedDim,
    label_scale: labelScale, num_classes: classes };
}

/** What the loop saves: the model as DiffDisModel in `transformer/`, the flow scheduler. */
function diffdisFiles(model: DiffDisModel, scheduler: SchedulerSpec): PipelineFiles<SavedModel> {
  return { model: { cls: diffdisClass, config: model.diffdis, component: 'transformer' },
    scheduler };
}

type HostBatch = DiffDisBatch<HostArray> & Tree<HostArray>;

/** Class indices -> one-hot rows [n * K]. */
function oneHot(labels: ArrayLike<number | bigint>, classes: number): Float32Array {
  const out = new Float32Array(labels.length * classes);
  for (let i = 0; i < labels.length; i++) out[i * classes + Number(labels[i])] = 1;
  return out;
}

/** Everything random about step `step`: data order, both noises, the times; then the split. */
function drawBatch(o: DiffDisTrainOptions, data: ImageDataset, classes: number,
  spec: SchedulerSpec, key: RngKey, step: number): HostBatch {
  const n = o.batchSize;
  const b = batchAt(data, key.fold(0), step, n);
  const [kx, ky, kt] = key.fold(1).fold(step).split(3);
  const pts = trainingPoints(spec, kt!.uniform(n));
  const c = taskCoefficients(pts, taskRows(n, o.discFraction));
  const col = (d: Float32Array) => new HostArray<'float32'>(d, [n], 'float32');
  const E = o.embedDim;
  return {
    x0: b.images, epsImage: new HostArray<'float32'>(kx!.normal(b.images.size),
      [...b.images.shape], 'float32'),
    onehot: new HostArray<'float32'>(oneHot(b.labels!.data as BigInt64Array, classes),
      [n, classes], 'float32'),
    epsLabel: new HostArray<'float32'>(ky!.normal(n * E), [n, E], 'float32'),
    t: col(pts.t), imageAlpha: col(c.imageAlpha), imageSigma: col(c.imageSigma),
    labelAlpha: col(c.labelAlpha), labelSigma: col(c.labelSigma),
    imageWeight: col(c.imageWeight), labelWeight: col(c.labelWeight),
  };
}

export interface DiffDisTrainResult extends TrainResult {
  model: DiffDisModel;
}

/**
 * Trains `o.steps` steps (continuing from `o.out/checkpoint` when `resume`), writing
 * checkpoints, the log, grids of class-conditional samples (classes in turn, four each) and,
 * at the end, `o.out/model` (EMA weights).
 */
export async function trainDiffDis(o: DiffDisTrainOptions, data: ImageDataset, resume: boolean,
  ev: TrainEvents<SavedModel> = {}): Promise<DiffDisTrainResult> {
  const classes = data.classNames?.length ?? 0;
  if (!data.labels || classes < 2) {
    throw new Error('DiffDis training needs a labelled dataset with at least 2 classes');
  }
  const [c, h, w] = trainingImageShape(data, o.batchSize);
  const model = new DiffDisModel(diffdisConfig(o.size, classes, [c, h, w], o.embedDim,
    o.labelScale));
  const spec = trainingScheduler('flow');
  const key = RngKey.fromSeed(o.seed);
  const loss = (p: Tree<Tensor>, b: Tree<Tensor>): Tensor => {
    const pp = p as unknown as ParamsOf<DiffDisModel>;
    return diffdisLoss((x, y, t) => model.forward(pp, x, y, t), model.classTable(pp),
      b as unknown as DiffDisBatch<Tensor>, o);
  };
  const trainer = compileTrainStep<HostBatch>(loss, adamw({ lr: learningRate(o), weightDecay: 0 }),
    { clipGradNorm: o.gradClip, ema: { maxDecay: o.emaDecay },
      runtime: { name: 'diffdis_train_step' } });
  const r = await runTraining<HostBatch, SavedModel>({
    options: o, files: diffdisFiles(model, spec), trainer, exported: 'ema',
    run: Object.fromEntries(RUN_KEYS.map((k) => [k, o[k]])),
    initialWeights: () =>
      diffdisInitialize(model.init(key.fold(2)) as Tree<HostArray>, key.fold(3)),
    batch: (step) => drawBatch(o, data, classes, spec, key, step),
    grid: async (ema) => {
      const p = { model, params: ema, scheduler: spec, folder: o.out };
      const n = Math.min(classes, 10) * 4;
      const labels = Int32Array.from({ length: n }, (_, i) => Math.floor(i / 4));
      return { images: (await sampleDiffDis(p, labels, { steps: 25, seed: 1234 })).images,
        cols: 8 };
    },
  }, resume, ev);
  return { ...r, model };
}

// ---- a trained model ----

export interface DiffDisPipeline {
  model: DiffDisModel;
  params: Tree<HostArray>;
  scheduler: SchedulerSpec;
  /** Where it was read from. */
  folder: string;
}

/** Reads a run's model/ (or checkpoint/) folder, the run folder itself, or a bare model. */
export async function loadDiffDisPipeline(dir: string): Promise<DiffDisPipeline> {
  const root = existsSync(join(dir, 'model', 'transformer')) ? join(dir, 'model') : dir;
  const component = existsSync(join(root, 'transformer')) ? join(root, 'transformer') : root;
  const { model, params, folder } = await loadModel(component, diffdisClass);
  return { model, params: params as unknown as Tree<HostArray>, scheduler: await flowSchedulerAt(root, 'a DiffDis model'),
    folder };
}

/** The model with its weights baked in, as both tasks' network, and its class table [K * E]. */
async function diffdisNet(p: DiffDisPipeline):
  Promise<JointDenoiser & { table: Float32Array; dispose(): Promise<void> }> {
  const weights = p.params as unknown as ParamsOf<DiffDisModel, HostArray>;
  const tableFn = compile((w: Tensor) => classTable(w, p.model.config.label_scale),
    { name: 'diffdis_class_table' });
  const table = (await tableFn(weights.class_embed.weight)).data as Float32Array;
  await tableFn.dispose();
  // A DiffDis model is a JointDiTModel with a class table: the joint sampler's denoiser.
  return { ...jointDenoiser(p, { name: 'diffdis_denoiser' }), table };
}

export interface RunOptions {
  /** Flow Euler steps. */
  steps: number;
  /** Start noise of row i is drawn from (seed, i) alone: a result does not depend on the
   *  batching. */
  seed: number;
  /** Rows per model call (default 100). */
  batchSize?: number;
  /** After each batch: rows done, of total. */
  onBatch?: (done: number, total: number) => void;
}

/** Runs `f` over row ranges [b0, b0 + rows) of `total` rows in batches. */
async function inBatches(total: number, o: RunOptions,
  f: (b0: number, rows: number) => Promise<void>): Promise<void> {
  const batch = o.batchSize ?? 100;
  for (let b0 = 0; b0 < total; b0 += batch) {
    const rows = Math.min(batch, total - b0);
    await f(b0, rows);
    o.onBatch?.(b0 + rows, total);
  }
}

/** Unit noise for rows [b0, b0 + rows), `size` values each, stream `k` of `seed`. */
function rowNoise(seed: number, k: number, b0: number, rows: number, size: number): Float32Array {
  const key = RngKey.fromSeed(seed).fold(k);
  const out = new Float32Array(rows * size);
  for (let i = 0; i < rows; i++) out.set(key.fold(b0 + i).normal(size), i * size);
  return out;
}

export interface Classified {
  labels: Int32Array;
  /** [N * E]: the denoised class embeddings. */
  embeddings: Float32Array;
  seconds: number;
}

/**
 * DiffDis's classification of `images` [N, C, H, W] in [-1, 1]: each image's class embedding
 * denoised from unit noise in `o.steps` flow-Euler steps, then the nearest class row (cosine).
 */
export async function classifyDiffDis(p: DiffDisPipeline, images: HostArray<'float32'>,
  o: RunOptions = { steps: 10, seed: 0 }): Promise<Classified> {
  const c = p.model.config;
  const per = c.in_channels * c.sample_size * c.sample_size;
  if (images.shape.slice(1).join() !== [c.in_channels, c.sample_size, c.sample_size].join()) {
    throw new Error(`classifyDiffDis: the model takes images [N, ${c.in_channels}, ` +
      `${c.sample_size}, ${c.sample_size}], got [${images.shape.join(', ')}]`);
  }
  const E = c.label_dim;
  const total = images.shape[0]!;
  const labels = new Int32Array(total);
  const embeddings = new Float32Array(total * E);
  const net = await diffdisNet(p);
  const t0 = performance.now();
  try {
    await inBatches(total, o, async (b0, rows) => {
      const x = new HostArray<'float32'>(images.data.subarray(b0 * per, (b0 + rows) * per),
        [rows, ...images.shape.slice(1)], 'float32');
      const start = new HostArray<'float32'>(rowNoise(o.seed, 0, b0, rows, E), [rows, E],
        'float32');
      const r = await classifyByDenoising(net, x, start, net.table, p.scheduler, o.steps);
      labels.set(r.labels, b0);
      embeddings.set(r.embeddings.data, b0 * E);
    });
  } finally {
    await net.dispose();
  }
  return { labels, embeddings, seconds: (performance.now() - t0) / 1000 };
}

/** Class-conditional samples of `labels` (flow Euler, `o.steps` steps), clipped to [-1, 1]. */
export async function sampleDiffDis(p: DiffDisPipeline, labels: Int32Array, o: RunOptions):
  Promise<{ images: HostArray<'float32'>; seconds: number }> {
  const c = p.model.config;
  const shape = [c.in_channels, c.sample_size, c.sample_size];
  const per = shape[0]! * shape[1]! * shape[2]!;
  const [K, E] = [p.model.diffdis.num_classes, c.label_dim];
  const bad = labels.find((k) => !(k >= 0 && k < K));
  if (bad !== undefined) throw new RangeError(`sampleDiffDis: ${bad} is not a class in [0, ${K})`);
  const images = new Float32Array(labels.length * per);
  const net = await diffdisNet(p);
  const t0 = performance.now();
  try {
    await inBatches(labels.length, o, async (b0, rows) => {
      const classRows = new Float32Array(rows * E);
      for (let i = 0; i < rows; i++) {
        const k = labels[b0 + i]!;
        classRows.set(net.table.subarray(k * E, (k + 1) * E), i * E);
      }
      const start = new HostArray<'float32'>(rowNoise(o.seed, 1, b0, rows, per),
        [rows, ...shape], 'float32');
      const out = await sample(imageDenoiser(net, new HostArray<'float32'>(classRows, [rows, E],
        'float32')), start, p.scheduler, { sampler: 'flow-euler', steps: o.steps });
      images.set(Float32Array.from(out.data, (v) => Math.min(1, Math.max(-1, v))), b0 * per);
    });
  } finally {
    await net.dispose();
  }
  return { images: new HostArray<'float32'>(images, [labels.length, ...shape], 'float32'),
    seconds: (performance.now() - t0) / 1000 };
}

// ---- evaluation ----

export interface DiffDisEvalOptions {
  /** Held-out digits classified, and class-conditional samples scored (at most 1,000). */
  n: number;
  /** Flow Euler steps of the classification (one or more counts, each a row). */
  classifySteps: readonly number[];
  /** Flow Euler steps of the samples. */
  sampleSteps: number;
  seed: number;
  /** Classifier folder for MNIST-FID (default: the shipped models/mnist-classifier). */
  classifier?: string;
  onProgress?: (what: string, done: number, total: number) => void;
}

export interface DiffDisEvalRow {
  /** 'classify': held-out accuracy of the discriminative path; 'generate': class accuracy
   *  (the MNIST classifier's) and MNIST-FID of class-conditional samples. */
  task: 'classify' | 'generate';
  steps: number;
  n: number;
  accuracy: number;
  /** MNIST-FID (generate rows), null for classify rows. */
  fid: number | null;
  /** The MNIST-FID of n held-out digits (what a perfect sampler scores at this n). */
  floor: number | null;
  secondsPerImage: number;
}

/**
 * The first `o.n` of MNIST's 1,000 held-out digits (a fixed random subset, classes balanced)
 * classified by the discriminative path at each step count, and `o.n` class-conditional
 * samples (class i mod K) scored by the MNIST classifier: class accuracy and MNIST-FID.
 */
export async function evaluateDiffDis(p: DiffDisPipeline, o: DiffDisEvalOptions):
  Promise<DiffDisEvalRow[]> {
  const held = mnistSplits().heldOut;
  const total = held.images.shape[0]!;
  const n = Math.min(o.n, total);
  const rows = RngKey.fromSeed(0).permutation(total).subarray(0, n);
  const per = held.images.size / total;
  const images = new Float32Array(n * per);
  rows.forEach((r, i) => images.set(held.images.data.subarray(r * per, (r + 1) * per), i * per));
  const x = new HostArray<'float32'>(images, [n, ...held.images.shape.slice(1)], 'float32');
  const truth = Int32Array.from(rows, (r) => held.labels![r]!);
  const out: DiffDisEvalRow[] = [];
  for (const steps of o.classifySteps) {
    const r = await classifyDiffDis(p, x, { steps, seed: o.seed,
      onBatch: (d, t) => o.onProgress?.(`classify ${steps}`, d, t) });
    out.push({ task: 'classify', steps, n, accuracy: agreement(r.labels, truth), fid: null,
      floor: null, secondsPerImage: r.seconds / n });
  }
  const K = p.model.diffdis.num_classes;
  const labels = Int32Array.from({ length: n }, (_, i) => i % K);
  const s = await sampleDiffDis(p, labels, { steps: o.sampleSteps, seed: o.seed,
    onBatch: (d, t) => o.onProgress?.(`sample ${o.sampleSteps}`, d, t) });
  const m = await prepareMnistFid({ n, ...(o.classifier ? { classifier: o.classifier } : {}) });
  try {
    const score = await scoreImages(m, s.images, labels);
    out.push({ task: 'generate', steps: o.sampleSteps, n, accuracy: score.accuracy!,
      fid: score.fid, floor: m.floor, secondsPerImage: s.seconds / n });
  } finally {
    await m.dispose();
  }
  return out;
}

export const DIFFDIS_CSV_COLUMNS = ['task', 'steps', 'n', 'accuracy', 'mnist_fid', 'floor',
  'seconds_per_image'] as const;

/** The rows as CSV, with a leading column naming the model. */
export function diffdisCsv(model: string, rows: readonly DiffDisEvalRow[]): string {
  const head = ['model', ...DIFFDIS_CSV_COLUMNS].join(',');
  const line = (r: DiffDisEvalRow) => [model, r.task, r.steps, r.n, r.accuracy.toFixed(4),
    r.fid === null ? '' : r.fid.toFixed(3), r.floor === null ? '' : r.floor.toFixed(3),
    r.secondsPerImage.toFixed(4)].join(',');
  return `${head}\n${rows.map(line).join('\n')}\n`;
}
