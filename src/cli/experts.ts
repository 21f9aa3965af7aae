/**
 * @file `diffuse train-experts`: timestep-range LoRA experts of a clean classifier for
 * classifier guidance (PPAP, Go et al. 2022; pipelines/experts.ts), data-free from a model's
 * own samples or supervised on labelled digits (the baseline).
 */
import type { Command } from 'commander';
import {
  EXPERT_METHODS, EXPERTS_DEFAULTS as D, trainExperts, type ExpertsOptions,
} from '../pipelines/experts.js';
import {
  addOptions, commandOptions, int, num, oneOf, path, type Resolved,
} from './options.js';
import { progress, type Progress } from './progress.js';

export const TRAIN_EXPERTS_OPTIONS = {
  method: oneOf(EXPERT_METHODS, { arg: '<name>', help: '(required) ppap: data-free, on images ' +
    'the model generates, with the clean classifier\'s soft predictions as targets; ' +
    'supervised: on the labelled MNIST training digits (the baseline)' }),
  model: path({ arg: '<dir>', help: 'ppap: the pipeline whose unconditional samples the ' +
    'experts learn from (default: the shipped models/mnist-unet)' }),
  classifier: path({ arg: '<dir>', help: 'the clean classifier the experts adapt (default: ' +
    'the shipped models/mnist-classifier)' }),
  experts: int({ min: 1, max: 1000, help: 'experts over equal timestep ranges of [0, 1000)',
    default: D.experts }),
  rank: int({ min: 1, max: 1024, help: 'LoRA rank of every conv and linear weight',
    default: D.rank }),
  steps: int({ min: 1, help: 'optimisation steps per expert', default: D.steps }),
  batchSize: int({ min: 1, help: 'images per step', default: D.batchSize }),
  lr: num({ range: '(0, 1]', help: 'peak AdamW learning rate of the LoRA factors',
    default: D.lr }),
  generated: int({ min: 1, help: 'ppap: images generated once (DDIM, unconditional) and ' +
    `shared by the experts (default ${D.generated})` }),
  samplerSteps: int({ min: 1, help: `ppap: DDIM steps per generated image (default ` +
    `${D.samplerSteps})` }),
  tau: num({ range: '(0, 100]', help: `ppap: temperature of the classifier's soft targets ` +
    `(default ${D.tau}; below 1 sharpens them)` }),
  seed: int({ min: 0, help: 'seed of generation, initialisation, batches, timesteps and noise',
    default: D.seed }),
  out: path({ arg: '<dir>', help: '(required) experts folder to write: experts.json and one ' +
    'classifier folder per expert' }),
};

/** The options `diffuse train-experts` runs with, the checks that span options included:
 *  the ppap-only options are refused for --method supervised. */
export function trainExpertsOptions(r: Resolved<typeof TRAIN_EXPERTS_OPTIONS>): ExpertsOptions {
  const { method, out, model, classifier, generated, samplerSteps, tau, ...o } = r.values;
  if (method === undefined) {
    throw r.refuse('method', `one of ${EXPERT_METHODS.join(', ')}`, 'it is required');
  }
  if (out === undefined) {
    throw r.refuse('out', 'a folder to write the experts to', 'it is required');
  }
  if (method === 'supervised') {
    for (const key of ['model', 'generated', 'samplerSteps', 'tau'] as const) {
      if (r.values[key] !== undefined) {
        throw r.refuse(key, 'no value for --method supervised (it trains on labelled digits, ' +
          'not on generated ones)');
      }
    }
  }
  return { ...o, method, out, model: model ?? D.model, classifier: classifier ?? D.classifier,
    generated: generated ?? D.generated, samplerSteps: samplerSteps ?? D.samplerSteps,
    tau: tau ?? D.tau };
}

const pct = (v: number): string => `${(100 * v).toFixed(1)}%`;

export function registerTrainExperts(program: Command): void {
  addOptions(program.command('train-experts')
    .description('train timestep-range experts of a clean classifier for classifier guidance ' +
      '(PPAP, Go et al. 2022): LoRA fine-tunes on noisy x_t, one per range of timesteps, ' +
      'data-free from the model\'s own samples (ppap) or on labelled digits (supervised)'),
  TRAIN_EXPERTS_OPTIONS)
    .action(async (_: unknown, cmd: Command) => {
      const o = trainExpertsOptions(commandOptions(TRAIN_EXPERTS_OPTIONS, cmd));
      let gen: Progress | undefined;
      const total = o.experts * o.steps;
      let bar: Progress | undefined;
      const r = await trainExperts(o, {
        onGenerate: (done, all) => (gen ??= progress('generating', all)).update(done),
        onWarning: (m) => console.error(`warning: ${m}`),
        onStep: (s) => {
          if (!bar) {
            gen?.stop();
            bar = progress('training experts', total, ['expert', 'loss']);
          }
          const done = s.expert * s.steps + s.step;
          if (s.step % 5 === 0 || s.step === s.steps) {
            bar.update(done, { expert: `${s.expert + 1}/${o.experts}`,
              loss: s.smoothed.toFixed(4) });
          }
        },
      });
      bar?.stop();
      if (r.generation) {
        const g = r.generation;
        console.log(`generated ${g.images} unconditional images (DDIM-${o.samplerSteps}) in ` +
          `${g.seconds.toFixed(1)} s; the classifier's classes on them: ` +
          g.classShares.map((s, k) => `${k} ${pct(s)}`).join(', '));
      }
      console.log(`held-out digits noised to the middle of each expert's range (the clean ` +
        `classifier on the same x_t for contrast):`);
      for (const e of r.experts) {
        console.log(`  expert ${e.expert} [${e.range[0]}, ${e.range[1]}) at t = ${e.t}: ` +
          `${pct(e.accuracy)} (clean classifier ${pct(e.teacherAccuracy)}), loss ` +
          `${e.loss.toFixed(4)}, ${e.seconds.toFixed(1)} s`);
      }
      const { trainableParameters: lora, baseParameters: base } = r.record;
      console.log(`trainable: ${lora.toLocaleString('en-US')} LoRA values per expert, ` +
        `${pct(lora / base)} of the classifier's ${base.toLocaleString('en-US')} (rank ${o.rank})`);
      console.log(`trained ${o.experts} x ${o.steps} steps in ${r.trainingSeconds.toFixed(1)} s ` +
        `(evaluation included); wall time ${r.seconds.toFixed(1)} s`);
      console.log(`wrote ${r.out} (guide a sampler with it: diffuse sample --guide ` +
        `classifier:${r.out})`);
    });
}
