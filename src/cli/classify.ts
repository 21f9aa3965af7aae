/** @file `diffuse classify`: a class-conditional diffusion model as a zero-shot classifier. */
import type { Command } from 'commander';
import { ERROR_NORMS } from '../methods/diffusion-classifier.js';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { HostArray } from '../engine/host.js';
import {
  CLASSIFY_DEFAULTS as D, classifyCsv, classifyImages, readClassifyCsv,
} from '../pipelines/classify.js';
import { loadPipeline, PROVIDERS } from '../pipelines/sample.js';
import { writeFileAtomic } from '../util/atomic.js';
import { IMAGE_INPUT_OPTIONS, readInputImages } from './image-input.js';
import { Interrupted, UsageError } from './errors.js';
import { addOptions, commandOptions, custom, flag, int, oneOf, path } from './options.js';
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
  out: path({ arg: '<file.csv>', help: 'per-image predictions and mean errors per class, ' +
    'rewritten after every batch (the run\'s settings beside it in FILE.run.json)',
  default: 'predictions.csv' }),
  resume: flag({ help: 'continue the run whose predictions are in --out, with the same options' }),
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
      const dir = o.model ?? DEFAULT_MODEL_DIR;
      const n = input.images.shape[0]!;
      // What a resumed run must share with the saved one (the verdicts depend on all of it).
      const settings: Record<string, unknown> = { model: resolve(dir), source: input.source, n,
        samples: o.samples, keep: o.keep, trials: o.trials, loss: o.loss, noise: o.noise,
        seed: o.seed };
      const runFile = `${o.out}.run.json`;
      const before = o.resume ? await savedVerdicts(o.out, runFile, settings)
        : { predictions: new Int32Array(0), meanErrors: [] as Float64Array[] };
      const skip = before.predictions.length;
      if (skip >= n) {
        console.log(`${o.out} already holds all ${n} images`);
        return;
      }
      const pipeline = await loadPipeline(dir);
      for (const note of pipeline.notes) console.error(`note: ${note}`);
      await writeFileAtomic(runFile, `${JSON.stringify(settings, null, 1)}\n`);
      const per = input.images.size / n;
      const rest = new HostArray<'float32'>(input.images.data.subarray(skip * per), [n - skip,
        ...input.images.shape.slice(1)], 'float32');
      const verdicts = (sofar: { predictions: Int32Array; meanErrors: Float64Array[] }) => ({
        predictions: Int32Array.from([...before.predictions, ...sofar.predictions]),
        meanErrors: [...before.meanErrors, ...sofar.meanErrors] });
      const bar = progress('classifying', n, input.labels ? ['accuracy'] : []);
      const stop = new AbortController();
      const onInt = () => stop.abort();
      process.once('SIGINT', onInt);
      let done = skip;
      let right = 0; // of the `done` verdicts, when there are labels
      let r;
      try {
        r = await classifyImages(pipeline, rest, input.labels?.subarray(skip), {
          samples: o.samples, keep: o.keep, trials: o.trials, norm: o.loss,
          sharedNoise: o.noise === 'shared', seed: o.seed, rowsPerCall: o.batchSize,
          provider: o.provider, offset: skip, signal: stop.signal,
        }, { onBatch: async (k, _total, _correct, sofar) => {
          const all = verdicts(sofar);
          await writeFileAtomic(o.out, classifyCsv(all, input.labels, input.files)); // nothing lost on a stop
          done = skip + k;
          right = input.labels ? all.predictions.filter((v, i) => v === input.labels![i]).length : 0;
          bar.update(done, input.labels ? { accuracy: `${(100 * right / done).toFixed(1)}%` } : {});
        } });
      } catch (e) {
        if (!stop.signal.aborted) throw e;
        throw new Interrupted(`interrupted after ${done} of ${n} images; their verdicts are in ` +
          `${o.out}: continue with the same command and --resume`, { cause: e });
      } finally {
        bar.stop();
        process.off('SIGINT', onInt);
      }
      if (input.labels) { // the last batch's count covers all n
        console.log(`accuracy: ${(100 * right / n).toFixed(2)}% (${right}/${n} images of ${input.source})`);
      }
      console.log(`${(r.seconds / (n - skip)).toPrecision(3)} s per image (${r.rowsPerImage} ` +
        `model rows per image; ${r.seconds.toFixed(1)} s for ${n - skip}` +
        `${skip ? `, after ${skip} resumed` : ''})`);
      console.log(`wrote ${o.out}`);
    });
}

/** The verdicts a run to resume saved, after checking it ran with these settings. */
async function savedVerdicts(out: string, runFile: string, settings: Record<string, unknown>):
  Promise<{ predictions: Int32Array; meanErrors: Float64Array[] }> {
  if (!existsSync(out) || !existsSync(runFile)) {
    throw new UsageError(`--resume: no run to continue (${out} and ${runFile} are written by a ` +
      'diffuse classify run)');
  }
  const saved = JSON.parse(await readFile(runFile, 'utf8')) as Record<string, unknown>;
  for (const [k, v] of Object.entries(settings)) {
    if (JSON.stringify(saved[k]) !== JSON.stringify(v)) {
      throw new UsageError(`--resume: ${out} was classified with ${k} = ${JSON.stringify(saved[k])}, ` +
        `this run asks for ${JSON.stringify(v)}; use the same options or another --out`);
    }
  }
  return readClassifyCsv(await readFile(out, 'utf8'), out);
}
