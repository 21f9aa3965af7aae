/** A tiny class-conditional pipeline (3 classes, 1 x 8 x 8) exported to a temporary folder and
 *  loaded back, for tests that sample through the pipeline layer. */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { HostArray } from '../../src/engine/host.js';
import { RngKey } from '../../src/engine/random/philox.js';
import type { Tree } from '../../src/engine/tree.js';
import type { Prediction } from '../../src/diffusion/predictions.js';
import { trainingScheduler } from '../../src/diffusion/training.js';
import { exportPipeline } from '../../src/pipelines/checkpoint.js';
import { createImageModel, type ModelFamily } from '../../src/pipelines/image-models.js';
import { loadPipeline, type Pipeline } from '../../src/pipelines/sample.js';

type Weights = (params: Tree<HostArray>) => Tree<HostArray>;

/** The pipeline exported to a fresh temporary folder (for tests that need a folder, such as a
 *  server's); `remove` deletes it. */
export async function tinyPipelineDir(family: ModelFamily = 'unet', objective: Prediction = 'eps',
  weights: Weights = (x) => x, classes = 3): Promise<{ dir: string; remove: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), `diffuse-tiny-${family}-`));
  const remove = () => rm(dir, { recursive: true, force: true });
  try {
    const model = createImageModel(family, 'tiny', classes, [1, 8, 8]);
    const params = weights(model.module.init(RngKey.fromSeed(7)) as Tree<HostArray>);
    await exportPipeline(dir, { model, scheduler: trainingScheduler(objective) }, params);
  } catch (e) {
    await remove();
    throw e;
  }
  return { dir, remove };
}

/** Runs `fn` on the loaded pipeline; `weights` may change the initial parameters; `classes`
 *  0 makes an unconditional model. */
export async function withTinyPipeline(family: ModelFamily, objective: Prediction,
  fn: (p: Pipeline) => Promise<void>, weights: Weights = (x) => x, classes = 3): Promise<void> {
  const { dir, remove } = await tinyPipelineDir(family, objective, weights, classes);
  try {
    await fn(await loadPipeline(dir));
  } finally {
    await remove();
  }
}
