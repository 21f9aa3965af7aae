/**
 * @file The `accel` suite: training-free acceleration on the shipped MNIST U-Net
 * (models/mnist-unet), DDIM-50 with guidance 1.5 on 64 images, each setting against the
 * plain sampler timed in the same sitting (alternating, medians of `reps`), plus the partial
 * graph's share of the full graph's FLOPs. Quality (MNIST-FID, class accuracy) is `diffuse
 * eval --sweep ddim:50,ddim:50+deepcache:3,...`; this suite times only.
 */
import { join } from 'node:path';
import { HostArray } from '../src/engine/host.js';
import * as ops from '../src/engine/ops.js';
import { mapTree } from '../src/engine/tree.js';
import { deepCacheDenoiser } from '../src/methods/deepcache.js';
import type { UNet2DModel } from '../src/models/unet2d.js';
import type { ParamsOf } from '../src/nn/module.js';
import { loadPipeline, parseAccel, sampleImages, type SampleOptions } from '../src/pipelines/sample.js';
import { packageRoot } from '../src/util/package-root.js';
import type { Report } from './harness.js';

const SETTINGS = ['deepcache:3', 'deepcache:5', 'deepcache:5,nonuniform'];

export async function accelSuite(report: Report, reps = 3): Promise<void> {
  const p = await loadPipeline(join(packageRoot(), 'models', 'mnist-unet'));
  const base: SampleOptions = { sampler: 'ddim', steps: 50, n: 64, guidance: 1.5, seed: 0 };
  const consts = mapTree(p.params, (x): x is HostArray => x instanceof HostArray,
    (a) => ops.constant(a));
  for (const branch of [1, 2, 4]) {
    const d = deepCacheDenoiser(p.model.module as UNet2DModel, consts as ParamsOf<UNet2DModel>,
      'eps', { interval: 3, branch, conditional: true, rows: 64, isFull: () => true });
    report.add({ name: `DeepCache branch ${branch}: partial graph FLOPs / full`,
      value: d.partialFlops([1, ...p.model.sampleShape]), unit: '' });
    await d.dispose();
  }
  const seconds = new Map<string, number[]>([['plain', []], ...SETTINGS.map((s) =>
    [s, []] as [string, number[]])]);
  for (let r = 0; r < reps; r++) {
    for (const name of seconds.keys()) {
      const accel = name === 'plain' ? {} : { accel: parseAccel(name) };
      seconds.get(name)!.push((await sampleImages(p, { ...base, ...accel })).seconds);
    }
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const plain = median(seconds.get('plain')!);
  report.add({ name: 'DDIM-50 x64, guidance 1.5 (shipped U-Net)', value: plain, unit: 's' });
  for (const name of SETTINGS) {
    const s = median(seconds.get(name)!);
    report.add({ name: `DDIM-50 x64 + ${name}`, value: s, unit: 's', ratio: plain / s,
      ratioTo: 'speed-up vs plain DDIM-50' });
  }
}
