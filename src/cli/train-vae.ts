/** @file `diffuse train-vae`: train the AutoencoderKL a latent diffusion model works in. */
import { join } from 'node:path';
import type { Command } from 'commander';
import { boldDataset } from '../data/transforms.js';
import { loadTrainingData, mnistSplits, type ImageDataset } from '../pipelines/data.js';
import { RECONSTRUCTION_LOSSES, trainVae, VAE_PRESET_NAMES } from '../pipelines/vae.js';
import { addOptions, commandOptions, configFile, flag, int, num, oneOf, path } from './options.js';
import { runInTerminal } from './training-run.js';

export const TRAIN_VAE_OPTIONS = {
  config: configFile('read options from a JSON file; its keys are the long options, checked ' +
    'as the flags are; flags given here win over it'),
  data: path({ arg: '<mnist|mnist-bold|DIR>', help: 'mnist, mnist-bold or a folder of PNGs',
    default: 'mnist' }),
  size: oneOf(VAE_PRESET_NAMES, { arg: '<preset>', help: 'AutoencoderKL preset (mnist-f4: ' +
    '32x32 digits to 4x8x8 latents)', default: 'mnist-f4' }),
  latentChannels: int({ min: 1, max: 64, help: 'latent channels (default: the preset\'s)' }),
  klWeight: num({ range: '[0, 100]', help: 'weight of KL(q(z|x) || N(0, I)) against the ' +
    'reconstruction summed over pixels (LDM\'s f4 KL models: 1e-6)', default: 1e-6 }),
  reconstruction: oneOf(RECONSTRUCTION_LOSSES, { arg: '<kind>', help: 'reconstruction loss ' +
    '(LDM: l1)', default: 'l1' }),
  batchSize: int({ min: 1, help: 'images per step', default: 64 }),
  steps: int({ min: 1, help: 'optimisation steps in total', default: 3000 }),
  lr: num({ range: '(0, 10]', help: 'peak learning rate (AdamW)', default: 1e-3 }),
  lrSchedule: oneOf(['constant', 'cosine'], { arg: '<kind>', help: 'learning rate after ' +
    'warm-up', default: 'cosine' }),
  warmupSteps: int({ min: 0, help: 'linear warm-up steps', default: 100 }),
  gradClip: num({ range: '(0, 1e6]', help: 'clip the global gradient norm to this (the loss ' +
    'is summed over pixels, so its gradients are large)', default: 1000 }),
  seed: int({ min: 0, help: 'seed of the whole run (data order, noise, init)', default: 0 }),
  out: path({ arg: '<dir>', help: 'run folder: checkpoint/, model/ (model/vae is the VAE), ' +
    'log.jsonl, samples/', default: 'runs/vae' }),
  logEvery: int({ min: 1, help: 'JSONL log interval (steps)', default: 10 }),
  sampleEvery: int({ min: 0, help: 'reconstruction grid interval (steps; 0: never)', default: 500 }),
  checkpointEvery: int({ min: 0, help: 'checkpoint interval (steps; 0: only on Ctrl-C and at ' +
    'the end)', default: 200 }),
  resume: flag({ help: 'continue the run in --out from its checkpoint' }),
};

/** The training images and the held-out ones (MNIST's held-out split; a folder's own images). */
function vaeData(spec: string): Promise<{ train: ImageDataset; heldOut: ImageDataset }> {
  if (spec === 'mnist') return Promise.resolve(mnistSplits());
  if (spec === 'mnist-bold') {
    const s = mnistSplits();
    return Promise.resolve({ train: boldDataset(s.train), heldOut: boldDataset(s.heldOut) });
  }
  return loadTrainingData(spec).then((d) => ({ train: d, heldOut: d }));
}

export function registerTrainVae(program: Command): void {
  addOptions(program.command('train-vae')
    .description('train an AutoencoderKL (latent diffusion\'s first stage) with exact --resume; ' +
      'the latent scaling factor is computed at the end and saved in its config.json, and ' +
      '`diffuse train --latent RUN` trains a diffusion model in its latent space'), TRAIN_VAE_OPTIONS)
    .action(async (_: unknown, cmd: Command) => {
      const { config: _c, data: spec, resume, ...o } = commandOptions(TRAIN_VAE_OPTIONS, cmd).values;
      const data = await vaeData(spec);
      const r = await runInTerminal('train-vae', 'train-vae', o.steps, o.out, (l) => l.toFixed(2),
        (ev) => trainVae(o, data.train, data.heldOut, resume, ev));
      const c = r.model.config;
      const [, ch, h] = data.train.images.shape as number[];
      const f = 2 ** (c.block_out_channels.length - 1);
      console.log(`trained ${r.losses.length} steps in ${r.seconds.toFixed(0)} s; VAE in ` +
        `${join(o.out, 'model', 'vae')}: ${ch}x${h}x${h} images <-> ${c.latent_channels}x${h! / f}x${h! / f} ` +
        `latents, scaling factor ${r.scalingFactor!.toPrecision(4)}, held-out reconstruction MSE ` +
        `${r.heldOutMse!.toFixed(5)}`);
    });
}
