/** @file `diffuse train-classifier`: train the MNIST classifier behind MNIST-FID and guidance. */
import { InvalidArgumentError, type Command } from 'commander';
import { mnistSplits } from '../data/mnist.js';
import { CLASSIFIER_PRESETS } from '../models/classifier.js';
import {
  CLASSIFIER_TRAIN_DEFAULTS as D, classifierSteps, saveClassifier, trainClassifier,
} from '../pipelines/classifier.js';
import { progress } from './progress.js';
import { choice, positiveInt, positiveNumber } from './parse.js';

const channelList = (v: string): number[] => {
  const list = v.split(',').map((s) => positiveInt(s.trim(), false, 'each channel count'));
  if (list.length === 0) throw new InvalidArgumentError(`expected channel counts, got '${v}'`);
  return list;
};

interface Flags {
  preset: string; channels?: number[]; epochs: number; steps?: number; batchSize: number;
  lr: number; shift: number; noiseAware: boolean; seed: number; out: string;
}

export function registerTrainClassifier(program: Command): void {
  program.command('train-classifier')
    .description('train the MNIST classifier (MNIST-FID features, class accuracy, guidance) on ' +
      'the MNIST train split, print its held-out accuracy and save it as a model folder')
    .option('--preset <name>', `classifier preset: ${Object.keys(CLASSIFIER_PRESETS).join(' | ')}`,
      choice(Object.keys(CLASSIFIER_PRESETS)), D.preset)
    .option('--channels <list>', 'channels of each stage, replacing the preset\'s, e.g. ' +
      '16,32,64,128 (every stage after the first halves the resolution)', channelList)
    .option('--epochs <n>', 'passes over the 9,000 training digits',
      (v: string) => positiveInt(v), D.epochs)
    .option('--steps <n>', 'optimisation steps (overrides --epochs)', (v: string) => positiveInt(v))
    .option('--batch-size <n>', 'batch size', (v: string) => positiveInt(v), D.batchSize)
    .option('--lr <x>', 'peak learning rate (AdamW, warm-up then cosine)',
      (v: string) => positiveNumber(v), D.lr)
    .option('--shift <px>', 'largest random shift for augmentation (0: none)',
      (v: string) => positiveInt(v, true), D.shift)
    .option('--noise-aware', 'train on noisy x_t at random DDPM timesteps with the noise level ' +
      'as input (for classifier guidance; not for the metrics classifier)', false)
    .option('--seed <n>', 'seed for initialisation, batch order, shifts and noise',
      (v: string) => positiveInt(v, true), D.seed)
    .option('--out <dir>', 'model folder to write', 'mnist-classifier')
    .action(async (o: Flags) => {
      const data = mnistSplits();
      const { channels, ...rest } = o;
      const opts = { ...D, ...rest, ...(o.steps === undefined ? {} : { steps: o.steps }),
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
        o.steps === undefined ? `--epochs ${opts.epochs}` : `--steps ${o.steps}`,
        `--batch-size ${opts.batchSize}`, `--lr ${opts.lr}`, `--shift ${opts.shift}`,
        ...(opts.noiseAware ? ['--noise-aware'] : []), `--seed ${opts.seed}`].join(' ');
      await saveClassifier(o.out, r, { command, seconds: r.seconds.toFixed(1) });
      console.log(`wrote ${o.out}`);
    });
}
