/**
 * @file The run behind `diffuse probe`: DDAE features (methods/ddae.ts) of a loaded U-Net on the
 * MNIST train and held-out splits, a linear probe per (block, timestep) trained on the first
 * and scored on the second, and the sweep's CSV and heat map.
 *
 * Each (t, draw) is one pass over the images that yields every block asked for at once. The
 * noise of image i at (t, draw) is one Philox stream's segment i, so features do not depend
 * on the batch size; the held-out split draws from streams of its own.
 */
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import type { Tree } from '../engine/tree.js';
import { pointsAt } from '../diffusion/training.js';
import type { ImageDataset } from '../data/dataset.js';
import { heatMap } from '../io/plot.js';
import type { Image } from '../io/png.js';
import { AttentionProbe } from '../methods/attention-probe.js';
import { blockFeatureMap, pooledFeatures, unetBlocks } from '../methods/ddae.js';
import {
  LINEAR_PROBE_DEFAULTS, probeAccuracy, trainLinearProbe, type LinearProbeOptions,
} from '../methods/linear-probe.js';
import { crossEntropy } from '../models/classifier.js';
import type { UNet2DConfig, UNet2DModel } from '../models/unet2d.js';
import { adamw } from '../nn/optim.js';
import { cosineLr } from '../nn/schedules.js';
import { compileTrainStep } from '../nn/train.js';
import type { ParamsOf } from '../nn/module.js';
import { classAccuracy } from './metrics.js';
import { requirePixelSpace, type Pipeline, type Provider } from './sample.js';

export interface ProbeOptions {
  /** Blocks as down.i / mid / up.i (all of the U-Net's by default). */
  blocks?: readonly string[];
  /** 0-based training timesteps (DDAE's t = 11 is 10 here). */
  timesteps: readonly number[];
  /** Noisy copies of each training image (fresh noise per copy: DDAE's per-epoch noise). */
  draws: number;
  /** Average-pool each block to a pool x pool grid (1: DDAE's global average pool). */
  pool: number;
  seed: number;
  /** Images per model call. */
  batchSize: number;
  probe: Partial<LinearProbeOptions>;
  provider?: Provider;
}

export const PROBE_DEFAULTS: Readonly<ProbeOptions> = Object.freeze({
  timesteps: [10], draws: 1, pool: 1, seed: 0, batchSize: 250, probe: {},
});

export interface ProbeRow {
  block: string;
  t: number;
  /** Feature dimension (the block's channels). */
  dim: number;
  /** On the held-out split, and on the training split the probe was fit to. */
  accuracy: number;
  trainAccuracy: number;
}

export interface ProbeEvents {
  /** Images featurised so far, of the total the run needs. */
  onImages?: (done: number, total: number) => void;
  onRow?: (row: ProbeRow) => void;
}

/** The U-Net of a pipeline, or an error naming the pipeline's model. */
function unetOf(p: Pipeline): { model: UNet2DModel; config: UNet2DConfig } {
  if (p.model.family !== 'unet') {
    throw new RangeError(`DDAE probes read U-Net blocks: ${p.modelFolder} is a ` +
      `${p.model.cls.className} (expected UNet2DModel)`);
  }
  return { model: p.model.module as UNet2DModel, config: p.model.config as UNet2DConfig };
}

/** The U-Net blocks of a pipeline's model, as probe names them. */
export function probeBlocks(p: Pipeline): string[] {
  return unetBlocks(unetOf(p).config);
}

/**
 * Pooled features of `blocks` for images [N, C, H, W] noised to timestep t with noise stream
 * `stream`: one Float32Array [N, channels] per block.
 */
export async function featuresAt(run: (x: HostArray, t: HostArray, y?: HostArray) => Promise<HostArray[]>,
  p: Pipeline, images: HostArray<'float32'>, t: number, key: RngKey, batchSize: number,
  onBatch: (count: number) => void): Promise<Float32Array[]> {
  const [n, ...rest] = images.shape as [number, number, number, number];
  const per = rest[0] * rest[1] * rest[2];
  const pt = pointsAt(p.scheduler, [t]);
  const [a, s] = [pt.alpha[0]!, pt.sigma[0]!];
  const conditional = p.model.numClasses > 0;
  const out: Float32Array[] = [];
  for (let first = 0; first < n; first += batchSize) {
    const count = Math.min(batchSize, n - first);
    const eps = key.normal(count * per, first * per);
    const x = images.data.subarray(first * per, (first + count) * per);
    const xt = new HostArray<'float32'>(Float32Array.from(x, (v, i) => a * v + s * eps[i]!),
      [count, ...rest], 'float32');
    const ts = new HostArray<'float32'>(new Float32Array(count).fill(t), [count], 'float32');
    const y = conditional ? new HostArray(new BigInt64Array(count).fill(BigInt(p.model.numClasses)),
      [count], 'int64') : undefined;
    const feats = await run(xt, ts, y);
    feats.forEach((f, b) => {
      const dim = f.size / count; // a pooled vector or a whole feature map per image
      out[b] ??= new Float32Array(n * dim);
      out[b]!.set(f.data as Float32Array, first * dim);
    });
    onBatch(count);
  }
  return out;
}

type Splits = { train: ImageDataset; heldOut: ImageDataset };
type FeatureRun = (x: HostArray, t: HostArray, y?: HostArray) => Promise<HostArray[]>;

/**
 * Checks what every probe needs before a model call: known blocks, timesteps in [0, T), draws,
 * labelled splits of the model's image shape. Returns the U-Net and the number of classes.
 */
function checkProbe(p: Pipeline, data: Splits, blocks: readonly string[],
  timesteps: readonly number[], draws: number): { model: UNet2DModel; classes: number } {
  const { model } = unetOf(p);
  const known = unetBlocks(model.config);
  const unknown = blocks.find((b) => !known.includes(b));
  if (unknown !== undefined || blocks.length === 0) {
    throw new RangeError(`block '${unknown ?? ''}' is not one of this U-Net's: ${known.join(', ')}`);
  }
  const T = p.scheduler.config.num_train_timesteps as number;
  for (const t of timesteps) {
    if (!(Number.isInteger(t) && t >= 0 && t < T)) {
      throw new RangeError(`timestep ${t} is not an integer in [0, ${T})`);
    }
  }
  if (!(Number.isInteger(draws) && draws >= 1)) throw new RangeError(`draws must be an integer >= 1, got ${draws}`);
  if (!data.train.labels || !data.heldOut.labels) throw new RangeError('the probe needs labelled train and held-out images');
  const shape = p.model.sampleShape;
  for (const [name, d] of [['train', data.train], ['held-out', data.heldOut]] as const) {
    if (d.images.shape.slice(1).some((v, i) => v !== shape[i])) {
      throw new RangeError(`${name} images: expected [N, ${shape.join(', ')}] for ${p.modelFolder}, ` +
        `got [${d.images.shape.join(', ')}]`);
    }
  }
  return { model, classes: Math.max(...data.train.labels, ...data.heldOut.labels) + 1 };
}

/**
 * The frozen U-Net pass `outputs` reads (weights baked in), compiled for x_t [B, C, H, W] and
 * t [B], with the null label [B] for a class-conditional model (the features must not see the
 * answer): one array per output.
 */
export function featureGraph(p: Pipeline, name: string, provider: Provider | undefined,
  outputs: (model: UNet2DModel, params: ParamsOf<UNet2DModel>, x: Tensor, t: Tensor, y?: Tensor) => Tensor[]):
  { run: FeatureRun; dispose: () => Promise<void>; outputShapes: () => number[][] } {
  const { model } = unetOf(p);
  const consts = ops.constantTree(p.params) as unknown as ParamsOf<UNet2DModel>;
  const runtime = { name, ...(provider ? { provider } : {}) };
  const conditional = p.model.numClasses > 0;
  const fn = conditional
    ? compile((x: Tensor, t: Tensor, y: Tensor) => outputs(model, consts, x, t, y), runtime)
    : compile((x: Tensor, t: Tensor) => outputs(model, consts, x, t), runtime);
  // Sound: both compiled functions return one array per output.
  const call = fn as unknown as (...args: HostArray[]) => Promise<HostArray[]>;
  return {
    run: (x, t, y) => (y ? call(x, t, y) : call(x, t)),
    dispose: () => fn.dispose(),
    outputShapes: () => fn.trace({ shape: [1, ...p.model.sampleShape] }, { shape: [1] },
      ...(conditional ? [{ shape: [1], dtype: 'int64' as const }] : []))
      .outputs.map((o) => o.shape.slice(1) as number[]),
  };
}

/**
 * Features at timestep t of the train split (`draws` noisy copies of each image, one after the
 * other: [draws N, dim] per output) and of the held-out split (streams of its own).
 */
async function splitFeatures(run: FeatureRun, p: Pipeline, data: Splits, t: number, draws: number,
  key: RngKey, batchSize: number, tick: (count: number) => void):
  Promise<{ train: Float32Array[]; held: Float32Array[] }> {
  const copies: Float32Array[][] = [];
  for (let d = 0; d < draws; d++) {
    copies.push(await featuresAt(run, p, data.train.images, t, key.fold(t).fold(d), batchSize, tick));
  }
  const held = await featuresAt(run, p, data.heldOut.images, t, key.fold(t).fold(1_000_000),
    batchSize, tick);
  const train = held.map((_, b) => {
    const all = new Float32Array(draws * copies[0]![b]!.length);
    copies.forEach((f, d) => all.set(f[b]!, d * f[b]!.length));
    return all;
  });
  return { train, held };
}

/** The training labels of `draws` copies of the train split, in splitFeatures' order. */
const drawnLabels = (data: Splits, draws: number): Int32Array => {
  const n = data.train.images.shape[0]!;
  return Int32Array.from({ length: draws * n }, (_, i) => data.train.labels![i % n]!);
};

/**
 * Trains and scores a linear probe for every (block, timestep): features of the train split
 * (`draws` noisy copies of each image) and of the held-out split (one), probe fit on the first.
 */
export async function probeSweep(p: Pipeline, data: Splits,
  options: Partial<ProbeOptions> = {}, ev: ProbeEvents = {}): Promise<ProbeRow[]> {
  const o = { ...PROBE_DEFAULTS, ...options };
  requirePixelSpace(p, 'the DDAE probe');
  const blocks = [...(o.blocks ?? probeBlocks(p))];
  const { classes } = checkProbe(p, data, blocks, o.timesteps, o.draws);
  const graph = featureGraph(p, 'ddae_features', o.provider,
    (model, params, x, t, y) => pooledFeatures(model, params, x, t, y, blocks, o.pool));
  const nHeld = data.heldOut.images.shape[0]!;
  const total = o.timesteps.length * (o.draws * data.train.images.shape[0]! + nHeld);
  let done = 0;
  const tick = (k: number) => ev.onImages?.((done += k), total);
  const key = RngKey.fromSeed(o.seed);
  const labels = drawnLabels(data, o.draws);
  const rows: ProbeRow[] = [];
  try {
    for (const t of o.timesteps) {
      const { train, held } = await splitFeatures(graph.run, p, data, t, o.draws, key, o.batchSize, tick);
      blocks.forEach((block, b) => {
        const dim = held[b]!.length / nHeld;
        const { probe } = trainLinearProbe(train[b]!, labels, dim, classes,
          { ...LINEAR_PROBE_DEFAULTS, seed: o.seed, ...o.probe });
        const row = { block, t, dim, accuracy: probeAccuracy(probe, held[b]!, data.heldOut.labels!),
          trainAccuracy: probeAccuracy(probe, train[b]!, labels) };
        rows.push(row);
        ev.onRow?.(row);
      });
    }
  } finally {
    await graph.dispose();
  }
  return rows;
}

export interface AttentionProbeOptions {
  block: string;
  t: number;
  draws: number;
  seed: number;
  batchSize: number;
  epochs: number;
  lr: number;
  provider?: Provider;
}

export const ATTENTION_PROBE_DEFAULTS = Object.freeze({ epochs: 15, lr: 1e-3 });

/**
 * Mukhopadhyay et al.'s attention head (methods/attention-probe.ts) on one block's feature map
 * (average-pooled to at most 8 x 8 tokens) at timestep t: trained on the train split's maps
 * (AdamW, weight decay 0.05, batch 128, cosine decay), scored on the held-out split's.
 */
export async function attentionProbe(p: Pipeline, data: Splits,
  options: Partial<AttentionProbeOptions> & { block: string }, ev: ProbeEvents = {}):
  Promise<ProbeRow> {
  const o = { ...PROBE_DEFAULTS, ...ATTENTION_PROBE_DEFAULTS, t: PROBE_DEFAULTS.timesteps[0]!, ...options };
  requirePixelSpace(p, 'the DDAE probe');
  const { classes } = checkProbe(p, data, [o.block], [o.t], o.draws);
  const graph = featureGraph(p, 'ddae_feature_map', o.provider,
    (model, params, x, t, y) => [blockFeatureMap(model, params, x, t, y, o.block)]);
  const total = o.draws * data.train.images.shape[0]! + data.heldOut.images.shape[0]!;
  let done = 0;
  const tick = (k: number) => ev.onImages?.((done += k), total);
  const key = RngKey.fromSeed(o.seed);
  let features: { train: Float32Array[]; held: Float32Array[] };
  let mapShape: number[];
  try {
    features = await splitFeatures(graph.run, p, data, o.t, o.draws, key, o.batchSize, tick);
    mapShape = graph.outputShapes()[0]!;
  } finally {
    await graph.dispose();
  }
  const [train, held] = [features.train[0]!, features.held[0]!];
  const [c, k] = [mapShape[0]!, mapShape[1]!];
  const per = c * k * k;
  const head = new AttentionProbe(c, k * k, classes);
  const labels = drawnLabels(data, o.draws);
  const n = labels.length;
  const batch = Math.min(128, n);
  const steps = o.epochs * Math.floor(n / batch);
  const trainer = compileTrainStep((params: Tree<Tensor>, b: Tree<Tensor>) => {
    const { x, y } = b as unknown as { x: Tensor; y: Tensor };
    return crossEntropy(head.logits(params as ParamsOf<AttentionProbe>, x), y);
  }, adamw({ lr: cosineLr(o.lr, steps, Math.round(0.05 * steps)), weightDecay: 0.05 }),
  { runtime: { name: 'attention_probe_train' } });
  let state = trainer.init(head.init(key.fold(7)) as unknown as Tree<HostArray>);
  try {
    for (let s = 0; s < steps; s++) {
      const epoch = Math.floor(s / Math.floor(n / batch));
      const order = key.fold(8).fold(epoch).permutation(n);
      const first = (s % Math.floor(n / batch)) * batch;
      const rows = order.subarray(first, first + batch);
      const x = new Float32Array(batch * per);
      rows.forEach((r, i) => x.set(train.subarray(r * per, (r + 1) * per), i * per));
      const y = new HostArray(BigInt64Array.from(rows, (r) => BigInt(labels[r]!)), [batch], 'int64');
      state = (await trainer.step(state, { x: new HostArray(x, [batch, c, k, k]), y } as never)).state;
    }
  } finally {
    await trainer.dispose();
  }
  const params = ops.constantTree(state.params) as unknown as ParamsOf<AttentionProbe>;
  const logits = compile((x: Tensor) => head.logits(params, x), { name: 'attention_probe' });
  const accuracyOf = async (maps: Float32Array, truth: ArrayLike<number>): Promise<number> => {
    const rows = truth.length;
    const all = new Float32Array(rows * classes);
    for (let i = 0; i < rows; i += 500) {
      const j = Math.min(rows, i + 500);
      all.set((await logits(new HostArray(maps.slice(i * per, j * per), [j - i, c, k, k]))).data as Float32Array,
        i * classes);
    }
    return classAccuracy({ n: rows, classes, logits: all }, truth);
  };
  try {
    const row = { block: o.block, t: o.t, dim: per, accuracy: await accuracyOf(held, data.heldOut.labels!),
      trainAccuracy: await accuracyOf(train, labels) };
    ev.onRow?.(row);
    return row;
  } finally {
    await logits.dispose();
  }
}

export const PROBE_CSV_COLUMNS = ['block', 't', 'dim', 'accuracy', 'train_accuracy'] as const;

export function probeCsv(rows: readonly ProbeRow[]): string {
  return [PROBE_CSV_COLUMNS.join(','), ...rows.map((r) =>
    [r.block, r.t, r.dim, r.accuracy.toFixed(4), r.trainAccuracy.toFixed(4)].join(','))].join('\n') + '\n';
}

/** Held-out accuracy (%) by block (rows) and timestep (columns), the best cell outlined. */
export function probeHeatMap(rows: readonly ProbeRow[], title: string): Image {
  const blocks = [...new Set(rows.map((r) => r.block))];
  const ts = [...new Set(rows.map((r) => r.t))];
  const values = blocks.map((b) => ts.map((t) =>
    100 * (rows.find((r) => r.block === b && r.t === t)?.accuracy ?? NaN)));
  return heatMap(values, { title, rows: blocks, cols: ts.map((t) => `t=${t}`), rowLabel: 'block',
    colLabel: 'timestep', format: (v) => v.toFixed(1) });
}
