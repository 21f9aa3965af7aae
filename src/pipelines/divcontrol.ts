/**
 * @file The runs behind `diffuse divcontrol train|adapt|eval` (methods/divcontrol.ts; the MNIST
 * conditions in methods/divcontrol-conditions.ts), on a frozen flow-matching DiT (the shipped
 * `models/mnist-dit`):
 * - train: the control branch on several conditions at once, a condition per step in turn
 *   (each batch is one condition's, so its gate weights are one vector), with REPA against the
 *   shipped U-Net's features of the condition image (the encoder pipelines/repa.ts uses; the
 *   paper uses DINOv2). Given one condition and a few images it is the from-scratch baseline.
 * - adapt: few-shot adaptation to a novel condition: only the adapter (new tailors and the
 *   condition's gate input) trains; the base and the control branch are constants.
 * - eval: samples from held-out digits' conditions (null class label, so only the condition
 *   says which digit), scored by control fidelity (the condition of the sample against the one
 *   given) and agreement of the shipped classifier's label with the source digit's.
 *
 * Runs use training-loop.ts (run lock, exact resume, atomic checkpoints, log, grids). Folder:
 * model_index.json (DivControlPipeline, `_divcontrol`: the conditions trained and the one
 * adapted to), transformer/ (the base, unchanged), controlnet/ (DivControlNet), adapter/
 * (adapt only), scheduler/.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import type { Tree } from '../engine/tree.js';
import type { Batch, Denoiser } from '../diffusion/denoiser.js';
import { parseScheduler, type SchedulerSpec } from '../diffusion/diffusers/spec.js';
import { sample } from '../diffusion/sampling.js';
import { noisySample, trainingPoints, trainingTarget } from '../diffusion/training.js';
import { batchAt, subset, type ImageDataset } from '../data/dataset.js';
import {
  DiffusersFolderError, loadModel, MODEL_INDEX_NAME, readModelIndex, readSchedulerConfig,
  type ModelClass,
} from '../io/diffusers.js';
import {
  adapterFor, adapterInitialize, controlledForward, DivControlAdapter, divControlAdapterClass,
  divControlClass, divControlConfigFor, divControlInitialize, DivControlNet, divControlLoss,
  type ControlInputs, type DiTParams,
} from '../methods/divcontrol.js';
import {
  CONDITION_DESCRIPTORS, CONDITION_KINDS, conditionImages, type ConditionKind,
} from '../methods/divcontrol-conditions.js';
import { RepaProjector } from '../methods/repa.js';
import { ditClass, DiTTransformer2DModel } from '../models/dit.js';
import type { Module, ParamsOf } from '../nn/module.js';
import { adamw } from '../nn/optim.js';
import { compileTrainStep } from '../nn/train.js';
import type { PipelineFiles, SavedModel } from './checkpoint.js';
import { mnistSplits } from './data.js';
import { repaTargets, takeRows } from './repa.js';
import { loadPipeline } from './sample.js';
import { learningRate, type TrainOptions } from './train.js';
import { runTraining, type TrainEvents, type TrainResult } from './training-loop.js';

export const DIVCONTROL_PIPELINE_CLASS = 'DivControlPipeline';
const RECORD_KEY = '_divcontrol';
const FLOW_STEPS_IN_GRIDS = 10;

type LoopKeys = 'batchSize' | 'steps' | 'lr' | 'lrSchedule' | 'warmupSteps' | 'gradClip' |
  'emaDecay' | 'seed' | 'out' | 'logEvery' | 'sampleEvery' | 'checkpointEvery';

export interface DivControlTrainOptions extends Pick<TrainOptions, LoopKeys> {
  /** The frozen base: a flow-matching DiT pipeline (models/mnist-dit). */
  base: string;
  conditions: ConditionKind[];
  /** Training digits (the first of a seeded shuffle of the train split; 0: all 9,000). */
  images: number;
  controlBlocks: number;
  learngenes: number;
  tailors: number;
  activeTailors: number;
  /** lambda of the REPA term (0: none) and its encoder (a U-Net pipeline). */
  repaWeight: number;
  repaEncoder: string;
}

export interface DivControlAdaptOptions extends Pick<TrainOptions, LoopKeys> {
  /** A trained DivControl pipeline (or its run folder). */
  control: string;
  condition: ConditionKind;
  images: number;
  /** Components of each projection's new tailor. */
  newTailors: number;
}

/** A loaded DivControl pipeline: base, control branch and, after adapt, the adapter. */
export interface DivControlPipeline {
  base: DiTTransformer2DModel;
  baseParams: ParamsOf<DiTTransformer2DModel, HostArray>;
  net: DivControlNet;
  netParams: ParamsOf<DivControlNet, HostArray>;
  adapter?: { module: DivControlAdapter; params: ParamsOf<DivControlAdapter, HostArray> };
  scheduler: SchedulerSpec;
  record: DivControlRecord;
}

export interface DivControlRecord {
  /** The conditions the control branch was trained on, and the one adapted to. */
  conditions: ConditionKind[];
  adapted?: ConditionKind;
}

const asModelClass = <M extends Module, C>(c: ModelClass<M, C>) =>
  c as unknown as ModelClass<Module, unknown>;

interface LoadedBase {
  base: DiTTransformer2DModel;
  params: ParamsOf<DiTTransformer2DModel, HostArray>;
  scheduler: SchedulerSpec;
}

/** The base: a pixel-space flow-matching DiT. */
async function loadBase(dir: string): Promise<LoadedBase> {
  const p = await loadPipeline(dir);
  if (p.model.family !== 'dit' || p.vae || p.scheduler.prediction !== 'flow') {
    throw new Error(`--base ${dir}: expected a pixel-space flow-matching DiT (e.g. models/mnist-dit), ` +
      `got a ${p.vae ? 'latent ' : ''}${p.model.family} predicting ${p.scheduler.prediction}`);
  }
  return { base: p.model.module as DiTTransformer2DModel,
    params: p.params as unknown as ParamsOf<DiTTransformer2DModel, HostArray>, scheduler: p.scheduler };
}

/** The training digits: the first `images` of a seeded shuffle of MNIST's train split. */
export function trainingDigits(images: number, seed: number): ImageDataset {
  const train = mnistSplits().train;
  const n = train.images.shape[0]!;
  if (images === 0 || images >= n) return train;
  return subset(train, RngKey.fromSeed(seed).fold(77).permutation(n).subarray(0, images));
}

/** n held-out digits, a seeded draw (the split is sorted by class) with their labels. */
export function heldOutDigits(n: number, seed = 0):
  { images: HostArray<'float32'>; labels: Int32Array } {
  const held = mnistSplits().heldOut;
  const total = held.images.shape[0]!;
  if (!(Number.isInteger(n) && n >= 1 && n <= total)) {
    throw new RangeError(`held-out digits: expected 1 to ${total}, got ${n}`);
  }
  const d = subset(held, RngKey.fromSeed(seed).fold(78).permutation(total).subarray(0, n));
  return { images: d.images, labels: d.labels! };
}

/** Null class labels (the base's CFG class) for n rows. */
function nullLabels(base: DiTTransformer2DModel, n: number): HostArray<'int64'> {
  return new HostArray(new BigInt64Array(n).fill(BigInt(base.config.num_embeds_ada_norm)), [n], 'int64');
}

const descriptorOf = (kind: ConditionKind) =>
  new HostArray(Float32Array.from(CONDITION_DESCRIPTORS[kind]), [CONDITION_DESCRIPTORS[kind].length]);

/** The files a run writes: the trained part, the frozen ones beside it, the base's scheduler. */
function pipelineFiles(model: SavedModel, frozen: { saved: SavedModel; params: Tree<HostArray> }[],
  scheduler: SchedulerSpec, record: DivControlRecord, modelOf?: (t: Tree<HostArray>) => Tree<HostArray>):
  PipelineFiles<SavedModel> {
  return { model, frozen, scheduler, pipelineClass: DIVCONTROL_PIPELINE_CLASS,
    privateEntries: { [RECORD_KEY]: record }, ...(modelOf ? { modelOf } : {}) };
}

const baseSaved = (base: DiTTransformer2DModel): SavedModel =>
  ({ cls: asModelClass(ditClass), config: base.config, component: 'transformer' });

type StepBatch = Record<string, HostArray>;

/** The loop options a resumed run must share with its checkpoint. */
const loopRecord = (o: Pick<TrainOptions, LoopKeys>) => ({ batchSize: o.batchSize, seed: o.seed, lr: o.lr,
  lrSchedule: o.lrSchedule, warmupSteps: o.warmupSteps, gradClip: o.gradClip, emaDecay: o.emaDecay });

/** Step `step`'s random draws for the batch of digits `x0`: noise and flow times. */
function flowBatch(spec: SchedulerSpec, key: RngKey, step: number, x0: HostArray): StepBatch {
  const m = x0.shape[0]!;
  const [kn, kt] = key.fold(1).fold(step).split(2);
  const pts = trainingPoints(spec, kt!.uniform(m));
  return { x0, eps: new HostArray(kn!.normal(x0.size), x0.shape), t: new HostArray(pts.t, [m]),
    a: new HostArray(pts.alpha, [m, 1, 1, 1]), s: new HostArray(pts.sigma, [m, 1, 1, 1]) };
}

/** x_t, and the flow target, of a traced step batch. */
function flowPoint(b: Record<string, Tensor>): { xt: Tensor; target: Tensor } {
  return { xt: noisySample(b.x0!, b.eps!, b.a!, b.s!),
    target: trainingTarget('flow', b.x0!, b.eps!, b.a!, b.s!) };
}

/** Trains the control branch (continuing `out/checkpoint` when `resume`). */
export async function trainDivControl(o: DivControlTrainOptions, resume: boolean,
  ev: TrainEvents<SavedModel> = {}):
  Promise<TrainResult & { net: DivControlNet }> {
  if (o.conditions.length === 0) throw new RangeError('DivControl train: no conditions given');
  const { base, params: baseParams, scheduler } = await loadBase(o.base);
  const net = new DivControlNet(divControlConfigFor(base.config, { control_blocks: o.controlBlocks,
    learngenes: o.learngenes, tailors: o.tailors, active_tailors: o.activeTailors }));
  const data = trainingDigits(o.images, o.seed);
  const conds = new Map(o.conditions.map((k) => [k, conditionImages(k, data.images)]));
  const repa = o.repaWeight > 0;
  const targets = new Map<ConditionKind, HostArray<'float32'>>();
  if (repa) {
    for (const k of o.conditions) {
      const total = data.images.shape[0]!;
      ev.onPrepare?.(`REPA targets (${k})`, 0, total);
      targets.set(k, await repaTargets(o.repaEncoder, { images: conds.get(k)! }));
      ev.onPrepare?.(`REPA targets (${k})`, total, total);
    }
  }
  const zDim = repa ? targets.get(o.conditions[0]!)!.shape[1]! : 1;
  const projector = new RepaProjector(net.config.dim, net.config.dim, zDim);
  const key = RngKey.fromSeed(o.seed);
  const trainer = compileTrainStep<StepBatch & Tree<HostArray>>((params: Tree<Tensor>, bt: Tree<Tensor>) => {
    const tr = params as unknown as { net: ParamsOf<DivControlNet>; projector?: ParamsOf<RepaProjector> };
    const b = bt as unknown as Record<string, Tensor>;
    const { xt, target } = flowPoint(b);
    const baseConsts = ops.constantTree(baseParams as never) as unknown as DiTParams;
    const ctl = { net, params: tr.net, cond: b.cond!, descriptor: b.descriptor! };
    const out = controlledForward(base, baseConsts, xt, b.t!, b.labels!, ctl, repa ? 1 : undefined);
    return divControlLoss(out, target, tr.net.gate_bias,
      repa ? { projector, params: tr.projector!, target: b.repa!, weight: o.repaWeight } : undefined);
  }, adamw({ lr: learningRate(o), weightDecay: 0 }),
  { clipGradNorm: o.gradClip, ema: { maxDecay: o.emaDecay }, runtime: { name: 'divcontrol_train_step' } });
  const record: DivControlRecord = { conditions: o.conditions };
  const saved = { cls: asModelClass(divControlClass), config: net.config, component: 'controlnet' };
  const files = pipelineFiles(saved,
    [{ saved: baseSaved(base), params: baseParams as unknown as Tree<HostArray> }], scheduler, record,
    (t) => (t as { net: Tree<HostArray> }).net);
  const r = await runTraining({
    options: o, files, trainer, exported: 'ema',
    run: { base: o.base, conditions: o.conditions, images: o.images, controlBlocks: o.controlBlocks,
      learngenes: o.learngenes, tailors: o.tailors, activeTailors: o.activeTailors,
      repaWeight: o.repaWeight, ...loopRecord(o) },
    initialWeights: () => {
      const fresh = divControlInitialize(net, net.init(key.fold(2)), baseParams);
      const tree = repa ? { net: fresh, projector: projector.init(key.fold(3)) } : { net: fresh };
      return tree as unknown as Tree<HostArray>;
    },
    batch: (step) => {
      const kind = o.conditions[step % o.conditions.length]!;
      const d = batchAt(data, key.fold(0), step, o.batchSize);
      return { ...flowBatch(scheduler, key, step, d.images), labels: nullLabels(base, o.batchSize),
        cond: takeRows(conds.get(kind)!, d.rows), descriptor: descriptorOf(kind),
        ...(repa ? { repa: takeRows(targets.get(kind)!, d.rows) } : {}) } as StepBatch & Tree<HostArray>;
    },
    grid: async (weights) => progressGrid({ base, baseParams, net,
      netParams: weights as unknown as ParamsOf<DivControlNet, HostArray>, scheduler, record }, o.conditions),
  }, resume, ev);
  return { ...r, net };
}

/** Few-shot adaptation to `o.condition`: trains only new tailors and the gate input. */
export async function adaptDivControl(o: DivControlAdaptOptions, resume: boolean,
  ev: TrainEvents<SavedModel> = {}):
  Promise<TrainResult & { adapter: DivControlAdapter }> {
  const p = await loadDivControl(o.control);
  if (p.adapter) {
    throw new Error(`--control ${o.control}: already adapted; adapt the pipeline it came from`);
  }
  const adapter = adapterFor(p.net, o.newTailors);
  const data = trainingDigits(o.images, o.seed);
  const cond = conditionImages(o.condition, data.images);
  const key = RngKey.fromSeed(o.seed);
  const trainer = compileTrainStep<StepBatch & Tree<HostArray>>((params: Tree<Tensor>, bt: Tree<Tensor>) => {
    const b = bt as unknown as Record<string, Tensor>;
    const { xt, target } = flowPoint(b);
    const ctl = constantControl(p, b.cond!, b.descriptor!);
    const trained = { module: adapter, params: params as unknown as ParamsOf<DivControlAdapter> };
    const out = controlledForward(p.base, ctl.baseParams, xt, b.t!, b.labels!,
      { ...ctl.control, adapter: trained });
    return divControlLoss(out, target);
  }, adamw({ lr: learningRate(o), weightDecay: 0 }),
  { clipGradNorm: o.gradClip, ema: { maxDecay: o.emaDecay }, runtime: { name: 'divcontrol_adapt_step' } });
  const record: DivControlRecord = { ...p.record, adapted: o.condition };
  const saved = { cls: asModelClass(divControlAdapterClass), config: adapter.config, component: 'adapter' };
  const files = pipelineFiles(saved,
    [{ saved: baseSaved(p.base), params: p.baseParams as unknown as Tree<HostArray> },
      { saved: { cls: asModelClass(divControlClass), config: p.net.config, component: 'controlnet' },
        params: p.netParams as unknown as Tree<HostArray> }], p.scheduler, record);
  const r = await runTraining({
    options: o, files, trainer, exported: 'ema',
    run: { control: o.control, condition: o.condition, images: o.images, newTailors: o.newTailors,
      ...loopRecord(o) },
    initialWeights: () => adapterInitialize(adapter, key.fold(2),
      CONDITION_DESCRIPTORS[o.condition]) as unknown as Tree<HostArray>,
    batch: (step) => {
      const d = batchAt(data, key.fold(0), step, o.batchSize);
      return { ...flowBatch(p.scheduler, key, step, d.images), labels: nullLabels(p.base, o.batchSize),
        cond: takeRows(cond, d.rows), descriptor: descriptorOf(o.condition) } as StepBatch & Tree<HostArray>;
    },
    grid: async (weights) => progressGrid({ ...p, adapter: { module: adapter,
      params: weights as unknown as ParamsOf<DivControlAdapter, HostArray> }, record }, [o.condition]),
  }, resume, ev);
  return { ...r, adapter };
}

/** The base and control weights of `p` as graph constants, for condition `cond`. */
function constantControl(p: DivControlPipeline, cond: Tensor, descriptor: Tensor, useAdapter = false):
  { baseParams: DiTParams; control: ControlInputs } {
  const c = <T>(t: unknown) => ops.constantTree(t as Tree<HostArray>) as unknown as T;
  const a = useAdapter ? p.adapter : undefined;
  const adapter = a ? { adapter: { module: a.module, params: c<ParamsOf<DivControlAdapter>>(a.params) } } : {};
  return { baseParams: c<DiTParams>(p.baseParams),
    control: { net: p.net, params: c(p.netParams), cond, descriptor, ...adapter } };
}

/** Loads a folder `diffuse divcontrol train` or `adapt` wrote (or its run folder). */
export async function loadDivControl(dir: string): Promise<DivControlPipeline> {
  // The pipeline itself, or a run folder holding it in model/.
  const root = existsSync(join(dir, MODEL_INDEX_NAME)) || !existsSync(join(dir, 'model')) ? dir
    : join(dir, 'model');
  const index = await readModelIndex(root);
  if (index.pipelineClass !== DIVCONTROL_PIPELINE_CLASS) {
    throw new DiffusersFolderError(index.path, `is a ${index.pipelineClass}, expected a ` +
      `${DIVCONTROL_PIPELINE_CLASS} (what diffuse divcontrol train writes)`);
  }
  const raw = index.privateEntries[RECORD_KEY] as Partial<DivControlRecord> | undefined;
  const kinds = raw?.conditions;
  const known = (k: unknown): k is ConditionKind => CONDITION_KINDS.includes(k as ConditionKind);
  if (!Array.isArray(kinds) || !kinds.every(known) || (raw!.adapted !== undefined && !known(raw!.adapted))) {
    throw new DiffusersFolderError(index.path, `${RECORD_KEY} must name the conditions ` +
      `(${CONDITION_KINDS.join(', ')}), got ${JSON.stringify(raw)}`);
  }
  const base = await loadModel(join(root, 'transformer'), ditClass);
  const net = await loadModel(join(root, 'controlnet'), divControlClass);
  const adapter = index.components.adapter
    ? await loadModel(join(root, 'adapter'), divControlAdapterClass) : undefined;
  const scheduler = parseScheduler((await readSchedulerConfig(root)).config);
  return { base: base.model, baseParams: base.params, net: net.model, netParams: net.params,
    ...(adapter ? { adapter: { module: adapter.model, params: adapter.params } } : {}), scheduler,
    record: { conditions: kinds, ...(raw!.adapted ? { adapted: raw!.adapted } : {}) } };
}

/** What a controlled sample is given: condition images [n, C, H, W] and a descriptor. */
export interface ControlCondition {
  cond: HostArray<'float32'>;
  descriptor: HostArray<'float32'>;
}

/** The controlled model as a Denoiser (flow); the condition is a ControlCondition. With
 *  `useAdapter`, the adapter's tailors and gate input replace the descriptor. */
export function controlDenoiser(p: DivControlPipeline, useAdapter = false):
  Denoiser & { dispose(): Promise<void> } {
  const f = compile((x: Tensor, t: Tensor, y: Tensor, cond: Tensor, e: Tensor) => {
    const ctl = constantControl(p, cond, e, useAdapter);
    return controlledForward(p.base, ctl.baseParams, x, t, y, ctl.control).sample;
  }, { name: 'divcontrol_denoiser' });
  return {
    prediction: 'flow',
    async predict(x: Batch, t: Float64Array, condition?: unknown): Promise<Batch> {
      const c = condition as ControlCondition;
      const n = x.shape[0]!;
      return f(new HostArray(Float32Array.from(x.data), x.shape), new HostArray(Float32Array.from(t), [n]),
        nullLabels(p.base, n), c.cond, c.descriptor) as Promise<HostArray<'float32'>>;
    },
    dispose: () => f.dispose(),
  };
}

/** The start noise of n images for `seed` (the same for every arm of a comparison). */
export function startNoise(shape: readonly number[], seed: number): HostArray<'float32'> {
  const size = shape.reduce((a, b) => a * b);
  return new HostArray<'float32'>(RngKey.fromSeed(seed).fold(0).normal(size), shape, 'float32');
}

/** Samples from `den` (flow Euler, `steps`), clipped to [-1, 1]. */
export async function sampleWith(den: Denoiser, scheduler: SchedulerSpec, noise: HostArray<'float32'>,
  condition: unknown, steps: number): Promise<HostArray<'float32'>> {
  const x = await sample(den, noise, scheduler, { sampler: 'flow-euler', steps, condition });
  const clipped = Float32Array.from(x.data, (v) => Math.min(1, Math.max(-1, v)));
  return new HostArray<'float32'>(clipped, [...noise.shape], 'float32');
}

/** A grid for a training run: per condition, 8 held-out digits' conditions over their samples. */
async function progressGrid(p: DivControlPipeline, kinds: readonly ConditionKind[]):
  Promise<{ images: HostArray; cols: number }> {
  const x = heldOutDigits(8).images;
  const per = x.size / 8;
  const den = controlDenoiser(p, p.adapter !== undefined);
  try {
    const rows: Float32Array[] = [];
    for (const k of kinds) {
      const cond = conditionImages(k, x);
      const s = await sampleWith(den, p.scheduler, startNoise(x.shape, 1234),
        { cond, descriptor: descriptorOf(k) }, FLOW_STEPS_IN_GRIDS);
      rows.push(cond.data, s.data);
    }
    const all = new Float32Array(rows.length * 8 * per);
    rows.forEach((r, i) => all.set(r, i * 8 * per));
    return { images: new HostArray(all, [rows.length * 8, ...x.shape.slice(1)]), cols: 8 };
  } finally {
    await den.dispose();
  }
}

export { descriptorOf };
