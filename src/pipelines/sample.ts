/**
 * @file The image-sampling pipeline behind `diffuse sample`: load a diffusers folder (a
 * pipeline with model_index.json, or a bare UNet2DModel / DiT model folder), then sample it
 * with any named sampler, classifier-free guidance, and noise from Diffuse's Philox keys or
 * from a torch-compatible generator.
 *
 * With `generator: 'torch'` the noise is drawn as diffusers' pipelines draw it on the CPU,
 * from one `torch.Generator().manual_seed(seed)`: first the initial latent [N, C, H, W]
 * (`randn_tensor` in DDPMPipeline / DDIMPipeline), then one [N, C, H, W] draw at each step
 * whose scheduler needs noise (DDPM at every step with t > 0, Euler ancestral at every step,
 * DDIM with eta 0 never), so a diffusers checkpoint sampled with the same scheduler and seed
 * gives diffusers' image. The samplers ask for a step's noise exactly where diffusers draws
 * one, so one sequential generator serves both.
 *
 * The model sees at most `batchSize` rows per call, and images are sampled a batch at a time
 * (`sampleInBatches` streams them), so memory is bounded by the batch and a memory limit
 * checked before anything is allocated; with Philox noise an image depends only on the seed
 * and its index, not on the batch size. `writeSamples` writes a PNG grid or one PNG per image.
 *
 * A decentralized-experts ensemble (ensemble.ts) loads as the pipeline of its first expert
 * with `ensemble` set: the model calls then go to the router-weighted experts.
 */
import { existsSync, statSync } from 'node:fs';
import { totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { HostArray } from '../engine/host.js';
import { largestIntermediate, type LargestTensor } from '../engine/memory.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { TorchGenerator } from '../engine/random/torch.js';
import type { Provider } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { flatten, type Tree } from '../engine/tree.js';
import { inBatches, type Batch, type Denoiser, type NoiseSource } from '../diffusion/denoiser.js';
import { parseScheduler, type SchedulerSpec } from '../diffusion/diffusers/spec.js';
import { classifierFreeGuidance, withGuidance } from '../diffusion/guidance.js';
import type { Releasable } from '../diffusion/gradient-guidance.js';
import { processOf } from '../diffusion/training.js';
import { sample, samplerSpec } from '../diffusion/sampling.js';
import { fileKind, readRegularFile } from '../io/files.js';
import { imageGrid, writePng } from '../io/png.js';
import {
  CONFIG_NAME, DiffusersFolderError, loadModel, MODEL_INDEX_NAME, readModelIndex,
  readSchedulerConfig, SCHEDULER_CONFIG_NAME, type ModelClass,
} from '../io/diffusers.js';
import { ditClass } from '../models/dit.js';
import { switchDiTClass } from '../models/switch-dit.js';
import { ditMoEClass } from '../models/dit-moe.js';
import { UNET2D_CLASS } from '../models/unet2d.js';
import type { Module, ParamsOf } from '../nn/module.js';
import type { Prediction } from '../diffusion/predictions.js';
import { ensureWritableFile, ensureWritableFolder, explainFsError } from '../util/fs-errors.js';
import {
  acceleratedDenoiser, describeAccel, type Acceleration, type AcceleratedDenoiser,
} from './accel.js';
import { cpuCacheRows, graphDenoiser } from './graph-denoiser.js';
import type { LoadedGuide } from './guide.js';
import {
  familyOfClass, imageModelOf, predictionOf, type ImageModel, type ModelFamily,
} from './image-models.js';
import { readStudentRecord, studentSampling, type SamplingChoice, type StudentRecord } from './student.js';
import {
  DDM_RUN_FILE, ENSEMBLE_PIPELINE_CLASS, ensembleModel, expertFolder, ROUTER_FOLDER,
  type EnsembleParts, type LoadedEnsemble,
} from './ensemble.js';
import { ENSEMBLE_MODES, type EnsembleMode } from '../methods/ddm.js';
import { latentCoder, loadVae, VAE_COMPONENT, type LatentCoder, type LoadedVae } from './latent.js';
import { classifierClass } from '../models/classifier.js';

export { SAMPLER_NAMES, type SamplerName } from '../diffusion/sampling.js';
export {
  ACCEL_SPELLINGS, describeAccel, parseAccel, parseAccelOption, type Acceleration,
} from './accel.js';
export type { Provider };

/** The ONNX Runtime providers a pipeline can run on. */
export const PROVIDERS: readonly Provider[] = ['cpu', 'webgpu', 'cuda'];

// ---- loading ----

export interface Pipeline {
  model: ImageModel;
  /** The model's weights (float32). */
  params: Tree<HostArray>;
  /** scheduler_config.json, parsed (or DDPMScheduler's defaults, with a note). */
  scheduler: SchedulerSpec;
  /** The folder the model's config.json and weights were read from. */
  modelFolder: string;
  /** Things a user should know: a default scheduler, config keys ignored. */
  notes: string[];
  /** For a student `diffuse distill` made: what it was trained for. */
  student?: StudentRecord;
  /** A decentralized-experts ensemble: `model`, `params` and `scheduler` are its first
   *  expert's (the experts share architecture and process); sampling uses all of them. */
  ensemble?: EnsembleParts;
  /** A latent pipeline's VAE: the model samples latents, which it decodes into images. */
  vae?: LoadedVae;
}

// Sound: each model file's class object is a ModelClass of its own module and config type;
// the loader only needs the erased form (as image-models.ts stores it).
const MODEL_CLASSES: Record<ModelFamily, ModelClass<Module, unknown>> = {
  unet: UNET2D_CLASS as unknown as ModelClass<Module, unknown>,
  dit: ditClass as unknown as ModelClass<Module, unknown>,
  'dit-moe': ditMoEClass as unknown as ModelClass<Module, unknown>,
  'switch-dit': switchDiTClass as unknown as ModelClass<Module, unknown>,
};

const COMPONENTS = ['unet', 'transformer'] as const;
/** Whether a regular file is at `p`; something else there (a folder, a FIFO) is an error
 *  naming it rather than a silent "not found". */
async function isFile(p: string): Promise<boolean> {
  const kind = await fileKind(p, 'a JSON file');
  if (kind instanceof Error) throw kind;
  return kind === 'file';
}

/**
 * Loads `dir` for sampling: (a) a pipeline folder (model_index.json naming a `unet` or
 * `transformer`, components in sub-folders or, as older diffusers repos, at the root), or
 * (b) a bare model folder (config.json + weights) whose scheduler_config.json is in the folder,
 * in its `scheduler/`, or in a sibling `scheduler/`; failing those, DDPMScheduler's defaults.
 */
export async function loadPipeline(dir: string): Promise<Pipeline> {
  const looked = `looked for ${MODEL_INDEX_NAME} (a pipeline) or ${CONFIG_NAME} (a model folder)`;
  if (!existsSync(dir)) throw new DiffusersFolderError(dir, `no such folder (${looked})`);
  if (!statSync(dir).isDirectory()) {
    throw new DiffusersFolderError(dir, `not a folder (${looked})`);
  }
  if (!(await isFile(join(dir, MODEL_INDEX_NAME))) && await isFile(join(dir, DDM_RUN_FILE)) &&
    await isFile(join(dir, 'model', MODEL_INDEX_NAME))) {
    return loadPipeline(join(dir, 'model')); // a `diffuse ddm train` run folder
  }
  const notes: string[] = [];
  let modelDir = dir;
  let indexClass: string | undefined;
  let student: StudentRecord | undefined;
  let vae: LoadedVae | undefined;
  const isPipeline = await isFile(join(dir, MODEL_INDEX_NAME));
  if (isPipeline) {
    const index = await readModelIndex(dir);
    if (index.pipelineClass === ENSEMBLE_PIPELINE_CLASS) return loadEnsemble(dir, index.options, index.path);
    student = readStudentRecord(index.privateEntries, index.path);
    const found = COMPONENTS.find((c) => index.components[c]?.[1]);
    if (!found) {
      throw new DiffusersFolderError(index.path, `names no 'unet' or 'transformer' component ` +
        `(it has ${Object.keys(index.components).join(', ') || 'none'})`);
    }
    if (index.components[VAE_COMPONENT]?.[1]) vae = await loadVae(join(dir, VAE_COMPONENT));
    indexClass = index.components[found]![1]!;
    // diffusers' repo-root fallback: older repos keep the model beside model_index.json.
    if (await isFile(join(dir, found, CONFIG_NAME))) modelDir = join(dir, found);
    else if (!(await isFile(join(dir, CONFIG_NAME)))) {
      throw new DiffusersFolderError(dir, `${MODEL_INDEX_NAME} names a '${found}', but there is ` +
        `no ${join(found, CONFIG_NAME)} nor ${CONFIG_NAME}`);
    }
  } else if (!(await isFile(join(dir, CONFIG_NAME)))) {
    const run = (await isFile(join(dir, 'model', MODEL_INDEX_NAME)))
      ? ` (a training run? its pipeline is ${join(dir, 'model')})` : '';
    throw new DiffusersFolderError(dir, `${looked}; found neither${run}`);
  }
  // Only the class name, to pick the loader (which then parses the whole file, NaN and all).
  const text = (await readRegularFile(join(modelDir, CONFIG_NAME), 'a JSON file')).toString('utf8');
  const className = /"_class_name"\s*:\s*"([^"]+)"/.exec(text)?.[1] ?? indexClass;
  if (!className) {
    throw new DiffusersFolderError(join(modelDir, CONFIG_NAME), `has no _class_name: expected ` +
      `${Object.values(MODEL_CLASSES).map((c) => c.className).join(', ')}`);
  }
  let family: ModelFamily;
  try {
    family = familyOfClass(className);
  } catch (e) {
    const path = join(modelDir, CONFIG_NAME);
    throw new DiffusersFolderError(path, (e as Error).message, { cause: e });
  }
  const loaded = await loadModel(modelDir, MODEL_CLASSES[family], { warn: (m) => notes.push(m) });
  checkFinite(loaded.params as Tree<HostArray>, modelDir);
  const scheduler = await findScheduler(dir, modelDir, isPipeline, notes);
  const model = imageModelOf(family, loaded.config);
  if (vae) checkFinite(vae.params, vae.folder);
  if (vae && vae.model.config.latent_channels !== model.sampleShape[0]) {
    throw new DiffusersFolderError(dir, `its vae has ${vae.model.config.latent_channels} latent channels, ` +
      `its ${model.cls.className} takes ${model.sampleShape[0]}: they were not trained together`);
  }
  return { model, params: loaded.params as Tree<HostArray>,
    scheduler, modelFolder: modelDir, notes, ...(student ? { student } : {}), ...(vae ? { vae } : {}) };
}

/** [C, H, W] of the images a pipeline makes: its model's samples, or their decoding by its
 *  VAE for a latent pipeline. */
export function pipelineImageShape(p: Pick<Pipeline, 'model' | 'vae'>): [number, number, number] {
  const [c, h, w] = p.model.sampleShape;
  if (!p.vae) return [c, h, w];
  const f = p.vae.model.downFactor;
  return [p.vae.model.config.out_channels, h * f, w * f];
}

/** Refuses a latent pipeline where only pixel-space models are supported (`what` names the
 *  command or method). */
export function requirePixelSpace(p: Pick<Pipeline, 'vae' | 'modelFolder'>, what: string): void {
  if (p.vae) {
    throw new DiffusersFolderError(p.modelFolder, `is part of a latent pipeline (it has a vae/): ${what} ` +
      'works on pixel-space models; latent pipelines are sampled (diffuse sample, eval, serve)');
  }
}

/** An ensemble folder (ensemble.ts): its experts (each a pipeline), its router and routing. */
async function loadEnsemble(dir: string, options: Record<string, unknown>, indexPath: string):
  Promise<Pipeline> {
  const k = options.experts;
  const routing = options.routing;
  if (!(Number.isInteger(k) && (k as number) >= 1)) {
    throw new DiffusersFolderError(indexPath, `'experts' must be the number of experts, got ${JSON.stringify(k)}`);
  }
  if (!ENSEMBLE_MODES.includes(routing as EnsembleMode)) {
    throw new DiffusersFolderError(indexPath, `'routing' must be one of ${ENSEMBLE_MODES.join(', ')}, got ${JSON.stringify(routing)}`);
  }
  const experts = [];
  for (let e = 0; e < (k as number); e++) experts.push(await loadPipeline(join(dir, expertFolder(e))));
  const first = experts[0]!;
  experts.forEach((x, e) => {
    const same = x.model.family === first.model.family && x.scheduler.family === first.scheduler.family &&
      x.scheduler.prediction === first.scheduler.prediction && x.model.numClasses === first.model.numClasses &&
      x.model.sampleShape.join() === first.model.sampleShape.join();
    if (!same) {
      throw new DiffusersFolderError(join(dir, expertFolder(e)), `differs from ${expertFolder(0)} in ` +
        'family, process, prediction, classes or image shape: the experts of one ensemble share them');
    }
  });
  if (first.scheduler.family !== 'flow') {
    throw new DiffusersFolderError(indexPath, `its experts use ${first.scheduler.className}; the ` +
      'router is trained on rectified-flow noise levels, so ensembles are flow-matching only');
  }
  const router = await loadModel(join(dir, ROUTER_FOLDER), classifierClass);
  checkFinite(router.params as unknown as Tree<HostArray>, router.folder);
  if (router.config.num_classes !== k) {
    throw new DiffusersFolderError(router.folder, `the router has ${router.config.num_classes} ` +
      `outputs for ${k as number} experts`);
  }
  const classes = classCount(first.model);
  if (router.config.condition_classes !== classes) {
    throw new DiffusersFolderError(router.folder, `the router takes ${router.config.condition_classes} ` +
      `classes, the experts ${classes}`);
  }
  return { ...first, notes: experts.flatMap((x) => x.notes), ensemble: {
    experts: experts.map((x) => ({ model: x.model, params: x.params })),
    router: { config: router.config, params: router.params }, routing: routing as EnsembleMode,
    numTrainTimesteps: first.scheduler.config.num_train_timesteps as number,
  } };
}

/** Refuses weights with NaN or infinities at load: sampled, they give an all-black image. */
function checkFinite(params: Tree<HostArray>, modelDir: string): void {
  const { paths, leaves } = flatten(params, (x): x is HostArray => x instanceof HostArray);
  leaves.forEach((a, i) => {
    if (a.dtype !== 'float32') return;
    let bad = 0;
    for (const v of a.data as Float32Array) if (!Number.isFinite(v)) bad++;
    if (bad > 0) {
      throw new DiffusersFolderError(modelDir, `weight '${paths[i]}' has ${bad} NaN or ` +
        `infinite values of ${a.data.length}: the checkpoint is corrupt (or was saved from a ` +
        `diverged run)`);
    }
  });
}

async function findScheduler(dir: string, modelDir: string, isPipeline: boolean,
  notes: string[]): Promise<SchedulerSpec> {
  const candidates = [join(dir, 'scheduler'), dir];
  if (!isPipeline) candidates.push(join(dirname(modelDir), 'scheduler'));
  for (const folder of candidates) {
    if (await isFile(join(folder, SCHEDULER_CONFIG_NAME))) {
      const file = await readSchedulerConfig(folder, { subfolder: '' }); // '': folder itself
      let spec: SchedulerSpec;
      try {
        spec = parseScheduler(file.config);
      } catch (e) {
        throw new DiffusersFolderError(file.path, (e as Error).message, { cause: e });
      }
      for (const k of spec.ignoredKeys) notes.push(`${file.path}: unknown key '${k}' ignored`);
      return spec;
    }
  }
  notes.push(`no ${SCHEDULER_CONFIG_NAME} in ${candidates.join(', ')}: using diffusers' ` +
    `DDPMScheduler defaults (linear betas 1e-4..0.02, 1000 steps, epsilon, clip_sample)`);
  return parseScheduler({ _class_name: 'DDPMScheduler' });
}

// ---- sampling ----

/** The memory a sampling run may plan for by default (model intermediates and latents): a
 *  request above it is refused or split before ONNX Runtime allocates anything. */
export const DEFAULT_MEMORY_LIMIT = 2 ** 30;

/** Guidance for class-conditional models where the user gives none (diffuse sample, distill):
 *  on the shipped MNIST U-Net it lifts class accuracy from 90.5% (none) to 99% at a small
 *  cost in MNIST-FID (README, "Shipped models"). */
export const DEFAULT_GUIDANCE = 1.5;

/**
 * The sampler, steps and guidance of a run: a student's own settings (studentSampling), else
 * what was given, else the defaults: DPM-Solver++ 2M (flow Euler on a flow model),
 * `defaultSteps`, and DEFAULT_GUIDANCE on a class-conditional model (none otherwise).
 * What `diffuse sample` and `diffuse serve` run with.
 */
export function samplingChoice(m: { flow: boolean; classes: number; student?: StudentRecord | undefined },
  given: Partial<SamplingChoice>, defaultSteps: number): SamplingChoice {
  if (m.student) return studentSampling(m.student, given);
  return { sampler: given.sampler ?? (m.flow ? 'flow-euler' : 'dpm++2m'), steps: given.steps ?? defaultSteps,
    guidance: given.guidance ?? (m.classes ? DEFAULT_GUIDANCE : 1) };
}

/** Copies of the largest intermediate one model call may hold at once: an op's inputs and
 *  outputs live together, and ORT's arena keeps slack (measured: the MNIST U-Net peaks at
 *  about 3x its largest tensor). */
const ACTIVATION_COPIES = 4;

/** Latent-sized buffers a sampler keeps per image: x, the model output, noise, multistep
 *  history (up to 3), guidance's doubled batch, and the clamped result. */
const LATENT_COPIES = 12;

export interface SampleOptions {
  /** A name of SAMPLERS (`ddim`, `dpm++2m`, ...). */
  sampler: string;
  steps: number;
  n: number;
  /** CFG weight w (default 1: conditional only; 0: unconditional only). */
  guidance?: number;
  /** Labels cycled over the n images, or 'all' (0..K-1 cycled; default for conditional models). */
  classes?: readonly number[] | 'all';
  seed?: number;
  /** 'philox' (default): image i's noise is the slice [i * CHW, (i + 1) * CHW) of stream k =
   *  key.fold(k + 1).normal; 'torch': torch.randn over all n images in order. */
  generator?: 'philox' | 'torch';
  /** Most rows per model call (default 64; lowered to fit memoryLimit, with a warning). */
  batchSize?: number;
  /** Bytes the run may plan for (default DEFAULT_MEMORY_LIMIT). */
  memoryLimit?: number;
  /** Training-free acceleration: DeepCache or Faster Diffusion (U-Net), RAS (DiT). */
  accel?: Acceleration;
  /** An ensemble pipeline's routing (default: the one it was saved with). */
  ensemble?: EnsembleMode;
  /** Classifier guidance towards `classes` (guide.ts): with guidance 0 on a class-conditional
   *  model, or on an unconditional one, it guides the unconditional model. */
  guide?: LoadedGuide;
  provider?: Provider;
  /** Progress over the whole run: `step` of `total` (sampler steps x batches of images). */
  onStep?: (step: number, total: number) => void;
  /** A latent pipeline's VAE latents as sampled (what the model makes, unclamped) instead of
   *  their decoded images. */
  latents?: boolean;
  /** Called with each of the run's warnings (SampleStats.warnings) before sampling starts. */
  onWarning?: (message: string) => void;
  signal?: AbortSignal;
}

export interface SampleStats {
  /** Wall time, graph compilation included. */
  seconds: number;
  /** Model calls (each at most `rowsPerCall` rows). */
  modelCalls: number;
  /** Rows per model call: batchSize, or less where memoryLimit demanded it or (on the CPU)
   *  where the model's largest intermediate would overflow the last-level cache. */
  rowsPerCall: number;
  /** An ensemble's expert evaluations in rows (padding included): its cost in model rows. */
  expertRows?: number;
  /** What the caller should know about these settings (guidanceClipWarning, a lowered batch
   *  size); the CLIs print them. */
  warnings: string[];
}

export interface SampleResult extends SampleStats {
  /** [N, C, H, W] in [-1, 1] (clamped, as diffusers' pipelines clamp). */
  images: HostArray<'float32'>;
}

/** A request that cannot fit in the memory limit: refused before anything is allocated. */
export class MemoryLimitError extends RangeError {
  override name = 'MemoryLimitError';
}

/** A sample (or a model output on the way) with NaN or infinite values: nothing is written. */
export class NonFiniteError extends Error {
  override name = 'NonFiniteError';
}

/** A warning when a sampler would clip its x0 estimate while guidance extrapolates the noise
 *  estimate (DDIM-style updates with clip_sample or thresholding): the update then mixes a
 *  clipped x0 with a noise estimate that no longer matches it, and samples degrade badly (see
 *  schedulerFor in train.ts). diffusers behaves the same; the fix is in the folder's config. */
export function guidanceClipWarning(name: string, model: SchedulerSpec,
  guidance: number): string | undefined {
  if (guidance === 1) return undefined;
  const s = samplerSpec(name, model);
  const { clipSample, thresholding } = s.x0;
  if (s.className !== 'DDIMScheduler' || !(clipSample != null || thresholding)) return undefined;
  return `${name} clips its x0 estimate (${thresholding ? 'thresholding' : 'clip_sample'}) ` +
    `while guidance ${guidance} extrapolates the noise estimate; the two disagree and samples ` +
    `degrade (MNIST U-Net, DDIM-50, guidance 3: 25% class accuracy instead of 99%). Set ` +
    `"clip_sample": false in the scheduler_config.json, or use another sampler (dpm++2m, ddpm).`;
}

/** Classes a user may ask for (0: unconditional). A DiT always has a label table: one trained
 *  without labels has num_embeds_ada_norm = 1 and only ever saw the null row. */
export function classCount(m: ImageModel): number {
  return m.family !== 'unet' && m.numClasses < 2 ? 0 : m.numClasses;
}

function checkInt(v: number, what: string, min: number): void {
  if (!Number.isInteger(v) || v < min) {
    throw new RangeError(`${what} must be an integer >= ${min}, got ${v}`);
  }
}

/** One label per image, or undefined for an unconditional model. */
function labelsFor(m: ImageModel, o: SampleOptions): number[] | undefined {
  const k = classCount(m) || (o.guide?.classes ?? 0);
  if (k === 0) {
    if (o.classes !== undefined) {
      throw new RangeError(`classes given, but the model is unconditional (${m.cls.className} ` +
        `without class labels)`);
    }
    return undefined;
  }
  const list = o.classes === undefined || o.classes === 'all'
    ? Array.from({ length: k }, (_, i) => i) : [...o.classes];
  if (list.length === 0) throw new RangeError('classes: expected at least one label');
  for (const c of list) {
    if (!Number.isInteger(c) || c < 0 || c >= k) {
      throw new RangeError(`class ${c} is out of range: the model has ${k} classes (0..${k - 1})`);
    }
  }
  return Array.from({ length: o.n }, (_, i) => list[i % list.length]!);
}

/** The first row of `data` [rows, per] with a NaN or infinity, or -1. */
function firstNonFiniteRow(data: ArrayLike<number>, per: number): number {
  for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i]!)) return Math.floor(i / per);
  return -1;
}

/** Stops at the first model output with NaN or infinity: seconds into a run, not after it. */
function finiteOutputs(base: Denoiser, first: () => number): Denoiser {
  return {
    prediction: base.prediction,
    async predict(x: Batch, t: Float64Array, condition?: unknown): Promise<Batch> {
      const out = await base.predict(x, t, condition);
      const per = out.data.length / out.shape[0]!;
      const row = firstNonFiniteRow(out.data, per);
      if (row >= 0) {
        const inputBad = firstNonFiniteRow(x.data, per) >= 0;
        throw new NonFiniteError(`the model returned NaN or infinite values (image ` +
          `${first() + row}, model time ${t[row]}): ${inputBad
            ? 'its input already was not finite: the scheduler config produces them'
            : 'from finite inputs, so its weights or config produce them'}; nothing written`);
      }
      return out;
    },
  };
}

const fmtBytes = (b: number): string => b >= 2 ** 30 ? `${(b / 2 ** 30).toFixed(1)} GiB`
  : b >= 10 * 2 ** 20 ? `${Math.round(b / 2 ** 20)} MiB` : `${(b / 2 ** 20).toFixed(1)} MiB`;

interface Plan {
  /** Rows per model call: within the memory limit, and on the CPU within its cache. */
  rowsPerCall: number;
  /** Rows per call within the memory limit alone (accelerated denoisers batch themselves). */
  memoryRows: number;
  imagesPerBatch: number;
  warnings: string[];
}

/** How many rows each model call and each sampled batch may hold within the memory limit:
 *  model calls get half of it (down to one row), the batch's latents the rest. On the CPU,
 *  calls are further cut so that their largest intermediate fits in the last-level cache
 *  (engine/memory.ts); the batch of images sampled together is not. */
function planMemory(p: Pipeline, o: SampleOptions, largest: LargestTensor,
  cacheRows: () => number | undefined, rowBytes: number): Plan {
  const limit = o.memoryLimit ?? DEFAULT_MEMORY_LIMIT;
  const wanted = o.batchSize ?? 64;
  const callBytes = ACTIVATION_COPIES * largest.bytes; // per row: traced at batch 1
  const latentBytes = LATENT_COPIES * rowBytes;
  const [, h, w] = p.model.sampleShape;
  if (callBytes + latentBytes > limit) {
    throw new MemoryLimitError(`one ${h}x${w} image needs about ` +
      `${fmtBytes(callBytes + latentBytes)} in ${p.model.cls.className} (its largest ` +
      `intermediate, ${largest.prim} -> [${largest.shape.join(', ')}], is ` +
      `${fmtBytes(largest.bytes)}): over the memory limit of ${fmtBytes(limit)}; raise the ` +
      `limit if the machine has the memory, or use a model config with a smaller sample_size`);
  }
  const memoryRows = Math.max(1, Math.min(wanted, Math.floor(limit / 2 / callBytes)));
  const warnings = memoryRows < wanted ? [`batch size lowered from ${wanted} to ` +
    `${memoryRows} rows per model call to stay within the memory limit of ${fmtBytes(limit)}`]
    : [];
  const imagesPerBatch = Math.max(1, Math.min(o.n, memoryRows,
    Math.floor((limit - memoryRows * callBytes) / latentBytes)));
  const cached = (o.provider ?? 'cpu') === 'cpu' ? cacheRows() : undefined;
  const rowsPerCall = Math.min(memoryRows, cached ?? memoryRows);
  return { rowsPerCall, memoryRows, imagesPerBatch, warnings };
}

/**
 * Samples n images from a loaded pipeline, a batch of images at a time: `onBatch` gets each
 * batch ([count, C, H, W] in [-1, 1]) with the index of its first image, in order. Memory is
 * bounded by the batch, not by n. With the philox generator each image's noise depends only
 * on the seed and its index, so the images do not depend on the batch sizes; the torch
 * generator draws all n images' noise from one sequence, so all n are sampled as one batch.
 */
export async function sampleInBatches(p: Pipeline, o: SampleOptions,
  onBatch: (images: HostArray<'float32'>, first: number) => Promise<void> | void):
  Promise<SampleStats> {
  const spec = samplerSpec(o.sampler, p.scheduler); // checks the name and the process
  checkInt(o.steps, 'steps', 1);
  checkInt(o.n, 'n', 1);
  checkInt(o.batchSize ?? 64, 'batchSize', 1);
  const limit = o.memoryLimit ?? DEFAULT_MEMORY_LIMIT;
  if (!(limit > 0)) throw new RangeError(`memoryLimit must be a positive number of bytes, got ${limit}`);
  if ((o.provider ?? 'cpu') === 'cpu' && limit > totalmem()) {
    throw new MemoryLimitError(`a memory limit of ${fmtBytes(limit)} is more than this ` +
      `machine has (${fmtBytes(totalmem())}): planning for it would let the system run out of ` +
      'memory instead of refusing the request');
  }
  const guidance = o.guidance ?? 1;
  if (!Number.isFinite(guidance)) {
    throw new RangeError(`guidance must be a finite number, got ${guidance}`);
  }
  const targets = labelsFor(p.model, o);
  // The model's own labels; guide targets alone for an unconditional model.
  const labels = classCount(p.model) ? targets : undefined;
  if (!labels && guidance !== 1) {
    throw new RangeError(`guidance ${guidance} needs a class-conditional model; this one is ` +
      `unconditional (use guidance 1)`);
  }
  // Guidance 0 is the unconditional model alone: the null label, one call per step.
  const unconditional = labels !== undefined && guidance === 0;
  const cfg = labels !== undefined && guidance !== 1 && !unconditional;
  const [c, h, w] = p.model.sampleShape;
  const per = c * h * w;
  const consts = ops.constantTree(p.params);
  const model = predictionOf(p.model, consts);
  const graph = graphDenoiser(model, spec.prediction,
    { name: 'sample_denoiser', ...(o.provider ? { provider: o.provider } : {}) });
  if (o.ensemble && !p.ensemble) {
    throw new RangeError(`ensemble routing (${o.ensemble}) needs a decentralized-experts ensemble; ` +
      `${p.modelFolder} is one model`);
  }
  if (o.latents && !p.vae) {
    throw new RangeError(`latents: ${p.modelFolder} is a pixel-space pipeline (no vae/); its samples are images`);
  }
  if (p.vae && o.guide) {
    throw new RangeError(`classifier guidance (a guide) reads images, and ${p.modelFolder} samples VAE ` +
      'latents: guidance of latent pipelines is not implemented');
  }
  if (p.ensemble && o.accel) {
    throw new RangeError(`acceleration (${describeAccel(o.accel)}) works on one model, not on an ensemble of experts`);
  }
  const ensemble: LoadedEnsemble | undefined = p.ensemble && ensembleModel(p.ensemble,
    o.ensemble ?? p.ensemble.routing, spec.prediction, o.provider ? { provider: o.provider } : {});
  const start = performance.now();
  let disposeLater: AcceleratedDenoiser | undefined;
  let disposeGuide: Releasable | undefined;
  // A latent pipeline's samples are decoded, unless its latents were asked for.
  const decoder: LatentCoder | undefined = p.vae && !o.latents ?
    latentCoder(p.vae, { batchSize: o.batchSize ?? 64, ...(o.provider ? { runtime: { provider: o.provider } } : {}) })
    : undefined;
  try {
    const traced = (rows: number) => graph.traceAt([rows, c, h, w], labels !== undefined);
    const one = traced(1);
    const plan = planMemory(p, o, largestIntermediate(one), () => cpuCacheRows(one, () => traced(2)), per * 4);
    let imagesPerBatch = plan.imagesPerBatch;
    if (o.generator === 'torch' && imagesPerBatch < o.n) {
      const most = Math.floor(limit / (LATENT_COPIES * per * 4));
      if (o.n > most) {
        throw new MemoryLimitError(`the torch generator draws the noise of all ${o.n} images ` +
          `from one sequence, so they are sampled at once: at most ${most} images of ` +
          `${c}x${h}x${w} fit in the memory limit of ${fmtBytes(limit)}; use the philox ` +
          `generator (any n) or a smaller n`);
      }
      imagesPerBatch = o.n;
    }
    const warnings = [...plan.warnings];
    const clip = labels ? guidanceClipWarning(o.sampler, p.scheduler, guidance) : undefined;
    if (clip) warnings.unshift(clip);
    for (const message of warnings) o.onWarning?.(message);
    const batches = Math.ceil(o.n / imagesPerBatch);
    const torch = o.generator === 'torch' ? new TorchGenerator(o.seed ?? 0) : undefined;
    const key = RngKey.fromSeed(o.seed ?? 0);
    let first = 0;
    const accel = o.accel ? acceleratedDenoiser(p, consts, o.accel, { sampler: o.sampler,
      steps: o.steps, rows: plan.memoryRows, conditional: labels !== undefined,
      guidance: cfg ? guidance : 1, seed: o.seed ?? 0, prediction: spec.prediction,
      ...(o.provider ? { provider: o.provider } : {}) }) : undefined;
    disposeLater = accel;
    const checked = finiteOutputs(accel?.denoiser ?? inBatches(ensemble?.denoiser ?? graph, plan.rowsPerCall),
      () => first);
    let guideTargets: number[] = [];
    const process = processOf(p.scheduler);
    const guideFn = o.guide?.guidance((t) => {
      const { alpha, sigma } = process.at(t);
      return Math.log((alpha * alpha) / (sigma * sigma));
    }, () => guideTargets, o.provider);
    disposeGuide = guideFn;
    for (let b = 0; b < batches; b++) {
      first = b * imagesPerBatch;
      const count = Math.min(imagesPerBatch, o.n - first);
      const shape = [count, c, h, w];
      const offset = first * per;
      // Stream -1 is the initial latent, stream k the noise of step k.
      const noise: NoiseSource = torch ? () => torch.randn(shape)
        : (size, k) => key.fold(k + 1).normal(size, offset);
      const x0 = new HostArray<'float32'>(noise(count * per, -1), shape, 'float32');
      accel?.reset();
      const condition = unconditional ? new Array<number>(count).fill(p.model.numClasses)
        : labels?.slice(first, first + count);
      const cfgDenoiser = cfg && !accel?.guided ? classifierFreeGuidance(checked,
        { scale: guidance, uncondition: new Array<number>(count).fill(p.model.numClasses) })
        : checked;
      guideTargets = targets?.slice(first, first + count) ?? [];
      const denoiser = guideFn ? withGuidance(cfgDenoiser, process, guideFn) : cfgDenoiser;
      const x = await sample(denoiser, x0, p.scheduler, {
        sampler: o.sampler, steps: o.steps, noise, condition,
        ...(o.signal ? { signal: o.signal } : {}),
        ...(accel?.perturb ? { perturb: accel.perturb } : {}),
        onStep: (s) => o.onStep?.(b * s.total + s.index, batches * s.total),
      });
      const bad = firstNonFiniteRow(x.data, per);
      if (bad >= 0) {
        throw new NonFiniteError(`sample ${first + bad} has NaN or infinite values after the ` +
          `last step: the scheduler config (${p.scheduler.className}) produces them; nothing ` +
          `written`);
      }
      // Pixels are clamped to [-1, 1] as diffusers' pipelines clamp them; latents are not.
      const images = p.vae ? new HostArray<'float32'>(Float32Array.from(x.data), shape, 'float32')
        : new HostArray<'float32'>(Float32Array.from(x.data, (v) => Math.min(1, Math.max(-1, v))), shape, 'float32');
      await onBatch(decoder ? await decoder.decodeLatents(images) : images, first);
    }
    return { seconds: (performance.now() - start) / 1000,
      modelCalls: accel ? accel.stats.rowCalls
        : ensemble ? ensemble.denoiser.stats.expertCalls.reduce((a, b) => a + b, 0) : graph.stats.calls,
      ...(ensemble ? { expertRows: ensemble.denoiser.stats.expertRows.reduce((a, b) => a + b, 0) } : {}),
      rowsPerCall: accel ? plan.memoryRows : plan.rowsPerCall, warnings };
  } finally {
    await graph.dispose();
    await ensemble?.dispose();
    await disposeLater?.dispose();
    await disposeGuide?.dispose();
    await decoder?.dispose();
  }
}

/** Refuses n images that cannot be held at once (sampleImages, scoring): more than half the
 *  memory limit. */
export function checkHeldImages(p: Pick<Pipeline, 'model' | 'vae'>, n: number, memoryLimit = DEFAULT_MEMORY_LIMIT):
  void {
  checkInt(n, 'n', 1);
  const [c, h, w] = pipelineImageShape(p);
  const bytes = n * c * h * w * 4;
  if (bytes > memoryLimit / 2) {
    throw new MemoryLimitError(`${n} images of ${c}x${h}x${w} take ${fmtBytes(bytes)} held at ` +
      `once, over half the memory limit of ${fmtBytes(memoryLimit)}; ask for at most ` +
      `${Math.floor(memoryLimit / 2 / (c * h * w * 4))}, or stream them to files ` +
      '(sampleInBatches, `diffuse sample --out-dir`)');
  }
}

/**
 * Samples n images into one array (see sampleInBatches, which streams them instead). All n
 * images are held at once, so n x C x H x W floats must fit in half the memory limit.
 */
export async function sampleImages(p: Pipeline, o: SampleOptions): Promise<SampleResult> {
  const made = o.latents ? { model: p.model } : p;
  checkHeldImages(made, o.n, o.memoryLimit);
  const [c, h, w] = pipelineImageShape(made);
  const per = c * h * w;
  const images = new HostArray<'float32'>(new Float32Array(o.n * per), [o.n, c, h, w], 'float32');
  const stats = await sampleInBatches(p, o, (batch, first) => {
    images.data.set(batch.data, first * per);
  });
  return { images, ...stats };
}

// ---- writing ----

/** Where sampled images go: one PNG grid (`out`), or one PNG per image in `outDir`. */
export type SampleDestination = { out: string } | { outDir: string };

/** The most pixels a PNG grid may have (4096 x 4096): encoding holds it whole, twice. */
export const MAX_GRID_PIXELS = 2 ** 24;

/** The most images one `outDir` run writes: names are six digits, 000000..999999. */
export const MAX_FOLDER_IMAGES = 1_000_000;

/**
 * Checks, before sampling, that n images of a model can be written to `to`: PNG channels (1 or
 * 3), the grid's size, the folder's name range, and that the file or folder is writable
 * (creating the folder). Throws a RangeError or a FileSystemError naming what is wrong.
 */
export async function checkDestination(p: Pick<Pipeline, 'model' | 'vae'>, n: number, to: SampleDestination):
  Promise<void> {
  const [c, h, w] = pipelineImageShape(p);
  if (c !== 1 && c !== 3) {
    throw new RangeError(`${p.vae ? 'the VAE' : p.model.cls.className} makes ${c}-channel images; PNGs are written for ` +
      `1 (gray) or 3 (RGB) channels`);
  }
  if ('out' in to) {
    const cols = Math.ceil(Math.sqrt(n));
    const [width, height] = [cols * (w + 2) + 2, Math.ceil(n / cols) * (h + 2) + 2];
    if (width * height > MAX_GRID_PIXELS) {
      throw new MemoryLimitError(`a grid of ${n} images of ${h}x${w} is ${width}x${height} ` +
        `pixels, over the ${MAX_GRID_PIXELS / 2 ** 20} M pixels a grid may have; write one PNG ` +
        `per image with an output folder (--out-dir), or ask for fewer images`);
    }
    await ensureWritableFile(to.out);
  } else {
    if (n > MAX_FOLDER_IMAGES) {
      throw new RangeError(`${n} images: a folder run writes at most ${MAX_FOLDER_IMAGES} ` +
        `(000000.png .. 999999.png); split the request into runs with different seeds`);
    }
    await ensureWritableFolder(to.outDir);
  }
}

/**
 * Writes images [N, C, H, W] in [-1, 1] as a PNG grid, or as DIR/000000.png, DIR/000001.png,
 * ... (one image each, no padding; numbered from `first`). Returns the files written.
 */
export async function writeSamples(images: HostArray<'float32'>, to: SampleDestination,
  first = 0): Promise<string[]> {
  if ('out' in to) {
    await writeOrExplain(to.out, () => writePng(to.out, imageGrid(images)));
    return [to.out];
  }
  const [n, c, h, w] = images.shape as [number, number, number, number];
  const per = c * h * w;
  const files: string[] = [];
  for (let i = 0; i < n; i++) {
    const one = new HostArray(images.data.subarray(i * per, (i + 1) * per), [1, c, h, w]);
    const file = join(to.outDir, `${String(first + i).padStart(6, '0')}.png`);
    await writeOrExplain(file, () => writePng(file, imageGrid(one, { cols: 1, pad: 0 })));
    files.push(file);
  }
  return files;
}

async function writeOrExplain(path: string, write: () => Promise<void>): Promise<void> {
  try {
    await write();
  } catch (e) {
    throw explainFsError(e, 'write', path);
  }
}
