/**
 * @file `diffuse distill`: few-step students of a trained model, on the training loop of
 * `diffuse train` (training-loop.ts: checkpoints, exact resume, logs, grids, faults).
 *
 * - mmd (methods/mmd-ddm.ts): the teacher fine-tuned through its own T'-step DDIM chain with
 *   MMD^2 on the shipped classifier's features against real batches; the student is the same
 *   kind of model, sampled with DDIM at T' steps and the same guidance.
 * - boot (methods/boot.ts): a one-step generator distilled data-free from the teacher's DDIM
 *   path; saved with a DDIM scheduler of prediction_type "sample", so `diffuse sample
 *   --steps 1` runs it.
 */
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import type { Tensor } from '../engine/tensor.js';
import type { Tree } from '../engine/tree.js';
import { parseScheduler, specToJson, type SchedulerSpec } from '../diffusion/diffusers/spec.js';
import { samplerSchedule, samplerSpec } from '../diffusion/sampling.js';
import { batchAt, datasetSize, type ImageDataset } from '../data/dataset.js';
import { bootLoss, signalPath, type SignalPath } from '../methods/boot.js';
import { mmdDdmLoss } from '../methods/mmd-ddm.js';
import { adamw } from '../nn/optim.js';
import { compileTrainStep } from '../nn/train.js';
import { predictionOf } from './image-models.js';
import { loadMetricClassifier } from './metrics.js';
import { classCount, DEFAULT_GUIDANCE, loadPipeline, requirePixelSpace, type Pipeline } from './sample.js';
import { progressGrid } from './train.js';
import type { StudentRecord } from './student.js';
import { runTraining, type LoopOptions, type TrainEvents, type TrainResult } from './training-loop.js';

export type DistillMethod = 'mmd' | 'boot';
export const DISTILL_METHODS: readonly DistillMethod[] = ['mmd', 'boot'];

export interface DistillOptions extends LoopOptions {
  method: DistillMethod;
  /** The teacher's folder (as `diffuse sample --model` reads it). */
  teacher: string;
  /** mmd: the DDIM steps T' the student is tuned for. boot: 1 (one-step students only). */
  studentSteps: number;
  /** boot: the DDIM steps of the teacher path the student learns. */
  teacherSteps: number;
  /** Classifier-free guidance (1: none; default DEFAULT_GUIDANCE for a class-conditional
   *  teacher, 1 otherwise). */
  guidance?: number;
  lr: number;
  gradClip: number;
  /** boot: the student's EMA decay (0: none; mmd never keeps one, as the official code). */
  emaDecay: number;
  seed: number;
  /** mmd: the classifier whose features the MMD compares (default: the shipped one). */
  classifier?: string;
}

/** Options a resumed distillation must share with its checkpoint. */
const RUN_KEYS: (keyof DistillOptions)[] = ['method', 'teacher', 'studentSteps', 'teacherSteps',
  'guidance', 'batchSize', 'lr', 'gradClip', 'emaDecay', 'seed', 'classifier'];

export interface DistillResult extends TrainResult {
  student: StudentRecord;
}

/** The BOOT student's scheduler: DDIM on the teacher's betas, predicting the sample itself. */
export function bootStudentScheduler(teacher: SchedulerSpec): SchedulerSpec {
  const json = specToJson(samplerSpec('ddim', teacher));
  return parseScheduler({ ...json, prediction_type: 'sample', clip_sample: false,
    thresholding: false, timestep_spacing: 'leading', set_alpha_to_one: true, steps_offset: 0 });
}

/** Checks a loaded teacher can be distilled with these options (guidance resolved). */
function checkTeacher(t: Pipeline, o: DistillOptions & { guidance: number }, k: number): void {
  if (t.scheduler.family !== 'vp' || t.scheduler.prediction === 'flow') {
    throw new RangeError(`distill: the teacher ${o.teacher} is a flow-matching model; MMD-DDM and ` +
      'BOOT here distil the DDIM path of a DDPM-family (VP) model');
  }
  if (!k && o.guidance !== 1) {
    throw new RangeError(`distill: guidance ${o.guidance} needs a class-conditional teacher; ` +
      `${o.teacher} is unconditional (use --guidance 1)`);
  }
  if (o.method === 'boot' && o.studentSteps !== 1) {
    throw new RangeError(`distill: BOOT students are one-step generators here (--steps 1); ` +
      `got --steps ${o.studentSteps}`);
  }
}

/**
 * Distils `o.teacher` into a student in `o.out/model` (continuing from `o.out/checkpoint` when
 * `resume`). `data` is the real image set MMD compares against (BOOT needs none).
 */
export async function distill(given: DistillOptions, data: ImageDataset | undefined,
  resume: boolean, ev: TrainEvents = {}): Promise<DistillResult> {
  const teacher = await loadPipeline(given.teacher);
  requirePixelSpace(teacher, 'diffuse distill');
  const k = classCount(teacher.model);
  const o = { ...given, guidance: given.guidance ?? (k ? DEFAULT_GUIDANCE : 1) };
  checkTeacher(teacher, o, k);
  const model = teacher.model;
  const key = RngKey.fromSeed(o.seed);
  const run = Object.fromEntries(RUN_KEYS.map((name) => [name, o[name] ?? null]));
  const [c, h, w] = model.sampleShape;
  const per = c * h * w;
  const b = o.batchSize;
  const optimizer = adamw({ lr: o.lr, weightDecay: 0 }); // Adam: the official settings have no decay
  const noise = (step: number): HostArray => new HostArray(key.fold(1).fold(step).normal(b * per), [b, c, h, w]);

  if (o.method === 'mmd') {
    if (!data) throw new TypeError('distill: MMD-DDM needs the real images (data) to compare against');
    if (datasetSize(data) < b) throw new RangeError(`the dataset has ${datasetSize(data)} images, fewer than one batch of ${b}`);
    const [, dc, dh, dw] = data.images.shape;
    if (dc !== c || dh !== h || dw !== w) {
      throw new RangeError(`distill: the real images are [${dc}, ${dh}, ${dw}], the teacher makes ` +
        `[${c}, ${h}, ${w}]`);
    }
    if (k && !data.labels) throw new RangeError('distill: a class-conditional teacher needs labelled real images');
    const classifier = await loadMetricClassifier(o.classifier);
    const cp = ops.constantTree(classifier.params as unknown as Tree<HostArray>);
    // diffusers' DDIMScheduler on the teacher's betas: "leading" spacing, alpha_bar 1 at the end
    const schedule = samplerSchedule('ddim', teacher.scheduler, o.studentSteps);
    const loss = mmdDdmLoss({
      model: (p) => predictionOf(model, p), prediction: teacher.scheduler.prediction, schedule,
      guidance: o.guidance, nullClass: model.numClasses,
      features: (x) => classifier.model.features(cp as never, x),
    });
    const student: StudentRecord = { method: 'mmd', sampler: 'ddim', steps: o.studentSteps,
      guidance: o.guidance, teacher: o.teacher };
    const trainer = compileTrainStep<Tree<HostArray>>(loss, optimizer,
      { clipGradNorm: o.gradClip, runtime: { name: 'mmd_ddm_step' } });
    const r = await runTraining({
      options: o, files: { model, scheduler: teacher.scheduler, student }, run, trainer,
      exported: 'params', initialWeights: () => teacher.params,
      batch: (step) => {
        const real = batchAt(data, key.fold(0), step, b);
        return { noise: noise(step), real: real.images, ...(k ? { labels: real.labels! } : {}) };
      },
      grid: (weights) => progressGrid({ ...teacher, params: weights },
        { sampler: 'ddim', steps: o.studentSteps, guidance: o.guidance }),
    }, resume, ev);
    return { ...r, student };
  }

  const path = signalPath(samplerSchedule('ddim', teacher.scheduler, o.teacherSteps));
  const studentScheduler = bootStudentScheduler(teacher.scheduler);
  const loss = bootLoss({
    student: (p) => predictionOf(model, p), teacher: predictionOf(model, ops.constantTree(teacher.params)),
    teacherPrediction: teacher.scheduler.prediction, guidance: o.guidance, nullClass: model.numClasses,
  });
  const student: StudentRecord = { method: 'boot', sampler: 'ddim', steps: 1, guidance: o.guidance,
    teacher: o.teacher };
  const trainer = compileTrainStep<Tree<HostArray>>(loss, optimizer, {
    clipGradNorm: o.gradClip, runtime: { name: 'boot_step' },
    ...(o.emaDecay > 0 ? { ema: { maxDecay: o.emaDecay } } : {}),
  });
  const r = await runTraining({
    options: o, files: { model, scheduler: studentScheduler, student }, run, trainer,
    exported: o.emaDecay > 0 ? 'ema' : 'params', initialWeights: () => teacher.params,
    batch: (step) => bootBatch(path, noise(step), key.fold(2).fold(step), k),
    grid: (weights) => progressGrid({ ...teacher, params: weights, scheduler: studentScheduler },
      { sampler: 'ddim', steps: 1 }),
  }, resume, ev);
  return { ...r, student };
}

/** One BOOT batch: each row at a uniformly drawn step k of the path, with a random class. */
export function bootBatch(path: SignalPath, eps: HostArray, key: RngKey, classes: number):
  Tree<HostArray> {
  const b = eps.shape[0]!;
  const n = path.times.length;
  const [ku, kc] = key.split(2);
  const steps = Array.from(ku!.uniform(b), (u) => Math.min(n - 1, Math.floor(u * n)));
  const column = (f: (k: number) => number, shape: number[] = [b, 1, 1, 1]): HostArray =>
    new HostArray(Float32Array.from(steps, f), shape);
  const batch: Tree<HostArray> = {
    eps,
    timePrev: column((k) => path.times[Math.max(0, k - 1)]!, [b]),
    time: column((k) => path.times[k]!, [b]),
    alpha: column((k) => path.alphas[k]!),
    sigma: column((k) => path.sigmas[k]!),
    delta: column((k) => path.deltas[k]!),
    start: column((k) => (k === 0 ? path.startSignal : 0)),
    first: column((k) => (k === 0 ? 1 : 0)),
  };
  if (classes) {
    const labels = BigInt64Array.from(kc!.uniform(b), (u) => BigInt(Math.min(classes - 1, Math.floor(u * classes))));
    (batch as Record<string, HostArray>)['labels'] = new HostArray(labels, [b], 'int64');
  }
  return batch;
}
