/**
 * @file The one optimisation loop of the pipelines: `diffuse train` and `diffuse distill` both
 * run it. A caller brings a compiled step (one graph: loss, backward, update), the starting
 * weights and a batch for each step number; the loop brings everything a long run needs: a run
 * lock, recovery of a swap a crash interrupted, exact resume (a batch is a pure function of the
 * step), atomic checkpoints that never hold NaN, divergence stops, a JSONL log, sample grids,
 * Ctrl-C with a checkpoint, and one-line errors for a full disk or a read-only folder.
 */
import { appendFile, readFile, truncate, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { HostArray } from '../engine/host.js';
import { flatten, type Tree } from '../engine/tree.js';
import { imageGrid, writePng } from '../io/png.js';
import type { TrainState, TrainStep } from '../nn/train.js';
import { writeFileAtomic, type SwapPhase } from '../util/atomic.js';
import { ensureWritableFolder, errnoCode, FileSystemError } from '../util/fs-errors.js';
import {
  exportPipeline, loadCheckpoint, modelWeights, recoverRunFolders, saveCheckpoint, type PipelineFiles,
  type SavedModel,
} from './checkpoint.js';
import type { ImageModel } from './image-models.js';
import { acquireRunLock } from './run-lock.js';

/** The options every run has, whatever it optimises. */
export interface LoopOptions {
  /** Optimisation steps in total. */
  steps: number;
  /** Images (or samples) per step, for the rate shown and logged. */
  batchSize: number;
  /** Run folder: checkpoint/, model/, log.jsonl, samples/. */
  out: string;
  logEvery: number;
  /** Sample grid interval (0: never). */
  sampleEvery: number;
  /** Checkpoint interval (0: only on interrupt and at the end). */
  checkpointEvery: number;
}

export interface StepReport {
  step: number;
  loss: number;
  /** Exponential moving average of the loss (0.95). */
  smoothed: number;
  imagesPerSecond: number;
  lr: number;
}

export interface TrainEvents<M extends SavedModel = ImageModel> {
  /** Work before the first step (e.g. REPA's encoder features): `done` of `total` items. */
  onPrepare?: (what: string, done: number, total: number) => void;
  onStep?: (s: StepReport) => void;
  onCheckpoint?: (step: number, dir: string) => void;
  onSample?: (step: number, path: string) => void;
  /** Stops the run after the current step, with a checkpoint. */
  signal?: AbortSignal;
  /** Awaited before each checkpoint is written, with the exported model weights (e.g. an A/B
   *  run's evaluation): a crash inside it repeats those steps on resume instead of losing it. */
  beforeCheckpoint?: (step: number, weights: Tree<HostArray>, model: M) => Promise<void>;
  /** The caller guarantees that nothing else runs this folder (a job queue holds the job's
   *  lock): a run lock left by a dead worker, even one on another host, is taken over. */
  takeOverLock?: boolean;
  /** Called at each phase of a checkpoint swap; tests throw here to crash a save midway. */
  onCheckpointPhase?: (phase: SwapPhase) => void;
}

/** What a caller hands the loop. */
export interface TrainingRun<B, M extends SavedModel = ImageModel> {
  options: LoopOptions;
  /** The pipeline the checkpoints and the final model are written as. */
  files: PipelineFiles<M>;
  /** Options a resumed run must share with its checkpoint (saved in trainer_state.json). */
  run: Record<string, unknown>;
  /** The compiled step; the loop disposes of it when it returns. */
  trainer: TrainStep<B>;
  /** The weights of step 0 (a fresh init, or the teacher's for a student). */
  initialWeights(): Tree<HostArray>;
  /** Everything random about step `step` (data, noise, times), drawn from the run's seed. */
  batch(step: number): B;
  /** Which weights model/ and the grids hold: the EMA, or the optimised ones. */
  exported: 'ema' | 'params';
  /** Images [N, C, H, W] in [-1, 1] for a sample grid of `weights`, and its column count. */
  grid?(weights: Tree<HostArray>, step: number): Promise<{ images: HostArray; cols: number }>;
}

export interface TrainResult {
  state: TrainState;
  losses: number[];
  interrupted: boolean;
  seconds: number;
}

/**
 * Runs `r.options.steps` steps (continuing from `out/checkpoint` when `resume`), writing
 * checkpoints, the log, grids and, unless interrupted, the pipeline `out/model`.
 */
export async function runTraining<B, M extends SavedModel = ImageModel>(r: TrainingRun<B, M>,
  resume: boolean, ev: TrainEvents<M> = {}):
  Promise<TrainResult> {
  const o = r.options;
  const { trainer, files } = r;
  const checkpointDir = join(o.out, 'checkpoint');
  const logPath = join(o.out, 'log.jsonl');
  try {
    await ensureWritableFolder(o.out); // a read-only or unwritable place fails here, in one line
    const lock = await writingFile(join(o.out, '.lock'), null, () => acquireRunLock(o.out,
      { takeOver: ev.takeOverLock ?? false }));
    try {
      return await runSteps();
    } finally {
      await lock.release();
    }
  } finally {
    await trainer.dispose();
  }

  async function runSteps(): Promise<TrainResult> {
    // The step of the checkpoint on disk (null: none yet), for the messages of a failed run.
    let lastSaved: number | null = null;
    // A full disk, a read-only or unwritable folder: one line naming the file, the cause and
    // what is kept, instead of Node's "ENOSPC: no space left on device, write".
    const writing = <T>(what: string, f: () => Promise<T>): Promise<T> => writingFile(what, lastSaved, f);
    await writing(o.out, () => recoverRunFolders(o.out)); // a crash mid-swap leaves the newest checkpoint under a temp name
    let state = trainer.init(r.initialWeights());
    if (resume) {
      state = (await loadCheckpoint(checkpointDir, files, state, r.run)).state;
      lastSaved = state.step;
      await writing(logPath, () => truncateLog(logPath, state.step));
    } else if (existsSync(checkpointDir)) {
      throw new Error(`${o.out} already holds a run (checkpoint/); pass --resume to continue it or choose another --out`);
    } else {
      await writing(logPath, () => writeFile(logPath, ''));
    }
    const weights = (s: TrainState): Tree<HostArray> =>
      modelWeights(files, r.exported === 'ema' ? s.ema! : s.params);
    const kept = (): string => lastSaved === null ? 'no checkpoint was saved yet'
      : `the checkpoint of step ${lastSaved} is kept`;
    const save = async (): Promise<void> => {
      // The last guard before weights reach the disk: a checkpoint or model/ never holds NaN.
      const bad = nonFinite(state);
      if (bad) {
        throw new Error(`training diverged by step ${state.step}: ${bad} is not finite; ${kept()} ` +
          '(try a lower --lr)');
      }
      await ev.beforeCheckpoint?.(state.step, weights(state), files.model);
      await writing(checkpointDir, () => saveCheckpoint(checkpointDir, files, state,
        { step: state.step, run: r.run, diffuse: '0.1.0' },
        ev.onCheckpointPhase ? { onPhase: ev.onCheckpointPhase } : {}));
      lastSaved = state.step;
      ev.onCheckpoint?.(state.step, checkpointDir);
    };
    const writeGrid = async (): Promise<string> => {
      const g = await r.grid!(weights(state), state.step);
      const path = join(o.out, 'samples', `step-${String(state.step).padStart(6, '0')}.png`);
      await writePng(path, imageGrid(g.images, { cols: g.cols }));
      return path;
    };
    const losses: number[] = [];
    let smoothed = NaN;
    const start = performance.now();
    let windowStart = performance.now();
    let windowSteps = 0;
    let interrupted = false;
    while (state.step < o.steps) {
      const s = await trainer.step(state, r.batch(state.step));
      // A non-finite gradient norm poisons the update even when the loss is still finite:
      // an infinite gradient times the clipping scale 0 is NaN, and so are the new weights.
      // The diverged state is not saved: the last checkpoint stays the last finite one.
      const { loss, gradNorm, lr } = s.metrics;
      if (!Number.isFinite(loss) || !Number.isFinite(gradNorm)) {
        const what = Number.isFinite(loss) ? `the gradient norm is ${gradNorm} (loss ${loss})`
          : `the loss is ${loss}`;
        throw new Error(`training diverged at step ${state.step + 1}: ${what}; ${kept()} ` +
          '(try a lower --lr)');
      }
      state = s.state;
      losses.push(loss);
      smoothed = Number.isNaN(smoothed) ? loss : 0.95 * smoothed + 0.05 * loss;
      windowSteps++;
      const rate = (windowSteps * o.batchSize) / ((performance.now() - windowStart) / 1000);
      if (windowSteps >= 20) (windowStart = performance.now(), windowSteps = 0);
      ev.onStep?.({ step: state.step, loss, smoothed, imagesPerSecond: rate, lr });
      if (state.step % o.logEvery === 0 || state.step === o.steps) {
        const line = { step: state.step, loss, lr, grad_norm: gradNorm, images_per_s: rate,
          elapsed_s: (performance.now() - start) / 1000 };
        await writing(logPath, () => appendFile(logPath, `${JSON.stringify(line)}\n`));
      }
      if (r.grid && o.sampleEvery > 0 && state.step % o.sampleEvery === 0) {
        // Written whether or not anyone listens (`ev.onSample?.(.., await ..)` would skip it).
        const grid = await writing(join(o.out, 'samples'), writeGrid);
        ev.onSample?.(state.step, grid);
      }
      if (ev.signal?.aborted) {
        interrupted = true;
        break;
      }
      if (o.checkpointEvery > 0 && state.step % o.checkpointEvery === 0 && state.step < o.steps) await save();
    }
    await save();
    const modelDir = join(o.out, 'model');
    if (!interrupted) await writing(modelDir, () => exportPipeline(modelDir, files, weights(state)));
    return { state, losses, interrupted, seconds: (performance.now() - start) / 1000 };
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
