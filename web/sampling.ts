/**
 * @file The playground's sampling, free of the DOM and of any one ONNX Runtime build: a
 * `Denoiser` over an exported denoiser's InferenceSession (onnxruntime-web in the page,
 * onnxruntime-node in the tests), and one image sampled with Diffuse's own samplers
 * (src/diffusion `sample`), scheduler parsing and classifier-free guidance, with the noise
 * `diffuse sample` draws for image 0 of a seed (Philox: the initial latent from stream
 * key.fold(0), step k's noise from key.fold(k + 1)). So the page's digit for a seed, class,
 * sampler, steps and guidance is the one `diffuse sample --n 1` writes, up to the runtimes'
 * float rounding.
 */
import { conditionLabels, withData, type Batch, type Denoiser, type StepRecord } from '../src/diffusion/denoiser.js';
import { parseScheduler, type SchedulerSpec } from '../src/diffusion/diffusers/spec.js';
import { classifierFreeGuidance } from '../src/diffusion/guidance.js';
import type { Prediction } from '../src/diffusion/predictions.js';
import { sample, samplersFor } from '../src/diffusion/sampling.js';
import { RngKey } from '../src/engine/random/philox.js';

/** What the page reads of an exported model's sidecar (src/pipelines/export.ts ExportedMeta;
 *  restated here because that module is Node code). */
export interface DenoiserMeta {
  format: string;
  version: number;
  modelClass: string;
  prediction: Prediction;
  sampleShape: [number, number, number];
  batch: number | null;
  numClasses: number;
  nullClass: number | null;
  scheduler: Record<string, unknown>;
}

/** The sidecar checked, with its scheduler config parsed as Diffuse parses it. */
export interface LoadedMeta extends DenoiserMeta {
  spec: SchedulerSpec;
  /** The sampler names that fit the model's process (VP or flow), its default first. */
  samplers: string[];
}

/** Checks a sidecar's JSON (clear errors naming the field and the form expected). */
export function readMeta(json: unknown, source = 'model.json'): LoadedMeta {
  const m = json as Partial<DenoiserMeta> | null;
  const bad = (field: string, expected: string, got: unknown): never => {
    throw new TypeError(`${source}: '${field}' must be ${expected}, got ${JSON.stringify(got)}`);
  };
  if (typeof m !== 'object' || m === null) return bad('(root)', 'an object', m);
  if (m.format !== 'diffuse-denoiser') bad('format', "'diffuse-denoiser' (written by diffuse export)", m.format);
  if (m.version !== 1) bad('version', '1', m.version);
  const shape = m.sampleShape;
  if (!Array.isArray(shape) || shape.length !== 3 || !shape.every((d) => Number.isInteger(d) && d > 0)) {
    bad('sampleShape', '[C, H, W] of positive integers', shape);
  }
  if (!Number.isInteger(m.numClasses) || m.numClasses! < 0) bad('numClasses', 'an integer >= 0', m.numClasses);
  if (m.numClasses! > 0 && !Number.isInteger(m.nullClass)) {
    bad('nullClass', 'an integer (the CFG null label)', m.nullClass);
  }
  if (m.batch !== null && !(Number.isInteger(m.batch) && m.batch! >= 1)) {
    bad('batch', 'null or an integer >= 1', m.batch);
  }
  if (typeof m.scheduler !== 'object' || m.scheduler === null) {
    bad('scheduler', 'a scheduler config object', m.scheduler);
  }
  const spec = parseScheduler(m.scheduler!);
  if (spec.prediction !== m.prediction) {
    bad('prediction', `the scheduler config's '${spec.prediction}'`, m.prediction);
  }
  const fits = samplersFor(spec);
  const first = spec.family === 'flow' ? 'flow-euler' : 'ddim';
  return { ...(m as DenoiserMeta), spec, samplers: [first, ...fits.filter((n) => n !== first)] };
}

/** The parts of an ONNX Runtime build the denoiser uses (onnxruntime-web and -node both fit). */
export interface OrtSession {
  run(feeds: Record<string, never>): Promise<Record<string, { data: unknown; dims: readonly number[] }>>;
}
export type MakeTensor = (type: 'float32' | 'int64', data: Float32Array | BigInt64Array,
  dims: readonly number[]) => unknown;

/** Model calls and rows so far, and the time spent in session.run (ms). */
export interface CallStats { calls: number; rows: number; ms: number }

/**
 * A Denoiser over an exported model's session. A graph exported at a fixed batch gets its rows
 * in chunks of that size, the last one padded (rows are independent).
 */
export function sessionDenoiser(session: OrtSession, tensor: MakeTensor, meta: DenoiserMeta,
  stats: CallStats = { calls: 0, rows: 0, ms: 0 }): Denoiser & { stats: CallStats } {
  const per = meta.sampleShape.reduce((a, b) => a * b, 1);
  const run = async (x: Float32Array, t: Float32Array, labels: BigInt64Array | undefined, rows: number) => {
    const feeds: Record<string, unknown> = {
      x: tensor('float32', x, [rows, ...meta.sampleShape]),
      t: tensor('float32', t, [rows]),
    };
    if (meta.numClasses > 0) {
      // The graph always takes labels; a call without a condition is the unconditional one.
      feeds['class_labels'] = tensor('int64', labels ?? new BigInt64Array(rows).fill(BigInt(meta.nullClass!)), [rows]);
    }
    const t0 = performance.now();
    const out = (await session.run(feeds as Record<string, never>))['prediction'];
    stats.ms += performance.now() - t0;
    stats.calls++;
    stats.rows += rows;
    if (!out || !(out.data instanceof Float32Array) || out.data.length !== rows * per) {
      throw new TypeError(`the model returned no float32 'prediction' of [${[rows, ...meta.sampleShape].join(', ')}]`);
    }
    return out.data;
  };
  return {
    prediction: meta.prediction,
    stats,
    async predict(x: Batch, t: Float64Array, condition?: unknown): Promise<Batch> {
      const rows = x.shape[0]!;
      const labels = condition === undefined ? undefined : BigInt64Array.from(conditionLabels(condition), BigInt);
      if (labels && labels.length !== rows) {
        throw new RangeError(`class labels: expected ${rows} (one per row), got ${labels.length}`);
      }
      const chunk = meta.batch ?? rows;
      const out = new Float32Array(rows * per);
      for (let i = 0; i < rows; i += chunk) {
        const n = Math.min(chunk, rows - i);
        const xs = new Float32Array(chunk * per); // zero rows pad a short last chunk
        xs.set(x.data.subarray(i * per, (i + n) * per));
        const ts = new Float32Array(chunk);
        ts.set(t.subarray(i, i + n));
        let ls: BigInt64Array | undefined;
        if (labels) {
          ls = new BigInt64Array(chunk).fill(BigInt(meta.nullClass ?? 0));
          ls.set(labels.subarray(i, i + n));
        }
        out.set((await run(xs, ts, ls, chunk)).subarray(0, n * per), i * per);
      }
      return withData(x, out);
    },
  };
}

export interface DigitRequest {
  sampler: string;
  steps: number;
  /** A class 0..numClasses-1, or null: unconditional (the null class; no guidance). */
  label: number | null;
  /** Classifier-free guidance weight (1: none, 0: the unconditional model). */
  guidance: number;
  seed: number;
  onStep?: (record: StepRecord) => void;
  signal?: AbortSignal;
}

/** One image [C, H, W] in [-1, 1] (clamped, as the pipelines clamp). */
export async function sampleDigit(denoiser: Denoiser, meta: LoadedMeta, r: DigitRequest): Promise<Float32Array> {
  if (!meta.samplers.includes(r.sampler)) {
    throw new RangeError(`sampler '${r.sampler}' does not fit this ${meta.spec.className} model: ` +
      `expected one of ${meta.samplers.join(', ')}`);
  }
  if (!(Number.isInteger(r.steps) && r.steps >= 1 && r.steps <= 1000)) {
    throw new RangeError(`steps must be an integer from 1 to 1000, got ${r.steps}`);
  }
  if (!(Number.isFinite(r.guidance) && r.guidance >= 0)) {
    throw new RangeError(`guidance must be a number >= 0, got ${r.guidance}`);
  }
  if (!(Number.isSafeInteger(r.seed) && r.seed >= 0)) {
    throw new RangeError(`seed must be an integer >= 0, got ${r.seed}`);
  }
  const k = meta.numClasses;
  if (r.label !== null && !(k > 0 && Number.isInteger(r.label) && r.label >= 0 && r.label < k)) {
    throw new RangeError(k ? `class ${r.label} is out of range: expected 0..${k - 1} or unconditional`
      : `class ${r.label}: this model is unconditional`);
  }
  const per = meta.sampleShape.reduce((a, b) => a * b, 1);
  const key = RngKey.fromSeed(r.seed);
  const x0 = withData({ data: new Float32Array(per), shape: [1, ...meta.sampleShape] }, key.fold(0).normal(per));
  // As sampleInBatches: guidance 0 is the null label alone, 1 the label alone, else CFG.
  const uncond = k > 0 ? [meta.nullClass!] : undefined;
  const label = r.label === null || r.guidance === 0 ? uncond : [r.label];
  const guided = r.label !== null && r.guidance !== 1 && r.guidance !== 0;
  const d = guided ? classifierFreeGuidance(denoiser, { scale: r.guidance, uncondition: uncond }) : denoiser;
  const x = await sample(d, x0, meta.spec, {
    sampler: r.sampler, steps: r.steps, condition: label,
    noise: (size, step) => key.fold(step + 1).normal(size),
    ...(r.onStep ? { onStep: r.onStep } : {}),
    ...(r.signal ? { signal: r.signal } : {}),
  });
  return Float32Array.from(x.data, (v) => Math.min(1, Math.max(-1, v)));
}
