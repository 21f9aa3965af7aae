/**
 * @file What `diffuse train` optimises: one compiled graph per step (noise, forward, weighted
 * loss, backward, clipping, AdamW, EMA) and each step's batch and noise, drawn on the host as
 * pure functions of (seed, step). The loop around it (checkpoints, exact resume, logs, grids,
 * faults) is training-loop.ts, shared with `diffuse distill`.
 */
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import type { Tensor } from '../engine/tensor.js';
import type { Tree } from '../engine/tree.js';
import { PREDICTIONS, type Prediction } from '../diffusion/predictions.js';
import type { SchedulerSpec } from '../diffusion/diffusers/spec.js';
import {
  lossWeights, noisySample, trainingPoints, trainingScheduler, trainingTarget, type Weighting,
} from '../diffusion/training.js';
import { batchAt, datasetSize, type ImageDataset } from '../data/dataset.js';
import { adamw } from '../nn/optim.js';
import { constantLr, cosineLr, warmupLr } from '../nn/schedules.js';
import { compileTrainStep } from '../nn/train.js';
import { createImageModel, type ImageModel, type ModelFamily } from './image-models.js';
import { classCount, loadPipeline, sampleImages, type Pipeline } from './sample.js';
import {
  runTraining, type TrainEvents, type TrainResult as LoopResult,
} from './training-loop.js';

export { TrainWriteError, type TrainEvents } from './training-loop.js';

/** What the model learns to predict (the regression target; diffusion/predictions.ts). */
export type Objective = Prediction;
export const OBJECTIVES: readonly Objective[] = PREDICTIONS;

export interface TrainOptions {
  model: ModelFamily;
  size: string;
  objective: Objective;
  weighting: 'uniform' | 'min-snr';
  minSnrGamma: number;
  /** Train class-conditionally (needs labels); labels are dropped with this probability for CFG. */
  conditional: boolean;
  labelDropout: number;
  batchSize: number;
  steps: number;
  lr: number;
  lrSchedule: 'constant' | 'cosine';
  warmupSteps: number;
  gradClip: number;
  emaDecay: number;
  seed: number;
  out: string;
  logEvery: number;
  sampleEvery: number;
  checkpointEvery: number;
  /** A trained pipeline folder to start from (fine-tuning): its config replaces `size`, its
   *  weights the random initialisation. */
  init?: string;
}

/** Options a resumed run must share with the checkpoint (the others may change). */
const RUN_KEYS: (keyof TrainOptions)[] = ['model', 'size', 'objective', 'weighting', 'minSnrGamma', 'conditional',
  'labelDropout', 'batchSize', 'seed', 'lr', 'lrSchedule', 'warmupSteps', 'gradClip', 'emaDecay', 'init'];

interface HostBatch { x0: HostArray; eps: HostArray; t: HostArray; a: HostArray; s: HostArray; w: HostArray; labels?: HostArray }

/** The loss weighting `o` asks for. */
function weightingOf(o: TrainOptions): Weighting {
  return o.weighting === 'min-snr' ? { kind: 'min_snr', gamma: o.minSnrGamma } : { kind: 'uniform' };
}

/** Everything random about step `step`, from the run's key: data order, noise, times, labels. */
function drawBatch(o: TrainOptions, data: ImageDataset, model: ImageModel, spec: SchedulerSpec,
  key: RngKey, step: number): HostBatch {
  const b = batchAt(data, key.fold(0), step, o.batchSize);
  const [kn, kt, kd] = key.fold(1).fold(step).split(3);
  const n = o.batchSize;
  const pts = trainingPoints(spec, kt!.uniform(n));
  const batch: HostBatch = {
    x0: b.images, eps: new HostArray(kn!.normal(b.images.size), b.images.shape),
    t: new HostArray(pts.t, [n]), a: new HostArray(pts.alpha, [n, 1, 1, 1]),
    s: new HostArray(pts.sigma, [n, 1, 1, 1]),
    w: new HostArray(lossWeights(weightingOf(o), o.objective, pts), [n]),
  };
  if (o.conditional) {
    const drop = kd!.uniform(n);
    const labels = BigInt64Array.from(b.labels!.data as BigInt64Array, (v, i) =>
      drop[i]! < o.labelDropout ? BigInt(model.numClasses) : v);
    batch.labels = new HostArray(labels, [n], 'int64');
  }
  return batch;
}

function lossFn(o: TrainOptions, model: ImageModel) {
  return (p: Tree<Tensor>, bt: Tree<Tensor>): Tensor => {
    const b = bt as unknown as Record<keyof HostBatch, Tensor>;
    const xt = noisySample(b.x0, b.eps, b.a, b.s); // [B, C, H, W]
    const target = trainingTarget(o.objective, b.x0, b.eps, b.a, b.s);
    const r = model.apply(p, xt, b.t, o.conditional ? b.labels : undefined);
    const perSample = ops.mean(ops.square(ops.sub(r.out, target)), [1, 2, 3]); // [B]
    const loss = ops.mean(ops.mul(perSample, b.w));
    return r.aux ? ops.add(loss, r.aux) : loss;
  };
}

/**
 * A grid of a run's samples for `samples/`: fixed noise (seed 1234), four images per class in
 * turn (16 for an unconditional model), with the sampler, steps and guidance of `how`.
 */
export async function progressGrid(p: Pipeline, how: { sampler: string; steps: number; guidance?: number }):
  Promise<{ images: HostArray; cols: number }> {
  const k = p.model.numClasses;
  const n = k ? Math.min(k, 10) * 4 : 16;
  const r = await sampleImages(p, { ...how, n, seed: 1234,
    ...(k ? { classes: Array.from({ length: n }, (_, i) => Math.floor(i / 4) % k) } : {}) });
  return { images: r.images, cols: k ? 8 : 4 };
}

export interface TrainResult extends LoopResult {
  model: ImageModel;
}

/** The pipeline `o.init` names, checked against the run: same family, objective, classes and
 *  image shape (what its weights were trained for). */
async function initialPipeline(o: TrainOptions, classes: number,
  shape: readonly [number, number, number]): Promise<Pipeline> {
  const p = await loadPipeline(o.init!);
  const mismatch = (what: string, want: unknown, got: unknown) => new Error(`--init ${o.init}: ` +
    `its model has ${what} ${String(got)}, this run asks for ${String(want)}`);
  if (p.model.family !== o.model) throw mismatch('family', o.model, p.model.family);
  if (p.scheduler.prediction !== o.objective) throw mismatch('objective', o.objective, p.scheduler.prediction);
  if (classCount(p.model) !== classes) throw mismatch('classes', classes, classCount(p.model));
  if (p.model.sampleShape.some((v, i) => v !== shape[i])) {
    throw mismatch('image shape', shape.join('x'), p.model.sampleShape.join('x'));
  }
  return p;
}

/**
 * Trains `o.steps` steps (continuing from `o.out/checkpoint` when `resume`), writing
 * checkpoints, logs, sample grids and, at the end, the pipeline `o.out/model` (EMA weights).
 */
export async function train(o: TrainOptions, data: ImageDataset, resume: boolean, ev: TrainEvents = {}):
  Promise<TrainResult> {
  const classes = o.conditional ? (data.classNames?.length ?? 0) : 0;
  if (o.conditional && (!data.labels || classes < 2)) {
    throw new Error('conditional training needs a labelled dataset with at least 2 classes ' +
      '(sub-folders of the image folder); pass --unconditional to train without labels');
  }
  if (datasetSize(data) < o.batchSize) {
    throw new Error(`the dataset has ${datasetSize(data)} images, fewer than one batch of ${o.batchSize}`);
  }
  const [, dc, dh, dw] = data.images.shape as [number, number, number, number];
  if (dh !== dw) throw new Error(`images must be square, the dataset's are ${dh}x${dw}`);
  const start = o.init === undefined ? undefined : await initialPipeline(o, classes, [dc, dh, dw]);
  const model = start?.model ?? createImageModel(o.model, o.size, classes, [dc, dh, dw]);
  const spec = trainingScheduler(o.objective);
  const lr = o.lrSchedule === 'cosine' ? cosineLr(o.lr, o.steps, o.warmupSteps, o.lr / 100)
    : o.warmupSteps > 0 ? warmupLr(o.lr, o.warmupSteps) : constantLr(o.lr);
  const key = RngKey.fromSeed(o.seed);
  const trainer = compileTrainStep<HostBatch & Tree<HostArray>>(lossFn(o, model), adamw({ lr, weightDecay: 0 }),
    { clipGradNorm: o.gradClip, ema: { maxDecay: o.emaDecay }, runtime: { name: 'train_step' } });
  const r = await runTraining({
    options: o, files: { model, scheduler: spec }, trainer, exported: 'ema',
    run: Object.fromEntries(RUN_KEYS.map((k) => [k, o[k]])),
    initialWeights: () => start?.params ?? model.module.init(key.fold(2)) as Tree<HostArray>,
    batch: (step) => drawBatch(o, data, model, spec, key, step) as HostBatch & Tree<HostArray>,
    // EMA samples: DDIM (flow-Euler for flow runs), 25 steps
    grid: (ema) => progressGrid({ model, params: ema, scheduler: spec, modelFolder: o.out, notes: [] },
      { sampler: spec.family === 'flow' ? 'flow-euler' : 'ddim', steps: 25 }),
  }, resume, ev);
  return { ...r, model };
}
