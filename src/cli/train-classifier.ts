/** @file `diffuse train-classifier`: train the MNIST classifier behind MNIST-FID and guidance. */
import type { Command } from 'commander';
import {
  CLASSIFIER_PRESET_NAMES, CLASSIFIER_TRAIN_DEFAULTS as D, classifierSteps, saveClassifier,
  trainClassifier,
} from '../pipelines/classifier.js';
import { mnistSplits } from '../pipelines/data.js';
import { addOptions, commandOptions, custom, flag, int, num, oneOf, path } from './options.js';
import { progress } from './progress.js';

/** `--channels 16,32,64`: a positive channel count per stage. */
export function parseChannels(v: string): number[] {
  const list = v.split(',').map((s) => s.trim());
  const bad = list.find((s) => !/^\d+$/.test(s) || !(Number(s) >= 1 && Number(s) <= 65536));
  if (bad !== undefined) throw new RangeError(`'${bad}' is not a channel count from 1 to 65536`);
  return list.map(Number);
}

export const TRAIN_CLASSIFIER_OPTIONS = {
  preset: oneOf(CLASSIFIER_PRESET_NAMES, { help: 'classifier preset', default: D.preset }),
  channels: custom(parseChannels, { arg: '<list>', expected: 'channel counts such as ' +
    '16,32,64,128', help: 'channels of each stage, replacing the preset\'s, e.g. 16,32,64,128 ' +
    '(every stage after the first halves the resolution)' }),
  epochs: int({ min: 1, help: 'passes over the 9,000 training digits', default: D.epochs }),
  steps: int({ min: 1, help: 'optimisation steps (overrides --epochs)' }),
  batchSize: int({ min: 1, help: 'batch size', default: D.batchSize }),
  lr: num({ range: '(0, 10]', help: 'peak learning rate (AdamW, warm-up then cosine)',
    default: D.lr }),
  shift: int({ min: 0, max: 16, arg: '<px>', help: 'largest random shift for augmentation ' +
    '(0: none)', default: D.shift }),
  noiseAware: flag({ help: 'train on noisy x_t at random DDPM timesteps with the noise level ' +
    'as input (for classifier guidance; not for the metrics classifier)' }),
  seed: int({ min: 0, help: 'seed for initialisation, batch order, shifts and noise',
    default: D.seed }),
  out: path({ arg: '<dir>', help: 'model folder to write', default: 'mnist-classifier' }),
};

export function registerTrainClassifier(program: Command): void {
  addOptions(program.command('train-classifier')
    .description('train the MNIST classifier (MNIST-FID features, class accuracy, guidance) on ' +
      'the MNIST train split, print its held-out accuracy and save it as a model folder'),
  TRAIN_CLASSIFIER_OPTIONS)
    .action(async (_: unknown, cmd: Command) => {
      const o = commandOptions(TRAIN_CLASSIFIER_OPTIONS, cmd).values;
      const data = mnistSplits();
      const { channels, out, steps, ...rest } = o;
      const opts = { ...D, ...rest, ...(steps === undefined ? {} : { steps }),
        ...(channels ? { overrides: { block_out_channels: channels } } : {}) };
      const total = classifierSteps(opts, data.train);
      const bar = progress('training', total, ['loss']);
      const r = await trainClassifier(opts, data, {
        onStep: (s) => (s.step % 5 === 0 || s.step === total) &&
          bar.update(s.step, { loss: s.smoothed.toFixed(4) }),
      });
      bar.stop();
      const rate = (r.steps * opts.batchSize) / r.seconds;
      console.log(`trained ${r.steps} steps in ${r.seconds.toFixed(1)} s ` +
        `(${rate.toFixed(0)} images/s, batch ${opts.batchSize})`);
      console.log(`held-out accuracy: ${(100 * r.heldOutAccuracy).toFixed(2)}% ` +
        `(${data.heldOut.labels!.length} digits never trained on)`);
      for (const { t, accuracy } of r.noisyAccuracy) {
        console.log(`held-out accuracy at t = ${t}: ${(100 * accuracy).toFixed(2)}%`);
      }
      const command = ['diffuse', 'train-classifier', `--preset ${opts.preset}`,
        ...(channels ? [`--channels ${channels.join(',')}`] : []),
        steps === undefined ? `--epochs ${opts.epochs}` : `--steps ${steps}`,
        `--batch-size ${opts.batchSize}`, `--lr ${opts.lr}`, `--shift ${opts.shift}`,
        ...(opts.noiseAware ? ['--noise-aware'] : []), `--seed ${opts.seed}`].join(' ');
      await saveClassifier(out, r, { command, seconds: r.seconds.toFixed(1) });
      console.log(`wrote ${out}`);
    });
}
