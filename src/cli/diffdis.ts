/**
 * @file `diffuse diffdis train|eval`: DiffDis (Huang et al., ICCV 2023; methods/diffdis.ts) —
 * one DiT trained on labelled images both to generate an image given its class embedding and
 * to denoise the class embedding given the image, classifying by the nearest class row; its
 * held-out accuracy, and the class accuracy and MNIST-FID of its samples.
 */
import { join } from 'node:path';
import type { Command } from 'commander';
import { loadTrainingData } from '../pipelines/data.js';
import {
  DIFFDIS_SIZES, diffdisCsv, evaluateDiffDis, loadDiffDisPipeline, trainDiffDis,
  type DiffDisTrainOptions,
} from '../pipelines/diffdis.js';
import { writeFileAtomic } from '../util/atomic.js';
import {
  addOptions, commandOptions, configFile, custom, flag, int, num, oneOf, path,
} from './options.js';
import { progress, type Progress } from './progress.js';
import { runInTerminal } from './training-run.js';
import { TRAIN_OPTIONS } from './train.js';

const { steps, lrSchedule, gradClip, emaDecay, seed, logEvery, checkpointEvery } = TRAIN_OPTIONS;
const LOOP_OPTIONS = { steps, lrSchedule, gradClip, emaDecay, seed, logEvery, checkpointEvery };

export const DIFFDIS_TRAIN_OPTIONS = {
  config: configFile('read options from a JSON file; its keys are the long options ' +
    '("batch-size": 32), checked as the flags are; flags given here win over it'),
  data: path({ arg: '<mnist|mnist-bold|DIR>', help: 'labelled images: mnist, mnist-bold, or ' +
    'a folder of PNGs in class sub-folders', default: 'mnist' }),
  size: oneOf(DIFFDIS_SIZES, { arg: '<preset>', help: 'DiT size preset of the shared backbone',
    default: 'xs' }),
  embedDim: int({ min: 2, max: 1024, help: 'E: entries of a learned class embedding',
    default: 32 }),
  labelScale: num({ range: '(0, 100]', help: 'per-entry RMS every class embedding is ' +
    'rescaled to (its norm is scale sqrt(E)); the paper\'s gamma up to sqrt(E)', default: 1 }),
  discFraction: num({ range: '[0, 1]', help: 'fraction of each batch doing the discriminative ' +
    'task (image clean, class embedding noised); the rest generate (0: generation only, 1: ' +
    'discrimination only)', default: 0.5 }),
  itaWeight: num({ range: '[0, 1000]', help: 'lambda: weight of the alignment loss (cross-' +
    'entropy over classes of the cosines of the denoised embedding)', default: 1 }),
  denoiseWeight: num({ range: '[0, 1000]', help: 'weight of the class embedding\'s own flow ' +
    'regression (0: the paper\'s alignment loss alone)', default: 1 }),
  temperature: num({ range: '(0, 10]', help: 'cosines are divided by this before the ' +
    'softmax over classes', default: 0.1 }),
  // The optimisation options are diffuse train's own; only the defaults differ.
  ...LOOP_OPTIONS,
  batchSize: int({ min: 2, help: 'images per step (split between the two tasks)', default: 64 }),
  lr: num({ range: '(0, 10]', help: 'peak learning rate (AdamW)', default: 5e-4 }),
  warmupSteps: int({ min: 0, help: 'linear warm-up steps', default: 200 }),
  out: path({ arg: '<dir>', help: 'run folder: checkpoint/, model/, log.jsonl, samples/',
    default: 'runs/diffdis' }),
  sampleEvery: int({ min: 0, help: 'grid of class-conditional samples every this many steps ' +
    '(0: never)', default: 500 }),
  resume: flag({ help: 'continue the run in --out from its checkpoint' }),
};

/** `--classify-steps 1,10`: step counts >= 1. */
export function parseStepList(v: string): number[] {
  const parts = v.split(',').map((s) => s.trim());
  const bad = parts.find((s) => !/^[1-9]\d*$/.test(s));
  if (bad !== undefined) throw new RangeError(`'${bad}' is not a step count >= 1`);
  return parts.map(Number);
}

export const DIFFDIS_EVAL_OPTIONS = {
  model: path({ arg: '<dir>', help: 'a diffdis train run folder or its model/',
    default: 'runs/diffdis/model' }),
  n: int({ min: 2, max: 1000, help: 'held-out digits classified and class-conditional ' +
    'samples scored', default: 1000 }),
  classifySteps: custom(parseStepList, { arg: '<list>', expected: 'step counts >= 1 ' +
    'separated by commas', help: 'flow Euler steps of the class embedding\'s denoising, one ' +
    'row each', default: [10] as number[] }),
  sampleSteps: int({ min: 1, help: 'flow Euler steps of the class-conditional samples',
    default: 25 }),
  seed: int({ min: 0, help: 'noise seed', default: 0 }),
  classifier: path({ arg: '<dir>', help: 'classifier for MNIST-FID and class accuracy ' +
    '(default: the shipped models/mnist-classifier)' }),
  csv: path({ arg: '<file>', help: 'also write the rows as CSV' }),
};

export function registerDiffDis(program: Command): void {
  const cmd = program.command('diffdis').description('DiffDis (Huang et al., ICCV 2023): one ' +
    'DiT that generates images given a learned class embedding and classifies by denoising ' +
    'the class embedding given the image');
  addOptions(cmd.command('train').description('train both tasks on labelled images, half of ' +
    'each batch each (--disc-fraction), the class-embedding table learned with the model'),
  DIFFDIS_TRAIN_OPTIONS)
    .action(async (_: unknown, c: Command) => {
      const { config: __, data: spec, resume, ...o } =
        commandOptions(DIFFDIS_TRAIN_OPTIONS, c).values;
      const data = await loadTrainingData(spec);
      const opts: DiffDisTrainOptions = o;
      const r = await runInTerminal('diffdis train', 'diffdis', o.steps, o.out,
        (l) => l.toFixed(4), (ev) => trainDiffDis(opts, data, resume, ev));
      console.log(`trained ${r.losses.length} steps in ${r.seconds.toFixed(0)} s; model in ` +
        `${join(o.out, 'model')}`);
    });
  addOptions(cmd.command('eval').description('held-out MNIST accuracy of the discriminative ' +
    'path, and class accuracy and MNIST-FID of class-conditional samples'), DIFFDIS_EVAL_OPTIONS)
    .action(async (_: unknown, c: Command) => {
      const o = commandOptions(DIFFDIS_EVAL_OPTIONS, c).values;
      const p = await loadDiffDisPipeline(o.model);
      let bar: Progress | undefined;
      let current = '';
      let rows;
      try {
        rows = await evaluateDiffDis(p, { n: o.n, classifySteps: o.classifySteps,
          sampleSteps: o.sampleSteps, seed: o.seed,
          ...(o.classifier ? { classifier: o.classifier } : {}),
          onProgress: (what, done, total) => {
            if (what !== current) (bar?.stop(), bar = progress(what, total, []), current = what);
            bar!.update(done, {});
          } });
      } finally {
        bar?.stop();
      }
      for (const r of rows) {
        const ms = (1000 * r.secondsPerImage).toFixed(1);
        console.log(r.task === 'classify'
          ? `classification by denoising the class embedding, ${r.steps} steps: ` +
            `${(100 * r.accuracy).toFixed(2)}% of ${r.n} held-out digits (${ms} ms/image)`
          : `class-conditional samples, ${r.steps} steps: class accuracy ` +
            `${(100 * r.accuracy).toFixed(2)}%, MNIST-FID ${r.fid!.toFixed(3)} (held-out floor ` +
            `${r.floor!.toFixed(3)} at n = ${r.n}; the project's classifier features, not ` +
            `Inception) (${ms} ms/image)`);
      }
      if (o.csv) {
        await writeFileAtomic(o.csv, diffdisCsv(o.model, rows));
        console.log(`wrote ${o.csv}`);
      }
    });
}
