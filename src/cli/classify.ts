/** @file `diffuse classify`: a class-conditional diffusion model as a zero-shot classifier. */
import type { Command } from 'commander';
import { ERROR_NORMS } from '../methods/diffusion-classifier.js';
import { CLASSIFY_DEFAULTS as D, classifyCsv, classifyImages } from '../pipelines/classify.js';
import { loadPipeline, PROVIDERS } from '../pipelines/sample.js';
import { writeFileAtomic } from '../util/atomic.js';
import { IMAGE_INPUT_OPTIONS, readInputImages } from './image-input.js';
import { addOptions, commandOptions, custom, int, oneOf, path } from './options.js';
import { progress } from './progress.js';
import { DEFAULT_MODEL_DIR } from './sample.js';

/** `--samples 10,50`: positive integers, one per round. */
export function parseCounts(v: string): number[] {
  const parts = v.split(',').map((s) => s.trim());
  const bad = parts.find((s) => !/^\d+$/.test(s) || Number(s) < 1);
  if (bad !== undefined) throw new RangeError(`'${bad}' is not a positive integer`);
  return parts.map(Number);
}

const counts = (help: string, def: readonly number[]) => custom(parseCounts, { arg: '<list>',
  expected: 'positive integers, one per round, such as ' + def.join(','), help,
  default: [...def] });

export const CLASSIFY_OPTIONS = {
  model: path({ arg: '<dir>', help: `class-conditional pipeline or model folder (default: ` +
    `${DEFAULT_MODEL_DIR})` }),
  ...IMAGE_INPUT_OPTIONS,
  samples: counts('timesteps scored per round (each round a strided subset of one grid of ' +
    'max(samples) timesteps)', D.samples),
  keep: counts('classes kept after each round (the last must be 1)', D.keep),
  trials: int({ min: 1, help: 'noise draws per timestep', default: D.trials }),
  loss: oneOf(ERROR_NORMS, { help: 'error between the true and predicted noise',
    default: D.norm }),
  noise: oneOf(['shared', 'independent'], { arg: '<how>', help: 'the same noise for every ' +
    'class at a timestep (the paper\'s) or one draw per class', default: 'shared' }),
  seed: int({ min: 0, help: 'noise seed', default: D.seed }),
  batchSize: int({ min: 1, help: 'most rows (image x class x timestep) per model call',
    default: D.rowsPerCall }),
  provider: oneOf(PROVIDERS, { arg: '<p>', help: 'ONNX Runtime provider', default: 'cpu' }),
  out: path({ arg: '<file.csv>', help: 'per-image predictions and mean errors per class',
    default: 'predictions.csv' }),
};

export function registerClassify(program: Command): void {
  addOptions(program.command('classify')
    .description('classify images with a class-conditional diffusion model (Diffusion ' +
      'Classifier, Li et al. 2023): the class whose denoiser predicts the added noise best, ' +
      'with adaptive rounds that drop unlikely classes early'), CLASSIFY_OPTIONS)
    .action(async (_: unknown, cmd: Command) => {
      const o = commandOptions(CLASSIFY_OPTIONS, cmd).values;
      const input = await readInputImages(o);
      if (input.note) console.error(`note: ${input.note}`);
      const pipeline = await loadPipeline(o.model ?? DEFAULT_MODEL_DIR);
      for (const note of pipeline.notes) console.error(`note: ${note}`);
      const n = input.images.shape[0]!;
      const bar = progress('classifying', n, input.labels ? ['accuracy'] : []);
      const r = await classifyImages(pipeline, input.images, input.labels, {
        samples: o.samples, keep: o.keep, trials: o.trials, norm: o.loss,
        sharedNoise: o.noise === 'shared', seed: o.seed, rowsPerCall: o.batchSize,
        provider: o.provider,
      }, { onBatch: (done, _total, correct) => bar.update(done, input.labels
        ? { accuracy: `${(100 * correct / done).toFixed(1)}%` } : {}) });
      bar.stop();
      await writeFileAtomic(o.out, classifyCsv(r, input.labels));
      if (r.accuracy !== undefined) {
        console.log(`accuracy: ${(100 * r.accuracy).toFixed(2)}% (${Math.round(r.accuracy * n)}` +
          `/${n} images of ${input.source})`);
      }
      console.log(`${(r.seconds / n).toPrecision(3)} s per image (${r.rowsPerImage} model rows ` +
        `per image; ${r.seconds.toFixed(1)} s for ${n})`);
      console.log(`wrote ${o.out}`);
    });
}
