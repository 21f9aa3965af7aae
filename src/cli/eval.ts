/** @file `diffuse eval`: MNIST-FID, its floor, class accuracy and speed of a model's samples. */
import type { Command } from 'commander';
import {
  CSV_COLUMNS, evaluateRuns, floorLine, parseRuns, pipelineSource, prepareMnistFid,
  resultsCsv, resultsTable, runName, writeSweep, type RunResult,
} from '../pipelines/eval.js';
import { writeFileAtomic } from '../util/atomic.js';
import {
  ACCEL_SPELLINGS, checkHeldImages, classCount, guidanceClipWarning, loadPipeline, parseAccelOption, SAMPLER_NAMES,
} from '../pipelines/sample.js';
import { GUIDE_SPELLING, loadGuide, parseGuide } from '../pipelines/guide.js';
import { studentSampling } from '../pipelines/student.js';
import { addOptions, commandOptions, custom, int, num, oneOf, path } from './options.js';
import { DIGIT_SPEC_SPELLING, digitSpecName, parseDigitSpec } from '../data/digit-spec.js';
import { progress, type Progress } from './progress.js';
import { GUIDANCE_RANGE } from './sample.js';

/** `--reference`: a digit spec (data/digit-spec.ts), kept in its canonical spelling. */
function parseReference(text: string): string {
  const s = parseDigitSpec(text);
  if (!s) throw new RangeError(`'${text}' is not a digit set`);
  return digitSpecName(s);
}

export const EVAL_OPTIONS = {
  model: path({ arg: '<dir>', help: 'pipeline or model folder to sample (as diffuse sample ' +
    'reads it)' }),
  n: int({ min: 1, help: 'images per run', default: 1000 }),
  reference: custom(parseReference, { arg: '<digits>', expected: DIGIT_SPEC_SPELLING,
    help: 'the training digits MNIST-FID compares with (mnist-bold: a model fine-tuned to the ' +
    'bold domain; mnist:5-9: a model adapted to those classes, which are then the only ones ' +
    'sampled)', default: 'mnist' }),
  sampler: oneOf(SAMPLER_NAMES, { help: 'sampler', default: 'ddim' }),
  steps: int({ min: 1, help: 'sampling steps', default: 50 }),
  guidance: num({ range: GUIDANCE_RANGE, arg: '<w>', help: 'classifier-free guidance weight ' +
    '(conditional models; 1: none)', default: 1 }),
  accel: custom((v) => ({ spec: v, options: parseAccelOption(v) }), { arg: '<spec>',
    expected: ACCEL_SPELLINGS, help: 'training-free ' +
    'acceleration of the --sampler run (as diffuse sample --accel)' }),
  sweep: custom((v) => parseRuns(v), { arg: '<runs>', expected: 'sampler:steps runs such as ' +
    'ddim:10,dpm++2m:25,ddim:50+deepcache:3', help: 'sampler:steps runs to compare instead of ' +
    '--sampler/--steps, each optionally +deepcache:N, e.g. ' +
    'ddim:10,ddim:25,ddim:50,ddim:50+deepcache:3,dpm++2m:25' }),
  csv: path({ arg: '<file>', help: `sweep results (columns ${CSV_COLUMNS.join(', ')})`,
    default: 'mnist-fid-sweep.csv' }),
  plot: path({ arg: '<file.png>', help: 'sweep plot: MNIST-FID against seconds per image',
    default: 'mnist-fid-sweep.png' }),
  guide: custom(parseGuide, { arg: '<spec>', expected: GUIDE_SPELLING, help: 'classifier ' +
    'guidance of every run (as diffuse sample --guide; with --guidance 0 it guides the ' +
    'unconditional model), scored by class accuracy towards the guide\'s targets' }),
  seed: int({ min: 0, help: 'sampling seed', default: 0 }),
  batchSize: int({ min: 1, help: 'most images per model call', default: 64 }),
  maxMemory: int({ min: 64, arg: '<MiB>', help: 'memory the run may plan for (all --n samples ' +
    'are held for scoring); larger requests are refused before sampling', default: 1024 }),
  classifier: path({ arg: '<dir>', help: 'classifier folder (default: the shipped ' +
    'models/mnist-classifier)' }),
  cacheDir: path({ arg: '<dir>', help: 'where training-split statistics are cached ' +
    '(default: .cache/diffuse in the package)' }),
};

export function registerEval(program: Command): void {
  addOptions(program.command('eval')
    .description('score a model\'s samples by MNIST-FID (Fréchet distance on the features ' +
      'of the shipped MNIST classifier; not Inception-FID) against the MNIST training split, ' +
      'print the floor (held-out digits against the same split), class accuracy for conditional ' +
      'models and seconds per image; without --model, print the floor only'), EVAL_OPTIONS)
    .action(async (_: unknown, cmd: Command) => {
      const resolved = commandOptions(EVAL_OPTIONS, cmd);
      const o = { ...resolved.values };
      const pipeline = o.model === undefined ? undefined : await loadPipeline(o.model);
      for (const note of pipeline?.notes ?? []) console.log(`note: ${note}`);
      if (pipeline?.student) {
        // A distilled student is scored as it was trained unless the flags say otherwise.
        const chose = (k: 'sampler' | 'steps' | 'guidance') => resolved.sources[k] !== 'default';
        const run = studentSampling(pipeline.student, {
          ...(chose('sampler') ? { sampler: o.sampler } : {}), ...(chose('steps') ? { steps: o.steps } : {}),
          ...(chose('guidance') ? { guidance: o.guidance } : {}) });
        for (const r of o.sweep ?? []) studentSampling(pipeline.student, { sampler: r.sampler, steps: r.steps });
        Object.assign(o, run, { sampler: run.sampler as typeof o.sampler });
      }
      const list = o.sweep ?? [{ sampler: o.sampler, steps: o.steps,
        ...(o.accel ? { accel: o.accel } : {}) }];
      const memoryLimit = o.maxMemory * 2 ** 20;
      if (pipeline) checkHeldImages(pipeline, o.n, memoryLimit);
      if (pipeline && classCount(pipeline.model)) {
        for (const name of new Set(list.map((r) => r.sampler))) {
          const w = guidanceClipWarning(name, pipeline.scheduler, o.guidance);
          if (w) console.log(`warning: ${w}`);
        }
      }
      const m = await prepareMnistFid({ n: o.n, reference: o.reference,
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
        const guide = o.guide ? await loadGuide(o.guide) : undefined;
        if (guide) console.log(`classifier guidance: ${guide.description}`);
        const source = pipelineSource(pipeline, { n: o.n, seed: o.seed, guidance: o.guidance,
          ...(guide ? { guide } : {}), ...(m.digits ? { classes: m.digits } : {}),
          batchSize: o.batchSize, memoryLimit, onStep: (run, step, total) => {
            bar ??= progress(`sampling ${runName(run)}:${run.steps}`, total);
            bar.update(step + 1); // step is 0-based
          } });
        const done: RunResult[] = [];
        const rows = await evaluateRuns(m, list, source, async (r) => {
          bar?.stop();
          bar = undefined;
          if (!o.sweep) return;
          // A long sweep keeps what it has measured: each run's line now, the CSV so far.
          done.push(r);
          console.log(`${runName(r)}:${r.steps}: MNIST-FID ${r.fid.toFixed(3)}` +
            `${r.accuracy === null ? '' : `, class accuracy ${(100 * r.accuracy).toFixed(1)}%`}, ` +
            `${r.secondsPerImage.toPrecision(3)} s per image`);
          await writeFileAtomic(o.csv, resultsCsv(done));
        });
        if (!o.sweep) {
          const r = rows[0]!;
          console.log(`MNIST-FID: ${r.fid.toFixed(3)} (${r.n} samples, ${runName(r)}, ${r.steps} ` +
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
        await writeSweep(rows, m.floor, { csv: o.csv, plot: o.plot });
        console.log(`wrote ${o.csv} and ${o.plot}`);
      } finally {
        await m.dispose();
      }
    });
}
