/**
 * @file The runs behind `diffuse train-joint` and `diffuse sample-joint`: a JointDiTModel
 * (models/joint-dit.ts) trained on labelled images with the multi-task flow loss, and sampled
 * jointly, image-given-label or label-given-image (methods/multi-task.ts); the MNIST-FID and
 * class accuracies that measure it.
 *
 * Training runs in training-loop.ts's loop (run lock, exact resume, atomic checkpoints, log,
 * grids). Checkpoints and model/ hold the joint model as its own class in diffusers' layout
 * (`transformer/` with _class_name JointDiTModel), beside a FlowMatchEulerDiscreteScheduler;
 * `diffuse sample` refuses the folder (the class is not one it samples), `sample-joint` reads
 * it. The loop's `files.model` is typed as an ImageModel, of which it reads only the class,
 * the config and the component name: jointFiles supplies those (see there).
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile, type RuntimeOptions } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import type { Tree } from '../engine/tree.js';
import type { Batch } from '../diffusion/denoiser.js';
import { parseScheduler, type SchedulerSpec } from '../diffusion/diffusers/spec.js';
import { samplerSchedule } from '../diffusion/sampling.js';
import { trainingPoints, trainingScheduler } from '../diffusion/training.js';
import { batchAt, type ImageDataset } from '../data/dataset.js';
import { loadModel, readSchedulerConfig, type ModelClass } from '../io/diffusers.js';
import {
  argmaxRows, jointFlowLoss, labelVectors, sampleJointFlow, type JointDenoiser,
  type JointTrainingBatch, type Modality,
} from '../methods/multi-task.js';
import type { DiTConfig } from '../models/dit.js';
import {
  jointDiTClass, jointDiTInitialize, JointDiTModel, type JointDiTConfig,
} from '../models/joint-dit.js';
import type { Module, ParamsOf } from '../nn/module.js';
import { adamw } from '../nn/optim.js';
import { compileTrainStep } from '../nn/train.js';
import type { PipelineFiles } from './checkpoint.js';
import { learningRate, trainingImageShape, type TrainOptions } from './train.js';
import { createImageModel, presetNames, type ImageModel } from './image-models.js';
import { runTraining, type TrainEvents, type TrainResult } from './training-loop.js';

/** The DiT size presets a joint model can take (image-models.ts's DiT table). */
export const JOINT_SIZES: readonly string[] = presetNames('dit');

/** The optimisation options, as `diffuse train` has them. */
type LoopKeys = 'batchSize' | 'steps' | 'lr' | 'lrSchedule' | 'warmupSteps' | 'gradClip' | 'emaDecay' |
  'seed' | 'out' | 'logEvery' | 'sampleEvery' | 'checkpointEvery';

export interface JointTrainOptions extends Pick<TrainOptions, LoopKeys> {
  /** A DiT size preset (JOINT_SIZES). */
  size: string;
  /** Label vectors are +labelScale at the class, -labelScale elsewhere. */
  labelScale: number;
  /** Weight of the label term of the loss (the image term has weight 1). */
  labelWeight: number;
}

/** Options a resumed run must share with its checkpoint. */
const RUN_KEYS = ['size', 'labelScale', 'labelWeight', 'batchSize', 'lr', 'lrSchedule',
  'warmupSteps', 'gradClip', 'emaDecay', 'seed',
] as const satisfies readonly (keyof JointTrainOptions)[];

/** A joint model for a dataset's images and classes at a DiT size preset. */
export function jointConfig(size: string, classes: number, shape: readonly [number, number, number],
  labelScale: number): JointDiTConfig {
  const dit = createImageModel('dit', size, 0, shape).config as DiTConfig;
  return { ...dit, label_dim: classes, label_scale: labelScale };
}

/**
 * The loop's view of the joint model as pipeline files. It reads `cls`, `config` and
 * `component` only; `family` is the backbone's and `apply` throws, since the joint model has
 * no single-image prediction. (A narrower PipelineFiles.model type, those three fields, would
 * make this adapter unnecessary.)
 */
export function jointFiles(model: JointDiTModel, scheduler: SchedulerSpec): PipelineFiles {
  const c = model.config;
  const asModel: ImageModel = {
    family: 'dit', cls: jointDiTClass as unknown as ModelClass<Module, unknown>, config: c,
    module: model, component: 'transformer', numClasses: 0,
    sampleShape: [c.in_channels, c.sample_size, c.sample_size],
    labelEmbedDim: model.transformer.innerDim,
    apply: () => {
      throw new Error('JointDiTModel predicts an image and a label together: use ' +
        'methods/multi-task.ts, not a single-image denoiser');
    },
  };
  return { model: asModel, scheduler };
}

type HostJointBatch = JointTrainingBatch<HostArray> & Tree<HostArray>;

/** Everything random about step `step`: data order, both noises, the shared times. */
function drawJointBatch(o: JointTrainOptions, data: ImageDataset, classes: number,
  spec: SchedulerSpec, key: RngKey, step: number): HostJointBatch {
  const n = o.batchSize;
  const b = batchAt(data, key.fold(0), step, n);
  const [kx, ky, kt] = key.fold(1).fold(step).split(3);
  const pts = trainingPoints(spec, kt!.uniform(n));
  const f32 = (d: Float32Array, shape: number[]) => new HostArray<'float32'>(d, shape, 'float32');
  return {
    x0: b.images, epsImage: f32(kx!.normal(b.images.size), [...b.images.shape]),
    y0: f32(labelVectors(b.labels!.data as BigInt64Array, classes, o.labelScale), [n, classes]),
    epsLabel: f32(ky!.normal(n * classes), [n, classes]),
    t: f32(pts.t, [n]), alpha: f32(pts.alpha, [n]), sigma: f32(pts.sigma, [n]),
  };
}

export interface JointTrainResult extends TrainResult {
  model: JointDiTModel;
}

/**
 * Trains `o.steps` steps (continuing from `o.out/checkpoint` when `resume`), writing
 * checkpoints, the log, grids of image-given-label samples (classes in turn, four each) and,
 * at the end, `o.out/model` (EMA weights).
 */
export async function trainJoint(o: JointTrainOptions, data: ImageDataset, resume: boolean,
  ev: TrainEvents = {}): Promise<JointTrainResult> {
  const classes = data.classNames?.length ?? 0;
  if (!data.labels || classes < 2) {
    throw new Error('joint image-label training needs a labelled dataset with at least 2 classes');
  }
  const [c, h, w] = trainingImageShape(data, o.batchSize);
  const model = new JointDiTModel(jointConfig(o.size, classes, [c, h, w], o.labelScale));
  const spec = trainingScheduler('flow');
  const lr = learningRate(o);
  const key = RngKey.fromSeed(o.seed);
  const loss = (p: Tree<Tensor>, b: Tree<Tensor>): Tensor => {
    const pp = p as unknown as ParamsOf<JointDiTModel>;
    return jointFlowLoss((x, y, t) => model.forward(pp, x, y, t),
      b as unknown as JointTrainingBatch<Tensor>, o.labelWeight);
  };
  const trainer = compileTrainStep<HostJointBatch>(loss, adamw({ lr, weightDecay: 0 }),
    { clipGradNorm: o.gradClip, ema: { maxDecay: o.emaDecay },
      runtime: { name: 'joint_train_step' } });
  const r = await runTraining({
    options: o, files: jointFiles(model, spec), trainer, exported: 'ema',
    run: Object.fromEntries(RUN_KEYS.map((k) => [k, o[k]])),
    initialWeights: () =>
      jointDiTInitialize(model.init(key.fold(2)) as Tree<HostArray>, key.fold(3)),
    batch: (step) => drawJointBatch(o, data, classes, spec, key, step),
    grid: async (ema) => {
      const p = { model, params: ema, scheduler: spec, folder: o.out };
      const n = Math.min(classes, 10) * 4;
      const labels = Int32Array.from({ length: n }, (_, i) => Math.floor(i / 4));
      const s = await sampleJoint(p, { mode: 'image', labels, steps: 25, seed: 1234 });
      return { images: s.images, cols: 8 };
    },
  }, resume, ev);
  return { ...r, model };
}

// ---- sampling ----

export interface JointPipeline {
  model: JointDiTModel;
  params: Tree<HostArray>;
  scheduler: SchedulerSpec;
  /** Where it was read from. */
  folder: string;
}

/** Reads a run's model/ (or checkpoint/) folder, or a bare JointDiTModel folder. */
export async function loadJointPipeline(dir: string): Promise<JointPipeline> {
  const component = existsSync(join(dir, 'transformer')) ? join(dir, 'transformer') : dir;
  const { model, params, folder } = await loadModel(component, jointDiTClass);
  return { model, params: params as unknown as Tree<HostArray>, scheduler: await flowSchedulerAt(dir, 'a joint model'),
    folder };
}

/** The flow-matching scheduler of the model folder `dir` (`what` names the model in errors):
 *  scheduler/ of a pipeline folder, scheduler_config.json beside a bare model's config, or
 *  the training default; another process is refused. */
export async function flowSchedulerAt(dir: string, what: string): Promise<SchedulerSpec> {
  const subfolder = existsSync(join(dir, 'scheduler')) ? 'scheduler'
    : existsSync(join(dir, 'scheduler_config.json')) ? '' : null;
  const scheduler = subfolder === null ? trainingScheduler('flow')
    : parseScheduler((await readSchedulerConfig(dir, { subfolder })).config);
  if (scheduler.family !== 'flow') {
    throw new Error(`${dir}: ${what} is sampled by flow matching; its scheduler is ${scheduler.className}`);
  }
  return scheduler;
}

/** The model with its weights baked in, compiled as the joint sampler's denoiser. */
export function jointDenoiser(p: JointPipeline, runtime: RuntimeOptions = {}):
  JointDenoiser & { dispose(): Promise<void> } {
  const consts = ops.constantTree(p.params) as unknown as ParamsOf<JointDiTModel>;
  const f = compile((x: Tensor, y: Tensor, t: Tensor) => p.model.forward(consts, x, y, t),
    { ...runtime, name: runtime.name ?? 'joint_denoiser' });
  const f32 = (b: Batch) => (b instanceof HostArray && b.dtype === 'float32' ? b
    : new HostArray<'float32'>(Float32Array.from(b.data), b.shape, 'float32'));
  return {
    async predict(image, label, t) {
      const times = new HostArray<'float32'>(Float32Array.from(t), [t.length], 'float32');
      const out = await f(f32(image), f32(label), times);
      return { image: out.image as HostArray<'float32'>, label: out.label as HostArray<'float32'> };
    },
    dispose: () => f.dispose(),
  };
}

export interface JointSampleRequest {
  /** What is generated: both, the image given `labels`, or the label given `images`. */
  mode: 'joint' | Modality;
  /** Pairs to draw (joint mode). */
  n?: number;
  /** Classes asked for (image mode), one per sample. */
  labels?: Int32Array;
  /** Images to label (label mode), [N, C, H, W] in [-1, 1]. */
  images?: HostArray<'float32'>;
  steps: number;
  seed: number;
  /** Samples per model call (default 100). */
  batchSize?: number;
  /** RePaint resampling of conditional steps (methods/multi-task.ts; default 1: none). */
  resample?: number;
  signal?: AbortSignal;
  /** After each batch: samples done, of total. */
  onBatch?: (done: number, total: number) => void;
}

export interface JointSamples {
  /** [N, C, H, W]: generated (clipped to [-1, 1]) or the given ones. */
  images: HostArray<'float32'>;
  /** [N * K] label vectors, generated or given. */
  labelVectors: Float32Array;
  /** Their classes (argmax). */
  labels: Int32Array;
  seconds: number;
}

/**
 * Samples a joint pipeline in batches with flow Euler over `steps` steps. The start noise of
 * sample i is drawn from (seed, i) alone, so a sample does not depend on the batch size
 * (resampling noise, with resample > 1, is drawn per batch).
 */
export async function sampleJoint(p: JointPipeline, r: JointSampleRequest): Promise<JointSamples> {
  const c = p.model.config;
  const K = c.label_dim;
  const shape = [c.in_channels, c.sample_size, c.sample_size];
  const per = shape[0]! * shape[1]! * shape[2]!;
  const total = r.mode === 'joint' ? r.n ?? 0 : r.mode === 'image' ? r.labels?.length ?? 0
    : r.images?.shape[0] ?? 0;
  if (r.mode === 'image' && !r.labels) throw new Error('image-given-label sampling needs labels');
  if (r.mode === 'label' && !r.images) throw new Error('label-given-image sampling needs images');
  if (r.mode === 'label' && r.images!.shape.slice(1).join() !== shape.join()) {
    throw new Error('label-given-image sampling: the model takes images ' +
      `[N, ${shape.join(', ')}], ` +
      `got [${r.images!.shape.join(', ')}]`);
  }
  if (!(total >= 1)) throw new RangeError('sampleJoint: nothing to sample (n, labels or images)');
  const schedule = samplerSchedule('flow-euler', p.scheduler, r.steps);
  const den = jointDenoiser(p);
  const key = RngKey.fromSeed(r.seed);
  const images = new Float32Array(total * per);
  const vectors = new Float32Array(total * K);
  const batch = r.batchSize ?? 100;
  const t0 = performance.now();
  try {
    for (let b0 = 0; b0 < total; b0 += batch) {
      const rows = Math.min(batch, total - b0);
      const noise = (k: number, size: number) => {
        const out = new Float32Array(rows * size);
        for (let i = 0; i < rows; i++) out.set(key.fold(k).fold(b0 + i).normal(size), i * size);
        return out;
      };
      const start = { image: new HostArray<'float32'>(noise(0, per), [rows, ...shape], 'float32'),
        label: new HostArray<'float32'>(noise(1, K), [rows, K], 'float32') };
      const known = r.mode === 'image'
        ? { modality: 'label' as const, value: new HostArray<'float32'>(
          labelVectors(r.labels!.subarray(b0, b0 + rows), K, c.label_scale), [rows, K], 'float32') }
        : r.mode === 'label'
          ? { modality: 'image' as const, value: new HostArray<'float32'>(
            r.images!.data.subarray(b0 * per, (b0 + rows) * per), [rows, ...shape], 'float32') }
          : undefined;
      const out = await sampleJointFlow(den, start, schedule, {
        ...(known ? { known } : {}), resample: r.resample ?? 1,
        noise: (n, k) => key.fold(2).fold(b0).fold(k).normal(n),
        ...(r.signal ? { signal: r.signal } : {}) });
      images.set(r.mode === 'label' ? out.image.data
        : Float32Array.from(out.image.data, (v) => Math.min(1, Math.max(-1, v))), b0 * per);
      vectors.set(out.label.data, b0 * K);
      r.onBatch?.(b0 + rows, total);
    }
  } finally {
    await den.dispose();
  }
  return { images: new HostArray<'float32'>(images, [total, ...shape], 'float32'),
    labelVectors: vectors, labels: argmaxRows(vectors, K),
    seconds: (performance.now() - t0) / 1000 };
}

/** Fraction of rows where a and b agree. */
export function agreement(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new RangeError(`agreement: ${a.length} against ${b.length}`);
  let same = 0;
  for (let i = 0; i < a.length; i++) if (Number(a[i]) === Number(b[i])) same++;
  return a.length ? same / a.length : NaN;
}
