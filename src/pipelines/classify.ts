/**
 * @file The run behind `diffuse classify`: a loaded class-conditional pipeline used as a
 * zero-shot classifier (methods/diffusion-classifier.ts), a batch of images per round of model
 * calls, the noise of each image a function of (seed, image index) alone.
 */
import { HostArray } from '../engine/host.js';
import { pointsAt } from '../diffusion/training.js';
import { toEps } from '../diffusion/predictions.js';
import {
  classifyBatch, DIFFUSION_CLASSIFIER_DEFAULTS, philoxNoise, rowsPerImage,
  type DiffusionClassifierOptions, type NoiseLevels,
} from '../methods/diffusion-classifier.js';
import { int64Labels, type Batch } from '../diffusion/denoiser.js';
import { modelDenoiser } from './graph-denoiser.js';
import { classCount, requirePixelSpace, type Pipeline, type Provider } from './sample.js';

export interface ClassifyOptions extends DiffusionClassifierOptions {
  seed: number;
  /** Images whose rounds share model calls. */
  imagesPerBatch: number;
  /** Most rows per model call. */
  rowsPerCall: number;
  provider?: Provider;
  signal?: AbortSignal;
  /** The index of the first image (its noise is drawn for that index): a resumed run passes
   *  the images left and how many were done. */
  offset?: number;
}

export const CLASSIFY_DEFAULTS: Readonly<ClassifyOptions> = Object.freeze({
  ...DIFFUSION_CLASSIFIER_DEFAULTS, seed: 0, imagesPerBatch: 25, rowsPerCall: 64,
});

export interface ClassifyResult {
  predictions: Int32Array;
  /** Per image, per class: the mean error it was last scored with. */
  meanErrors: Float64Array[];
  /** Fraction right, when labels were given. */
  accuracy?: number;
  seconds: number;
  /** Model rows per image (image x class x timestep x trial). */
  rowsPerImage: number;
}

export interface ClassifyEvents {
  /** After each batch: images done, of total, how many of those were right (labels), and the
   *  verdicts so far (to save a partial result). */
  onBatch?: (done: number, total: number, correct: number,
    sofar: Pick<ClassifyResult, 'predictions' | 'meanErrors'>) => void | Promise<void>;
}

/** x_t = alpha x0 + sigma eps at the pipeline's training timesteps (DDPM tables or flow). */
export function noiseLevels(p: Pipeline): NoiseLevels {
  const T = p.scheduler.config.num_train_timesteps as number;
  return {
    T,
    coefficients: (t) => {
      const pt = pointsAt(p.scheduler, [t]);
      return { alpha: pt.alpha[0]!, sigma: pt.sigma[0]! };
    },
  };
}

/**
 * Classifies images [N, C, H, W] (in [-1, 1]) with the pipeline's class-conditional model;
 * `labels` (one per image), when given, give the accuracy.
 */
export async function classifyImages(p: Pipeline, images: HostArray<'float32'>,
  labels: ArrayLike<number> | undefined, options: Partial<ClassifyOptions> = {},
  ev: ClassifyEvents = {}): Promise<ClassifyResult> {
  const o = { ...CLASSIFY_DEFAULTS, ...options };
  requirePixelSpace(p, 'the Diffusion Classifier');
  const classes = classCount(p.model);
  if (classes < 2) {
    throw new RangeError(`the Diffusion Classifier needs a class-conditional model: ` +
      `${p.modelFolder} (${p.model.cls.className}) has no class labels`);
  }
  const shape = p.model.sampleShape;
  const [n, ...rest] = images.shape;
  if (rest.length !== 3 || rest.some((v, i) => v !== shape[i])) {
    throw new RangeError(`images: expected [N, ${shape.join(', ')}] for ${p.modelFolder}, got ` +
      `[${images.shape.join(', ')}]`);
  }
  if (labels && labels.length !== n) {
    throw new RangeError(`labels: expected one per image (${n}), got ${labels.length}`);
  }
  for (const [k, v] of [['imagesPerBatch', o.imagesPerBatch], ['rowsPerCall', o.rowsPerCall]] as const) {
    if (!(Number.isInteger(v) && v >= 1)) throw new RangeError(`${k} must be an integer >= 1, got ${v}`);
  }
  const levels = noiseLevels(p);
  const cost = rowsPerImage(classes, levels.T, o); // checks the rounds before anything compiles
  const per = shape[0] * shape[1] * shape[2];
  const prediction = p.scheduler.prediction;
  const graph = modelDenoiser(p.model, p.params, prediction,
    { name: 'classify_denoiser', ...(o.provider ? { provider: o.provider } : {}) });
  const eps = async (x: Float32Array, t: Float64Array, y: Int32Array): Promise<Float32Array> => {
    const rows = t.length;
    const out = new Float32Array(rows * per);
    for (let i = 0; i < rows; i += o.rowsPerCall) {
      if (o.signal?.aborted) throw o.signal.reason instanceof Error ? o.signal.reason : new Error('aborted');
      const j = Math.min(rows, i + o.rowsPerCall);
      const xb: Batch = new HostArray(x.subarray(i * per, j * per), [j - i, ...shape], 'float32');
      const pb = (await graph.predict(xb, t.subarray(i, j), int64Labels(Array.from(y.subarray(i, j))))).data;
      if (prediction === 'eps') out.set(pb, i * per);
      else {
        for (let r = i; r < j; r++) {
          const { alpha, sigma } = levels.coefficients(t[r]!);
          const at = (r - i) * per;
          out.set(toEps(prediction, xb.data.subarray(at, at + per), pb.subarray(at, at + per),
            alpha, sigma) as Float32Array, r * per);
        }
      }
    }
    return out;
  };
  const predictions = new Int32Array(n);
  const meanErrors: Float64Array[] = [];
  let correct = 0;
  const start = performance.now();
  try {
    for (let first = 0; first < n; first += o.imagesPerBatch) {
      const count = Math.min(o.imagesPerBatch, n - first);
      const x0 = images.data.subarray(first * per, (first + count) * per);
      const r = await classifyBatch(eps, levels, x0, per, classes, o,
        philoxNoise(o.seed, (o.offset ?? 0) + first, per));
      r.images.forEach((v, b) => {
        predictions[first + b] = v.prediction;
        meanErrors.push(v.meanError);
        if (labels && labels[first + b] === v.prediction) correct++;
      });
      await ev.onBatch?.(first + count, n, correct,
        { predictions: predictions.subarray(0, first + count), meanErrors });
    }
  } finally {
    await graph.dispose();
  }
  return { predictions, meanErrors, seconds: (performance.now() - start) / 1000,
    rowsPerImage: cost, ...(labels ? { accuracy: correct / n } : {}) };
}

/** One line per image: index, file (for a folder), label (if known), prediction, mean error
 *  per class. */
export function classifyCsv(r: Pick<ClassifyResult, 'predictions' | 'meanErrors'>,
  labels?: ArrayLike<number>, files?: readonly string[]): string {
  const k = r.meanErrors[0]?.length ?? 0;
  const head = ['image', ...(files ? ['file'] : []), ...(labels ? ['label'] : []), 'prediction',
    ...Array.from({ length: k }, (_, c) => `error_${c}`)];
  // A file name with a comma or quote is quoted, as CSV readers expect.
  const quoted = (f: string) => (/[",\n]/.test(f) ? `"${f.replace(/"/g, '""')}"` : f);
  const lines = r.meanErrors.map((e, i) => [i, ...(files ? [quoted(files[i]!)] : []),
    ...(labels ? [labels[i]] : []), r.predictions[i],
    ...Array.from(e, (v) => Number.isFinite(v) ? v.toPrecision(6) : '')].join(','));
  return [head.join(','), ...lines].join('\n') + '\n';
}

/** The fields of one CSV line, with "quoted" fields (commas and doubled quotes inside). */
function csvFields(line: string): string[] {
  const out: string[] = [];
  for (let i = 0; i <= line.length;) {
    if (line[i] === '"') {
      let v = '';
      for (i++; i < line.length; i++) {
        if (line[i] === '"' && line[i + 1] === '"') (v += '"', i++);
        else if (line[i] === '"') break;
        else v += line[i];
      }
      out.push(v);
      i += 2; // the closing quote and the comma
    } else {
      const end = line.indexOf(',', i);
      out.push(line.slice(i, end < 0 ? line.length : end));
      i = end < 0 ? line.length + 1 : end + 1;
    }
  }
  return out;
}

/** The verdicts of a CSV classifyCsv wrote (a run to resume), or an error naming the line. */
export function readClassifyCsv(text: string, file: string):
  Pick<ClassifyResult, 'predictions' | 'meanErrors'> {
  const [head, ...lines] = text.trim().split('\n');
  const cols = head?.split(',') ?? [];
  const pi = cols.indexOf('prediction');
  const errs = cols.flatMap((c, i) => (/^error_\d+$/.test(c) ? [i] : []));
  if (cols[0] !== 'image' || pi < 0 || errs.length < 2) {
    throw new RangeError(`${file}: not a diffuse classify CSV (header '${head ?? ''}')`);
  }
  const predictions: number[] = [];
  const meanErrors: Float64Array[] = [];
  lines.forEach((line, j) => {
    const f = csvFields(line);
    const v = f.map(Number);
    if (f.length !== cols.length || v[0] !== j || !Number.isInteger(v[pi])) {
      throw new RangeError(`${file}, line ${j + 2}: expected image ${j} with ${cols.length} fields`);
    }
    predictions.push(v[pi]!);
    meanErrors.push(Float64Array.from(errs, (i) => (f[i] === '' ? NaN : v[i]!)));
  });
  return { predictions: Int32Array.from(predictions), meanErrors };
}
