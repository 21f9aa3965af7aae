/**
 * @file Training checkpoints and exported pipelines, in diffusers' folder layout.
 *
 * checkpoint/                     (written whole into a temp folder, then swapped in)
 *   model_index.json, scheduler/scheduler_config.json
 *   <component>/                  raw weights (unet or transformer)
 *   <component>_ema/              EMA weights
 *   optimizer.safetensors         optimizer state, names '<slot>.<param name>'
 *   trainer_state.json            step and the options a resume must match
 * model/                          what `diffuse sample --model` reads: EMA weights as <component>/
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { HostArray } from '../engine/host.js';
import { specToJson, type SchedulerSpec } from '../diffusion/diffusers/spec.js';
import { flatten, unflatten, type Tree } from '../engine/tree.js';
import { loadModel, saveModel, writeModelIndex, writeSchedulerConfig } from '../io/diffusers.js';
import { writeFileAtomic } from '../io/png.js';
import { SafetensorsFile, writeSafetensors } from '../io/safetensors.js';
import type { TrainState } from '../nn/train.js';
import type { ImageModel } from './image-models.js';

const isHost = (x: unknown): x is HostArray => x instanceof HostArray;

export interface PipelineFiles {
  model: ImageModel;
  scheduler: SchedulerSpec;
}

async function writePipeline(dir: string, f: PipelineFiles, params: Tree<HostArray>): Promise<void> {
  const pipelineClass = f.model.component === 'unet' ? 'DDPMPipeline' : 'DiffusePipeline';
  await saveModel(join(dir, f.model.component), f.model.cls, f.model.config, params as never);
  await writeSchedulerConfig(dir, f.scheduler.className, specToJson(f.scheduler),
    { subfolder: 'scheduler' });
  await writeModelIndex(dir, pipelineClass, {
    [f.model.component]: ['diffusers', f.model.cls.className],
    scheduler: ['diffusers', f.scheduler.className],
  });
}

/** Builds `dir` in a sibling temp folder and swaps it in: readers never see half a folder. */
async function replaceFolder(dir: string, build: (tmp: string) => Promise<void>): Promise<void> {
  const target = resolve(dir);
  const tmp = `${target}.tmp-${process.pid}`;
  const old = `${target}.old-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  try {
    await build(tmp);
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
  try {
    if (existsSync(target)) await rename(target, old);
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
  await rename(tmp, target);
  await rm(old, { recursive: true, force: true });
}

/** Writes the final pipeline (EMA weights) that `diffuse sample` loads. */
export async function exportPipeline(dir: string, f: PipelineFiles, params: Tree<HostArray>): Promise<void> {
  await replaceFolder(dir, (tmp) => writePipeline(tmp, f, params));
}

export interface TrainerMeta {
  step: number;
  /** Options that must be equal for a resume to continue the same run. */
  run: Record<string, unknown>;
  diffuse: string;
}

export async function saveCheckpoint(dir: string, f: PipelineFiles, state: TrainState, meta: TrainerMeta): Promise<void> {
  await replaceFolder(dir, async (tmp) => {
    await writePipeline(tmp, f, state.params);
    if (state.ema) await saveModel(join(tmp, `${f.model.component}_ema`), f.model.cls, f.model.config, state.ema as never);
    const opt = flatten(state.opt, isHost);
    await writeSafetensors(join(tmp, 'optimizer.safetensors'),
      new Map(opt.leaves.map((a, i) => [opt.paths[i]!, { dtype: 'F32' as const, shape: [...a.shape], data: a.data as Float32Array }])));
    await writeFileAtomic(join(tmp, 'trainer_state.json'), `${JSON.stringify(meta, null, 2)}\n`);
  });
}

export class CheckpointError extends Error {
  override name = 'CheckpointError';
}

/** Reads a checkpoint back into a training state shaped like `fresh` (from trainer.init). */
export async function loadCheckpoint(dir: string, f: PipelineFiles, fresh: TrainState,
  run: Record<string, unknown>): Promise<{ state: TrainState; meta: TrainerMeta }> {
  const metaPath = join(dir, 'trainer_state.json');
  if (!existsSync(metaPath)) throw new CheckpointError(`${dir}: no checkpoint to resume (trainer_state.json missing)`);
  const meta = JSON.parse(await readFile(metaPath, 'utf8')) as TrainerMeta;
  for (const [k, v] of Object.entries(run)) {
    if (JSON.stringify(meta.run[k]) !== JSON.stringify(v)) {
      throw new CheckpointError(`${dir}: the checkpoint was trained with ${k} = ${JSON.stringify(meta.run[k])}, ` +
        `this run asks for ${JSON.stringify(v)}; resume with the same options or start a new --out`);
    }
  }
  const params = (await loadModel(join(dir, f.model.component), f.model.cls)).params as Tree<HostArray>;
  const ema = fresh.ema
    ? (await loadModel(join(dir, `${f.model.component}_ema`), f.model.cls)).params as Tree<HostArray> : undefined;
  const optFile = await SafetensorsFile.open(join(dir, 'optimizer.safetensors'));
  try {
    const template = flatten(fresh.opt, isHost);
    const leaves = await Promise.all(template.paths.map(async (name, i) => {
      if (!optFile.entries.has(name)) throw new CheckpointError(`${dir}/optimizer.safetensors: missing '${name}'`);
      const t = await optFile.read(name);
      const want = template.leaves[i]!.shape;
      if (t.shape.join() !== want.join()) {
        throw new CheckpointError(`${dir}/optimizer.safetensors: '${name}' is [${t.shape}], expected [${want}]`);
      }
      return new HostArray(t.data as Float32Array, t.shape);
    }));
    const opt = unflatten(template.def, leaves);
    return { state: { params, opt, step: meta.step, ...(ema ? { ema } : {}) }, meta };
  } finally {
    await optFile.close();
  }
}
