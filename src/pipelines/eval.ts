/**
 * @file The evaluation behind `diffuse eval`: MNIST-FID of N samples against the MNIST training
 * split, the floor (MNIST-FID of as many held-out digits against the same split: what a
 * perfect sampler would score with this N), class accuracy of conditional samples, and seconds
 * per image; over a sweep of sampler:steps runs, a table, a CSV and a PNG speed-quality plot.
 *
 * MNIST-FID is computed on the features of the project's MNIST classifier (see metrics.ts); it
 * is not Inception-FID. FID is biased upwards at small N, so compare numbers at the same N,
 * and against the floor printed with them.
 */
import { HostArray } from '../engine/host.js';
import { RngKey } from '../engine/random/philox.js';
import { SAMPLER_NAMES } from '../diffusion/sampling.js';
import { subset } from '../data/dataset.js';
import { DIGIT_SPEC_SPELLING, digitSpecName, parseDigitSpec } from '../data/digit-spec.js';
import { linePlot, type LineSeries } from '../io/plot.js';
import { writeFileAtomic, writePng, type Image } from '../io/png.js';
import {
  classAccuracy, featureExtractor, frechetDistance, gaussianStats, loadMetricClassifier,
  referenceStats, type FeatureExtractor, type ReferenceStats,
} from './metrics.js';
import { digitSplits } from './data.js';
import type { LoadedGuide } from './guide.js';
import {
  classCount, NonFiniteError, parseAccel, sampleImages, type Acceleration, type Pipeline,
} from './sample.js';

// ---------------------------------------------------------------------------------------------
// MNIST-FID against the training split
// ---------------------------------------------------------------------------------------------

export interface MnistFidOptions {
  /** Classifier folder (default: the shipped models/mnist-classifier). */
  classifier?: string;
  /** Where training-split statistics are cached (default .cache/diffuse/ in the package). */
  cacheDir?: string;
  /** Number of images each score will use: the floor is measured with as many (at most 1,000,
   *  the size of the held-out split). */
  n: number;
  /** The digits scores are measured against (default 'mnist'; data/digit-spec.ts): 'mnist-bold'
   *  takes the same splits dilated by a pixel (`diffuse train --data mnist-bold`), for models
   *  fine-tuned to that domain; 'mnist:5-9' only those classes, for a model adapted to them.
   *  Each is cached under its own name. */
  reference?: string;
}

export interface MnistFid {
  extractor: FeatureExtractor;
  train: ReferenceStats;
  /** MNIST-FID of `floorN` held-out digits against the training split. */
  floor: number;
  floorN: number;
  /** The classifier's own accuracy on those held-out digits. */
  heldOutAccuracy: number;
  /** The classes the reference keeps, when it keeps only some: the ones to sample. */
  digits?: readonly number[];
  dispose(): Promise<void>;
}

/** Loads the classifier, the (cached) training statistics, and measures the floor. */
export async function prepareMnistFid(o: MnistFidOptions): Promise<MnistFid> {
  const extractor = featureExtractor(await loadMetricClassifier(o.classifier));
  try {
    const spec = parseDigitSpec(o.reference ?? 'mnist');
    if (!spec) throw new RangeError(`reference '${o.reference}': expected ${DIGIT_SPEC_SPELLING}`);
    const { train, heldOut } = digitSplits(spec);
    const ref = await referenceStats(extractor, train, `${digitSpecName(spec)}-train`,
      o.cacheDir === undefined ? {} : { cacheDir: o.cacheDir });
    // The held-out split is ordered by digit: a random subset keeps the classes balanced.
    const floorN = Math.max(2, Math.min(o.n, heldOut.labels!.length));
    const rows = RngKey.fromSeed(0).permutation(heldOut.labels!.length).subarray(0, floorN);
    const held = subset(heldOut, rows);
    const out = await extractor.outputs(held.images);
    return {
      extractor, train: ref, floorN,
      floor: frechetDistance(ref.stats, gaussianStats(out.features, out.n, out.dim)),
      heldOutAccuracy: classAccuracy(out, held.labels!),
      ...(spec.digits ? { digits: spec.digits } : {}),
      dispose: () => extractor.dispose(),
    };
  } catch (e) {
    await extractor.dispose();
    throw e;
  }
}

export interface Score {
  fid: number;
  /** Fraction classified as the requested class; null without labels. */
  accuracy: number | null;
}

/** MNIST-FID of images [N, 1, 32, 32] in [-1, 1], and their class accuracy when labelled. */
export async function scoreImages(m: MnistFid, images: HostArray, labels?: ArrayLike<number>):
  Promise<Score> {
  const out = await m.extractor.outputs(images);
  return {
    fid: frechetDistance(m.train.stats, gaussianStats(out.features, out.n, out.dim)),
    accuracy: labels ? classAccuracy(out, labels) : null,
  };
}

// ---------------------------------------------------------------------------------------------
// Runs and sweeps
// ---------------------------------------------------------------------------------------------

export interface Run {
  sampler: string;
  steps: number;
  /** Training-free acceleration and its spelling (`deepcache:3`), for tables and plots. */
  accel?: { spec: string; options: Acceleration };
}

/** How tables, CSV rows and plot legends name a run's sampler: `ddim`, `ddim+deepcache:3`. */
export const runName = (r: Run): string => r.accel ? `${r.sampler}+${r.accel.spec}` : r.sampler;

const ACCEL_MODIFIER = /^(nonuniform|branch=\d+|serial|noinject|random|(starvation|cache|metric)=.+)$/;

/** Parses `ddim:10,ddim:25,dpm++2m:10` (sampler:steps, comma-separated) into runs; sampler
 *  names are checked against SAMPLER_NAMES unless `anySampler` (for stand-in image sources). */
export function parseRuns(spec: string, anySampler = false): Run[] {
  // An acceleration's own modifiers (deepcache:5,nonuniform) belong to the entry before them.
  const items: string[] = [];
  for (const part of spec.split(',').map((s) => s.trim()).filter(Boolean)) {
    if (ACCEL_MODIFIER.test(part) && items.length > 0) items[items.length - 1] += `,${part}`;
    else items.push(part);
  }
  const runs = items.map((item): Run => {
    // sampler:steps, then +acceleration ('+' after the digits: dpm++2m has its own '+'s).
    const m = /^([^:\s]+):(\d+)(?:\+(.+))?$/.exec(item);
    const accelSpec = m?.[3];
    if (!m || Number(m[2]) < 1) {
      throw new RangeError(`sweep entry '${item}': expected sampler:steps, e.g. ddim:25 or ` +
        'ddim:50+deepcache:3');
    }
    if (!anySampler && !(SAMPLER_NAMES as readonly string[]).includes(m[1]!)) {
      throw new RangeError(`sweep entry '${item}': unknown sampler '${m[1]}' (expected one of ` +
        `${SAMPLER_NAMES.join(', ')})`);
    }
    const run: Run = { sampler: m[1]!, steps: Number(m[2]) };
    if (accelSpec !== undefined) {
      try {
        run.accel = { spec: accelSpec, options: parseAccel(accelSpec) };
      } catch (e) {
        throw new RangeError(`sweep entry '${item}': ${(e as Error).message}`);
      }
    }
    return run;
  });
  if (runs.length === 0) throw new RangeError(`sweep '${spec}': expected sampler:steps entries`);
  return runs;
}

/** Images for one run: [N, C, H, W] in [-1, 1], the wall time, and the requested class of
 *  each image (conditional models). */
export type ImageSource = (run: Run) =>
  Promise<{ images: HostArray; seconds: number; labels?: readonly number[] }>;

/** Samples a pipeline (sample.ts): conditional models get the classes 0..K-1 cycled, or the
 *  given `classes` (a reference of some digits only). */
export function pipelineSource(p: Pipeline, o: { n: number; seed: number; guidance?: number;
  batchSize?: number; memoryLimit?: number; guide?: LoadedGuide; classes?: readonly number[];
  onStep?: (run: Run, step: number, total: number) => void }): ImageSource {
  // A guide's targets are classes too, for an unconditional model as for a conditional one.
  const all = classCount(p.model) || (o.guide?.classes ?? 0);
  if (o.classes && all && o.classes.some((c) => c >= all)) {
    throw new RangeError(`classes ${o.classes.join(',')}: the model has ${all} classes`);
  }
  const classes = all ? [...(o.classes ?? Array.from({ length: all }, (_, i) => i))] : [];
  const k = classes.length;
  return async (run) => {
    const r = await sampleImages(p, { sampler: run.sampler, steps: run.steps, n: o.n, seed: o.seed,
      ...(k ? { classes } : {}), ...(classCount(p.model) ? { guidance: o.guidance ?? 1 } : {}),
      ...(o.guide ? { guide: o.guide } : {}),
      ...(o.batchSize ? { batchSize: o.batchSize } : {}),
      ...(o.memoryLimit ? { memoryLimit: o.memoryLimit } : {}),
      ...(run.accel ? { accel: run.accel.options } : {}),
      ...(o.onStep ? { onStep: (step: number, total: number) => o.onStep!(run, step, total) } : {}),
    });
    return { images: r.images, seconds: r.seconds,
      ...(k ? { labels: Array.from({ length: o.n }, (_, i) => classes[i % k]!) } : {}) };
  };
}

export interface RunResult extends Run, Score {
  n: number;
  seconds: number;
  secondsPerImage: number;
  /** Accelerated runs, when the sweep has the same sampler and steps without acceleration:
   *  the mean squared difference to its images (same noise; pixels in [-1, 1]) and its
   *  seconds over ours. */
  mseToFull?: number;
  speedup?: number;
}

/** Samples and scores each run in turn. */
export async function evaluateRuns(m: MnistFid, runs: readonly Run[], source: ImageSource,
  onRun?: (r: RunResult) => void | Promise<void>): Promise<RunResult[]> {
  const results: RunResult[] = [];
  const plain = new Map<string, { images: HostArray; seconds: number }>();
  const pending = new Map<RunResult, HostArray>();
  const compare = (r: RunResult, images: HostArray) => {
    const base = plain.get(`${r.sampler}:${r.steps}`);
    if (!base || base.images.data.length !== images.data.length) return false;
    let sum = 0;
    images.data.forEach((v, i) => { sum += (Number(v) - Number(base.images.data[i])) ** 2; });
    r.mseToFull = sum / images.data.length;
    r.speedup = base.seconds / r.seconds;
    return true;
  };
  for (const run of runs) {
    const s = await source(run);
    const n = s.images.shape[0]!;
    const score = await scoreImages(m, s.images, s.labels);
    if (!Number.isFinite(score.fid)) {
      throw new NonFiniteError(`MNIST-FID of ${runName(run)}:${run.steps} is ${score.fid}: the ` +
        `classifier's features of the samples or of the reference are not finite (a corrupt ` +
        `classifier checkpoint?); nothing written`);
    }
    const r: RunResult = { ...run, ...score, n, seconds: s.seconds, secondsPerImage: s.seconds / n };
    if (!run.accel) {
      plain.set(`${run.sampler}:${run.steps}`, { images: s.images, seconds: s.seconds });
      for (const [earlier, images] of pending) if (compare(earlier, images)) pending.delete(earlier);
    } else if (!compare(r, s.images)) {
      pending.set(r, s.images);
    }
    results.push(r);
    await onRun?.(r);
  }
  return results;
}

/** The CSV's columns, in order: sampler, steps, n (images), mnist_fid, class_accuracy (empty
 *  for unconditional models), seconds_per_image, seconds (the whole run, compilation
 *  included), and for accelerated runs mse_to_full and speedup (RunResult). */
export const CSV_COLUMNS = ['sampler', 'steps', 'n', 'mnist_fid', 'class_accuracy',
  'seconds_per_image', 'seconds', 'mse_to_full', 'speedup'] as const;

/** One header line and one row per run. */
export function resultsCsv(rows: readonly RunResult[]): string {
  // RFC 4180: a field with a comma or a quote is quoted (deepcache:5,nonuniform).
  const field = (v: string) => (/[",\n]/.test(v) ? `"${v.replaceAll('"', '""')}"` : v);
  const lines = rows.map((r) => [field(runName(r)), r.steps, r.n, r.fid.toFixed(4),
    r.accuracy === null ? '' : r.accuracy.toFixed(4), r.secondsPerImage.toPrecision(4),
    r.seconds.toFixed(3), r.mseToFull?.toExponential(3) ?? '', r.speedup?.toFixed(3) ?? '',
  ].join(','));
  return `${[CSV_COLUMNS.join(','), ...lines].join('\n')}\n`;
}

/** The table printed on the terminal, with the floor under it. */
export function resultsTable(rows: readonly RunResult[], m: Pick<MnistFid, 'floor' | 'floorN'>):
  string {
  const width = Math.max(10, ...rows.map((r) => runName(r).length));
  const accelerated = rows.some((r) => r.mseToFull !== undefined);
  const head = `${'sampler'.padEnd(width)} ${'steps'.padStart(5)} ${'MNIST-FID'.padStart(10)} ` +
    `${'class acc'.padStart(9)} ${'s/image'.padStart(9)}` +
    `${accelerated ? ` ${'speed-up'.padStart(8)} ${'MSE to full'.padStart(11)}` : ''}`;
  const lines = rows.map((r) => {
    const acc = r.accuracy === null ? '-' : `${(100 * r.accuracy).toFixed(1)}%`;
    const vs = r.mseToFull === undefined ? `${'-'.padStart(8)} ${'-'.padStart(11)}`
      : `${`${r.speedup!.toFixed(2)}x`.padStart(8)} ${r.mseToFull.toExponential(2).padStart(11)}`;
    return `${runName(r).padEnd(width)} ${String(r.steps).padStart(5)} ` +
      `${r.fid.toFixed(3).padStart(10)} ${acc.padStart(9)} ` +
      `${r.secondsPerImage.toPrecision(3).padStart(9)}${accelerated ? ` ${vs}` : ''}`;
  });
  return [head, ...lines, floorLine(m)].join('\n');
}

export function floorLine(m: Pick<MnistFid, 'floor' | 'floorN'>): string {
  return `floor: MNIST-FID ${m.floor.toFixed(3)} (${m.floorN} held-out digits vs the training ` +
    'split)';
}

/** MNIST-FID against seconds per image, one line per sampler (points in order of steps),
 *  with the floor as a dashed line. */
export function speedQualityPlot(rows: readonly RunResult[], floor: number): Image {
  const samplers = [...new Set(rows.map(runName))];
  const series: LineSeries[] = samplers.map((s) => ({
    label: s,
    points: rows.filter((r) => runName(r) === s).sort((a, b) => a.steps - b.steps)
      .flatMap((r) => [r.secondsPerImage, r.fid]),
  }));
  const n = rows[0]?.n ?? 0;
  return linePlot(series, { title: `MNIST-FID against sampling time (n = ${n})`,
    xLabel: 'seconds per image', yLabel: 'MNIST-FID', hlines: [{ y: floor, label: 'floor' }] });
}

/** Writes a sweep's results: the CSV (resultsCsv) and the speed-quality plot PNG. */
export async function writeSweep(rows: readonly RunResult[], floor: number,
  to: { csv: string; plot: string }): Promise<void> {
  await writeFileAtomic(to.csv, resultsCsv(rows));
  await writePng(to.plot, speedQualityPlot(rows, floor));
}
