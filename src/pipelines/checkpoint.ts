/**
 * @file Training checkpoints and exported pipelines, in diffusers' folder layout.
 *
 * checkpoint/                     (written whole into a temp folder, then swapped in)
 *   model_index.json, scheduler/scheduler_config.json
 *   <component>/                  raw weights (unet or transformer; router for a DDM router)
 *   <component>_ema/              EMA weights
 *   optimizer.safetensors         optimizer state, names '<slot>.<param name>'
 *   trained.safetensors           only when the optimised tree is not the model's own (a
 *   trained_ema.safetensors       REPA projector beside it, or a fine-tuned subset): that tree
 *   trainer_state.json            step and the options a resume must match
 * model/                          what `diffuse sample --model` reads: EMA weights as <component>/
 */
import { existsSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { HostArray } from '../engine/host.js';
import { specToJson, type SchedulerSpec } from '../diffusion/diffusers/spec.js';
import { flatten, unflatten, type Tree } from '../engine/tree.js';
import { readRegularFile } from '../io/files.js';
import {
  loadModel, saveModel, writeModelIndex, writeSchedulerConfig, type ModelClass,
} from '../io/diffusers.js';
import { writeFileAtomic } from '../io/png.js';
import { SafetensorsFile, writeSafetensors } from '../io/safetensors.js';
import type { Module } from '../nn/module.js';
import type { TrainState } from '../nn/train.js';
import { recoverFolder, replaceFolder, type ReplaceFolderOptions } from '../util/atomic.js';
import type { ImageModel } from './image-models.js';
import { STUDENT_KEY, type StudentRecord } from './student.js';

const isHost = (x: unknown): x is HostArray => x instanceof HostArray;

/** What a run saves its network as: its class and config, and its folder in the pipeline. */
export interface SavedModel {
  readonly cls: ModelClass<Module, unknown>;
  readonly config: unknown;
  readonly component: string;
}

/** A frozen network saved beside the trained one (a latent model's VAE): same in every
 *  checkpoint and in model/. */
export interface FrozenComponent {
  readonly saved: SavedModel;
  readonly params: Tree<HostArray>;
}

export interface PipelineFiles<M extends SavedModel = ImageModel> {
  model: M;
  /** The noise process (absent for a network that is not a denoiser, e.g. a VAE). */
  scheduler?: SchedulerSpec;
  /** Networks saved beside the trained one, unchanged (a latent pipeline's `vae`). */
  frozen?: readonly FrozenComponent[];
  /** model_index.json's _class_name (default: DDPMPipeline for a unet, else DiffusePipeline). */
  pipelineClass?: string;
  /** For a distilled student: what it was made for (model_index.json's _diffuse_student). */
  student?: StudentRecord;
  /** Other private model_index.json entries (keys starting with '_'), e.g. a method's settings. */
  privateEntries?: Record<string, unknown>;
  /** When the optimised tree is not the model's own (a projector trained beside it, or only
   *  some of its weights): the model weights a trained tree stands for. Checkpoints then keep
   *  the trained tree as well, flat, so a resume gets it back exactly. */
  modelOf?: (trained: Tree<HostArray>) => Tree<HostArray>;
}

/** The model weights `trained` stands for. */
export function modelWeights(f: PipelineFiles<SavedModel>, trained: Tree<HostArray>): Tree<HostArray> {
  return f.modelOf ? f.modelOf(trained) : trained;
}

/** Writes a tree of float32 arrays flat, named by path (optimizer state, trained trees). */
async function writeTree(path: string, tree: Tree<HostArray>): Promise<void> {
  const flat = flatten(tree, isHost);
  await writingTo(path, () => writeSafetensors(path, new Map(flat.leaves.map((a, i) =>
    [flat.paths[i]!, { dtype: 'F32' as const, shape: [...a.shape], data: a.data as Float32Array }]))));
}

/** Reads a file writeTree wrote back into the shape of `template`, checking every name. */
async function readTree<T extends Tree<HostArray>>(path: string, template: T, what: string): Promise<T> {
  const file = await SafetensorsFile.open(path);
  try {
    const t = flatten(template, isHost);
    const leaves = await Promise.all(t.paths.map(async (name, i) => {
      const entry = file.entries.get(name);
      if (!entry) throw new CheckpointError(`${path}: missing '${name}'`);
      if (entry.dtype !== 'F32') {
        throw new CheckpointError(`${path}: '${name}' is ${entry.dtype}, expected F32 (${what} is float32)`);
      }
      const a = await file.read(name);
      const want = t.leaves[i]!.shape;
      if (a.shape.join() !== want.join()) {
        throw new CheckpointError(`${path}: '${name}' is [${a.shape}], expected [${want}]`);
      }
      return new HostArray(a.data as Float32Array, a.shape);
    }));
    return unflatten(t.def, leaves) as T;
  } finally {
    await file.close();
  }
}

/**
 * Runs `f`, which writes `path`. A failed write(2) or fsync names no path in its error (Node's
 * "ENOSPC: no space left on device, write"); such an error gets `path`, so that a full disk is
 * reported with the file it filled on.
 */
async function writingTo<T>(path: string, f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (typeof err?.code === 'string' && err.path === undefined) err.path = path;
    throw e;
  }
}

async function writePipeline(dir: string, f: PipelineFiles<SavedModel>, params: Tree<HostArray>): Promise<void> {
  const pipelineClass = f.pipelineClass ?? (f.model.component === 'unet' ? 'DDPMPipeline' : 'DiffusePipeline');
  const components: Record<string, [string, string]> = {};
  for (const { saved, params: p } of [{ saved: f.model, params }, ...(f.frozen ?? [])]) {
    const folder = join(dir, saved.component);
    await writingTo(folder, () => saveModel(folder, saved.cls, saved.config, p as never));
    components[saved.component] = ['diffusers', saved.cls.className];
  }
  const { scheduler } = f;
  if (scheduler) {
    await writingTo(join(dir, 'scheduler'), () => writeSchedulerConfig(dir, scheduler.className,
      specToJson(scheduler), { subfolder: 'scheduler' }));
    components.scheduler = ['diffusers', scheduler.className];
  }
  await writingTo(join(dir, 'model_index.json'), () => writeModelIndex(dir, pipelineClass, components,
    { ...f.privateEntries, ...(f.student ? { [STUDENT_KEY]: { ...f.student } } : {}) }));
}

/** Writes the final pipeline (EMA weights) that `diffuse sample` loads. */
export async function exportPipeline(dir: string, f: PipelineFiles<SavedModel>, params: Tree<HostArray>): Promise<void> {
  await replaceFolder(dir, (tmp) => writePipeline(tmp, f, params)); // model_index.json last
}

export interface TrainerMeta {
  step: number;
  /** Options that must be equal for a resume to continue the same run. */
  run: Record<string, unknown>;
  diffuse: string;
}

/** Writes a checkpoint folder; trainer_state.json, written last, marks it complete. */
export async function saveCheckpoint(dir: string, f: PipelineFiles<SavedModel>, state: TrainState, meta: TrainerMeta,
  opts: ReplaceFolderOptions = {}): Promise<void> {
  await replaceFolder(dir, async (tmp) => {
    await writePipeline(tmp, f, modelWeights(f, state.params));
    const ema = join(tmp, `${f.model.component}_ema`);
    if (state.ema) {
      await writingTo(ema, () => saveModel(ema, f.model.cls, f.model.config, modelWeights(f, state.ema!) as never));
    }
    if (f.modelOf) {
      await writeTree(join(tmp, 'trained.safetensors'), state.params);
      if (state.ema) await writeTree(join(tmp, 'trained_ema.safetensors'), state.ema);
    }
    await writeTree(join(tmp, 'optimizer.safetensors'), state.opt);
    const metaPath = join(tmp, 'trainer_state.json');
    await writingTo(metaPath, () => writeFileAtomic(metaPath, `${JSON.stringify(meta, null, 2)}\n`));
  }, opts);
}

/** The step of a complete checkpoint folder, or null. */
export async function checkpointStep(dir: string): Promise<number | null> {
  try {
    const meta = JSON.parse((await readRegularFile(join(dir, 'trainer_state.json'), 'a JSON file'))
      .toString('utf8')) as TrainerMeta;
    return Number.isInteger(meta.step) ? meta.step : null;
  } catch {
    return null;
  }
}

/** When a complete exported pipeline was finished (its model_index.json), or null. */
async function pipelineTime(dir: string): Promise<number | null> {
  try {
    return (await stat(join(dir, 'model_index.json'))).mtimeMs;
  } catch {
    return null;
  }
}

/**
 * Puts back what a crash in the middle of a folder swap left under temp names in run folder
 * `out` (the newest complete checkpoint/ and model/) and removes the rest. Returns the
 * folders restored.
 */
export async function recoverRunFolders(out: string): Promise<string[]> {
  const restored = [await recoverFolder(join(out, 'checkpoint'), checkpointStep),
    await recoverFolder(join(out, 'model'), pipelineTime)];
  return restored.filter((r): r is string => r !== null);
}

export class CheckpointError extends Error {
  override name = 'CheckpointError';
}

/** Reads a checkpoint back into a training state shaped like `fresh` (from trainer.init). */
export async function loadCheckpoint(dir: string, f: PipelineFiles<SavedModel>, fresh: TrainState,
  run: Record<string, unknown>): Promise<{ state: TrainState; meta: TrainerMeta }> {
  const metaPath = join(dir, 'trainer_state.json');
  if (!existsSync(metaPath)) throw new CheckpointError(`${dir}: no checkpoint to resume (trainer_state.json missing)`);
  const meta = JSON.parse((await readRegularFile(metaPath, 'a JSON file')).toString('utf8')) as
    TrainerMeta;
  // Both ways: an option recorded only when set (a training method) is checked when either
  // side has it.
  for (const k of new Set([...Object.keys(run), ...Object.keys(meta.run)])) {
    const v = run[k];
    if (JSON.stringify(meta.run[k]) !== JSON.stringify(v)) {
      const show = (x: unknown) => x === undefined ? 'nothing (the default)' : JSON.stringify(x);
      throw new CheckpointError(`${dir}: the checkpoint was trained with ${k} = ${show(meta.run[k])}, ` +
        `this run asks for ${show(v)}; resume with the same options or start a new --out`);
    }
  }
  const params = f.modelOf ? await readTree(join(dir, 'trained.safetensors'), fresh.params, 'a trained tree')
    : (await loadModel(join(dir, f.model.component), f.model.cls)).params as Tree<HostArray>;
  const ema = !fresh.ema ? undefined
    : f.modelOf ? await readTree(join(dir, 'trained_ema.safetensors'), fresh.ema, 'a trained tree')
    : (await loadModel(join(dir, `${f.model.component}_ema`), f.model.cls)).params as Tree<HostArray>;
  const opt = await readTree(join(dir, 'optimizer.safetensors'), fresh.opt, 'optimizer state');
  return { state: { params, opt, step: meta.step, ...(ema ? { ema } : {}) }, meta };
}
