/** @file `diffuse toy`: train a small denoiser on 2-D toy data, sample it, plot and score it. */
import type { Command } from 'commander';
import { parseRuns, type Run } from '../pipelines/eval.js';
import {
  sampleToy, TOY_DATASETS, TOY_SAMPLERS, toyDistance, trainToy, writeToyPicture,
} from '../pipelines/toy.js';
import { addOptions, commandOptions, custom, int, num, oneOf, path } from './options.js';
import { progress } from './progress.js';

/** `--compare ddim:10,heun:10`: runs of samplers that fit the toy model. */
export function parseToyRuns(v: string): Run[] {
  const runs = parseRuns(v, true);
  const bad = runs.find((r) => !(TOY_SAMPLERS as readonly string[]).includes(r.sampler));
  if (bad) throw new RangeError(`'${bad.sampler}' is not a toy sampler`);
  return runs;
}

export const TOY_OPTIONS = {
  data: oneOf(Object.keys(TOY_DATASETS), { help: 'dataset', default: 'moons' }),
  trainSteps: int({ min: 1, help: 'training steps', default: 5000 }),
  batchSize: int({ min: 1, help: 'training batch size', default: 512 }),
  lr: num({ range: '(0, 10]', help: 'peak learning rate (AdamW, warm-up then cosine)',
    default: 1e-3 }),
  sampler: oneOf(TOY_SAMPLERS, { help: 'sampler', default: 'dpm++2m' }),
  steps: int({ min: 1, help: 'sampling steps', default: 20 }),
  n: int({ min: 1, help: 'number of samples', default: 2000 }),
  seed: int({ min: 0, help: 'seed for training and sampling', default: 0 }),
  compare: custom(parseToyRuns, { arg: '<list>', expected: `sampler:steps pairs such as ` +
    `ddim:10,heun:10 (samplers: ${TOY_SAMPLERS.join(', ')})`, help: 'also score these ' +
    'sampler:steps pairs, e.g. ddim:10,ddim:50,heun:10' }),
  out: path({ arg: '<file.png>', help: 'where to write the picture (default toy-<data>.png)' }),
};

export function registerToy(program: Command): void {
  addOptions(program.command('toy')
    .description('train a small MLP denoiser on a 2-D toy dataset, sample it, write a PNG of ' +
      'data and samples side by side, and print the sliced Wasserstein distance to held-out ' +
      'data'), TOY_OPTIONS)
    .action(async (_: unknown, cmd: Command) => {
      const o = commandOptions(TOY_OPTIONS, cmd).values;
      const data = TOY_DATASETS[o.data]!;
      const bar = progress('training', o.trainSteps, ['loss']);
      let smooth = NaN;
      const model = await trainToy({ data, steps: o.trainSteps, batchSize: o.batchSize, lr: o.lr,
        seed: o.seed, onStep: (i, loss) => {
          smooth = Number.isNaN(smooth) ? loss : 0.98 * smooth + 0.02 * loss;
          if (i % 10 === 9 || i === o.trainSteps - 1) {
            bar.update(i + 1, { loss: smooth.toFixed(4) });
          }
        } });
      bar.stop();
      console.log(`trained ${o.trainSteps} steps in ${model.seconds.toFixed(1)} s ` +
        `(${(o.trainSteps / model.seconds).toFixed(0)} steps/s, batch ${o.batchSize})`);
      const runs = [{ sampler: o.sampler, steps: o.steps }, ...(o.compare ?? [])];
      console.log(`\n${'sampler'.padEnd(10)} ${'steps'.padStart(5)} ${'sliced W1'.padStart(10)} ` +
        `${'seconds'.padStart(8)}`);
      let picture: Float32Array | undefined;
      let floor = 0;
      for (const run of runs) {
        const s = await sampleToy(model, { ...run, n: o.n, seed: o.seed + 1 });
        const d = toyDistance(data, s.samples);
        floor = d.floor;
        picture ??= s.samples;
        console.log(`${run.sampler.padEnd(10)} ${String(run.steps).padStart(5)} ` +
          `${d.sw.toFixed(4).padStart(10)} ${s.seconds.toFixed(2).padStart(8)}`);
      }
      console.log(`floor (two held-out sets of ${o.n}): ${floor.toFixed(4)}`);
      const out = o.out ?? `toy-${o.data}.png`;
      await writeToyPicture(out, { data: o.data, heldOut: toyDistance(data, picture!).heldOut,
        samples: picture!, sampler: o.sampler, steps: o.steps });
      console.log(`wrote ${out}`);
    });
}
