/**
 * @file The `accel` suite: training-free acceleration on the shipped models, 64 images with
 * guidance 1.5, each setting against the plain sampler timed in the same sitting
 * (alternating, medians of `reps`):
 * - models/mnist-unet, DDIM-50: DeepCache, Faster Diffusion, and plain DDIM at fewer steps
 *   (what the same wall time buys without caching);
 * - models/mnist-dit, flow Euler 30: RAS at ratio 0.5 and its random-selection control.
 * Plus each method's smaller graph as a share of the full graph's FLOPs. Quality (MNIST-FID,
 * class accuracy, MSE to the full sample) is `diffuse eval --sweep`; this suite times only.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { HostArray } from '../src/engine/host.js';
import * as ops from '../src/engine/ops.js';
import { mapTree } from '../src/engine/tree.js';
import { deepCacheDenoiser } from '../src/methods/deepcache.js';
import { fasterDiffusionDenoiser } from '../src/methods/faster-diffusion.js';
import { rasDenoiser } from '../src/methods/ras.js';
import type { DiTTransformer2DModel } from '../src/models/dit.js';
import type { UNet2DModel } from '../src/models/unet2d.js';
import type { ParamsOf } from '../src/nn/module.js';
import {
  loadPipeline, parseAccel, sampleImages, type Pipeline, type SampleOptions,
} from '../src/pipelines/sample.js';
import { packageRoot } from '../src/util/package-root.js';
import type { Report } from './harness.js';

/** Settings by name: `+accel` on the base sampler and steps, or `sampler:steps` plain. */
const UNET_SETTINGS = ['+deepcache:3', '+deepcache:5', '+deepcache:5,nonuniform', '+faster',
  '+faster,serial', 'ddim:30', 'ddim:25', 'ddim:20'];
const DIT_SETTINGS = ['+ras:0.5', '+ras:0.5,random', 'flow-euler:20', 'flow-euler:18'];

const constsOf = (p: Pipeline) => mapTree(p.params, (x): x is HostArray => x instanceof HostArray,
  (a) => ops.constant(a));

/** Times the base run and each setting, alternating, and reports medians and speed-ups. */
async function timeSettings(report: Report, p: Pipeline, base: SampleOptions, label: string,
  settings: readonly string[], reps: number): Promise<void> {
  const optionsOf = (name: string): SampleOptions => {
    if (name === 'plain') return base;
    if (name.startsWith('+')) return { ...base, accel: parseAccel(name.slice(1)) };
    const [sampler, steps] = name.split(':');
    return { ...base, sampler: sampler!, steps: Number(steps) };
  };
  const seconds = new Map<string, number[]>(['plain', ...settings].map((s) => [s, []]));
  for (let r = 0; r < reps; r++) {
    for (const name of seconds.keys()) {
      seconds.get(name)!.push((await sampleImages(p, optionsOf(name))).seconds);
    }
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const plain = median(seconds.get('plain')!);
  report.add({ name: label, value: plain, unit: 's' });
  for (const name of settings) {
    const s = median(seconds.get(name)!);
    report.add({ name: name.startsWith('+') ? `${label} ${name}` : `  plain ${name}`, value: s,
      unit: 's', ratio: plain / s, ratioTo: `speed-up vs ${label}` });
  }
}

export async function accelSuite(report: Report, reps = 3): Promise<void> {
  const unet = await loadPipeline(join(packageRoot(), 'models', 'mnist-unet'));
  const consts = constsOf(unet) as ParamsOf<UNet2DModel>;
  const module = unet.model.module as UNet2DModel;
  const shape = [1, ...unet.model.sampleShape];
  for (const branch of [1, 2, 4]) {
    const d = deepCacheDenoiser(module, consts, 'eps',
      { interval: 3, branch, conditional: true, rows: 64, isFull: () => true });
    report.add({ name: `DeepCache branch ${branch}: partial graph FLOPs / full`,
      value: d.partialFlops(shape), unit: '' });
    await d.dispose();
  }
  const fd = fasterDiffusionDenoiser(module, consts, 'eps', { keySteps: 'paper',
    conditional: true, rows: 64, times: [999], trainTimesteps: 1000 });
  report.add({ name: 'Faster Diffusion: decoder graph FLOPs / full', value: fd.decoderFlops(shape),
    unit: '' });
  await fd.dispose();
  await timeSettings(report, unet, { sampler: 'ddim', steps: 50, n: 64, guidance: 1.5, seed: 0 },
    'DDIM-50 x64 (U-Net)', UNET_SETTINGS, reps);

  const ditFolder = join(packageRoot(), 'models', 'mnist-dit');
  if (!existsSync(ditFolder)) return;
  const dit = await loadPipeline(ditFolder);
  const ras = rasDenoiser(dit.model.module as DiTTransformer2DModel, constsOf(dit), 'flow',
    { ratio: 0.5, steps: 30, rows: 128, nullClass: dit.model.numClasses, conditional: true,
      guidance: 1.5 });
  report.add({ name: 'RAS ratio 0.5: sparse step FLOPs / dense (with CFG rows)',
    value: ras.sparseFlops([1, ...dit.model.sampleShape]), unit: '' });
  await ras.dispose();
  await timeSettings(report, dit, { sampler: 'flow-euler', steps: 30, n: 64, guidance: 1.5,
    seed: 0 }, 'flow Euler-30 x64 (DiT)', DIT_SETTINGS, reps);
}
