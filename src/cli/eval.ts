/** @file `diffuse eval`: MNIST-FID, its floor, class accuracy and speed of a model's samples. */
import { InvalidArgumentError, type Command } from 'commander';
import { SAMPLER_NAMES } from '../diffusion/sampling.js';
import { writeFileAtomic, writePng } from '../io/png.js';
import {
  CSV_COLUMNS, evaluateRuns, floorLine, parseRuns, pipelineSource, prepareMnistFid, resultsCsv,
  resultsTable, speedQualityPlot, type Run,
} from '../pipelines/eval.js';
import { classCount, guidanceClipWarning, loadPipeline } from '../pipelines/sample.js';
import { choice, positiveInt } from './parse.js';
import { progress, type Progress } from './progress.js';

const runs = (v: string): Run[] => {
  try {
    return parseRuns(v);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
};

const guidanceWeight = (v: string): number => {
  const w = Number(v);
  if (v.trim() === '' || !Number.isFinite(w) || w < 0) {
    throw new InvalidArgumentError(`expected a number >= 0, got '${v}'`);
  }
  return w;
};

export function registerEval(program: Command): void {
  program.command('eval')
    .description('score a model\'s samples by MNIST-FID (Fréchet distance on the features ' +
      'of the shipped MNIST classifier; not Inception-FID) against the MNIST training split, ' +
      'print the floor (held-out digits against the same split), class accuracy for conditional ' +
      'models and seconds per image; without --model, print the floor only')
    .option('--model <dir>', 'pipeline or model folder to sample (as diffuse sample reads it)')
    .option('--n <n>', 'images per run', (v: string) => positiveInt(v), 1000)
    .option('--sampler <name>', `sampler: ${SAMPLER_NAMES.join(' | ')}`, choice(SAMPLER_NAMES),
      'ddim')
    .option('--steps <n>', 'sampling steps', (v: string) => positiveInt(v), 50)
    .option('--guidance <w>', 'classifier-free guidance weight (conditional models; 1: none)',
      guidanceWeight, 1)
    .option('--sweep <runs>', 'sampler:steps runs to compare instead of --sampler/--steps, ' +
      'e.g. ddim:10,ddim:25,ddim:50,dpm++2m:10,dpm++2m:25', runs)
    .option('--csv <file>', `sweep results (columns ${CSV_COLUMNS.join(', ')})`,
      'mnist-fid-sweep.csv')
    .option('--plot <file.png>', 'sweep plot: MNIST-FID against seconds per image',
      'mnist-fid-sweep.png')
    .option('--seed <n>', 'sampling seed', (v: string) => positiveInt(v, true), 0)
    .option('--batch-size <n>', 'most images per model call', (v: string) => positiveInt(v), 64)
    .option('--classifier <dir>',
      'classifier folder (default: the shipped models/mnist-classifier)')
    .option('--cache-dir <dir>', 'where training-split statistics are cached ' +
      '(default: .cache/diffuse in the package)')
    .action(async (o: { model?: string; n: number; sampler: string; steps: number; guidance: number;
      sweep?: Run[]; csv: string; plot: string; seed: number; batchSize: number;
      classifier?: string; cacheDir?: string }) => {
      const pipeline = o.model === undefined ? undefined : await loadPipeline(o.model);
      for (const note of pipeline?.notes ?? []) console.log(`note: ${note}`);
      const list = o.sweep ?? [{ sampler: o.sampler, steps: o.steps }];
      if (pipeline && classCount(pipeline.model)) {
        for (const name of new Set(list.map((r) => r.sampler))) {
          const w = guidanceClipWarning(name, pipeline.scheduler, o.guidance);
          if (w) console.log(`warning: ${w}`);
        }
      }
      const m = await prepareMnistFid({ n: o.n,
        ...(o.classifier ? { classifier: o.classifier } : {}),
        ...(o.cacheDir ? { cacheDir: o.cacheDir } : {}) });
      try {
        const how = m.train.cached ? 'read from' : 'computed, cached in';
        console.log(`training-split statistics: ${how} ${m.train.path}`);
        if (!pipeline) {
          console.log(floorLine(m));
          return;
        }
        let bar: Progress | undefined;
        const source = pipelineSource(pipeline, { n: o.n, seed: o.seed, guidance: o.guidance,
          batchSize: o.batchSize, onStep: (run, step, total) => {
            bar ??= progress(`sampling ${run.sampler}:${run.steps}`, total);
            bar.update(step + 1); // step is 0-based
          } });
        const rows = await evaluateRuns(m, list, source, () => {
          bar?.stop();
          bar = undefined;
        });
        if (!o.sweep) {
          const r = rows[0]!;
          console.log(`MNIST-FID: ${r.fid.toFixed(3)} (${r.n} samples, ${r.sampler}, ${r.steps} ` +
            `steps${o.guidance !== 1 ? `, guidance ${o.guidance}` : ''})`);
          console.log(floorLine(m));
          if (r.accuracy !== null) {
            console.log(`class accuracy: ${(100 * r.accuracy).toFixed(1)}% (the classifier ` +
              `scores ${(100 * m.heldOutAccuracy).toFixed(1)}% on the ${m.floorN} held-out ` +
              'digits)');
          }
          console.log(`sampling: ${r.secondsPerImage.toPrecision(3)} s per image ` +
            `(${r.seconds.toFixed(1)} s for ${r.n})`);
          return;
        }
        console.log(resultsTable(rows, m));
        await writeFileAtomic(o.csv, resultsCsv(rows));
        await writePng(o.plot, speedQualityPlot(rows, m.floor));
        console.log(`wrote ${o.csv} and ${o.plot}`);
      } finally {
        await m.dispose();
      }
    });
}
