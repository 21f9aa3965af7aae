/**
 * @file The image-diffusion training loop behind `diffuse train`: one compiled graph per
 * step (noise, forward, weighted loss, backward, clipping, AdamW, EMA), batches and noise
 * drawn on the host as pure functions of (seed, step) so an interrupted run resumes exactly,
 * checkpoints swapped in atomically, a JSONL log and sample grids along the way.
 */
import { appendFile, readFile, truncate, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import type { Tensor } from '../engine/tensor.js';
import { flatten, type Tree } from '../engine/tree.js';
import { PREDICTIONS, type Prediction } from '../diffusion/predictions.js';
import { specToJson, type SchedulerSpec } from '../diffusion/diffusers/spec.js';
import {
  lossWeights, noisySample, trainingPoints, trainingScheduler, trainingTarget, type Weighting,
} from '../diffusion/training.js';
import { imageGrid, writePng } from '../io/png.js';
import { batchAt, datasetSize, type ImageDataset } from '../data/dataset.js';
import { adamw } from '../nn/optim.js';
import { constantLr, cosineLr, warmupLr } from '../nn/schedules.js';
import { compileTrainStep, type TrainState } from '../nn/train.js';
import { writeFileAtomic, type SwapPhase } from '../util/atomic.js';
import { ensureWritableFolder, errnoCode, FileSystemError } from '../util/fs-errors.js';
import {
  exportPipeline, loadCheckpoint, recoverRunFolders, saveCheckpoint, type PipelineFiles,
} from './checkpoint.js';
import { acquireRunLock } from './run-lock.js';
import { createImageModel, type ImageModel, type ModelFamily } from './image-models.js';
import { sampleImages, type Pipeline } from './sample.js';

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
}

export interface TrainEvents {
  onStep?: (s: { step: number; loss: number; smoothed: number; imagesPerSecond: number; lr: number }) => void;
  onCheckpoint?: (step: number, dir: string) => void;
  onSample?: (step: number, path: string) => void;
  /** Stops the run after the current step, with a checkpoint. */
  signal?: AbortSignal;
  /** Called at each phase of a checkpoint swap; tests throw here to crash a save midway. */
  onCheckpointPhase?: (phase: SwapPhase) => void;
}

/** Options a resumed run must share with the checkpoint (the others may change). */
const RUN_KEYS: (keyof TrainOptions)[] = ['model', 'size', 'objective', 'weighting', 'minSnrGamma', 'conditional',
  'labelDropout', 'batchSize', 'seed', 'lr', 'lrSchedule', 'warmupSteps', 'gradClip', 'emaDecay'];

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
 * A grid of EMA samples during training: DDIM (flow-Euler for flow runs), 25 steps, fixed
 * noise, four images per class in turn. Returns the PNG's path.
 */
async function writeTrainingGrid(o: TrainOptions, model: ImageModel, spec: SchedulerSpec,
  ema: Tree<HostArray>, step: number): Promise<string> {
  const k = model.numClasses;
  const n = k ? Math.min(k, 10) * 4 : 16;
  const pipeline: Pipeline = { model, params: ema, scheduler: spec, modelFolder: o.out, notes: [] };
  const r = await sampleImages(pipeline, {
    sampler: spec.family === 'flow' ? 'flow-euler' : 'ddim', steps: 25, n, seed: 1234,
    ...(k ? { classes: Array.from({ length: n }, (_, i) => Math.floor(i / 4) % k) } : {}),
  });
  const path = join(o.out, 'samples', `step-${String(step).padStart(6, '0')}.png`);
  await writePng(path, imageGrid(r.images, { cols: k ? 8 : 4 }));
  return path;
}

export interface TrainResult {
  state: TrainState;
  model: ImageModel;
  losses: number[];
  interrupted: boolean;
  seconds: number;
}

/**
 * Trains `o.steps` steps (continuing from `o.out/checkpoint` when `resume`), writing
 * checkpoints, logs, sample grids and, at the end, the pipeline `o.out/model`.
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
  const model = createImageModel(o.model, o.size, classes, [dc, dh, dw]);
  const spec = trainingScheduler(o.objective);
  const files: PipelineFiles = { model, scheduler: spec };
  const lr = o.lrSchedule === 'cosine' ? cosineLr(o.lr, o.steps, o.warmupSteps, o.lr / 100)
    : o.warmupSteps > 0 ? warmupLr(o.lr, o.warmupSteps) : constantLr(o.lr);
  const key = RngKey.fromSeed(o.seed);
  const run = Object.fromEntries(RUN_KEYS.map((k) => [k, o[k]]));
  const checkpointDir = join(o.out, 'checkpoint');
  const logPath = join(o.out, 'log.jsonl');
  await ensureWritableFolder(o.out); // a read-only or unwritable place fails here, in one line
  const lock = await writingFile(join(o.out, '.lock'), null, () => acquireRunLock(o.out));
  const trainer = compileTrainStep(lossFn(o, model), adamw({ lr, weightDecay: 0 }),
    { clipGradNorm: o.gradClip, ema: { maxDecay: o.emaDecay }, runtime: { name: 'train_step' } });
  try {
    return await runSteps();
  } finally {
    await trainer.dispose();
    await lock.release();
  }

  async function runSteps(): Promise<TrainResult> {
    // The step of the checkpoint on disk (null: none yet), for the messages of a failed run.
    let lastSaved: number | null = null;
    // A full disk, a read-only or unwritable folder: one line naming the file, the cause and
    // what is kept, instead of Node's "ENOSPC: no space left on device, write".
    const writing = <T>(what: string, f: () => Promise<T>): Promise<T> => writingFile(what, lastSaved, f);
    await writing(o.out, () => recoverRunFolders(o.out)); // a crash mid-swap leaves the newest checkpoint under a temp name
    let state = trainer.init(model.module.init(key.fold(2)) as Tree<HostArray>);
    if (resume) {
      state = (await loadCheckpoint(checkpointDir, files, state, run)).state;
      lastSaved = state.step;
      await writing(logPath, () => truncateLog(logPath, state.step));
    } else if (existsSync(checkpointDir)) {
      throw new Error(`${o.out} already holds a run (checkpoint/); pass --resume to continue it or choose another --out`);
    } else {
      await writing(logPath, () => writeFile(logPath, ''));
    }
    const kept = (): string => lastSaved === null ? 'no checkpoint was saved yet'
      : `the checkpoint of step ${lastSaved} is kept`;
    const save = async (): Promise<void> => {
      // The last guard before weights reach the disk: a checkpoint or model/ never holds NaN.
      const bad = nonFinite(state);
      if (bad) {
        throw new Error(`training diverged by step ${state.step}: ${bad} is not finite; ${kept()} ` +
          '(try a lower --lr)');
      }
      await writing(checkpointDir, () => saveCheckpoint(checkpointDir, files, state,
        { step: state.step, run, diffuse: '0.1.0' },
        ev.onCheckpointPhase ? { onPhase: ev.onCheckpointPhase } : {}));
      lastSaved = state.step;
      ev.onCheckpoint?.(state.step, checkpointDir);
    };
    const losses: number[] = [];
    let smoothed = NaN;
    const start = performance.now();
    let windowStart = performance.now();
    let windowSteps = 0;
    let interrupted = false;
      while (state.step < o.steps) {
        const r = await trainer.step(state, drawBatch(o, data, model, spec, key, state.step) as never);
        // A non-finite gradient norm poisons the update even when the loss is still finite:
        // an infinite gradient times the clipping scale 0 is NaN, and so are the new weights.
        // The diverged state is not saved: the last checkpoint stays the last finite one.
        const { loss, gradNorm } = r.metrics;
        if (!Number.isFinite(loss) || !Number.isFinite(gradNorm)) {
          const what = Number.isFinite(loss) ? `the gradient norm is ${gradNorm} (loss ${loss})`
            : `the loss is ${loss}`;
          throw new Error(`training diverged at step ${state.step + 1}: ${what}; ${kept()} ` +
            '(try a lower --lr)');
        }
        state = r.state;
        losses.push(r.metrics.loss);
        smoothed = Number.isNaN(smoothed) ? r.metrics.loss : 0.95 * smoothed + 0.05 * r.metrics.loss;
        windowSteps++;
        const rate = (windowSteps * o.batchSize) / ((performance.now() - windowStart) / 1000);
        if (windowSteps >= 20) (windowStart = performance.now(), windowSteps = 0);
        ev.onStep?.({ step: state.step, loss: r.metrics.loss, smoothed, imagesPerSecond: rate, lr: r.metrics.lr });
        if (state.step % o.logEvery === 0 || state.step === o.steps) {
          await writing(logPath, () => appendFile(logPath, `${JSON.stringify({ step: state.step, loss: r.metrics.loss, lr: r.metrics.lr,
            grad_norm: r.metrics.gradNorm, images_per_s: rate, elapsed_s: (performance.now() - start) / 1000 })}\n`));
        }
        if (o.sampleEvery > 0 && state.step % o.sampleEvery === 0) {
          const grid = join(o.out, 'samples');
          ev.onSample?.(state.step, await writing(grid, () => writeTrainingGrid(o, model, spec, state.ema!, state.step)));
        }
        if (ev.signal?.aborted) {
          interrupted = true;
          break;
        }
        if (o.checkpointEvery > 0 && state.step % o.checkpointEvery === 0 && state.step < o.steps) await save();
      }
    await save();
    const modelDir = join(o.out, 'model');
    if (!interrupted) await writing(modelDir, () => exportPipeline(modelDir, files, state.ema!));
    return { state, model, losses, interrupted, seconds: (performance.now() - start) / 1000 };
  }
}

/**
 * Drops log lines past `step` (they will be recomputed, identically, by the resumed run). The
 * log is appended in step order, so what is kept is a prefix of the file: it is cut in place,
 * which needs no free space (a resume after a full disk must not lose the log by rewriting
 * it); anything else is rewritten atomically.
 */
async function truncateLog(path: string, step: number): Promise<void> {
  if (!existsSync(path)) return;
  // A line cut short (power loss, full disk) is dropped: the resumed run writes it again.
  const stepOf = (l: string): number => {
    try {
      return (JSON.parse(l) as { step: number }).step;
    } catch {
      return Infinity;
    }
  };
  const text = await readFile(path, 'utf8');
  const lines = text.split('\n');
  let prefix = 0; // bytes of the leading complete lines that are kept
  let i = 0;
  for (; i < lines.length - 1 && stepOf(lines[i]!) <= step; i++) prefix += Buffer.byteLength(lines[i]!) + 1;
  const kept = lines.filter((l) => l && stepOf(l) <= step);
  if (kept.length === i) {
    if (prefix < Buffer.byteLength(text)) await truncate(path, prefix);
  } else {
    await writeFileAtomic(path, kept.map((l) => `${l}\n`).join(''));
  }
}

/** The first parameter, EMA weight or optimizer slot of `s` holding a NaN or infinity, by
 *  name, or null. */
function nonFinite(s: TrainState): string | null {
  for (const [tree, what] of [[s.params, 'weight'], [s.ema, 'EMA weight'], [s.opt, 'optimizer state']] as const) {
    if (!tree) continue;
    const flat = flatten(tree as Tree<HostArray>, (x): x is HostArray => x instanceof HostArray);
    for (const [i, a] of flat.leaves.entries()) {
      const d = a.data;
      if (!(d instanceof Float32Array)) continue;
      for (let j = 0; j < d.length; j++) if (!Number.isFinite(d[j]!)) return `${what} '${flat.paths[i]}'`;
    }
  }
  return null;
}

/** Errno codes of a failed write that the user can fix, and what that asks of them. */
const REMEDIES: Readonly<Record<string, string>> = {
  ENOSPC: 'free some space', EDQUOT: 'free some space', EROFS: 'make it writable',
  EACCES: 'fix the permissions', EPERM: 'fix the permissions',
};

/** A run stopped by a write the user can fix (a full disk, a read-only folder). */
export class TrainWriteError extends Error {
  override name = 'TrainWriteError';
  constructor(readonly path: string, readonly code: string, message: string, options?: ErrorOptions) {
    super(message, options);
  }
}

/**
 * Runs `f`, which writes `what` (a file or folder of the run); a full disk or a denied write
 * becomes a TrainWriteError: the file (the error's own path, with the temp-name tags of an
 * atomic write taken off, else `what`), the cause, and which checkpoint is kept (`saved`: its
 * step, or null for none).
 */
async function writingFile<T>(what: string, saved: number | null, f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    const code = errnoCode(e);
    const remedy = code ? REMEDIES[code] : undefined;
    if (!code || !remedy || e instanceof TrainWriteError) throw e;
    const file = ((e as NodeJS.ErrnoException).path ?? what).replace(/\.tmp-\d+-[0-9a-f]+/g, '');
    const next = saved === null ? `no checkpoint was saved yet: ${remedy} and run again`
      : `the checkpoint of step ${saved} is kept: ${remedy}, then continue with --resume`;
    const cannot = new FileSystemError('write', file, code).message; // cannot write FILE: the disk is full (...)
    throw new TrainWriteError(file, code, `${cannot}; ${next}`, { cause: e });
  }
}
