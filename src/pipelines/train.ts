/**
 * @file What `diffuse train` optimises: one compiled graph per step (noise, forward, weighted
 * loss, backward, clipping, AdamW, EMA) and each step's batch and noise, drawn on the host as
 * pure functions of (seed, step). The loop around it (checkpoints, exact resume, logs, grids,
 * faults) is training-loop.ts, shared with `diffuse distill`.
 */
import { join } from 'node:path';
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
import { constantLr, cosineLr, warmupLr, type LrSchedule } from '../nn/schedules.js';
import type { Reparameterisation } from '../nn/reparam.js';
import { compileTrainStep } from '../nn/train.js';
import type { PipelineFiles } from './checkpoint.js';
import { conditionShift, type CepKind } from '../methods/cep.js';
import { ditInitialize } from '../models/dit.js';
import { RepaProjector, repaDepth, repaLoss } from '../methods/repa.js';
import type { ParamsOf } from '../nn/module.js';
import { packageRoot } from '../util/package-root.js';
import {
  blockCount, createImageModel, hiddenWidth, imageModelOf, TRAINING_INPUT_FAMILIES,
  type ImageModel, type ModelFamily,
} from './image-models.js';
import { latentCoder, loadVae, vaeModel, type LoadedVae } from './latent.js';
import { repaTargets, takeRows } from './repa.js';
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
  /** Condition embedding perturbation during training (methods/cep.ts; 'none': off). */
  cep: CepKind | 'none';
  cepGamma: number;
  /** REPA's weight lambda (methods/repa.ts; 0: off). */
  repa: number;
  /** Blocks before REPA's alignment point (default: methods/repa.ts repaDepth). */
  repaDepth?: number;
  /** The frozen encoder's pipeline folder (a U-Net; pipelines/repa.ts). */
  repaEncoder: string;
  /** Width of REPA's projector (default 4 x the model's width). */
  repaHidden?: number;
  /** Denoising Task Routing (models/dit-routing.ts): alpha (unset: off) and beta; DiT only. */
  dtrAlpha?: number;
  dtrBeta: number;
  /** Optimise a reparameterisation of the weights instead of all of them (parameter-efficient
   *  fine-tuning: methods/peft.ts); model/ and the checkpoints' model folders hold the merged
   *  plain weights. */
  adapt?: Reparameterisation;
  /** Latent diffusion: a VAE (latent.ts loadVae) whose latents the model is trained on; the
   *  pipeline then carries it as `vae/`. */
  latent?: string;
}

/** Options a resumed run must share with the checkpoint (the others may change). */
const RUN_KEYS = ['model', 'size', 'objective', 'weighting', 'minSnrGamma', 'conditional',
  'labelDropout', 'batchSize', 'seed', 'lr', 'lrSchedule', 'warmupSteps', 'gradClip', 'emaDecay',
  'init'] as const satisfies readonly (keyof TrainOptions)[];
/** The training methods' options, recorded only when set (so runs from before them resume). */
const METHOD_KEYS = ['cep', 'cepGamma', 'repa', 'repaDepth', 'repaEncoder', 'repaHidden',
  'dtrAlpha', 'dtrBeta', 'latent'] as const satisfies readonly (keyof TrainOptions)[];

/** What a run must share with its checkpoint to resume it. */
function runRecord(o: TrainOptions): Record<string, unknown> {
  const methods = METHOD_KEYS.filter((k) => o[k] !== undefined &&
    o[k] !== (METHOD_DEFAULTS as Partial<TrainOptions>)[k]);
  return { ...Object.fromEntries([...RUN_KEYS, ...methods].map((k) => [k, o[k]])),
    ...(o.adapt ? { adapt: o.adapt.name } : {}) };
}

/** The training-method options' defaults: a plain run. */
export const METHOD_DEFAULTS = {
  cep: 'none', cepGamma: 1, repa: 0, repaEncoder: join(packageRoot(), 'models', 'mnist-unet'),
  dtrBeta: 0.8,
} as const satisfies Partial<TrainOptions>;

/** The optimised tree: the model's weights themselves, or, when something is trained beside
 *  them (REPA's projector) or instead of them (a reparameterisation), `model` (the weights or
 *  the reparameterisation's tree) and `repa`. */
type Trained<T> = { model: Tree<T>; repa?: Tree<T> };

/** Whether the optimised tree is the model's own weights. */
const plainTree = (o: TrainOptions): boolean => !o.adapt && o.repa === 0;

function trainedParts<T>(o: TrainOptions, trained: Tree<T>): Trained<T> {
  return plainTree(o) ? { model: trained } : trained as unknown as Trained<T>;
}

/** The model weights inside a training graph, from the optimised tree. */
function modelParamsOf(o: TrainOptions, trained: Tree<Tensor>): Tree<Tensor> {
  const { model } = trainedParts(o, trained);
  return o.adapt ? o.adapt.apply(model) : model;
}

/** The training-only parts of a run: REPA's projector and targets; a latent run's VAE and
 *  the posterior std of every training image (the dataset holds the posterior means). */
interface RunExtras {
  repa?: { projector: RepaProjector; depth: number; targets: HostArray<'float32'> };
  latent?: { vae: LoadedVae; std: HostArray<'float32'> };
}

interface HostBatch {
  x0: HostArray; eps: HostArray; t: HostArray; a: HostArray; s: HostArray; w: HostArray;
  labels?: HostArray;
  /** CEP's label-embedding shifts [B, D]. */
  shift?: HostArray;
  /** REPA's encoder features of the batch's images. */
  z?: HostArray;
  /** A latent run's posterior std of the batch's images and the noise that samples it. */
  zStd?: HostArray;
  zNoise?: HostArray;
}

/** The loss weighting `o` asks for. */
function weightingOf(o: TrainOptions): Weighting {
  return o.weighting === 'min-snr' ? { kind: 'min_snr', gamma: o.minSnrGamma } : { kind: 'uniform' };
}

/** Everything random about step `step`, from the run's key: data order, noise, times, labels. */
function drawBatch(o: TrainOptions, data: ImageDataset, model: ImageModel, spec: SchedulerSpec,
  key: RngKey, step: number, extras: RunExtras): HostBatch {
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
  if (o.cep !== 'none') batch.shift = conditionShift(o.cep, o.cepGamma, n, model.labelEmbedDim, key.fold(4).fold(step));
  if (extras.repa) batch.z = takeRows(extras.repa.targets, b.rows);
  if (extras.latent) {
    batch.zStd = takeRows(extras.latent.std, b.rows);
    batch.zNoise = new HostArray(key.fold(6).fold(step).normal(b.images.size), b.images.shape);
  }
  return batch;
}

function lossFn(o: TrainOptions, model: ImageModel, extras: RunExtras) {
  return (trained: Tree<Tensor>, bt: Tree<Tensor>): Tensor => {
    const b = bt as unknown as Record<keyof HostBatch, Tensor>;
    // A latent run's x0: a posterior sample z = mean + std * noise, scaled (LDM's
    // encode(x).sample() * scaling_factor).
    const { latent } = extras;
    const x0 = latent ? latent.vae.model.toLatent(ops.add(b.x0, ops.mul(b.zStd, b.zNoise))) : b.x0;
    const xt = noisySample(x0, b.eps, b.a, b.s); // [B, C, H, W]
    const target = trainingTarget(o.objective, x0, b.eps, b.a, b.s);
    const { repa } = extras;
    const r = model.apply(modelParamsOf(o, trained), xt, b.t, o.conditional ? b.labels : undefined, {
      ...(b.shift ? { labelShift: b.shift } : {}), ...(repa ? { hiddenAfter: repa.depth } : {}) });
    const perSample = ops.mean(ops.square(ops.sub(r.out, target)), [1, 2, 3]); // [B]
    let loss = ops.mean(ops.mul(perSample, b.w));
    if (r.aux) loss = ops.add(loss, r.aux);
    if (repa) {
      const projector = trainedParts(o, trained).repa as ParamsOf<RepaProjector>;
      loss = ops.add(loss, ops.mul(repaLoss(repa.projector, projector, r.hidden!, b.z!), o.repa));
    }
    return loss;
  };
}

/** The learning rate of a run: warm-up, then cosine decay to 1/100 of the peak, or constant. */
export function learningRate(o: Pick<TrainOptions, 'lr' | 'lrSchedule' | 'steps' | 'warmupSteps'>):
  LrSchedule {
  return o.lrSchedule === 'cosine' ? cosineLr(o.lr, o.steps, o.warmupSteps, o.lr / 100)
    : o.warmupSteps > 0 ? warmupLr(o.lr, o.warmupSteps) : constantLr(o.lr);
}

/** [C, H, W] of a dataset's images, after the checks a training run needs of them: at least
 *  one batch, and square. */
export function trainingImageShape(data: ImageDataset, batchSize: number): [number, number, number] {
  if (datasetSize(data) < batchSize) {
    throw new Error(`the dataset has ${datasetSize(data)} images, fewer than one batch of ${batchSize}`);
  }
  const [, c, h, w] = data.images.shape as [number, number, number, number];
  if (h !== w) throw new Error(`images must be square, the dataset's are ${h}x${w}`);
  return [c, h, w];
}

/** A fresh model's weights: DiT's own initialisation for the transformers (adaLN-Zero: every
 *  block starts as the identity, the output as zero; Peebles & Xie, sec. 3.2, found it
 *  clearly better than the alternatives), torch's defaults for the U-Net, as diffusers'. */
function freshWeights(model: ImageModel, key: RngKey): Tree<HostArray> {
  const w = model.module.init(key) as Tree<HostArray>;
  return model.family === 'unet' ? w : ditInitialize(w, key.fold(1));
}

/** A fresh model for the run: the size preset, with DTR's keys when asked for. */
function freshModel(o: TrainOptions, classes: number, shape: readonly [number, number, number]): ImageModel {
  const m = createImageModel(o.model, o.size, classes, shape);
  if (o.dtrAlpha === undefined) return m;
  if (o.model !== 'dit') throw new Error(`--dtr-alpha: task routing is implemented for the DiT (--model dit), not ${o.model}`);
  return imageModelOf('dit', { ...m.config, dtr_alpha: o.dtrAlpha, dtr_beta: o.dtrBeta });
}

/** REPA's projector and the encoder's features of every training image. */
async function repaExtras(o: TrainOptions, model: ImageModel, data: ImageDataset,
  ev: TrainEvents): Promise<RunExtras['repa']> {
  if (o.repa === 0) return undefined;
  const depth = o.repaDepth ?? repaDepth(blockCount(model));
  const targets = await repaTargets(o.repaEncoder, data,
    (done) => ev.onPrepare?.('REPA encoder features', done, datasetSize(data)));
  const dim = hiddenWidth(model, depth);
  return { projector: new RepaProjector(dim, o.repaHidden ?? 4 * dim, targets.shape[1]!), depth, targets };
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
  if (!!p.vae !== (o.latent !== undefined)) {
    throw new Error(`--init ${o.init}: ${p.vae ? 'it is a latent pipeline (it has a vae/): pass --latent with its VAE'
      : 'it is a pixel-space pipeline, this run is latent (--latent)'}`);
  }
  if (p.scheduler.prediction !== o.objective) throw mismatch('objective', o.objective, p.scheduler.prediction);
  if (classCount(p.model) !== classes) throw mismatch('classes', classes, classCount(p.model));
  if (p.model.sampleShape.some((v, i) => v !== shape[i])) {
    throw mismatch('image shape', shape.join('x'), p.model.sampleShape.join('x'));
  }
  return p;
}

/** The pipeline class of a latent pipeline (a denoiser and a `vae/`). diffusers has none for
 *  class-conditional U-Nets, and its DiTPipeline hard-codes ImageNet's null class 1000. */
export const LATENT_PIPELINE_CLASS = 'DiffuseLatentPipeline';

/** A latent run's training set: the VAE's posterior means of `data` (labels kept), and their
 *  standard deviations to sample the posterior with at each step. */
async function latentDataset(o: TrainOptions, data: ImageDataset, ev: TrainEvents):
  Promise<{ data: ImageDataset; latent: NonNullable<RunExtras['latent']> }> {
  const vae = await loadVae(o.latent!);
  const coder = latentCoder(vae);
  try {
    const n = datasetSize(data);
    ev.onPrepare?.('VAE latents', 0, n);
    const { mean, std } = await coder.encode(data.images);
    ev.onPrepare?.('VAE latents', n, n);
    return { data: { ...data, images: mean }, latent: { vae, std } };
  } finally {
    await coder.dispose();
  }
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
  if (o.cep !== 'none' && !o.conditional) throw new Error('--cep perturbs the class embedding: it needs class-conditional training');
  for (const [flag, on] of [['--cep', o.cep !== 'none'], ['--repa', o.repa !== 0]] as const) {
    if (on && !TRAINING_INPUT_FAMILIES.includes(o.model)) {
      throw new Error(`${flag} is implemented for the U-Net and the DiT (--model unet or dit), not ${o.model}`);
    }
  }
  if (o.latent !== undefined && o.repa !== 0) throw new Error('--repa aligns to an encoder\'s features of the images; it is not implemented for latent runs (--latent)');
  trainingImageShape(data, o.batchSize);
  const encoded = o.latent === undefined ? undefined : await latentDataset(o, data, ev);
  const trainData = encoded?.data ?? data;
  const [dc, dh, dw] = trainingImageShape(trainData, o.batchSize);
  const start = o.init === undefined ? undefined : await initialPipeline(o, classes, [dc, dh, dw]);
  if (start && o.dtrAlpha !== undefined) throw new Error('--dtr-alpha: task routing is chosen when a model is made, not when it is fine-tuned (--init)');
  const model = start?.model ?? freshModel(o, classes, [dc, dh, dw]);
  const extras: RunExtras = { repa: await repaExtras(o, model, data, ev), ...(encoded ? { latent: encoded.latent } : {}) };
  const vae: LoadedVae | undefined = encoded?.latent.vae;
  const spec = trainingScheduler(o.objective);
  const lr = learningRate(o);
  const key = RngKey.fromSeed(o.seed);
  const trainer = compileTrainStep<HostBatch & Tree<HostArray>>(lossFn(o, model, extras), adamw({ lr, weightDecay: 0 }),
    { clipGradNorm: o.gradClip, ema: { maxDecay: o.emaDecay }, runtime: { name: 'train_step' } });
  const { adapt } = o;
  const files: PipelineFiles = { model, scheduler: spec,
    ...(vae ? { pipelineClass: LATENT_PIPELINE_CLASS, frozen: [{ saved: vaeModel(vae.model.config), params: vae.params }] } : {}),
    ...(plainTree(o) ? {} : {
    modelOf: (t: Tree<HostArray>) => {
      const m = trainedParts(o, t).model;
      return adapt ? adapt.merge(m) : m;
    } }) };
  const r = await runTraining({
    options: o, files, trainer, exported: 'ema', run: runRecord(o),
    initialWeights: (): Tree<HostArray> => {
      const weights = start?.params ?? freshWeights(model, key.fold(2));
      if (plainTree(o)) return weights;
      const m = adapt ? adapt.init(weights, key.fold(3)) : weights;
      return (extras.repa ? { model: m, repa: extras.repa.projector.init(key.fold(5)) } : { model: m }) as
        unknown as Tree<HostArray>;
    },
    batch: (step) => drawBatch(o, trainData, model, spec, key, step, extras) as HostBatch & Tree<HostArray>,
    // EMA samples: DDIM (flow-Euler for flow runs), 25 steps
    grid: (ema) => progressGrid({ model, params: ema, scheduler: spec, modelFolder: o.out, notes: [], ...(vae ? { vae } : {}) },
      { sampler: spec.family === 'flow' ? 'flow-euler' : 'ddim', steps: 25 }),
  }, resume, ev);
  return { ...r, model };
}
