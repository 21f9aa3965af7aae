/** @file `diffuse toy`: train a small denoiser on 2-D toy data, sample it, plot and score it. */
import type { Command } from 'commander';
import { scatterPanels } from '../io/plot.js';
import { writePng } from '../io/png.js';
import { SAMPLER_NAMES } from '../diffusion/sampling.js';
import { sampleToy, TOY_DATASETS, toyDistance, trainToy } from '../pipelines/toy.js';
import { progress } from './progress.js';
import { choice, positiveInt, positiveNumber } from './parse.js';

export function registerToy(program: Command): void {
  program.command('toy')
    .description('train a small MLP denoiser on a 2-D toy dataset, sample it, write a PNG of data ' +
      'and samples side by side, and print the sliced Wasserstein distance to held-out data')
    .option('--data <name>', `dataset: ${Object.keys(TOY_DATASETS).join(' | ')}`, choice(Object.keys(TOY_DATASETS)), 'moons')
    .option('--train-steps <n>', 'training steps', (v: string) => positiveInt(v), 5000)
    .option('--batch-size <n>', 'training batch size', (v: string) => positiveInt(v), 512)
    .option('--lr <x>', 'peak learning rate (AdamW, warm-up then cosine)', (v: string) => positiveNumber(v), 1e-3)
    .option('--sampler <name>', `sampler: ${SAMPLER_NAMES.filter((s) => !s.startsWith('flow')).join(' | ')}`,
      choice(SAMPLER_NAMES.filter((s) => !s.startsWith('flow'))), 'dpm++2m')
    .option('--steps <n>', 'sampling steps', (v: string) => positiveInt(v), 20)
    .option('--n <n>', 'number of samples', (v: string) => positiveInt(v), 2000)
    .option('--seed <n>', 'seed for training and sampling', (v) => positiveInt(v, true), 0)
    .option('--compare <list>', 'also score these sampler:steps pairs, e.g. ddim:10,ddim:50,heun:10', '')
    .option('--out <file.png>', 'where to write the picture (default toy-<data>.png)')
    .action(async (o: { data: string; trainSteps: number; batchSize: number; lr: number; sampler: string;
      steps: number; n: number; seed: number; compare: string; out?: string }) => {
      const data = TOY_DATASETS[o.data]!;
      const bar = progress('training', o.trainSteps, ['loss']);
      let smooth = NaN;
      const model = await trainToy({ data, steps: o.trainSteps, batchSize: o.batchSize, lr: o.lr, seed: o.seed,
        onStep: (i, loss) => {
          smooth = Number.isNaN(smooth) ? loss : 0.98 * smooth + 0.02 * loss;
          if (i % 10 === 9 || i === o.trainSteps - 1) bar.update(i + 1, { loss: smooth.toFixed(4) });
        } });
      bar.stop();
      console.log(`trained ${o.trainSteps} steps in ${model.seconds.toFixed(1)} s ` +
        `(${(o.trainSteps / model.seconds).toFixed(0)} steps/s, batch ${o.batchSize})`);
      const runs = [`${o.sampler}:${o.steps}`, ...o.compare.split(',').filter(Boolean)];
      console.log(`\n${'sampler'.padEnd(10)} ${'steps'.padStart(5)} ${'sliced W1'.padStart(10)} ${'seconds'.padStart(8)}`);
      let picture: Float32Array | undefined;
      let floor = 0;
      for (const run of runs) {
        const [name, steps] = run.split(':');
        const s = await sampleToy(model, { sampler: name!, steps: positiveInt(steps ?? '', false, `steps in '${run}'`),
          n: o.n, seed: o.seed + 1 });
        const d = toyDistance(data, s.samples);
        floor = d.floor;
        picture ??= s.samples;
        console.log(`${name!.padEnd(10)} ${steps!.padStart(5)} ${d.sw.toFixed(4).padStart(10)} ${s.seconds.toFixed(2).padStart(8)}`);
      }
      console.log(`floor (two held-out sets of ${o.n}): ${floor.toFixed(4)}`);
      const heldOut = toyDistance(data, picture!).heldOut;
      const out = o.out ?? `toy-${o.data}.png`;
      await writePng(out, scatterPanels([
        { title: `data: ${o.data}`, points: heldOut },
        { title: `samples: ${o.sampler}, ${o.steps} steps`, points: picture! },
      ]));
      console.log(`wrote ${out}`);
    });
}
