/**
 * @file `diffuse ddm train`: Decentralized Diffusion Models (methods/ddm.ts) as a run of
 * isolated jobs. The data is clustered once; then each expert's training and the router's
 * training are jobs (distributed/: worker threads here, or BullMQ workers anywhere) that need
 * nothing but the run folder and the job's id, and resume from their own checkpoints; when all
 * are done the ensemble pipeline (ensemble.ts) is assembled as RUN/model.
 *
 * Run folder (shared by every worker: the same path on every machine, e.g. an NFS mount):
 *
 *   ddm.json                  the run: experts, data, seed, expert and router options, run id
 *   clusters/clusters.json    k-means of the training set: sizes, inertia, each image's cluster
 *   clusters/cluster-<k>.png  64 training images of each cluster, spread over it
 *   experts/expert-<k>/       a `diffuse train` run on cluster k's images only
 *   router/                   the router's run (checkpoint/, model/, log.jsonl)
 *   model/                    the ensemble (ensemble.ts), written when every job is done
 *
 * A finished job is never run again: an expert or router whose model/ holds the final step is
 * skipped, whoever asks.
 */
import { cp, mkdir, readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join, resolve } from 'node:path';
import { HostArray } from '../engine/host.js';
import { RngKey } from '../engine/random/philox.js';
import type { Tensor } from '../engine/tensor.js';
import type { Tree } from '../engine/tree.js';
import { trainingPoints, trainingScheduler } from '../diffusion/training.js';
import { batchAt, datasetSize, subset, type ImageDataset } from '../data/dataset.js';
import type { JobBackend, JobContext, JobEvents, JobSpec } from '../distributed/jobs.js';
import { writeModelIndex, type ModelClass } from '../io/diffusers.js';
import { imageGrid, writePng } from '../io/png.js';
import {
  flowNoiseLevel, kMeans, routerLoss, type EnsembleMode, type RouterBatch,
} from '../methods/ddm.js';
import {
  CLASSIFIER_PRESETS, classifierClass, DiffuseClassifier, type ClassifierConfig,
} from '../models/classifier.js';
import type { Module, ParamsOf } from '../nn/module.js';
import { adamw } from '../nn/optim.js';
import { cosineLr } from '../nn/schedules.js';
import { compileTrainStep } from '../nn/train.js';
import { replaceFolder, writeFileAtomic } from '../util/atomic.js';
import { packageRoot } from '../util/package-root.js';
import { loadTrainingData } from './data.js';
import {
  DDM_RUN_FILE, ENSEMBLE_PIPELINE_CLASS, expertFolder, ROUTER_FOLDER,
} from './ensemble.js';
import { scoreImages, type MnistFid } from './eval.js';
import { featureExtractor, loadMetricClassifier } from './metrics.js';
import { classCount, loadPipeline, sampleImages, type Pipeline } from './sample.js';
import { train, type TrainOptions } from './train.js';
import { checkpointStep } from './checkpoint.js';
import { runTraining, type TrainEvents, type TrainResult as LoopResult } from './training-loop.js';

/** How the router is trained (a DiffuseClassifier preset, noise-aware, given the class). */
export interface RouterOptions {
  preset: string;
  steps: number;
  batchSize: number;
  lr: number;
  /** Probability of the null class in training, as the experts' label dropout (CFG). */
  labelDropout: number;
}

export interface DdmOptions {
  /** K: clusters, experts. */
  experts: number;
  /** The training data (as `diffuse train --data`). */
  data: string;
  out: string;
  seed: number;
  /** Each expert's training (steps: each expert's own); seed and out are the run's. */
  expert: Omit<TrainOptions, 'seed' | 'out'>;
  router: RouterOptions;
  /** The classifier whose penultimate features are clustered. */
  features: string;
  /** The ensemble's default routing. */
  routing: EnsembleMode;
  checkpointEvery: number;
}

export const ROUTER_DEFAULTS: Readonly<RouterOptions> = Object.freeze({
  preset: 'mnist', steps: 1500, batchSize: 64, lr: 3e-3, labelDropout: 0.1,
});

export const DEFAULT_FEATURES = (): string => join(packageRoot(), 'models', 'mnist-classifier');

/** What ddm.json holds: the options, and the id that names the run's jobs on a queue. */
interface DdmRecord extends Omit<DdmOptions, 'out'> {
  runId: string;
}

export interface Clusters {
  k: number;
  sizes: number[];
  inertia: number;
  /** The classifier folder the features came from. */
  features: string;
  /** The cluster of each training image, in dataset order. */
  assignments: number[];
}

const CLUSTERS_FILE = join('clusters', 'clusters.json');

export const expertRunFolder = (run: string, k: number): string => join(run, 'experts', expertFolder(k));

async function readJson<T>(path: string): Promise<T> {
  return JSON.parse(await readFile(path, 'utf8')) as T;
}

/** The options a run folder was started with (ddm.json). */
export async function readDdmRun(run: string): Promise<DdmRecord> {
  const path = join(run, DDM_RUN_FILE);
  if (!existsSync(path)) throw new Error(`${run}: not a decentralized-experts run (no ${DDM_RUN_FILE})`);
  return readJson<DdmRecord>(path);
}

/** The training set's features, clustered by seeded k-means, with one PNG per cluster. */
export async function clusterData(data: ImageDataset, k: number, classifierDir: string, seed: number,
  out: string): Promise<Clusters> {
  const ex = featureExtractor(await loadMetricClassifier(classifierDir));
  let feats;
  try {
    feats = await ex.outputs(data.images);
  } finally {
    await ex.dispose();
  }
  const r = kMeans(feats.features, feats.n, feats.dim, k, RngKey.fromSeed(seed).fold(7));
  const clusters: Clusters = { k, sizes: r.sizes, inertia: r.inertia, features: resolve(classifierDir),
    assignments: Array.from(r.assignments) };
  for (let c = 0; c < k; c++) {
    const all = clusterRows(clusters, c);
    // Spread over the cluster (datasets are often sorted by class), not its first rows.
    const rows = Array.from({ length: Math.min(64, all.length) }, (_, i) =>
      all[Math.floor((i * all.length) / Math.min(64, all.length))]!);
    await writePng(join(out, 'clusters', `cluster-${c}.png`), imageGrid(subset(data, rows).images, { cols: 8 }));
  }
  await writeFileAtomic(join(out, CLUSTERS_FILE), `${JSON.stringify(clusters)}\n`);
  return clusters;
}

function clusterRows(c: Clusters, k: number): number[] {
  const rows: number[] = [];
  c.assignments.forEach((a, i) => a === k && rows.push(i));
  return rows;
}

const isObject = (v: unknown): v is Record<string, unknown> => !!v && typeof v === 'object' && !Array.isArray(v);

/** The first option (dotted path: `expert.steps`) whose value differs, or null. */
function firstDifference(was: unknown, now: unknown, key: string): { key: string; was: string; now: string } | null {
  if (isObject(was) && isObject(now)) {
    for (const k of new Set([...Object.keys(was), ...Object.keys(now)])) {
      const d = firstDifference(was[k], now[k], key ? `${key}.${k}` : k);
      if (d) return d;
    }
    return null;
  }
  const [a, b] = [JSON.stringify(was) ?? 'nothing', JSON.stringify(now) ?? 'nothing'];
  return a === b ? null : { key, was: a, now: b };
}

/**
 * Starts (or continues) a run: writes ddm.json and clusters the data the first time; a later
 * call with other options than the folder's is refused (its experts were trained with them).
 */
export async function prepareDdm(o: DdmOptions): Promise<{ record: DdmRecord; clusters: Clusters }> {
  const out = resolve(o.out);
  await mkdir(out, { recursive: true });
  const path = join(out, DDM_RUN_FILE);
  const { out: _, ...options } = { ...o };
  let record: DdmRecord;
  if (existsSync(path)) {
    record = await readJson<DdmRecord>(path);
    const { runId: _id, ...saved } = record;
    const diff = firstDifference(saved, JSON.parse(JSON.stringify(options)), '');
    if (diff) {
      throw new Error(`${out} was started with ${diff.key} = ${diff.was}, this run asks for ${diff.now}; ` +
        'continue it with the same options or choose another --out');
    }
  } else {
    record = { ...options, runId: randomBytes(6).toString('hex') };
    await writeFileAtomic(path, `${JSON.stringify(record, null, 2)}\n`);
  }
  const clusters = existsSync(join(out, CLUSTERS_FILE)) ? await readJson<Clusters>(join(out, CLUSTERS_FILE))
    : await clusterData(await loadTrainingData(o.data), o.experts, o.features, o.seed, out);
  return { record, clusters };
}

// ---------------------------------------------------------------------------------------------
// Jobs
// ---------------------------------------------------------------------------------------------

export const DDM_EXPERT_JOB = 'ddm-expert';
export const DDM_ROUTER_JOB = 'ddm-router';

interface DdmJobData {
  /** The run folder, absolute (the same path on every worker). */
  run: string;
  /** The expert's index; absent for the router. */
  expert?: number;
}

/** The jobs of a run: one per expert, and the router's. */
export function ddmJobs(run: string, record: DdmRecord): JobSpec[] {
  const abs = resolve(run);
  return [
    ...Array.from({ length: record.experts }, (_, k): JobSpec => ({ id: `ddm-${record.runId}-expert-${k}`,
      kind: DDM_EXPERT_JOB, data: { run: abs, expert: k } satisfies DdmJobData })),
    { id: `ddm-${record.runId}-router`, kind: DDM_ROUTER_JOB, data: { run: abs } satisfies DdmJobData },
  ];
}

/** The step of the checkpoint in run folder `dir` (0: none). */
const savedStep = async (dir: string): Promise<number> => (await checkpointStep(join(dir, 'checkpoint'))) ?? 0;

/** Whether the run folder `dir` holds a finished model: model/ saved at step `steps`. */
async function finished(dir: string, steps: number): Promise<boolean> {
  return existsSync(join(dir, 'model', 'model_index.json')) && await savedStep(dir) >= steps;
}

export interface DdmJobResult {
  job: string;
  steps: number;
  /** The checkpoint step this attempt started from (0: from scratch). */
  resumedFrom: number;
  /** Seconds of training in this attempt (0: it was already finished). */
  seconds: number;
  skipped: boolean;
}

/** A job's training events (what neither kind of run needs its model type for). */
function events(ctx: JobContext, steps: number): Omit<TrainEvents, 'beforeCheckpoint'> {
  return { signal: ctx.signal, takeOverLock: true,
    onStep: (s) => ctx.progress({ step: s.step, steps, note: `loss ${s.smoothed.toFixed(4)}` }) };
}

/** A job that trains into run folder `out` for `steps` steps: skipped when finished, resumed
 *  from its checkpoint when there is one; an interrupted run throws, so the job runs again. */
async function trainingJob(job: JobSpec, out: string, steps: number, what: string,
  run: (out: string, resume: boolean) => Promise<LoopResult>): Promise<DdmJobResult> {
  if (await finished(out, steps)) return { job: job.id, steps, resumedFrom: steps, seconds: 0, skipped: true };
  await mkdir(out, { recursive: true });
  const resumedFrom = await savedStep(out);
  const r = await run(out, existsSync(join(out, 'checkpoint', 'trainer_state.json')));
  if (r.interrupted) throw new Error(`${what} stopped at step ${r.state.step} (worker shutting down)`);
  return { job: job.id, steps, resumedFrom, seconds: r.seconds, skipped: false };
}

/** Runs one job of a run (the handler distributed/ workers call through jobs.ts). */
export async function runDdmJob(job: JobSpec, ctx: JobContext): Promise<DdmJobResult> {
  const { run, expert } = job.data as DdmJobData;
  const record = await readDdmRun(run);
  const clusters = await readJson<Clusters>(join(run, CLUSTERS_FILE));
  const data = await loadTrainingData(record.data);
  if (clusters.assignments.length !== datasetSize(data)) {
    throw new Error(`${join(run, CLUSTERS_FILE)}: ${clusters.assignments.length} assignments for ` +
      `${datasetSize(data)} images of '${record.data}': the data changed since the run began`);
  }
  if (job.kind === DDM_EXPERT_JOB) {
    const k = expert!;
    // Each expert its own seed, as separate machines would have.
    return trainingJob(job, expertRunFolder(run, k), record.expert.steps, `expert ${k}`, (out, resume) =>
      train({ ...record.expert, seed: record.seed + 1 + k, out, checkpointEvery: record.checkpointEvery },
        subset(data, clusterRows(clusters, k)), resume, events(ctx, record.expert.steps)));
  }
  if (job.kind === DDM_ROUTER_JOB) {
    const labelled = { ...data, labels: Int32Array.from(clusters.assignments) };
    return trainingJob(job, join(run, ROUTER_FOLDER), record.router.steps, 'the router', (out, resume) =>
      trainRouter(record, data.labels, labelled, out, resume, events(ctx, record.router.steps)));
  }
  throw new Error(`job ${job.id}: unknown kind '${job.kind}' (expected ${DDM_EXPERT_JOB} or ${DDM_ROUTER_JOB})`);
}

// ---------------------------------------------------------------------------------------------
// Router training
// ---------------------------------------------------------------------------------------------

/** The router's config: K outputs, noise-aware, and given the class when the experts are. */
export function routerConfig(record: Pick<DdmRecord, 'experts' | 'router' | 'expert'>, classes: number):
  ClassifierConfig {
  const preset = CLASSIFIER_PRESETS[record.router.preset];
  if (!preset) {
    throw new Error(`router preset '${record.router.preset}': expected one of ${Object.keys(CLASSIFIER_PRESETS).join(', ')}`);
  }
  return classifierClass.readConfig(classifierClass.toConfig({ ...preset, num_classes: record.experts,
    noise_conditioning: true, condition_classes: record.expert.conditional ? classes : 0 }));
}

/**
 * Trains the router: cross-entropy of the cluster of x0 from x_t = (1 - s) x0 + s eps at
 * uniform flow times s (the experts' process and time distribution), given log-SNR(s) and,
 * for class-conditional experts, the class (the null class with the experts' dropout rate).
 * `data.labels` are the clusters; `classes` the images' class labels.
 */
async function trainRouter(record: DdmRecord, classes: Int32Array | undefined, data: ImageDataset,
  out: string, resume: boolean, ev: Omit<TrainEvents, 'beforeCheckpoint'>) {
  const numClasses = data.classNames?.length ?? 0;
  const config = routerConfig(record, numClasses);
  const net = new DiffuseClassifier(config);
  const o = record.router;
  const spec = trainingScheduler('flow');
  const T = spec.config.num_train_timesteps as number;
  const key = RngKey.fromSeed(record.seed).fold(11);
  const conditioned = config.condition_classes > 0;
  const trainer = compileTrainStep<RouterBatch<HostArray> & Tree<HostArray>>((params: Tree<Tensor>, bt: Tree<Tensor>) =>
    routerLoss(net, params as unknown as ParamsOf<DiffuseClassifier>, bt as unknown as RouterBatch<Tensor>), adamw({ lr: cosineLr(o.lr, o.steps, Math.round(0.05 * o.steps), o.lr / 100), weightDecay: 0.01 }),
  { clipGradNorm: 1, runtime: { name: 'router_train' } });
  const model = { cls: classifierClass as unknown as ModelClass<Module, unknown>, config,
    component: ROUTER_FOLDER };
  return runTraining({
    options: { steps: o.steps, batchSize: o.batchSize, out, logEvery: 50, sampleEvery: 0,
      checkpointEvery: record.checkpointEvery },
    files: { model, scheduler: spec }, run: { router: o, experts: record.experts, seed: record.seed },
    trainer, exported: 'params',
    initialWeights: () => net.init(key.fold(2)) as Tree<HostArray>,
    batch: (step) => {
      const b = batchAt(data, key.fold(0), step, o.batchSize);
      const [kn, kt, kd] = key.fold(1).fold(step).split(3);
      const n = o.batchSize;
      const pts = trainingPoints(spec, kt!.uniform(n));
      const batch: RouterBatch<HostArray> = { x0: b.images, eps: new HostArray(kn!.normal(b.images.size), b.images.shape),
        alpha: new HostArray(pts.alpha, [n, 1, 1, 1]), sigma: new HostArray(pts.sigma, [n, 1, 1, 1]),
        level: new HostArray(flowNoiseLevel(pts.t, T), [n]), cluster: b.labels! };
      if (conditioned) {
        const drop = kd!.uniform(n);
        batch.labels = new HostArray(BigInt64Array.from(b.rows, (row, i) =>
          BigInt(drop[i]! < o.labelDropout ? numClasses : classes![row]!)), [n], 'int64');
      }
      return batch as RouterBatch<HostArray> & Tree<HostArray>;
    },
  }, resume, ev);
}

// ---------------------------------------------------------------------------------------------
// The whole run
// ---------------------------------------------------------------------------------------------

export interface DdmEvents extends JobEvents {
  onPhase?: (what: string) => void;
}

export interface DdmResult {
  clusters: Clusters;
  jobs: Map<string, unknown>;
  /** The ensemble pipeline folder. */
  model: string;
  seconds: number;
}

/** Clusters, runs every job on `backend`, and assembles the ensemble as RUN/model. */
export async function trainDdm(o: DdmOptions, backend: JobBackend, ev: DdmEvents = {}): Promise<DdmResult> {
  const t0 = performance.now();
  ev.onPhase?.('clustering');
  const { record, clusters } = await prepareDdm(o);
  ev.onPhase?.('training');
  const jobs = await backend.runAll(ddmJobs(o.out, record), ev);
  ev.onPhase?.('assembling');
  const model = await assembleEnsemble(o.out, record, clusters);
  return { clusters, jobs, model, seconds: (performance.now() - t0) / 1000 };
}

/** Writes RUN/model from the finished experts' and router's model/ folders (swapped in whole). */
export async function assembleEnsemble(run: string, record: DdmRecord, clusters: Clusters): Promise<string> {
  const dir = join(run, 'model');
  await replaceFolder(dir, async (tmp) => {
    for (let k = 0; k < record.experts; k++) {
      await cp(join(expertRunFolder(run, k), 'model'), join(tmp, expertFolder(k)), { recursive: true });
    }
    await cp(join(run, ROUTER_FOLDER, 'model', ROUTER_FOLDER), join(tmp, ROUTER_FOLDER), { recursive: true });
    await writeModelIndex(tmp, ENSEMBLE_PIPELINE_CLASS, { router: ['diffuse', classifierClass.className] },
      { experts: record.experts, routing: record.routing, clusters: clusters.sizes });
  });
  return dir;
}

// ---------------------------------------------------------------------------------------------
// The paper's comparison
// ---------------------------------------------------------------------------------------------

export interface EnsembleScore {
  /** top1, top2, full, or 'monolith'. */
  name: string;
  n: number;
  fid: number;
  accuracy: number | null;
  secondsPerImage: number;
  /** Expert evaluations per image per sampler step (padding rows included; 1 for a monolith). */
  expertRowsPerStep: number;
}

/**
 * MNIST-FID and class accuracy of the ensemble at each routing, and of a monolith when given
 * (the same sampler, steps, seed and classes for all), for the paper's table.
 */
export async function compareEnsemble(run: string, o: { routings: readonly EnsembleMode[];
  monolith?: string; n: number; sampler: string; steps: number; guidance: number; seed: number;
  onStep?: (name: string, step: number, total: number) => void }, fid: MnistFid): Promise<EnsembleScore[]> {
  const ensemble = await loadPipeline(run);
  if (!ensemble.ensemble) throw new Error(`${run}: not a decentralized-experts ensemble`);
  const targets: { name: string; p: Pipeline; routing?: EnsembleMode }[] = o.routings.map((r) =>
    ({ name: r, p: ensemble, routing: r }));
  if (o.monolith !== undefined) targets.push({ name: 'monolith', p: await loadPipeline(o.monolith) });
  const rows: EnsembleScore[] = [];
  for (const t of targets) {
    const k = classCount(t.p.model);
    const r = await sampleImages(t.p, { sampler: o.sampler, steps: o.steps, n: o.n, seed: o.seed,
      ...(k ? { classes: 'all' as const, guidance: o.guidance } : {}),
      ...(t.routing ? { ensemble: t.routing } : {}),
      onStep: (step, total) => o.onStep?.(t.name, step, total) });
    const labels = k ? Array.from({ length: o.n }, (_, i) => i % k) : undefined;
    const s = await scoreImages(fid, r.images, labels);
    const calls = o.n * o.steps * (k && o.guidance !== 1 ? 2 : 1);
    rows.push({ name: t.name, n: o.n, fid: s.fid, accuracy: s.accuracy, secondsPerImage: r.seconds / o.n,
      expertRowsPerStep: r.expertRows === undefined ? 1 : r.expertRows / calls });
  }
  return rows;
}

export const ENSEMBLE_CSV_COLUMNS = ['routing', 'n', 'mnist_fid', 'class_accuracy', 'seconds_per_image',
  'expert_rows_per_step'] as const;

export function ensembleCsv(rows: readonly EnsembleScore[]): string {
  return [ENSEMBLE_CSV_COLUMNS.join(','), ...rows.map((r) => [r.name, r.n, r.fid.toFixed(4),
    r.accuracy === null ? '' : r.accuracy.toFixed(4), r.secondsPerImage.toFixed(5),
    r.expertRowsPerStep.toFixed(3)].join(','))].join('\n') + '\n';
}
