/**
 * @file `diffuse ab`: training methods compared at equal compute. Every arm (a base training
 * config and variants of it) is trained with the same seeds, steps and batch, one run at a
 * time (2 cores), and evaluated at the same checkpoints with the same sampling noise; the
 * result is a CSV of every evaluation, a summary over seeds (mean, min, max) and a plot of
 * MNIST-FID against training images seen.
 *
 * Layout of `out`:
 *   <arm>/seed-<s>/       a `diffuse train` run folder (checkpoint/, model/, log.jsonl, ...)
 *   <arm>/seed-<s>/evals.jsonl   one line per evaluation: step, images, fid, accuracy, ...
 *   ab.csv, ab-summary.csv, ab.png
 *
 * Runs go seed by seed (every arm's seed 0, then every arm's seed 1, ...), so an early stop
 * still leaves a complete comparison. Nothing is lost on a crash: a run resumes from its
 * checkpoint, and an evaluation happens before the checkpoint of its step is written, so an
 * interrupted one is redone from the step before (exactly, as training is a pure function of
 * seed and step).
 */
import { appendFile, readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { HostArray } from '../engine/host.js';
import type { Tree } from '../engine/tree.js';
import { trainingScheduler } from '../diffusion/training.js';
import type { ImageDataset } from '../data/dataset.js';
import { linePlot, type LineSeries } from '../io/plot.js';
import { writeFileAtomic, writePng, type Image } from '../io/png.js';
import { pipelineSource, scoreImages, type MnistFid } from './eval.js';
import type { ImageModel } from './image-models.js';
import type { Pipeline } from './sample.js';
import { train, type TrainEvents, type TrainOptions } from './train.js';

/** One arm: a name and the training options its runs share (seed and out are the harness's). */
export interface Arm {
  name: string;
  options: Omit<TrainOptions, 'seed' | 'out'>;
  data: ImageDataset;
}

/** What an evaluation measures on a model: lower FID is better. */
export interface Evaluation {
  fid: number;
  accuracy: number | null;
}

/** Evaluates a model's weights (the harness's default: MNIST-FID and class accuracy of
 *  samples; tests bring their own). */
export type Evaluator = (p: Pipeline) => Promise<Evaluation>;

export interface AbOptions {
  out: string;
  /** Seeds 0..seeds-1, the same for every arm. */
  seeds: number;
  /** Evaluate every this many steps (and at the last). */
  evalEvery: number;
}

/** One evaluation of one run. */
export interface AbRow extends Evaluation {
  arm: string;
  seed: number;
  step: number;
  images: number;
  /** Training images per second at that point (the arm's cost). */
  imagesPerSecond: number;
}

export interface AbEvents {
  onRunStart?: (arm: string, seed: number, resumed: boolean) => void;
  onEval?: (row: AbRow) => void;
  /** Per run: the train events (progress, Ctrl-C). */
  train?: (arm: string, seed: number) => TrainEvents;
}

/** Summary of an arm at a step over its seeds. */
export interface AbSummary {
  arm: string;
  step: number;
  images: number;
  seeds: number;
  fidMean: number;
  fidMin: number;
  fidMax: number;
  fidStd: number;
  accuracyMean: number | null;
}

/**
 * The default evaluation: `n` class-conditional samples (classes cycled, fixed noise: seed
 * 1234 for every arm and checkpoint), DDIM or flow Euler at `steps` steps, scored by MNIST-FID
 * against the training split and the classifier's class accuracy.
 */
export function mnistEvaluator(m: MnistFid, o: { n: number; steps: number; guidance: number }):
  Evaluator {
  return async (p) => {
    const sampler = p.scheduler.family === 'flow' ? 'flow-euler' : 'ddim';
    const s = await pipelineSource(p, { n: o.n, seed: 1234, guidance: o.guidance })({ sampler, steps: o.steps });
    return scoreImages(m, s.images, s.labels);
  };
}

export const runFolder = (out: string, arm: string, seed: number): string =>
  join(out, arm, `seed-${seed}`);

/** The evaluation lines of a run (a torn last line, from a crash, is dropped). */
export async function readEvals(dir: string): Promise<AbRow[]> {
  const path = join(dir, 'evals.jsonl');
  if (!existsSync(path)) return [];
  const rows: AbRow[] = [];
  for (const line of (await readFile(path, 'utf8')).split('\n')) {
    try {
      if (line.trim()) rows.push(JSON.parse(line) as AbRow);
    } catch {
      // a line cut short by a crash: its evaluation is redone
    }
  }
  // An evaluation redone after a crash between it and its checkpoint: the first one counts
  // (both are of the same weights).
  return rows.filter((r, i) => rows.findIndex((q) => q.step === r.step) === i);
}

function checkArms(arms: readonly Arm[], o: AbOptions): void {
  const names = arms.map((a) => a.name);
  const dup = names.find((n, i) => names.indexOf(n) !== i);
  if (dup) throw new Error(`two arms are named '${dup}': give the variant files different names`);
  const bad = names.find((n) => !/^[A-Za-z0-9._-]+$/.test(n));
  if (bad !== undefined) throw new Error(`arm name '${bad}': expected letters, digits, '.', '_' or '-' (it names a folder)`);
  const [first] = arms;
  for (const a of arms) {
    for (const k of ['steps', 'batchSize'] as const) {
      if (a.options[k] !== first!.options[k]) {
        throw new Error(`arm '${a.name}' has ${k} ${a.options[k]}, arm '${first!.name}' ` +
          `${first!.options[k]}: arms are compared at equal compute, so these must match`);
      }
    }
  }
  if (!(Number.isInteger(o.seeds) && o.seeds >= 1)) throw new RangeError(`seeds: expected an integer >= 1, got ${o.seeds}`);
  if (!(Number.isInteger(o.evalEvery) && o.evalEvery >= 1)) throw new RangeError(`evalEvery: expected an integer >= 1, got ${o.evalEvery}`);
}

/**
 * Trains and evaluates every arm for every seed (resuming what `out` already holds), then
 * writes the CSVs and the plot. Returns every evaluation.
 */
export async function runAb(arms: readonly Arm[], o: AbOptions, evaluate: Evaluator,
  ev: AbEvents = {}): Promise<{ rows: AbRow[]; summary: AbSummary[]; interrupted: boolean }> {
  checkArms(arms, o);
  for (let seed = 0; seed < o.seeds; seed++) {
    for (const arm of arms) {
      const done = await runArm(arm, seed, o, evaluate, ev);
      if (!done) return { ...(await writeResults(arms, o)), interrupted: true };
    }
  }
  return { ...(await writeResults(arms, o)), interrupted: false };
}

/** One run: trains (or resumes) and evaluates at its checkpoints; false if interrupted. */
async function runArm(arm: Arm, seed: number, o: AbOptions, evaluate: Evaluator,
  ev: AbEvents): Promise<boolean> {
  const dir = runFolder(o.out, arm.name, seed);
  const steps = arm.options.steps;
  const due = (step: number) => step % o.evalEvery === 0 || step === steps;
  const evals = await readEvals(dir);
  if (evals.some((r) => r.step === steps) && existsSync(join(dir, 'model'))) return true;
  const resume = existsSync(join(dir, 'checkpoint', 'trainer_state.json'));
  ev.onRunStart?.(arm.name, seed, resume);
  const options: TrainOptions = { ...arm.options, seed, out: dir,
    checkpointEvery: o.evalEvery };
  const spec = trainingScheduler(options.objective);
  const inner = ev.train?.(arm.name, seed) ?? {};
  let rate = NaN;
  const r = await train(options, arm.data, resume, {
    ...inner,
    onStep: (s) => {
      rate = s.imagesPerSecond;
      inner.onStep?.(s);
    },
    beforeCheckpoint: async (step: number, weights: Tree<HostArray>, model: ImageModel) => {
      await inner.beforeCheckpoint?.(step, weights, model);
      if (!due(step) || evals.some((e) => e.step === step)) return;
      const score = await evaluate({ model, params: weights, scheduler: spec, modelFolder: dir, notes: [] });
      const row: AbRow = { arm: arm.name, seed, step, images: step * options.batchSize,
        imagesPerSecond: rate, ...score };
      await appendFile(join(dir, 'evals.jsonl'), `${JSON.stringify(row)}\n`);
      evals.push(row);
      ev.onEval?.(row);
    },
  });
  return !r.interrupted;
}

/** Summaries per arm and step over the seeds that have that step. */
export function summarize(rows: readonly AbRow[]): AbSummary[] {
  const groups = new Map<string, AbRow[]>();
  for (const r of rows) {
    const k = `${r.arm}\u0000${r.step}`;
    groups.set(k, [...(groups.get(k) ?? []), r]);
  }
  return [...groups.values()].map((g) => {
    const fids = g.map((r) => r.fid);
    const mean = fids.reduce((a, b) => a + b, 0) / fids.length;
    const acc = g.every((r) => r.accuracy !== null)
      ? g.reduce((a, r) => a + r.accuracy!, 0) / g.length : null;
    return { arm: g[0]!.arm, step: g[0]!.step, images: g[0]!.images, seeds: g.length,
      fidMean: mean, fidMin: Math.min(...fids), fidMax: Math.max(...fids),
      fidStd: Math.sqrt(fids.reduce((a, f) => a + (f - mean) ** 2, 0) / Math.max(1, fids.length - 1)),
      accuracyMean: acc };
  });
}

const fmt = (v: number | null, digits = 4): string => v === null ? '' : v.toFixed(digits);

export const AB_COLUMNS = ['arm', 'seed', 'step', 'images', 'mnist_fid', 'class_accuracy',
  'images_per_s'] as const;
export const AB_SUMMARY_COLUMNS = ['arm', 'step', 'images', 'seeds', 'fid_mean', 'fid_min',
  'fid_max', 'fid_std', 'accuracy_mean'] as const;

export function abCsv(rows: readonly AbRow[]): string {
  return [AB_COLUMNS.join(','), ...rows.map((r) => [r.arm, r.seed, r.step, r.images, fmt(r.fid),
    fmt(r.accuracy), r.imagesPerSecond.toFixed(1)].join(','))].join('\n') + '\n';
}

export function abSummaryCsv(s: readonly AbSummary[]): string {
  return [AB_SUMMARY_COLUMNS.join(','), ...s.map((r) => [r.arm, r.step, r.images, r.seeds,
    fmt(r.fidMean), fmt(r.fidMin), fmt(r.fidMax), fmt(r.fidStd), fmt(r.accuracyMean)].join(','))]
    .join('\n') + '\n';
}

/** MNIST-FID against training images seen: each arm's mean over seeds, bars from min to max. */
export function abPlot(s: readonly AbSummary[], title: string): Image {
  const arms = [...new Set(s.map((r) => r.arm))];
  const series: LineSeries[] = arms.map((arm) => {
    const pts = s.filter((r) => r.arm === arm).sort((a, b) => a.step - b.step);
    const seeds = Math.max(...pts.map((p) => p.seeds));
    return { label: `${arm} (${seeds} seed${seeds === 1 ? '' : 's'})`,
      points: pts.flatMap((p) => [p.images / 1000, p.fidMean]),
      spread: pts.flatMap((p) => [p.fidMin, p.fidMax]) };
  });
  return linePlot(series, { title, xLabel: 'TRAINING IMAGES SEEN (THOUSANDS)', yLabel: 'MNIST-FID' });
}

/** Collects every run's evaluations in arm, seed, step order and writes the files. */
async function writeResults(arms: readonly Arm[], o: AbOptions):
  Promise<{ rows: AbRow[]; summary: AbSummary[] }> {
  const rows: AbRow[] = [];
  for (const arm of arms) {
    for (let seed = 0; seed < o.seeds; seed++) {
      rows.push(...(await readEvals(runFolder(o.out, arm.name, seed))).sort((a, b) => a.step - b.step));
    }
  }
  const summary = summarize(rows);
  await writeFileAtomic(join(o.out, 'ab.csv'), abCsv(rows));
  await writeFileAtomic(join(o.out, 'ab-summary.csv'), abSummaryCsv(summary));
  if (summary.length > 0) {
    const batch = arms[0]!.options.batchSize;
    await writePng(join(o.out, 'ab.png'), abPlot(summary,
      `A/B: ${arms.map((a) => a.name).join(' VS ')}, BATCH ${batch}`));
  }
  return { rows, summary };
}
