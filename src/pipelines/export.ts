/**
 * @file `diffuse export`: a pipeline's denoiser as one self-contained ONNX file, for runtimes
 * other than Diffuse's own (onnxruntime-web in the browser playground, ORT in Python, ...).
 *
 * The file is the graph `sampleImages` compiles (the model with its weights baked in as
 * initializers, a learned-sigma half cut off), traced once with a batch dimension named
 * `batch` (or a fixed one), standard ONNX ops only:
 *
 *     x             float32 [B, C, H, W]  the state x_t in the process frame
 *     t             float32 [B]           model time (Schedule.timesteps' values)
 *     class_labels  int64   [B]           only for class-conditional models; the null class
 *                                         (numClasses) is the unconditional half of CFG
 *  -> prediction    float32 [B, C, H, W]  eps, x0, v or flow, as the sidecar says
 *
 * Beside it, `NAME.json` says what a sampler needs to drive it: the prediction type, the
 * sample shape, the classes and the null class, and the scheduler config as Diffuse parsed it
 * (every key with diffusers' names and defaults), so `parseScheduler` on the other side
 * builds the same schedule.
 */
import { stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import type { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { toOnnx } from '../engine/onnx.js';
import type { Tensor } from '../engine/tensor.js';
import { trace } from '../engine/trace.js';
import type { Tree } from '../engine/tree.js';
import { specToJson } from '../diffusion/diffusers/spec.js';
import type { Prediction } from '../diffusion/predictions.js';
import { writeFileAtomic } from '../util/atomic.js';
import { explainFsError, FileSystemError } from '../util/fs-errors.js';
import { predictionOf, type ModelFamily } from './image-models.js';
import { classCount, loadPipeline, requirePixelSpace, type Pipeline } from './sample.js';

/** What the sidecar's `format` says, and its version (bumped when a field changes meaning). */
export const EXPORT_FORMAT = 'diffuse-denoiser';
export const EXPORT_VERSION = 1;

/** The graph's input and output names. */
export const EXPORT_NAMES = { x: 'x', t: 't', labels: 'class_labels', out: 'prediction' } as const;

/** The sidecar (`model.json`) of an exported denoiser. */
export interface ExportedMeta {
  format: typeof EXPORT_FORMAT;
  version: typeof EXPORT_VERSION;
  /** The ONNX file's name, in the sidecar's folder. */
  onnx: string;
  modelClass: string;
  family: ModelFamily;
  /** What the output is: eps, x0, v or flow. */
  prediction: Prediction;
  /** [C, H, W] of one sample. */
  sampleShape: [number, number, number];
  /** The batch size the graph was traced at, or null: any (the dimension is named 'batch'). */
  batch: number | null;
  /** Classes 0..numClasses-1; 0: unconditional (the graph has no class_labels input). */
  numClasses: number;
  /** The label meaning "no class" (classifier-free guidance's unconditional half), or null. */
  nullClass: number | null;
  inputs: { name: string; dtype: 'float32' | 'int64'; shape: (number | string)[] }[];
  output: { name: string; dtype: 'float32'; shape: (number | string)[] };
  /** scheduler_config.json as Diffuse parsed it: every key of the class, diffusers' names. */
  scheduler: Record<string, unknown>;
}

export interface ExportOptions {
  /** A fixed batch size (default: any, a dimension named 'batch'). */
  batch?: number;
}

export interface ExportResult {
  onnxPath: string;
  metaPath: string;
  bytes: number;
  meta: ExportedMeta;
}

/** The sidecar's path for an ONNX path: `dir/model.onnx` -> `dir/model.json`. */
export function sidecarPath(onnxPath: string): string {
  return join(dirname(onnxPath), `${basename(onnxPath).replace(/\.onnx$/i, '')}.json`);
}

/** An output path that cannot be one: a folder, or not an .onnx name (the CLI's usage error). */
export class ExportPathError extends RangeError {
  override name = 'ExportPathError';
}

const isFolder = async (p: string): Promise<boolean> =>
  (await stat(p).catch(() => null))?.isDirectory() ?? false;

/** Refuses an output path that is a folder, is not `*.onnx`, or whose sidecar's place a folder
 *  takes: before any work. */
export async function checkExportPath(out: string): Promise<void> {
  if (await isFolder(out)) {
    throw new ExportPathError(`export: ${out} is a folder; the output must be a file name ending in ` +
      `.onnx, such as ${join(out, 'model.onnx')}`);
  }
  if (!/\.onnx$/i.test(out) || basename(out) === '.onnx') {
    throw new ExportPathError(`export: the output must be a file name ending in .onnx (its sidecar ` +
      `goes beside it as NAME.json), got '${out}'`);
  }
  const side = sidecarPath(out);
  if (await isFolder(side)) throw new FileSystemError('write file', resolve(side), 'EISDIR');
}

/**
 * Writes the pipeline's denoiser to `out` (ONNX) and its sidecar beside it (`NAME.json`).
 * Ensembles (a router over several experts) are refused: they are not one graph.
 */
export async function exportDenoiser(p: Pipeline, out: string, o: ExportOptions = {}):
  Promise<ExportResult> {
  await checkExportPath(out);
  if (o.batch !== undefined && !(Number.isInteger(o.batch) && o.batch >= 1)) {
    throw new RangeError(`export: batch must be an integer >= 1, got ${o.batch}`);
  }
  requirePixelSpace(p, 'diffuse export (the page runs the denoiser alone)');
  if (p.ensemble) {
    throw new RangeError(`export: ${p.modelFolder} is a decentralized-experts ensemble (a ` +
      'router over several experts), not one denoiser graph; export an expert folder instead');
  }
  const k = classCount(p.model);
  const [c, h, w] = p.model.sampleShape;
  const b = o.batch ?? 'batch';
  const N = EXPORT_NAMES;
  const model = predictionOf(p.model, ops.constantTree(p.params as Tree<HostArray>));
  const inputs: ExportedMeta['inputs'] = [
    { name: N.x, dtype: 'float32', shape: [b, c, h, w] },
    { name: N.t, dtype: 'float32', shape: [b] },
    ...(k ? [{ name: N.labels, dtype: 'int64' as const, shape: [b] }] : []),
  ];
  // An unconditional model is traced without labels (a DiT then feeds its null row itself).
  const fn = k ? (x: Tensor, t: Tensor, y: Tensor) => model(x, t, y)
    : (x: Tensor, t: Tensor) => model(x, t);
  const graph = trace(fn, inputs.map((i) => ({ shape: i.shape, dtype: i.dtype })),
    { argNames: inputs.map((i) => i.name) });
  const prediction = p.scheduler.prediction;
  const doc = `Diffuse denoiser (${p.model.cls.className}): ${inputs.map((i) =>
    `${i.name} ${i.dtype} [${i.shape.join(', ')}]`).join(', ')} -> ${N.out} (${prediction})`;
  // Standard ops only (no ORT-specific NCHWc kernels): other runtimes must read the file.
  const bytes = toOnnx({ ...graph, outputNames: [N.out] }, { name: 'denoiser', docString: doc });
  const meta: ExportedMeta = {
    format: EXPORT_FORMAT, version: EXPORT_VERSION, onnx: basename(out),
    modelClass: p.model.cls.className, family: p.model.family, prediction,
    sampleShape: [c, h, w], batch: o.batch ?? null, numClasses: k, nullClass: k ? p.model.numClasses : null,
    inputs, output: { name: N.out, dtype: 'float32', shape: [b, c, h, w] },
    scheduler: specToJson(p.scheduler),
  };
  const metaPath = sidecarPath(out);
  for (const [path, data] of [[out, bytes], [metaPath, `${JSON.stringify(meta, null, 1)}\n`]] as const) {
    try {
      await writeFileAtomic(path, data);
    } catch (e) {
      throw explainFsError(e, 'write', path);
    }
  }
  return { onnxPath: out, metaPath, bytes: bytes.length, meta };
}

/** Loads the pipeline or model folder `dir` and exports it (exportDenoiser); the output path is
 *  checked first, so a bad one fails before the model is read. */
export async function exportModelFolder(dir: string, out: string, o: ExportOptions = {}):
  Promise<ExportResult & { notes: string[] }> {
  await checkExportPath(out);
  const p = await loadPipeline(dir);
  return { ...(await exportDenoiser(p, out, o)), notes: p.notes };
}
