/** @file `diffuse distill`: few-step students of a trained model (MMD-DDM, BOOT). */
import { join } from 'node:path';
import type { Command } from 'commander';
import { loadTrainingData } from '../pipelines/data.js';
import { DISTILL_METHODS, distill, type DistillOptions } from '../pipelines/distill.js';
import {
  addOptions, commandOptions, configFile, flag, int, num, oneOf, path, type Resolved,
} from './options.js';
import { DEFAULT_GUIDANCE, DEFAULT_MODEL_DIR, GUIDANCE_RANGE } from './sample.js';
import { runInTerminal } from './training-run.js';

/** Per-method defaults of the options whose good value depends on the method. */
export const METHOD_DEFAULTS = {
  // MMD-DDM: the paper's T' = 5; Adam with the official clip 0.5. The official 5e-6 is for a
  // 36M-parameter CIFAR-10 model over thousands of steps; this 1.1M-parameter model moves at
  // that rate too slowly for a ~200-step run.
  mmd: { steps: 5, iterations: 200, lr: 2e-5, gradClip: 0.5, emaDecay: 0 },
  // BOOT: one step; the student starts from the teacher's weights.
  boot: { steps: 1, iterations: 2500, lr: 1e-4, gradClip: 1, emaDecay: 0.999 },
} as const;

export const DISTILL_OPTIONS = {
  config: configFile('read options from a JSON file; its keys are the long options, checked ' +
    'as the flags are; flags given here win over it'),
  method: oneOf(DISTILL_METHODS, { arg: '<name>', help: 'mmd: fine-tune the teacher for a ' +
    'T\'-step DDIM budget with MMD on classifier features (needs real images); boot: distil a ' +
    'one-step generator from the teacher alone (no data)' }),
  teacher: path({ arg: '<dir>', help: `the trained model (default: ${DEFAULT_MODEL_DIR})` }),
  steps: int({ min: 1, help: 'sampling steps of the student: mmd T\' (default 5), boot 1' }),
  teacherSteps: int({ min: 2, help: 'boot: DDIM steps of the teacher path the student learns',
    default: 10 }),
  guidance: num({ range: GUIDANCE_RANGE, arg: '<w>', help: 'classifier-free guidance of the ' +
    `teacher (default ${DEFAULT_GUIDANCE} for class-conditional teachers, 1 otherwise); boot ` +
    'distils it into the student' }),
  data: path({ arg: '<mnist|DIR>', help: 'mmd: the real images (mnist, or a folder of PNGs)',
    default: 'mnist' }),
  classifier: path({ arg: '<dir>', help: 'mmd: the classifier whose features are compared ' +
    '(default: the shipped models/mnist-classifier)' }),
  iterations: int({ min: 1, help: 'optimisation steps (default mmd 200, boot 2500)' }),
  batchSize: int({ min: 2, help: 'images per step (mmd: generated, and as many real)',
    default: 64 }),
  lr: num({ range: '(0, 1]', help: 'learning rate of Adam (default mmd 2e-5, boot 1e-4)' }),
  gradClip: num({ range: '(0, 1e6]', help: 'clip the global gradient norm (default mmd 0.5, ' +
    'boot 1)' }),
  emaDecay: num({ range: '[0, 1)', help: 'boot: EMA decay of the student (default 0.999; 0: ' +
    'none)' }),
  seed: int({ min: 0, help: 'seed of the run (noise, data order, classes)', default: 0 }),
  out: path({ arg: '<dir>', help: 'run folder: checkpoint/, model/, log.jsonl, samples/',
    default: 'runs/distill' }),
  logEvery: int({ min: 1, help: 'JSONL log interval (steps)', default: 10 }),
  sampleEvery: int({ min: 0, help: 'sample grid interval (steps; 0: never)', default: 100 }),
  checkpointEvery: int({ min: 0, help: 'checkpoint interval (steps; 0: only on Ctrl-C and at ' +
    'the end)', default: 50 }),
  resume: flag({ help: 'continue the run in --out from its checkpoint' }),
};

/** The options `diffuse distill` runs with: the method's defaults filled in and the checks
 *  that span options. Guidance left out is the teacher's default (distill resolves it). */
export function distillOptions(r: Resolved<typeof DISTILL_OPTIONS>):
  DistillOptions & { data: string; resume: boolean } {
  const { config: _, method, iterations, steps, lr, gradClip, emaDecay, teacher, classifier,
    ...o } = r.values;
  if (method === undefined) throw r.refuse('method', `one of ${DISTILL_METHODS.join(', ')}`, 'it is required');
  const d = METHOD_DEFAULTS[method];
  if (method === 'boot' && steps !== undefined && steps !== 1) {
    throw r.refuse('steps', '1 for --method boot (its students are one-step generators)');
  }
  if (method === 'mmd' && r.sources.emaDecay !== 'default') {
    throw r.refuse('emaDecay', 'no value for --method mmd (the official fine-tuning keeps no EMA)');
  }
  return {
    ...o, method, teacher: teacher ?? DEFAULT_MODEL_DIR, studentSteps: steps ?? d.steps,
    steps: iterations ?? d.iterations, lr: lr ?? d.lr, gradClip: gradClip ?? d.gradClip,
    emaDecay: emaDecay ?? d.emaDecay, ...(classifier !== undefined ? { classifier } : {}),
  };
}

export function registerDistill(program: Command): void {
  addOptions(program.command('distill')
    .description('make a few-step student of a trained model: MMD-DDM fine-tuning through ' +
      'the T\'-step DDIM chain, or a one-step BOOT generator; checkpoints, exact --resume, a ' +
      'JSONL log and sample grids as diffuse train'), DISTILL_OPTIONS)
    .action(async (_: unknown, cmd: Command) => {
      const { data: spec, resume, ...o } = distillOptions(commandOptions(DISTILL_OPTIONS, cmd));
      const data = o.method === 'mmd' ? await loadTrainingData(spec) : undefined;
      const r = await runInTerminal('distill', `distill ${o.method}`, o.steps, o.out,
        (l) => l.toExponential(3), (ev) => distill(o, data, resume, ev));
      const how = `--sampler ${r.student.sampler} --steps ${r.student.steps}` +
        (r.student.method === 'mmd' && r.student.guidance !== 1 ? ` --guidance ${r.student.guidance}` : '');
      console.log(`distilled ${r.losses.length} steps in ${r.seconds.toFixed(0)} s; student in ` +
        `${join(o.out, 'model')} (diffuse sample --model ${join(o.out, 'model')} uses ${how} by default)`);
    });
}
