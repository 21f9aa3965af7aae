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
 * The model sees at most `batchSize` rows per call; sampling itself runs over all N images at
 * once (one latent, one noise stream), so results do not depend on the batch size.
 * `writeSamples` writes the result as a PNG grid or one PNG per image.
 */
import { existsSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { HostArray, numel } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { TorchGenerator } from '../engine/random/torch.js';
import type { Provider } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { mapTree, type Tree } from '../engine/tree.js';
import { withData, type Batch, type Denoiser, type NoiseSource } from '../diffusion/denoiser.js';
import { parseScheduler, type SchedulerSpec } from '../diffusion/diffusers/spec.js';
import { classifierFreeGuidance } from '../diffusion/guidance.js';
import { sample, samplerSpec } from '../diffusion/sampling.js';
import { imageGrid, writePng } from '../io/png.js';
import {
  CONFIG_NAME, DiffusersFolderError, loadModel, MODEL_INDEX_NAME, readModelIndex,
  readSchedulerConfig, SCHEDULER_CONFIG_NAME, type ModelClass,
} from '../io/diffusers.js';
import { ditClass } from '../models/dit.js';
import { ditMoEClass } from '../models/dit-moe.js';
import { UNET2D_CLASS } from '../models/unet2d.js';
import type { Module } from '../nn/module.js';
import { graphDenoiser } from './graph-denoiser.js';
import { familyOfClass, imageModelOf, type ImageModel, type ModelFamily } from './image-models.js';

export { SAMPLER_NAMES, type SamplerName } from '../diffusion/sampling.js';
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
}

// Sound: each model file's class object is a ModelClass of its own module and config type;
// the loader only needs the erased form (as image-models.ts stores it).
const MODEL_CLASSES: Record<ModelFamily, ModelClass<Module, unknown>> = {
  unet: UNET2D_CLASS as unknown as ModelClass<Module, unknown>,
  dit: ditClass as unknown as ModelClass<Module, unknown>,
  'dit-moe': ditMoEClass as unknown as ModelClass<Module, unknown>,
};

const COMPONENTS = ['unet', 'transformer'] as const;
const isFile = (p: string) => existsSync(p) && statSync(p).isFile();

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
  const notes: string[] = [];
  let modelDir = dir;
  let indexClass: string | undefined;
  const isPipeline = isFile(join(dir, MODEL_INDEX_NAME));
  if (isPipeline) {
    const index = await readModelIndex(dir);
    const found = COMPONENTS.find((c) => index.components[c]?.[1]);
    if (!found) {
      throw new DiffusersFolderError(index.path, `names no 'unet' or 'transformer' component ` +
        `(it has ${Object.keys(index.components).join(', ') || 'none'})`);
    }
    if (index.components.vae?.[1]) {
      throw new DiffusersFolderError(index.path, `has a 'vae': latent pipelines are not ` +
        `sampled yet (only pixel-space UNet2DModel / DiT pipelines)`);
    }
    indexClass = index.components[found]![1]!;
    // diffusers' repo-root fallback: older repos keep the model beside model_index.json.
    if (isFile(join(dir, found, CONFIG_NAME))) modelDir = join(dir, found);
    else if (!isFile(join(dir, CONFIG_NAME))) {
      throw new DiffusersFolderError(dir, `${MODEL_INDEX_NAME} names a '${found}', but there is ` +
        `no ${join(found, CONFIG_NAME)} nor ${CONFIG_NAME}`);
    }
  } else if (!isFile(join(dir, CONFIG_NAME))) {
    const run = isFile(join(dir, 'model', MODEL_INDEX_NAME))
      ? ` (a training run? its pipeline is ${join(dir, 'model')})` : '';
    throw new DiffusersFolderError(dir, `${looked}; found neither${run}`);
  }
  // Only the class name, to pick the loader (which then parses the whole file, NaN and all).
  const text = await readFile(join(modelDir, CONFIG_NAME), 'utf8');
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
  const scheduler = await findScheduler(dir, modelDir, isPipeline, notes);
  return { model: imageModelOf(family, loaded.config), params: loaded.params as Tree<HostArray>,
    scheduler, modelFolder: modelDir, notes };
}

async function findScheduler(dir: string, modelDir: string, isPipeline: boolean,
  notes: string[]): Promise<SchedulerSpec> {
  const candidates = [join(dir, 'scheduler'), dir];
  if (!isPipeline) candidates.push(join(dirname(modelDir), 'scheduler'));
  for (const folder of candidates) {
    if (isFile(join(folder, SCHEDULER_CONFIG_NAME))) {
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
  /** 'philox' (default): stream k is key.fold(k + 1).normal; 'torch': torch.randn in order. */
  generator?: 'philox' | 'torch';
  /** Most rows per model call (default 64). */
  batchSize?: number;
  provider?: Provider;
  onStep?: (step: number, total: number) => void;
  signal?: AbortSignal;
}

export interface SampleResult {
  /** [N, C, H, W] in [-1, 1] (clamped, as diffusers' pipelines clamp). */
  images: HostArray<'float32'>;
  /** Wall time, graph compilation included. */
  seconds: number;
  /** Model calls (each at most batchSize rows). */
  modelCalls: number;
  /** What the caller should know about these settings (guidanceClipWarning); the CLIs print
   *  them before sampling. */
  warnings: string[];
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
  const k = classCount(m);
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

/**
 * Standard normal noise: stream -1 is the initial latent, stream k the noise of step k. The
 * torch generator draws in call order, as diffusers' pipelines do.
 */
function noiseSource(o: SampleOptions, shape: readonly number[]): NoiseSource {
  if (o.generator === 'torch') {
    const g = new TorchGenerator(o.seed ?? 0);
    return () => g.randn(shape);
  }
  const key = RngKey.fromSeed(o.seed ?? 0);
  return (n, k) => key.fold(k + 1).normal(n);
}

/** Splits model calls into batches of at most `rows` rows (conditions: one label per row). */
function inBatches(base: Denoiser, rows: number): Denoiser {
  return {
    prediction: base.prediction,
    async predict(x: Batch, t: Float64Array, condition?: unknown): Promise<Batch> {
      const n = x.shape[0]!;
      if (n <= rows) return base.predict(x, t, condition);
      const per = x.data.length / n;
      const out = new Float32Array(x.data.length);
      for (let i = 0; i < n; i += rows) {
        const j = Math.min(n, i + rows);
        const xb = { data: x.data.subarray(i * per, j * per),
          shape: [j - i, ...x.shape.slice(1)] };
        const cb = condition === undefined ? undefined : (condition as number[]).slice(i, j);
        out.set((await base.predict(xb, t.subarray(i, j), cb)).data, i * per);
      }
      return withData(x, out);
    },
  };
}

/** Samples n images from a loaded pipeline. */
export async function sampleImages(p: Pipeline, o: SampleOptions): Promise<SampleResult> {
  const spec = samplerSpec(o.sampler, p.scheduler); // checks the name and the process
  checkInt(o.steps, 'steps', 1);
  checkInt(o.n, 'n', 1);
  checkInt(o.batchSize ?? 64, 'batchSize', 1);
  const guidance = o.guidance ?? 1;
  if (!Number.isFinite(guidance)) {
    throw new RangeError(`guidance must be a finite number, got ${guidance}`);
  }
  const labels = labelsFor(p.model, o);
  if (!labels && guidance !== 1) {
    throw new RangeError(`guidance ${guidance} needs a class-conditional model; this one is ` +
      `unconditional (use guidance 1)`);
  }
  const [c, h, w] = p.model.sampleShape;
  const shape = [o.n, c, h, w];
  const consts = mapTree(p.params, (x): x is HostArray => x instanceof HostArray,
    (a) => ops.constant(a));
  const model = (x: Tensor, t: Tensor, y?: Tensor): Tensor => {
    const out = p.model.apply(consts, x, t, y).out; // [B, C', H, W]
    // Learned-sigma models (DiT's out_channels = 2C) return the variance after the mean.
    return out.shape[1] === c ? out : ops.sliceAxis(out, 1, 0, c);
  };
  const graph = graphDenoiser(model, spec.prediction,
    { name: 'sample_denoiser', ...(o.provider ? { provider: o.provider } : {}) });
  let denoiser = inBatches(graph, o.batchSize ?? 64);
  const clip = labels ? guidanceClipWarning(o.sampler, p.scheduler, guidance) : undefined;
  if (labels && guidance !== 1) {
    denoiser = classifierFreeGuidance(denoiser,
      { scale: guidance, uncondition: new Array<number>(o.n).fill(p.model.numClasses) });
  }
  const start = performance.now();
  try {
    const noise = noiseSource(o, shape);
    const x0 = new HostArray<'float32'>(noise(numel(shape), -1), shape, 'float32');
    const x = await sample(denoiser, x0, p.scheduler, {
      sampler: o.sampler, steps: o.steps, noise, condition: labels,
      ...(o.signal ? { signal: o.signal } : {}),
      onStep: (s) => o.onStep?.(s.index, s.total),
    });
    const images = new HostArray(Float32Array.from(x.data, (v) => Math.min(1, Math.max(-1, v))),
      shape, 'float32');
    return { images, seconds: (performance.now() - start) / 1000, modelCalls: graph.stats.calls,
      warnings: clip ? [clip] : [] };
  } finally {
    await graph.dispose();
  }
}

// ---- writing ----

/** Where sampled images go: one PNG grid (`out`), or one PNG per image in `outDir`. */
export type SampleDestination = { out: string } | { outDir: string };

/**
 * Writes images [N, C, H, W] in [-1, 1] as a PNG grid, or as DIR/000000.png, DIR/000001.png,
 * ... (one image each, no padding). Returns the files written.
 */
export async function writeSamples(images: HostArray<'float32'>, to: SampleDestination):
  Promise<string[]> {
  if ('out' in to) {
    await writePng(to.out, imageGrid(images));
    return [to.out];
  }
  const [n, c, h, w] = images.shape as [number, number, number, number];
  const per = c * h * w;
  const files: string[] = [];
  for (let i = 0; i < n; i++) {
    const one = new HostArray(images.data.subarray(i * per, (i + 1) * per), [1, c, h, w]);
    const file = join(to.outDir, `${String(i).padStart(6, '0')}.png`);
    await writePng(file, imageGrid(one, { cols: 1, pad: 0 }));
    files.push(file);
  }
  return files;
}
