/**
 * @file The training behind `diffuse train-experts`: timestep-range experts of a clean
 * classifier for classifier guidance (methods/ppap.ts; Go et al. 2022, "Towards Practical
 * Plug-and-Play Diffusion Models").
 *
 * Each of N experts is a LoRA fine-tune (nn/lora.ts) of the same clean classifier, trained on
 * x_t = alpha_t x0 + sigma_t eps with t uniform in its own range of [0, T), fresh noise every
 * step. Two ways to get (x0, target):
 * - 'ppap' (data-free): x0 are images the diffusion model generates unconditionally (DDIM,
 *   `generated` images, sampled once), the target the frozen clean classifier's soft
 *   prediction softmax(logits(x0) / tau) on the clean image;
 * - 'supervised' (the baseline): x0 are the labelled MNIST training digits, the target their
 *   label.
 * The process (alpha_t, sigma_t, T) is the guided pipeline's own scheduler for 'ppap', so the
 * experts see the x_t its sampler makes; the supervised baseline uses Diffuse's training
 * process (trainingScheduler('eps'), the one the shipped U-Net was trained on).
 *
 * One compiled training graph serves every expert (the base weights are constants in it, only
 * the factors are inputs). Each expert is saved merged (W + B A) as a regular classifier
 * folder, so it loads like any classifier; experts.json beside them says which range each
 * covers (readExperts, which guide.ts reads). Every random draw is a pure function of the
 * seed: a run is reproducible.
 *
 * Sections: training data, evaluation, training, experts.json. Past the 400-line budget
 * because the format's writer and its checked reader stay together in the last section.
 */
import { writeFile } from 'node:fs/promises';
import { isAbsolute, join, normalize, resolve, sep } from 'node:path';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import type { Tree } from '../engine/tree.js';
import type { SchedulerSpec } from '../diffusion/diffusers/spec.js';
import { pointsAt, trainingScheduler } from '../diffusion/training.js';
import { batchAt, datasetSize, type ImageDataset } from '../data/dataset.js';
import { mnistSplits } from '../data/mnist.js';
import { fileKind, readRegularFile } from '../io/files.js';
import { CONFIG_NAME, DiffusersFolderError, loadModel, saveModel } from '../io/diffusers.js';
import { classifierClass, DiffuseClassifier, type ClassifierConfig } from '../models/classifier.js';
import {
  expertLoss, expertRanges, softTargets, timestepsIn, type ExpertBatch, type TimestepRange,
} from '../methods/ppap.js';
import {
  applyLora, loraInit, loraParameterCount, loraScale, mergeLoraHost, type LoraTree,
} from '../nn/lora.js';
import type { ParamsOf } from '../nn/module.js';
import { adamw } from '../nn/optim.js';
import { cosineLr } from '../nn/schedules.js';
import { compileTrainStep } from '../nn/train.js';
import { packageRoot } from '../util/package-root.js';
import { replaceFolder } from '../util/atomic.js';
import { noisyImages } from './classifier.js';
import { classAccuracy, featureExtractor, metricClassifier } from './metrics.js';
import { classCount, loadPipeline, pipelineImageShape, sampleImages } from './sample.js';

/** The file that marks an experts folder (written last: a folder with it is complete). */
export const EXPERTS_FILE = 'experts.json';
/** experts.json's format version (its `_diffuse_experts` key). */
export const EXPERTS_FORMAT = 1;

export const EXPERT_METHODS = ['ppap', 'supervised'] as const;
export type ExpertMethod = (typeof EXPERT_METHODS)[number];

export interface ExpertsOptions {
  method: ExpertMethod;
  /** The clean classifier folder (noise_conditioning false) the experts adapt. */
  classifier: string;
  /** The pipeline whose unconditional samples the 'ppap' experts learn from (unused by
   *  'supervised'). */
  model: string;
  /** N: experts over N equal timestep ranges of [0, T). */
  experts: number;
  /** LoRA rank r of every adapted weight (convs and linears). */
  rank: number;
  /** Optimisation steps per expert. */
  steps: number;
  batchSize: number;
  /** Peak AdamW learning rate of the factors (warm-up over 5% of the steps, cosine to 10%). */
  lr: number;
  /** 'ppap': images generated once and shared by all experts. */
  generated: number;
  /** 'ppap': DDIM steps per generated image. */
  samplerSteps: number;
  /** 'ppap': temperature of the teacher's soft targets (tau < 1 sharpens them). */
  tau: number;
  seed: number;
  /** The experts folder to write (replaced atomically). */
  out: string;
}

/**
 * Defaults, measured on the shipped mnist-classifier and mnist-unet (2 cores, 2026-12-06): a
 * step of 128 takes 80 ms on a quiet machine (145 ms while other jobs ran), so 5 experts of
 * 200 steps train in about 1.5-3 minutes, held-out evaluation included. Generating the 2,000
 * images (DDIM-25, guidance 0: one model call per step) should take about 0.06 s an image on
 * a quiet machine (half the README's guided DDIM-25 time); 400 took 0.23 s an image while
 * other jobs ran. lr 1e-2: after 200 steps the supervised expert for [400, 600) reached 31%
 * at t = 500, 27% at lr 5e-3; rank-4 factors move slowly at 1e-3 (12% after 60 steps).
 */
export const EXPERTS_DEFAULTS: Readonly<Omit<ExpertsOptions, 'method' | 'out'>> = Object.freeze({
  classifier: join(packageRoot(), 'models', 'mnist-classifier'),
  model: join(packageRoot(), 'models', 'mnist-unet'),
  experts: 5, rank: 4, steps: 200, batchSize: 128, lr: 1e-2, generated: 2000,
  samplerSteps: 25, tau: 0.25, seed: 0,
});

export interface ExpertsEvents {
  /** 'ppap': progress of the generation, in sampler steps. */
  onGenerate?: (done: number, total: number) => void;
  onStep?: (s: { expert: number; step: number; steps: number; loss: number; smoothed: number })
    => void;
  /** The sampler's warnings (a lowered batch size, ...). */
  onWarning?: (message: string) => void;
}

/** One expert's result: held-out accuracy on x_t at the middle of its range, against the
 *  clean teacher's on the same noisy digits. */
export interface ExpertReport {
  expert: number;
  range: TimestepRange;
  /** The timestep the accuracies are measured at: floor((lo + hi) / 2). */
  t: number;
  accuracy: number;
  teacherAccuracy: number;
  /** Smoothed training loss at the last step. */
  loss: number;
  seconds: number;
}

export interface TrainedExperts {
  out: string;
  record: ExpertsRecord;
  experts: ExpertReport[];
  /** 'ppap': the generated images' teacher argmax class shares, and the generation time. */
  generation: { images: number; seconds: number; classShares: number[] } | null;
  /** Training and evaluation time of all experts, seconds (generation not included). */
  trainingSeconds: number;
  seconds: number;
}

// ---------------------------------------------------------------------------------------------
// Training data
// ---------------------------------------------------------------------------------------------

/** What the experts learn from: images, and per row soft targets [N, K] or labels. */
interface ExpertData {
  /** Images; for 'ppap' its labels are row indices, so a batch's targets follow its rows. */
  images: ImageDataset;
  soft?: Float32Array;
  process: SchedulerSpec;
  generation: TrainedExperts['generation'];
}

/** 'ppap': `generated` unconditional samples, labelled by the teacher's soft targets. */
async function generatedData(o: ExpertsOptions, config: ClassifierConfig,
  params: ParamsOf<DiffuseClassifier, HostArray>, ev: ExpertsEvents): Promise<ExpertData> {
  const p = await loadPipeline(o.model);
  const [channels] = pipelineImageShape(p);
  if (channels !== config.in_channels) {
    throw new RangeError(`the model ${o.model} makes ${channels}-channel images but the ` +
      `classifier ${o.classifier} takes ${config.in_channels}`);
  }
  const start = performance.now();
  // Guidance 0 on a class-conditional model is its unconditional (null-label) half.
  const { images } = await sampleImages(p, { n: o.generated, sampler: 'ddim',
    steps: o.samplerSteps, guidance: classCount(p.model) > 0 ? 0 : 1, seed: o.seed,
    ...(ev.onGenerate ? { onStep: ev.onGenerate } : {}),
    ...(ev.onWarning ? { onWarning: ev.onWarning } : {}) });
  const seconds = (performance.now() - start) / 1000;
  const ex = featureExtractor(metricClassifier(config, params));
  const k = config.num_classes;
  let soft: Float32Array;
  try {
    const { logits } = await ex.outputs(images);
    const f = compile((l: Tensor) => softTargets(l, o.tau), { name: 'ppap_soft_targets' });
    soft = (await f(new HostArray(logits, [o.generated, k]))).data as Float32Array;
    await f.dispose();
  } finally {
    await ex.dispose();
  }
  const shares = new Array<number>(k).fill(0);
  for (let i = 0; i < o.generated; i++) {
    const row = soft.subarray(i * k, (i + 1) * k);
    shares[row.indexOf(Math.max(...row))]! += 1 / o.generated;
  }
  return { images: { images, labels: Int32Array.from({ length: o.generated }, (_, i) => i) },
    soft, process: p.scheduler, generation: { images: o.generated, seconds, classShares: shares } };
}

/** Everything random about step `step` of expert `k`: rows, timesteps in its range, noise. */
function expertBatch(d: ExpertData, range: TimestepRange, key: RngKey, step: number,
  batchSize: number, classes: number): ExpertBatch<HostArray> {
  const b = batchAt(d.images, key.fold(0), step, batchSize);
  const [kt, kn] = key.fold(1).fold(step).split(2);
  const pts = pointsAt(d.process, timestepsIn(range, kt!.uniform(batchSize)));
  const points = {
    x0: b.images, eps: new HostArray(kn!.normal(b.images.size), b.images.shape),
    alpha: new HostArray(pts.alpha, [batchSize, 1, 1, 1]),
    sigma: new HostArray(pts.sigma, [batchSize, 1, 1, 1]),
  };
  if (!d.soft) return { ...points, labels: b.labels! };
  const soft = new Float32Array(batchSize * classes);
  (b.labels!.data as BigInt64Array).forEach((row, i) => soft.set(
    d.soft!.subarray(Number(row) * classes, (Number(row) + 1) * classes), i * classes));
  return { ...points, soft: new HostArray(soft, [batchSize, classes]) };
}

// ---------------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------------

async function accuracyOf(config: ClassifierConfig, params: ParamsOf<DiffuseClassifier, HostArray>,
  images: HostArray, labels: Int32Array): Promise<number> {
  const ex = featureExtractor(metricClassifier(config, params));
  try {
    return classAccuracy(await ex.outputs(images), labels);
  } finally {
    await ex.dispose();
  }
}

// ---------------------------------------------------------------------------------------------
// Training
// ---------------------------------------------------------------------------------------------

function checkOptions(o: ExpertsOptions): void {
  const ints: [keyof ExpertsOptions, number][] = [['experts', 1], ['rank', 1], ['steps', 1],
    ['batchSize', 1], ['generated', 1], ['samplerSteps', 1], ['seed', 0]];
  for (const [key, min] of ints) {
    const v = o[key] as number;
    if (!Number.isSafeInteger(v) || v < min) {
      throw new RangeError(`${key} must be an integer >= ${min}, got ${v}`);
    }
  }
  if (!(o.lr > 0 && Number.isFinite(o.lr))) throw new RangeError(`lr must be > 0, got ${o.lr}`);
  if (!(o.tau > 0 && Number.isFinite(o.tau))) throw new RangeError(`tau must be > 0, got ${o.tau}`);
  if (!(EXPERT_METHODS as readonly string[]).includes(o.method)) {
    throw new RangeError(`method must be one of ${EXPERT_METHODS.join(', ')}, got '${o.method}'`);
  }
}

/**
 * Trains `o.experts` LoRA experts of the clean classifier `o.classifier` (see the file
 * header), measures each on noisy held-out digits, and writes `o.out` atomically: one merged
 * classifier folder per expert and experts.json.
 */
export async function trainExperts(o: ExpertsOptions, ev: ExpertsEvents = {}):
  Promise<TrainedExperts> {
  checkOptions(o);
  const start = performance.now();
  const { config, model, params } = await loadModel(o.classifier, classifierClass);
  if (config.noise_conditioning) {
    throw new DiffusersFolderError(o.classifier, `is a noise-aware classifier ` +
      `(noise_conditioning: true): experts adapt a clean one (noise_conditioning: false)`);
  }
  const splits = mnistSplits();
  const data: ExpertData = o.method === 'ppap' ? await generatedData(o, config, params, ev)
    : { images: splits.train, process: trainingScheduler('eps'), generation: null };
  if (datasetSize(data.images) < o.batchSize) {
    throw new RangeError(`batch size ${o.batchSize} is larger than the ` +
      `${datasetSize(data.images)} training images`);
  }
  const T = data.process.config.num_train_timesteps as number;
  const ranges = expertRanges(T, o.experts);
  const k = config.num_classes;
  const scale = loraScale(o.rank);
  const base = params as unknown as Tree<HostArray>;
  const consts = ops.constantTree(base);
  const loss = (lora: Tree<Tensor>, batch: Tree<Tensor>): Tensor => {
    const p = applyLora(consts, lora as unknown as LoraTree<Tensor>, scale) as unknown as
      ParamsOf<DiffuseClassifier>;
    return expertLoss((x) => model.logits(p, x), batch as unknown as ExpertBatch);
  };
  const warmup = Math.round(0.05 * o.steps);
  const trainer = compileTrainStep(loss, adamw({ lr: cosineLr(o.lr, o.steps, warmup, o.lr / 10),
    weightDecay: 0 }), { clipGradNorm: 1, runtime: { name: 'expert_train' } });
  const key = RngKey.fromSeed(o.seed).split(1)[0]!; // apart from the sampler's fold streams
  const trainStart = performance.now();
  const merged: ParamsOf<DiffuseClassifier, HostArray>[] = [];
  const reports: ExpertReport[] = [];
  let trainable = 0;
  try {
    for (const [e, range] of ranges.entries()) {
      const expertStart = performance.now();
      const ke = key.fold(e);
      const init = loraInit(base, { rank: o.rank }, ke.fold(2));
      trainable = loraParameterCount(init);
      let state = trainer.init(init as unknown as Tree<HostArray>);
      let smoothed = NaN;
      while (state.step < o.steps) {
        const batch = expertBatch(data, range, ke, state.step, o.batchSize, k);
        const r = await trainer.step(state, batch as never);
        state = r.state;
        const l = r.metrics.loss;
        smoothed = Number.isNaN(smoothed) ? l : 0.95 * smoothed + 0.05 * l;
        ev.onStep?.({ expert: e, step: state.step, steps: o.steps, loss: l, smoothed });
      }
      const w = mergeLoraHost(params, state.params as unknown as LoraTree<HostArray>, scale);
      merged.push(w);
      const t = Math.floor((range[0] + range[1]) / 2);
      const xt = noisyImages(splits.heldOut, data.process, t);
      reports.push({ expert: e, range, t, loss: smoothed,
        accuracy: await accuracyOf(config, w, xt, splits.heldOut.labels!),
        teacherAccuracy: await accuracyOf(config, params, xt, splits.heldOut.labels!),
        seconds: (performance.now() - expertStart) / 1000 });
    }
  } finally {
    await trainer.dispose();
  }
  const record: ExpertsRecord = {
    path: resolve(o.out, EXPERTS_FILE), method: o.method, numTrainTimesteps: T, ranges,
    folders: ranges.map((_, e) => resolve(o.out, `expert-${e}`)), rank: o.rank,
    trainableParameters: trainable, baseParameters: model.numParams(),
    classifier: resolve(o.classifier), model: o.method === 'ppap' ? resolve(o.model) : null,
    steps: o.steps, tau: o.method === 'ppap' ? o.tau : null, seed: o.seed,
  };
  await replaceFolder(o.out, async (tmp) => {
    for (const [e, w] of merged.entries()) {
      const [lo, hi] = ranges[e]!;
      await saveModel(join(tmp, `expert-${e}`), classifierClass, config, w, { metadata: {
        expert: String(e), timesteps: `[${lo}, ${hi})`, method: o.method, rank: String(o.rank),
        held_out_accuracy_at_t: `${reports[e]!.accuracy.toFixed(4)} at t = ${reports[e]!.t}` } });
    }
    await writeFile(join(tmp, EXPERTS_FILE), expertsJson(record));
  });
  const end = performance.now();
  return { out: resolve(o.out), record, experts: reports, generation: data.generation,
    trainingSeconds: (end - trainStart) / 1000, seconds: (end - start) / 1000 };
}

// ---------------------------------------------------------------------------------------------
// experts.json
// ---------------------------------------------------------------------------------------------

/** An experts folder, as experts.json describes it (folders resolved to absolute paths). */
export interface ExpertsRecord {
  /** The experts.json read or written. */
  path: string;
  method: ExpertMethod;
  numTrainTimesteps: number;
  /** Half-open ranges, in order, covering [0, numTrainTimesteps). */
  ranges: TimestepRange[];
  /** Expert k's classifier folder (absolute), for ranges[k]. */
  folders: string[];
  rank: number;
  /** LoRA values trained per expert. */
  trainableParameters: number;
  /** Parameters of the classifier they adapt. */
  baseParameters: number;
  classifier: string;
  /** The pipeline the 'ppap' experts learned from; null for 'supervised'. */
  model: string | null;
  steps: number;
  /** The soft targets' temperature ('ppap'); null for 'supervised'. */
  tau: number | null;
  seed: number;
}

/** experts.json's text: folder names relative to it, so the folder can move. */
function expertsJson(r: ExpertsRecord): string {
  const json = {
    _diffuse_experts: EXPERTS_FORMAT, method: r.method, num_train_timesteps: r.numTrainTimesteps,
    ranges: r.ranges, folders: r.folders.map((_, e) => `expert-${e}`), rank: r.rank,
    trainable_parameters: r.trainableParameters, base_parameters: r.baseParameters,
    classifier: r.classifier, model: r.model, steps: r.steps, tau: r.tau, seed: r.seed,
  };
  // One line per key; the ranges and folders stay on theirs.
  return `{\n${Object.entries(json).map(([k, v]) => `  ${JSON.stringify(k)}: ` +
    `${JSON.stringify(v)}`).join(',\n')}\n}\n`;
}

/** A malformed or missing experts.json: names the file and the key. */
export class ExpertsFileError extends Error {
  constructor(readonly path: string, detail: string, opts?: ErrorOptions) {
    super(`${path}: ${detail}`, opts);
    this.name = 'ExpertsFileError';
  }
}

const isInt = (v: unknown, min: number): v is number =>
  typeof v === 'number' && Number.isSafeInteger(v) && v >= min;

/**
 * Reads and checks `dir`/experts.json: the format version, the method, ranges that cover
 * [0, num_train_timesteps) in order, one folder (relative, inside `dir`, holding a
 * config.json) per range, and the counts. Throws an ExpertsFileError naming the key.
 */
export async function readExperts(dir: string): Promise<ExpertsRecord> {
  const path = resolve(dir, EXPERTS_FILE);
  const kind = await fileKind(path, 'an experts.json');
  if (kind === 'missing') {
    throw new ExpertsFileError(path, `no such file: not an experts folder (diffuse ` +
      `train-experts writes one)`);
  }
  if (kind !== 'file') throw kind;
  let raw: unknown;
  try {
    raw = JSON.parse((await readRegularFile(path, 'an experts.json')).toString('utf8'));
  } catch (e) {
    throw new ExpertsFileError(path, `is not valid JSON (${(e as Error).message})`, { cause: e });
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new ExpertsFileError(path, 'expected a JSON object');
  }
  const j = raw as Record<string, unknown>;
  const need = (ok: boolean, key: string, expected: string): void => {
    if (!ok) {
      throw new ExpertsFileError(path, `"${key}" must be ${expected}, got ` +
        `${j[key] === undefined ? 'nothing' : JSON.stringify(j[key])}`);
    }
  };
  need(j._diffuse_experts === EXPERTS_FORMAT, '_diffuse_experts', `${EXPERTS_FORMAT} (the ` +
    `format version this Diffuse reads)`);
  need(EXPERT_METHODS.includes(j.method as ExpertMethod), 'method',
    `one of ${EXPERT_METHODS.map((m) => `"${m}"`).join(', ')}`);
  need(isInt(j.num_train_timesteps, 1), 'num_train_timesteps', 'an integer >= 1');
  const T = j.num_train_timesteps as number;
  const ranges = j.ranges;
  need(Array.isArray(ranges) && ranges.length > 0 && ranges.every((r, i) =>
    Array.isArray(r) && r.length === 2 && isInt(r[0], 0) && isInt(r[1], 1) && r[0] < r[1] &&
    r[0] === (i === 0 ? 0 : (ranges[i - 1] as number[])[1]) &&
    (i < ranges.length - 1 || r[1] === T)), 'ranges',
  `a list of [lo, hi) pairs of integers covering [0, ${T}) in order`);
  const folders = j.folders;
  need(Array.isArray(folders) && folders.length === (ranges as unknown[]).length &&
    folders.every((f) => typeof f === 'string' && f !== '' && !isAbsolute(f) &&
      !normalize(f).split(sep).includes('..')), 'folders',
  `a list of ${(ranges as unknown[]).length} folder names inside ${resolve(dir)}, one per range`);
  for (const key of ['rank', 'trainable_parameters', 'base_parameters', 'steps']) {
    need(isInt(j[key], key === 'rank' ? 1 : 0), key, key === 'rank' ? 'an integer >= 1'
      : 'an integer >= 0');
  }
  need(isInt(j.seed, 0), 'seed', 'an integer >= 0');
  need(typeof j.classifier === 'string', 'classifier', 'a path');
  need(j.model === null || typeof j.model === 'string', 'model', 'a path or null');
  need(j.tau === null || (typeof j.tau === 'number' && j.tau > 0), 'tau', 'a number > 0 or null');
  const absolute = (folders as string[]).map((f) => resolve(dir, f));
  for (const [i, f] of absolute.entries()) {
    const k = await fileKind(join(f, CONFIG_NAME), 'a config.json');
    if (k !== 'file') {
      throw new ExpertsFileError(path, `"folders"[${i}] ('${(folders as string[])[i]}') has no ` +
        `${CONFIG_NAME}: expected a classifier folder at ${f}`);
    }
  }
  return {
    path, method: j.method as ExpertMethod, numTrainTimesteps: T,
    ranges: (ranges as [number, number][]).map(([a, b]): TimestepRange => [a, b]),
    folders: absolute, rank: j.rank as number,
    trainableParameters: j.trainable_parameters as number,
    baseParameters: j.base_parameters as number, classifier: j.classifier as string,
    model: j.model as string | null, steps: j.steps as number, tau: j.tau as number | null,
    seed: j.seed as number,
  };
}
