/**
 * @file EchoDistill's pipeline (methods/echodistill.ts) at MNIST scale: `diffuse echodistill
 * train` personalises the shipped one-step BOOT student (`models/mnist-unet-boot`) to a novel
 * concept, bold digits (`mnist-bold`: the same digits dilated by a pixel), from a small concept
 * set, in one of three arms: alone, by one-way distillation from the multi-step teacher
 * (`models/mnist-unet`, fine-tuned on the concept at the same time), or with the echo back to
 * the teacher. `diffuse echodistill eval` scores the students' one-step samples and the
 * teachers' DDIM samples by MNIST-FID against the bold digits and class accuracy.
 *
 * The run is `diffuse train`'s loop (training-loop.ts): checkpoints, exact resume, log, grids,
 * Ctrl-C. The optimised tree is { table, student, discriminator, teacher? }; model/ is the
 * student with the shared table in place of its class embedding (a plain one-step student
 * pipeline `diffuse sample` runs), teacher/ the fine-tuned teacher likewise, written when the
 * run ends.
 */
import { join } from 'node:path';
import { HostArray } from '../engine/host.js';
import { RngKey } from '../engine/random/philox.js';
import type { Tensor } from '../engine/tensor.js';
import type { Tree } from '../engine/tree.js';
import type { SchedulerSpec } from '../diffusion/diffusers/spec.js';
import { samplerSchedule } from '../diffusion/sampling.js';
import { pointsAt, trainingPoints } from '../diffusion/training.js';
import { batchAt, datasetSize, subset, type ImageDataset } from '../data/dataset.js';
import { boldDataset } from '../data/transforms.js';
import { mnistSplits } from '../data/mnist.js';
import { DiffusersFolderError, readModelIndex } from '../io/diffusers.js';
import {
  ConceptDiscriminator, echoDistillLoss, ECHO_ARMS, partwiseAdam, type EchoArm, type EchoParams,
} from '../methods/echodistill.js';
import { compileTrainStep } from '../nn/train.js';
import { exportPipeline, type PipelineFiles } from './checkpoint.js';
import { predictionOf, type ImageModel } from './image-models.js';
import { prepareMnistFid, scoreImages } from './eval.js';
import {
  classCount, loadPipeline, requirePixelSpace, sampleImages, type Pipeline,
} from './sample.js';
import { progressGrid } from './train.js';
import { runTraining, type LoopOptions, type TrainEvents, type TrainResult } from './training-loop.js';

export { ECHO_ARMS, type EchoArm };

/** model_index.json's entry saying what an EchoDistill run made. */
export const ECHO_KEY = '_echodistill';
/** Where the fine-tuned teacher of a run is written, beside model/. */
export const TEACHER_FOLDER = 'teacher';

/** The alignment target's noise levels: model times [20, 400) of the teacher's 1,000. The
 *  target's spread grows with t (shipped pair, per-image squared error: 1.8 at t = 20, 17 at
 *  200, 53 at 400, 133 at 700): above 400 it is mostly another digit's noise; below 20 the
 *  teacher returns its input. */
const ALIGN_TIMES: readonly [number, number] = [20, 400];

export interface EchoDistillOptions extends LoopOptions {
  arm: EchoArm;
  /** The multi-step teacher and the one-step student (folders `diffuse sample` reads). */
  teacher: string;
  student: string;
  /** Concept images drawn (with the run's seed) from the bold training digits. */
  conceptSize: number;
  /** lambda_align, lambda_adv, w_echo and the step the echo starts at. */
  align: number;
  adversarial: number;
  echo: number;
  echoFrom: number;
  /** Share of the teacher's real rows trained with the null class. */
  labelDropout: number;
  /** Adam's learning rate of the teacher, the shared table and the discriminator, and the
   *  student's. */
  lr: number;
  studentLr: number;
  gradClip: number;
  seed: number;
}

/** The defaults `diffuse echodistill train` runs with (the measured configuration). */
export const ECHODISTILL_DEFAULTS = {
  conceptSize: 128, align: 0.1, adversarial: 1, echo: 1, labelDropout: 0.1, lr: 1e-4,
  studentLr: 2e-5, gradClip: 10,
} as const;

/** Options a resumed run must share with its checkpoint. */
const RUN_KEYS: (keyof EchoDistillOptions)[] = ['arm', 'teacher', 'student', 'conceptSize', 'align',
  'adversarial', 'echo', 'echoFrom', 'labelDropout', 'batchSize', 'lr', 'studentLr', 'gradClip', 'seed'];

/** The concept set: `size` bold training digits drawn with `seed`. */
export function conceptSet(size: number, seed: number): ImageDataset {
  const bold = boldDataset(mnistSplits().train);
  if (size > datasetSize(bold)) {
    throw new RangeError(`concept set of ${size}: only ${datasetSize(bold)} digits`);
  }
  return subset(bold, RngKey.fromSeed(seed).fold(7).permutation(datasetSize(bold)).subarray(0, size));
}

/** A U-Net's weights without its class table, and the table. */
function splitTable(p: Pipeline): { rest: Tree<HostArray>; table: HostArray } {
  const { class_embedding: ce, ...rest } = p.params as Record<string, Tree<HostArray>>;
  const table = (ce as { weight?: HostArray } | undefined)?.weight;
  if (p.model.family !== 'unet' || !table) {
    throw new DiffusersFolderError(p.modelFolder, 'EchoDistill here shares a U-Net class-embedding ' +
      'table between teacher and student; this model has none');
  }
  return { rest, table };
}

/** The model weights of a network: its trained weights with the shared table as its class
 *  embedding (graph or host leaves alike). */
const withTable = <T>(rest: Tree<T>, table: T): Tree<T> =>
  ({ ...(rest as Record<string, Tree<T>>), class_embedding: { weight: table } });

/** The networks of a run, checked against each other. */
async function loadPair(o: Pick<EchoDistillOptions, 'teacher' | 'student'>):
  Promise<{ teacher: Pipeline; student: Pipeline }> {
  const [teacher, student] = [await loadPipeline(o.teacher), await loadPipeline(o.student)];
  requirePixelSpace(teacher, 'diffuse echodistill');
  requirePixelSpace(student, 'diffuse echodistill');
  if (student.student?.method !== 'boot' || student.student.steps !== 1) {
    throw new DiffusersFolderError(o.student, 'is not a one-step student (diffuse distill --method boot)');
  }
  if (teacher.scheduler.family !== 'vp' || teacher.scheduler.prediction === 'flow') {
    throw new DiffusersFolderError(o.teacher, 'the teacher must be a DDPM-family (VP) model');
  }
  const [t, s] = [splitTable(teacher).table, splitTable(student).table];
  if (t.shape.join() !== s.shape.join() || !classCount(teacher.model)) {
    throw new DiffusersFolderError(o.student, `its class table is [${s.shape}], the teacher's ` +
      `[${t.shape}]: a shared table needs one shape (and class-conditional models)`);
  }
  return { teacher, student };
}

/** Host draws of one noise point: noise like `shape`, model times `t`. */
function noisePoint(spec: SchedulerSpec, t: ArrayLike<number>, noise: Float32Array, shape: number[]):
  Tree<HostArray> {
  const p = pointsAt(spec, t);
  const b = shape[0]!;
  return { noise: new HostArray(noise, shape), time: new HostArray(p.t, [b]),
    alpha: new HostArray(p.alpha, [b, 1, 1, 1]), sigma: new HostArray(p.sigma, [b, 1, 1, 1]) };
}

/** Everything random about step `step` (methods/echodistill.ts EchoBatch), from `key`. */
export function echoBatch(o: EchoDistillOptions, data: ImageDataset, spec: SchedulerSpec,
  studentTime: number, nullClass: number, key: RngKey, step: number): Tree<HostArray> {
  const b = o.batchSize;
  const real = batchAt(data, key.fold(0), step, b);
  const shape = [...real.images.shape];
  const per = real.images.size / b;
  const [kd, kr, kz, ka, ke] = key.fold(1).fold(step).split(5);
  const drop = kd!.uniform(b);
  const labels = real.labels!;
  const teacherLabels = new HostArray(BigInt64Array.from(labels.data as BigInt64Array,
    (y, i) => (drop[i]! < o.labelDropout ? BigInt(nullClass) : y)), [b], 'int64');
  const [lo, hi] = ALIGN_TIMES;
  const alignT = Float64Array.from(ka!.uniform(b), (u) => Math.min(hi - 1, lo + Math.floor(u * (hi - lo))));
  const [kru, krn] = kr!.split(2);
  const [keu, ken] = ke!.split(2);
  const echoing = o.arm === 'echo' && step >= o.echoFrom;
  return {
    real: real.images, labels, teacherLabels,
    realPoint: noisePoint(spec, trainingPoints(spec, kru!.uniform(b)).t, krn!.normal(b * per), shape),
    z: new HostArray(kz!.normal(b * per), shape),
    studentTime: HostArray.full([b], studentTime),
    alignPoint: noisePoint(spec, alignT, ka!.fold(1).normal(b * per), shape),
    echoPoint: noisePoint(spec, trainingPoints(spec, keu!.uniform(b)).t, ken!.normal(b * per), shape),
    echoWeight: HostArray.full([1], echoing ? o.echo : 0),
  };
}

export interface EchoDistillResult extends TrainResult {
  /** The fine-tuned teacher's folder (arms with a teacher, when the run finished). */
  teacherDir?: string;
}

/** Runs one arm into `o.out` (continuing `o.out/checkpoint` when `resume`). */
export async function trainEchoDistill(o: EchoDistillOptions, resume: boolean, ev: TrainEvents = {}):
  Promise<EchoDistillResult> {
  if (!ECHO_ARMS.includes(o.arm)) {
    throw new RangeError(`arm: expected one of ${ECHO_ARMS.join(', ')}, got ${o.arm}`);
  }
  const { teacher, student } = await loadPair(o);
  const data = conceptSet(o.conceptSize, o.seed);
  if (o.batchSize > o.conceptSize) {
    throw new RangeError(`batch of ${o.batchSize}: the concept set has ${o.conceptSize}`);
  }
  const key = RngKey.fromSeed(o.seed);
  const nullClass = teacher.model.numClasses;
  const studentTime = samplerSchedule('ddim', student.scheduler, 1).timesteps[0]!;
  const disc = new ConceptDiscriminator(student.model.sampleShape[0], nullClass);
  const t = splitTable(teacher);
  const initial = (): Tree<HostArray> => {
    const p: EchoParams<HostArray> = { table: t.table.clone(), student: splitTable(student).rest,
      discriminator: disc.init(key.fold(3)) as Tree<HostArray> };
    if (o.arm !== 'student') p.teacher = t.rest;
    return p as unknown as Tree<HostArray>;
  };
  const net = (m: ImageModel) => (w: Tree<Tensor>, table: Tensor) => predictionOf(m, withTable(w, table));
  const loss = echoDistillLoss({
    arm: o.arm, teacher: net(teacher.model), student: net(student.model),
    discriminator: (w) => (x, y) => disc.forward(w as never, x, y),
    teacherPrediction: teacher.scheduler.prediction, guidance: student.student!.guidance, nullClass,
    align: o.align, adversarial: o.adversarial,
  });
  const optimizer = partwiseAdam({ table: o.lr, teacher: o.lr, discriminator: o.lr, student: o.studentLr });
  const trainer = compileTrainStep<Tree<HostArray>>(loss, optimizer,
    { clipGradNorm: o.gradClip, runtime: { name: 'echodistill_step' } });
  const record = { arm: o.arm, concept: 'mnist-bold', conceptSize: o.conceptSize, teacher: o.teacher,
    student: o.student, steps: o.steps };
  const studentOf = (tree: Tree<HostArray>): Tree<HostArray> => {
    const p = tree as unknown as EchoParams<HostArray>;
    return withTable(p.student, p.table);
  };
  const files: PipelineFiles = { model: student.model, scheduler: student.scheduler,
    student: { ...student.student!, teacher: o.teacher }, privateEntries: { [ECHO_KEY]: record },
    modelOf: studentOf };
  const r = await runTraining({
    options: o, files, trainer, exported: 'params',
    run: Object.fromEntries(RUN_KEYS.map((k) => [k, o[k]])),
    initialWeights: initial,
    batch: (step) => echoBatch(o, data, teacher.scheduler, studentTime, nullClass, key, step),
    grid: (weights) => progressGrid({ ...student, params: weights }, { sampler: 'ddim', steps: 1 }),
  }, resume, ev);
  if (r.interrupted || o.arm === 'student') return r;
  const p = r.state.params as unknown as EchoParams<HostArray>;
  const teacherDir = join(o.out, TEACHER_FOLDER);
  await exportPipeline(teacherDir, { model: teacher.model, scheduler: teacher.scheduler,
    privateEntries: { [ECHO_KEY]: { ...record, role: 'teacher' } } }, withTable(p.teacher!, p.table));
  return { ...r, teacherDir };
}

/** A finished run's student (model/) and, where the arm trains one, its teacher. */
export interface EchoRun {
  dir: string;
  arm: EchoArm;
  student: Pipeline;
  teacher?: Pipeline;
}

export async function loadEchoRun(dir: string): Promise<EchoRun> {
  const index = await readModelIndex(join(dir, 'model'));
  const arm = (index.privateEntries[ECHO_KEY] as { arm?: unknown } | undefined)?.arm;
  if (!ECHO_ARMS.includes(arm as EchoArm)) {
    throw new DiffusersFolderError(index.path, `${ECHO_KEY}.arm must be one of ${ECHO_ARMS.join(', ')} ` +
      `(a diffuse echodistill train run), got ${JSON.stringify(arm)}`);
  }
  const student = await loadPipeline(join(dir, 'model'));
  const teacher = arm === 'student' ? undefined : await loadPipeline(join(dir, TEACHER_FOLDER));
  return { dir, arm: arm as EchoArm, student, ...(teacher ? { teacher } : {}) };
}

// ---------------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------------

export interface EchoEvalOptions {
  /** Run folders of `diffuse echodistill train`. */
  runs: readonly string[];
  /** The shipped teacher and student, scored as they are (the "before" rows). */
  teacher: string;
  student: string;
  /** Samples per model (and held-out digits for the floors). */
  n: number;
  /** The teachers' DDIM steps and guidance. */
  teacherSteps: number;
  teacherGuidance: number;
  seed: number;
  onModel?: (label: string) => void;
}

export interface EchoEvalRow {
  arm: EchoArm | 'shipped';
  role: 'student' | 'teacher';
  model: string;
  sampler: string;
  steps: number;
  guidance: number;
  n: number;
  /** MNIST-FID against the bold training digits (the concept) and the plain ones. */
  fidBold: number;
  fidMnist: number;
  accuracy: number;
  secondsPerImage: number;
}

export const ECHO_CSV_COLUMNS = ['arm', 'role', 'model', 'sampler', 'steps', 'guidance', 'n',
  'mnist_fid_bold', 'mnist_fid_mnist', 'class_accuracy', 'seconds_per_image'] as const;

export function echoEvalCsv(rows: readonly EchoEvalRow[], floors: { bold: number; mnist: number }): string {
  const lines = rows.map((r) => [r.arm, r.role, r.model, r.sampler, r.steps, r.guidance, r.n,
    r.fidBold.toFixed(4), r.fidMnist.toFixed(4), r.accuracy.toFixed(4),
    r.secondsPerImage.toPrecision(4)].join(','));
  const floor = ['floor', 'held-out', 'bold / plain held-out digits', '', '', '', rows[0]?.n ?? '',
    floors.bold.toFixed(4), floors.mnist.toFixed(4), '', ''].join(',');
  return `${[ECHO_CSV_COLUMNS.join(','), ...lines, floor].join('\n')}\n`;
}

/**
 * Scores the shipped student and teacher and every run's student (one step) and teacher
 * (DDIM, guided) on the same seed: MNIST-FID against the bold and the plain training digits,
 * class accuracy. Also returns a grid: a row of real bold digits (classes 0-9), then one row
 * per model in the order of `rows`.
 */
export async function evaluateEchoDistill(o: EchoEvalOptions): Promise<{ rows: EchoEvalRow[];
  floors: { bold: number; mnist: number }; grid: HostArray; cols: number }> {
  const runs: EchoRun[] = [];
  for (const dir of o.runs) runs.push(await loadEchoRun(dir));
  const models: { arm: EchoArm | 'shipped'; role: 'student' | 'teacher'; label: string; p: Pipeline }[] = [
    { arm: 'shipped', role: 'student', label: o.student, p: await loadPipeline(o.student) },
    ...runs.map((r) => ({ arm: r.arm, role: 'student' as const, label: join(r.dir, 'model'), p: r.student })),
    { arm: 'shipped', role: 'teacher', label: o.teacher, p: await loadPipeline(o.teacher) },
    ...runs.filter((r) => r.teacher).map((r) => ({ arm: r.arm, role: 'teacher' as const,
      label: join(r.dir, TEACHER_FOLDER), p: r.teacher! })),
  ];
  const cols = 10;
  const heldOut = boldDataset(mnistSplits().heldOut);
  const firstOfClass = Array.from({ length: cols }, (_, c) => heldOut.labels!.indexOf(c));
  const tiles: HostArray[] = [subset(heldOut, firstOfClass).images];
  const rows: EchoEvalRow[] = [];
  const bold = await prepareMnistFid({ n: o.n, reference: 'mnist-bold' });
  const plain = await prepareMnistFid({ n: o.n });
  try {
    for (const m of models) {
      o.onModel?.(m.label);
      const how = m.role === 'student' ? { sampler: 'ddim', steps: 1, guidance: 1 }
        : { sampler: 'ddim', steps: o.teacherSteps, guidance: o.teacherGuidance };
      const s = await sampleImages(m.p, { ...how, n: o.n, seed: o.seed, classes: 'all' });
      const k = classCount(m.p.model);
      const labels = Array.from({ length: o.n }, (_, i) => i % k);
      const b = await scoreImages(bold, s.images, labels);
      const f = await scoreImages(plain, s.images, labels);
      rows.push({ arm: m.arm, role: m.role, model: m.label, ...how, n: o.n, fidBold: b.fid,
        fidMnist: f.fid, accuracy: b.accuracy!, secondsPerImage: s.seconds / o.n });
      const per = s.images.size / o.n;
      tiles.push(new HostArray(s.images.data.slice(0, cols * per), [cols, ...s.images.shape.slice(1)]));
    }
    const per = tiles[0]!.size;
    const grid = new Float32Array(per * tiles.length);
    tiles.forEach((t, i) => grid.set(t.data as Float32Array, i * per));
    return { rows, floors: { bold: bold.floor, mnist: plain.floor },
      grid: new HostArray(grid, [cols * tiles.length, ...tiles[0]!.shape.slice(1)]), cols };
  } finally {
    await bold.dispose();
    await plain.dispose();
  }
}
