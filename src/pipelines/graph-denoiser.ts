/**
 * @file A Denoiser backed by a compiled model graph: the bridge between models (traced
 * functions over tensors) and samplers (which see only host batches).
 */
import { HostArray } from '../engine/host.js';
import { largestPerRow, rowsWithinCache } from '../engine/memory.js';
import * as ops from '../engine/ops.js';
import { compile, type RuntimeOptions } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import type { Graph } from '../engine/trace.js';
import type { Tree } from '../engine/tree.js';
import { conditionLabels, int64Labels, type Batch, type Denoiser } from '../diffusion/denoiser.js';
import type { Prediction } from '../diffusion/predictions.js';
import { lastLevelCacheBytes } from '../util/cpu-cache.js';
import { predictionOf, type ImageModel } from './image-models.js';

/** The model as a traced function: x [B, ...], t [B] float32 model times, optional int64
 *  class labels [B] -> prediction shaped like x. */
export type ModelFn = (x: Tensor, t: Tensor, labels?: Tensor) => Tensor;

export interface GraphDenoiser extends Denoiser {
  /** Model calls so far and time spent in them (ms). */
  readonly stats: { calls: number; ms: number };
  /** The model traced (not compiled) for an input of this shape, with class labels or
   *  without: for estimates such as its largest intermediate before anything runs. */
  traceAt(shape: readonly number[], labelled: boolean): Graph;
  dispose(): Promise<void>;
}

/** Rows per model call whose largest intermediate fits in this CPU's last-level cache
 *  (engine/memory.ts), from the model traced at batches 1 and 2 (the second traced only when
 *  the cache size is known); undefined where it is not. */
export function cpuCacheRows(one: Pick<Graph, 'nodes'>, two: () => Pick<Graph, 'nodes'>): number | undefined {
  const cache = lastLevelCacheBytes();
  return cache === undefined ? undefined : rowsWithinCache(largestPerRow(one, two()).bytes, cache);
}

/**
 * Compiles `model` (one ORT session per batch shape) as a Denoiser. The condition, when
 * given, is the class labels: an Int32Array / number[] / int64 HostArray with one per row.
 */
export function graphDenoiser(model: ModelFn, prediction: Prediction, runtime: RuntimeOptions = {}):
  GraphDenoiser {
  const plain = compile((x: Tensor, t: Tensor) => model(x, t), { ...runtime, name: runtime.name ?? 'denoiser' });
  const labelled = compile((x: Tensor, t: Tensor, y: Tensor) => model(x, t, y),
    { ...runtime, name: runtime.name ?? 'denoiser' });
  const stats = { calls: 0, ms: 0 };
  return {
    prediction,
    stats,
    traceAt: (shape, withLabels) => {
      const [x, t] = [{ shape: [...shape] }, { shape: [shape[0]!] }];
      return withLabels ? labelled.trace(x, t, { shape: [shape[0]!], dtype: 'int64' })
        : plain.trace(x, t);
    },
    async predict(x: Batch, t: Float64Array, condition?: unknown): Promise<Batch> {
      const t0 = performance.now();
      const xs = x instanceof HostArray && x.dtype === 'float32' ? x
        : new HostArray(Float32Array.from(x.data), x.shape);
      const ts = new HostArray(Float32Array.from(t), [t.length]);
      const out = condition === undefined ? await plain(xs, ts)
        : await labelled(xs, ts, labelsOf(condition, t.length));
      stats.calls++;
      stats.ms += performance.now() - t0;
      return out as HostArray<'float32'>;
    },
    dispose: async () => {
      await Promise.all([plain.dispose(), labelled.dispose()]);
    },
  };
}

function labelsOf(c: unknown, rows: number): HostArray {
  const values = conditionLabels(c);
  if (values.length !== rows) {
    throw new TypeError(`class labels: expected ${rows} labels (one per row), got ${values.length}`);
  }
  return int64Labels(values);
}

/**
 * A loaded model's weights baked into its graph (constants, which ORT prepacks), the
 * learned-sigma half cut off, compiled as a Denoiser: how pipelines that only evaluate a model
 * (sampling, classifying, encoding) get one.
 */
export function modelDenoiser(model: ImageModel, params: Tree<HostArray>, prediction: Prediction,
  runtime: RuntimeOptions = {}): GraphDenoiser {
  const consts = ops.constantTree(params);
  return graphDenoiser(predictionOf(model, consts), prediction, runtime);
}
