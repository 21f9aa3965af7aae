/**
 * @file The runs behind `diffuse encode`, `decode`, `translate` and `img2img`: a loaded
 * DDPM-family pipeline used as an image encoder (DPM-Encoder, or DDIM inversion at eta = 0),
 * its codes decoded by the same model (reconstruction) or by another one with the same noise
 * schedule (CycleDiffusion; DDIB at eta = 0), and SDEdit. The maths is in
 * methods/dpm-encoder.ts; this file batches images, draws noise, checks that codes fit a model,
 * and reads and writes codes as safetensors.
 *
 * Noise: image i's draws are the slice [i * CHW, (i + 1) * CHW) of stream k + 1 of the seed's
 * Philox key (k = -1 for x_T, k for walk step k), so codes do not depend on the batch size.
 * Class-conditional models get their null label (unconditional prediction) unless labels are
 * given: translation needs no labels. The scheduler's clip_sample / thresholding are not applied
 * to the x0 estimates (the official code does not clip, and clipping would break exactness).
 *
 * Codes are read and written by latent-file.ts.
 */
import { HostArray } from '../engine/host.js';
import { RngKey } from '../engine/random/philox.js';
import type { Batch, NoiseSource } from '../diffusion/denoiser.js';
import { trainTables } from '../diffusion/diffusers/tables.js';
import {
  ddimInvert, ddimReconstruct, dpmDecode, dpmEncode, encoderWalk, sdedit, strengthTimestep,
  type DpmLatents,
} from '../methods/dpm-encoder.js';
import { imageGrid, writePng } from '../io/png.js';
import { explainFsError } from '../util/fs-errors.js';
import { modelDenoiser, type GraphDenoiser } from './graph-denoiser.js';
import type { LatentCodes } from './latent-file.js';
import { classAccuracy, featureExtractor, loadMetricClassifier } from './metrics.js';
import { classCount, DEFAULT_MEMORY_LIMIT, MemoryLimitError, requirePixelSpace, type Pipeline, type Provider } from
  './sample.js';

export {
  LATENT_KEYS, LatentFileError, readLatents, writeLatents, type LatentCodes,
} from './latent-file.js';

// ---- options ----

export interface EncodeOptions {
  steps: number;
  /** Start timestep (default T - 1: pure noise). */
  t0?: number;
  /** In [0, 1]: 0 is deterministic DDIM inversion (codes are x_T alone), above 0 the
   *  DPM-Encoder (the official configs: 0.1). */
  eta: number;
  seed: number;
  /** Keep the last step's residual so decoding is exact (default true; DPM-Encoder only). */
  residual?: boolean;
  /** One label per image (or one for all); default: the null label of a conditional model. */
  labels?: readonly number[];
  /** Images per model call (default 64). */
  batchSize?: number;
  provider?: Provider;
  /** Bytes the codes may take (default DEFAULT_MEMORY_LIMIT). */
  memoryLimit?: number;
  onStep?: (done: number, total: number) => void;
  signal?: AbortSignal;
}

export type DecodeOptions = Pick<EncodeOptions,
  'labels' | 'batchSize' | 'provider' | 'onStep' | 'signal'>;

export interface RunStats {
  seconds: number;
  modelCalls: number;
}

// ---- the model side ----

/** The model's alphas_cumprod table; refuses flow-matching models. */
export function alphasCumprodOf(p: Pipeline): Float32Array {
  if (p.scheduler.family !== 'vp') {
    throw new TypeError(`${p.modelFolder} is a rectified-flow model (${p.scheduler.className}): ` +
      `encoding, decoding and translation need a DDPM-family (VP) model whose noise schedule ` +
      `is an alphas_cumprod table`);
  }
  return trainTables(p.scheduler.config).alphasCumprod;
}

/** One label per image: the given ones (cycled), or the null label of a conditional model. */
function labelsFor(p: Pipeline, n: number, given: readonly number[] | undefined):
  number[] | undefined {
  const k = classCount(p.model);
  if (k === 0) {
    if (given !== undefined) {
      throw new RangeError(`labels given, but ${p.modelFolder} is unconditional`);
    }
    return undefined;
  }
  if (given === undefined) return new Array<number>(n).fill(p.model.numClasses);
  if (given.length === 0) throw new RangeError('labels: expected at least one');
  for (const c of given) {
    if (!Number.isInteger(c) || c < 0 || c > k) {
      throw new RangeError(`class ${c} is out of range: ${p.modelFolder} has ${k} classes ` +
        `(0..${k - 1}, and ${k} for none)`);
    }
  }
  return Array.from({ length: n }, (_, i) => given[i % given.length]!);
}

function checkImages(p: Pipeline, images: HostArray): [number, number] {
  const [c, h, w] = p.model.sampleShape;
  const [n, ...rest] = images.shape;
  if (images.shape.length !== 4 || rest.join() !== [c, h, w].join() || !(n! >= 1)) {
    throw new RangeError(`images [${images.shape.join(', ')}] do not fit ${p.modelFolder}, ` +
      `which makes [N, ${c}, ${h}, ${w}]`);
  }
  return [n!, c * h * w];
}

const toF32 = (b: Batch): Float32Array => b.data instanceof Float32Array ? b.data
  : Float32Array.from(b.data);

function checkBatchSize(b: number): number {
  if (!Number.isInteger(b) || b < 1) {
    throw new RangeError(`batchSize must be an integer >= 1, got ${b}`);
  }
  return b;
}

/**
 * Runs `fn` over the images a batch at a time with the pipeline's compiled denoiser; `fn` gets
 * the batch's first index and size, its labels, its Philox noise and its progress callback.
 */
async function inBatches(p: Pipeline, n: number, per: number,
  o: DecodeOptions & { seed?: number },
  fn: (den: GraphDenoiser, first: number, count: number, condition: number[] | undefined,
    noise: NoiseSource, onStep: (done: number, total: number) => void) => Promise<void>):
  Promise<RunStats> {
  requirePixelSpace(p, 'the DPM-Encoder (diffuse encode)');
  const batch = checkBatchSize(o.batchSize ?? 64);
  const labels = labelsFor(p, n, o.labels);
  const den = modelDenoiser(p.model, p.params, p.scheduler.prediction,
    { name: 'encode_denoiser', ...(o.provider ? { provider: o.provider } : {}) });
  const key = RngKey.fromSeed(o.seed ?? 0);
  const batches = Math.ceil(n / batch);
  const start = performance.now();
  try {
    for (let b = 0; b < batches; b++) {
      const first = b * batch;
      const count = Math.min(batch, n - first);
      const offset = first * per;
      await fn(den, first, count, labels?.slice(first, first + count),
        (size, k) => key.fold(k + 1).normal(size, offset),
        (done, total) => o.onStep?.(b * total + done, batches * total));
    }
  } finally {
    await den.dispose();
  }
  return { seconds: (performance.now() - start) / 1000, modelCalls: den.stats.calls };
}

// ---- encode / decode ----

/**
 * Encodes images [N, C, H, W] in [-1, 1] with a DDPM-family pipeline: DPM-Encoder codes for
 * eta > 0 (decoded exactly by the same model), DDIM inversion's x_T for eta = 0.
 */
export async function encodeImages(p: Pipeline, images: HostArray<'float32'>, o: EncodeOptions,
  source?: string): Promise<{ codes: LatentCodes } & RunStats> {
  const acp = alphasCumprodOf(p);
  const [n, per] = checkImages(p, images);
  const t0 = o.t0 ?? acp.length - 1;
  if (!(o.eta >= 0 && o.eta <= 1)) throw new RangeError(`eta must be in [0, 1], got ${o.eta}`);
  const walk = encoderWalk(acp, o.steps, t0); // checks steps and t0 before any model call
  const K = o.eta > 0 ? walk.timesteps.length - 1 : 0;
  const keep = o.eta > 0 && (o.residual ?? true);
  const bytes = n * per * 4 * (K + 1 + (keep ? 1 : 0));
  const limit = o.memoryLimit ?? DEFAULT_MEMORY_LIMIT;
  if (bytes > limit) {
    throw new MemoryLimitError(`codes of ${n} images with ${o.steps} steps take ` +
      `${(bytes / 2 ** 20).toFixed(0)} MiB, over the limit of ${(limit / 2 ** 20).toFixed(0)} ` +
      'MiB: encode fewer images per run, or fewer steps');
  }
  const xT = new Float32Array(n * per);
  const eps = new Float32Array(n * K * per);
  const residual = keep ? new Float32Array(n * per) : null;
  const labels = labelsFor(p, n, o.labels);
  const stats = await inBatches(p, n, per, o, async (den, first, count, condition, noise,
    onStep) => {
    const x0 = new HostArray(images.data.subarray(first * per, (first + count) * per),
      [count, ...p.model.sampleShape], 'float32');
    const run = { condition, onStep, ...(o.signal ? { signal: o.signal } : {}) };
    if (o.eta === 0) {
      xT.set(toF32(await ddimInvert(den, acp, x0, { ...run, steps: o.steps, t0 })), first * per);
      return;
    }
    const z = await dpmEncode(den, acp, x0, { ...run, steps: o.steps, t0, eta: o.eta, noise,
      residual: keep });
    xT.set(z.xT, first * per);
    eps.set(z.eps, first * K * per);
    if (residual) residual.set(z.residual!, first * per);
  });
  const z: DpmLatents = { settings: { steps: o.steps, t0, eta: o.eta },
    shape: [n, ...p.model.sampleShape], xT, eps, residual };
  return { codes: { z, model: p.modelFolder, seed: o.seed, labels: labels ?? null,
    ...(source ? { source } : {}), alphaBars: walk.alphaBars }, ...stats };
}

/** Throws unless codes fit a model: its image shape and, along the walk, its noise schedule. */
export function checkCodesFit(codes: LatentCodes, p: Pipeline, file?: string): void {
  const { steps, t0 } = codes.z.settings;
  checkWalkFits(p, codes.z.shape, steps, t0, codes.alphaBars, file ?? `codes from ${codes.model}`);
}

/** Images [N, ...shape] walked in `steps` from t0 with alpha-bars `alphaBars` (the encoder's)
 *  fit model `p`: same image shape, same alphas_cumprod along the walk. */
function checkWalkFits(p: Pipeline, shape: readonly number[], steps: number, t0: number,
  alphaBars: Float64Array, where: string): void {
  const sample = shape.slice(1);
  if (sample.join() !== p.model.sampleShape.join()) {
    throw new RangeError(`${where} hold [${sample.join(', ')}] images; ${p.modelFolder} makes ` +
      `[${p.model.sampleShape.join(', ')}]`);
  }
  const acp = alphasCumprodOf(p);
  if (t0 > acp.length - 1) {
    throw new RangeError(`${where} start at t0 = ${t0}; ${p.modelFolder} has ${acp.length} ` +
      'training steps');
  }
  const mine = encoderWalk(acp, steps, t0);
  mine.alphaBars.forEach((a, i) => {
    const theirs = alphaBars[i];
    if (theirs === undefined || Math.abs(a - theirs) > 1e-6 * Math.max(a, 1e-3)) {
      throw new RangeError(`${where} were encoded on another noise schedule: alphas_cumprod at ` +
        `t = ${mine.timesteps[i] ?? -1} is ${theirs} there, ${a} for ${p.modelFolder}; codes ` +
        'move only between models with the same schedule');
    }
  });
}

/** Decodes codes with a pipeline's model (reconstruction, or translation with another model).
 *  Returns images [N, C, H, W], not clamped. */
export async function decodeLatents(p: Pipeline, codes: LatentCodes, o: DecodeOptions = {}):
  Promise<{ images: HostArray<'float32'> } & RunStats> {
  checkCodesFit(codes, p);
  const acp = alphasCumprodOf(p);
  const { z } = codes;
  const [n, ...sample] = z.shape as number[];
  const per = sample.reduce((m, d) => m * d, 1);
  const K = z.settings.eta > 0 ? z.settings.steps - 1 : 0;
  const out = new Float32Array(n! * per);
  const stats = await inBatches(p, n!, per, o, async (den, first, count, condition, _noise,
    onStep) => {
    const rows = (a: Float32Array, k: number) =>
      a.subarray(first * k * per, (first + count) * k * per);
    const shape = [count, ...sample];
    const run = { condition, onStep, ...(o.signal ? { signal: o.signal } : {}) };
    const x = z.settings.eta === 0
      ? await ddimReconstruct(den, acp, { data: rows(z.xT, 1), shape },
        { ...run, steps: z.settings.steps, t0: z.settings.t0 })
      : await dpmDecode(den, acp, { settings: z.settings, shape, xT: rows(z.xT, 1),
        eps: rows(z.eps, K), residual: z.residual ? rows(z.residual, 1) : null }, run);
    out.set(toF32(x), first * per);
  });
  return { images: new HostArray(out, [n!, ...sample], 'float32'), ...stats };
}

/** CycleDiffusion: encode with `from`, decode with `to` (the same codes; `from` twice is a
 *  reconstruction). */
export async function translateImages(from: Pipeline, to: Pipeline, images: HostArray<'float32'>,
  o: EncodeOptions, source?: string):
  Promise<{ codes: LatentCodes; images: HostArray<'float32'> } & RunStats> {
  // before any model call: both models take the images and share the walk's alpha-bars
  const acp = alphasCumprodOf(from);
  const t0 = o.t0 ?? acp.length - 1;
  checkWalkFits(to, images.shape, o.steps, t0, encoderWalk(acp, o.steps, t0).alphaBars,
    `codes of ${from.modelFolder}`);
  const enc = await encodeImages(from, images, { ...o,
    ...(o.onStep ? { onStep: (d, t) => o.onStep!(d, 2 * t) } : {}) }, source);
  const dec = await decodeLatents(to, enc.codes, { ...o,
    ...(o.onStep ? { onStep: (d, t) => o.onStep!(t + d, 2 * t) } : {}) });
  return { codes: enc.codes, images: dec.images, seconds: enc.seconds + dec.seconds,
    modelCalls: enc.modelCalls + dec.modelCalls };
}

/** DDIM inversion to x_T and back with the same model (eta = 0 encode, then decode). */
export async function invertImages(p: Pipeline, images: HostArray<'float32'>,
  o: Omit<EncodeOptions, 'eta' | 'residual'>):
  Promise<{ noise: HostArray<'float32'>; reconstructed: HostArray<'float32'> } & RunStats> {
  const enc = await encodeImages(p, images, { ...o, eta: 0 });
  const dec = await decodeLatents(p, enc.codes, o);
  return { noise: new HostArray(enc.codes.z.xT, images.shape, 'float32'),
    reconstructed: dec.images, seconds: enc.seconds + dec.seconds,
    modelCalls: enc.modelCalls + dec.modelCalls };
}

/** SDEdit: noise the images to strength * T and sample back with DDIM (eta 0). */
export async function img2img(p: Pipeline, images: HostArray<'float32'>,
  o: Omit<EncodeOptions, 'eta' | 'residual' | 't0'> & { strength: number }):
  Promise<{ images: HostArray<'float32'>; t0: number; steps: number } & RunStats> {
  const acp = alphasCumprodOf(p);
  const [n, per] = checkImages(p, images);
  const t0 = strengthTimestep(o.strength, acp.length);
  const steps = Math.min(o.steps, t0 + 1);
  const out = new Float32Array(n * per);
  const stats = await inBatches(p, n, per, o, async (den, first, count, condition, noise,
    onStep) => {
    const x0 = new HostArray(images.data.subarray(first * per, (first + count) * per),
      [count, ...p.model.sampleShape], 'float32');
    const x = await sdedit(den, acp, x0, { steps, t0, noise, condition, onStep,
      ...(o.signal ? { signal: o.signal } : {}) });
    out.set(toF32(x), first * per);
  });
  return { images: new HostArray(out, images.shape, 'float32'), t0, steps, ...stats };
}

// ---- measures ----

/** Largest absolute and mean squared difference of two image batches. */
export function reconstructionError(a: HostArray, b: HostArray): { maxAbs: number; mse: number } {
  if (a.shape.join() !== b.shape.join()) {
    throw new RangeError(`reconstructionError: shapes [${a.shape.join(', ')}] and ` +
      `[${b.shape.join(', ')}] differ`);
  }
  let [maxAbs, sq] = [0, 0];
  for (let i = 0; i < a.data.length; i++) {
    const d = Number(a.data[i]) - Number(b.data[i]);
    maxAbs = Math.max(maxAbs, Math.abs(d));
    sq += d * d;
  }
  return { maxAbs, mse: sq / a.data.length };
}

export interface ClassPreservation {
  /** Share of translated images the classifier puts in the class it gives their source. */
  preserved: number;
  /** Accuracy on the sources and on the translations, when labels are known. */
  sourceAccuracy?: number;
  translatedAccuracy?: number;
}

/**
 * How often translation keeps the class, by the shipped MNIST classifier (metrics.ts), or the
 * reason it cannot be measured (no classifier folder, images it does not take).
 */
export async function classPreservation(source: HostArray<'float32'>,
  translated: HostArray<'float32'>, labels?: Int32Array, classifierDir?: string):
  Promise<ClassPreservation | { unavailable: string }> {
  let ex: ReturnType<typeof featureExtractor>;
  try {
    ex = featureExtractor(await loadMetricClassifier(classifierDir));
  } catch (e) {
    return { unavailable: `no metrics classifier (${(e as Error).message})` };
  }
  try {
    const [a, b] = [await ex.outputs(source), await ex.outputs(translated)];
    const predicted = Int32Array.from({ length: a.n }, (_, i) => {
      const row = a.logits.subarray(i * a.classes, (i + 1) * a.classes);
      return row.indexOf(Math.max(...row));
    });
    return { preserved: classAccuracy(b, predicted),
      ...(labels ? { sourceAccuracy: classAccuracy(a, labels),
        translatedAccuracy: classAccuracy(b, labels) } : {}) };
  } catch (e) {
    return { unavailable: (e as Error).message };
  } finally {
    await ex.dispose();
  }
}

// ---- pictures ----

/**
 * Writes image batches [N, C, H, W] of equal shape as one PNG grid of aligned rows: `cols`
 * images of the first batch, the same images of the second below them, ..., then the next
 * `cols` (source above translation, for `diffuse translate`).
 */
export async function writeRowsGrid(path: string, batches: readonly HostArray<'float32'>[],
  cols: number): Promise<void> {
  const shape = batches[0]!.shape;
  if (batches.some((b) => b.shape.join() !== shape.join())) {
    throw new RangeError('writeRowsGrid: batches of different shapes');
  }
  const [n, ...sample] = shape as number[];
  const per = sample.reduce((m, d) => m * d, 1);
  const chunks = Math.ceil(n! / cols);
  const out = new Float32Array(chunks * batches.length * cols * per).fill(-1);
  for (let c = 0; c < chunks; c++) {
    const count = Math.min(cols, n! - c * cols);
    batches.forEach((b, r) => out.set(b.data.subarray(c * cols * per, (c * cols + count) * per),
      ((c * batches.length + r) * cols) * per));
  }
  const grid = imageGrid(new HostArray(out, [out.length / per, ...sample]), { cols });
  try {
    await writePng(path, grid);
  } catch (e) {
    throw explainFsError(e, 'write', path);
  }
}
