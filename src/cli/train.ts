/** @file `diffuse train`: train an image diffusion model (flags and/or a JSON config file). */
import { join } from 'node:path';
import type { Command } from 'commander';
import { loadTrainingData } from '../pipelines/data.js';
import { MODEL_FAMILIES, presetNames, type ModelFamily } from '../pipelines/image-models.js';
import { CEP_KINDS } from '../methods/cep.js';
import { METHOD_DEFAULTS, OBJECTIVES, train, type TrainOptions } from '../pipelines/train.js';
import {
  addOptions, commandOptions, configFile, flag, int, kebab, num, oneOf, path, type Resolved,
} from './options.js';
import { runInTerminal } from './training-run.js';
import { trainVideo } from '../pipelines/video.js';
import { VIDEO_UNET_PRESETS } from '../models/video-unet.js';
import { UsageError } from './errors.js';

const familyPresets = MODEL_FAMILIES.map((f) => `${f} ${presetNames(f).join('|')}`).join(', ');

/** Every option of `diffuse train`, flag and config key alike: --help prints this table. */
export const TRAIN_OPTIONS = {
  config: configFile('read options from a JSON file; its keys are the long options ' +
    '("batch-size": 32), checked as the flags are; flags given here win over it'),
  data: path({ arg: '<mnist|mnist-bold|moving-mnist|DIR>', help: 'mnist, mnist-bold (the same digits ' +
    'dilated by a pixel), either narrowed to some classes (mnist:0-4, mnist:5,7,9), a folder of PNGs (labels from sub-folder names), or moving-mnist: ' +
    'video clips of bouncing digits, made afresh for every step, for the video U-Net', default: 'mnist' }),
  model: oneOf(MODEL_FAMILIES, { arg: '<family>', help: 'model family', default: 'unet' }),
  size: oneOf([...new Set(MODEL_FAMILIES.flatMap(presetNames))], { arg: '<preset>',
    help: `size preset of the --model family (${familyPresets})`, default: 's' }),
  objective: oneOf(OBJECTIVES, { arg: '<kind>', help: 'what the model predicts', default: 'eps' }),
  weighting: oneOf(['uniform', 'min-snr'], { arg: '<kind>', help: 'loss weighting over time',
    default: 'uniform' }),
  minSnrGamma: num({ range: '(0, 1000]', help: 'gamma of Min-SNR weighting (5 in the paper)',
    default: 5 }),
  unconditional: flag({ help: 'ignore labels (default: class-conditional when the data has ' +
    'labels)' }),
  labelDropout: num({ range: '[0, 1)', arg: '<p>', help: 'probability of dropping a label ' +
    '(classifier-free guidance)', default: 0.1 }),
  batchSize: int({ min: 1, help: 'images per step', default: 64 }),
  steps: int({ min: 1, help: 'optimisation steps in total', default: 2000 }),
  lr: num({ range: '(0, 10]', help: 'peak learning rate (AdamW); AdamW steps are about lr in ' +
    'size, so beyond 10 a run can only diverge', default: 2e-4 }),
  lrSchedule: oneOf(['constant', 'cosine'], { arg: '<kind>', help: 'learning rate after ' +
    'warm-up', default: 'cosine' }),
  warmupSteps: int({ min: 0, help: 'linear warm-up steps', default: 100 }),
  gradClip: num({ range: '(0, 1e6]', help: 'clip the global gradient norm to this',
    default: 1 }),
  emaDecay: num({ range: '[0, 1)', help: 'largest EMA decay (warm-up (1+s)/(10+s))',
    default: 0.999 }),
  seed: int({ min: 0, help: 'seed of the whole run (data order, noise, init)', default: 0 }),
  out: path({ arg: '<dir>', help: 'run folder: checkpoint/, model/, log.jsonl, samples/',
    default: 'runs/train' }),
  logEvery: int({ min: 1, help: 'JSONL log interval (steps)', default: 10 }),
  sampleEvery: int({ min: 0, help: 'sample grid interval (steps; 0: never)', default: 500 }),
  checkpointEvery: int({ min: 0, help: 'checkpoint interval (steps; 0: only on Ctrl-C and at ' +
    'the end, as always)', default: 200 }),
  init: path({ arg: '<dir>', help: 'start from a trained pipeline\'s weights (fine-tuning, ' +
    'e.g. on --data mnist-bold); its config replaces --size' }),
  resume: flag({ help: 'continue the run in --out from its checkpoint' }),
  cep: oneOf(['none', ...CEP_KINDS], { arg: '<kind>', help: 'condition embedding perturbation ' +
    '(Chen et al. 2024): shift the class embedding by uniform or Gaussian noise of scale ' +
    'gamma/sqrt(d) while training', default: 'none' }),
  cepGamma: num({ range: '(0, 100]', help: 'CEP strength gamma (1 in the paper)', default: 1 }),
  repa: num({ range: '[0, 100]', arg: '<lambda>', help: 'REPA (Yu et al. 2024): weight of the ' +
    'alignment of an early hidden state to a frozen encoder\'s features (0: off; 0.5 in the ' +
    'paper)', default: 0 }),
  repaDepth: int({ min: 1, help: 'REPA: align the hidden state after this many blocks ' +
    '(default: 8/28 of the depth, as the paper\'s 8 of 28)' }),
  repaEncoder: path({ arg: '<dir>', help: 'REPA: the frozen encoder, a U-Net pipeline read as ' +
    'DDAE features (mid block, t = 10)', default: METHOD_DEFAULTS.repaEncoder }),
  repaHidden: int({ min: 1, help: 'REPA: width of the projector MLP (default 4 x the model ' +
    'width; the paper\'s 2048 is sized for width 1152)' }),
  dtrAlpha: num({ range: '(0, 100]', arg: '<alpha>', help: 'Denoising Task Routing (Park et al. ' +
    '2023), DiT only: route timestep t through channels sliding with (t/T)^alpha (4 in the ' +
    'paper; default: off)' }),
  dtrBeta: num({ range: '(0, 1]', help: 'DTR: share of channels active at each timestep',
    default: 0.8 }),
  latent: path({ arg: '<dir>', help: 'latent diffusion: train on the latents of this VAE (a ' +
    'diffuse train-vae run, a pipeline with vae/, or an AutoencoderKL folder); the exported ' +
    'pipeline carries it as vae/ and diffuse sample decodes with it' }),
  frames: int({ min: 2, max: 256, help: 'moving-mnist: frames per clip', default: 16 }),
  canvas: int({ min: 20, max: 256, help: 'moving-mnist: frame side in pixels (digits are 16 px ' +
    'under 64, 28 px from 64)', default: 32 }),
  digits: int({ min: 1, max: 4, help: 'moving-mnist: digits per clip', default: 2 }),
};

export type TrainCliOptions = Omit<TrainOptions, 'conditional'> & {
  data: string; unconditional: boolean; resume: boolean; frames: number; canvas: number; digits: number;
};

/** The options `diffuse train` runs with, after the checks that span options (a size preset
 *  exists per family, so --size is checked against --model once both are known). */
export function trainOptions(r: Resolved<typeof TRAIN_OPTIONS>): TrainCliOptions {
  const { config: _, ...o } = r.values;
  checkSizePreset(r, o.model, o.size);
  return o;
}

/** Refuses `--size` unless it is a preset of the `--model` family. */
export function checkSizePreset(r: { refuse(key: 'size', expected: string): Error }, model: ModelFamily,
  size: string): void {
  const sizes = presetNames(model);
  if (!sizes.includes(size)) throw r.refuse('size', `a ${model} size preset (${sizes.join(', ')})`);
}

export function registerTrain(program: Command): void {
  addOptions(program.command('train')
    .description('train an image diffusion model (U-Net, DiT, DiT-MoE or Switch-DiT); checkpoints in ' +
      'diffusers\' layout, exact --resume, a JSONL log and sample grids'), TRAIN_OPTIONS)
    .action(async (_: unknown, cmd: Command) => {
      const resolved = commandOptions(TRAIN_OPTIONS, cmd);
      if (resolved.values.data === 'moving-mnist') return trainVideoCommand(resolved);
      const { data: spec, unconditional, resume, frames: _f, canvas: _c, digits: _d, ...f } = trainOptions(resolved);
      const data = await loadTrainingData(spec);
      const o: TrainOptions = { ...f, conditional: !unconditional && !!data.labels };
      const r = await runInTerminal('train', 'train', o.steps, o.out, (l) => l.toFixed(4),
        (ev) => train(o, data, resume, ev));
      console.log(`trained ${r.losses.length} steps in ${r.seconds.toFixed(0)} s; model in ` +
        `${join(o.out, 'model')}`);
    });
}

/** `diffuse train --data moving-mnist`: the video U-Net on fresh clips (pipelines/video.ts). */
async function trainVideoCommand(r: Resolved<typeof TRAIN_OPTIONS>): Promise<void> {
  const o = r.values;
  const changed = (k: keyof typeof TRAIN_OPTIONS) => r.sources[k] !== 'default';
  const unused = (['model', 'init', 'repa', 'cep', 'dtrAlpha', 'weighting', 'labelDropout', 'latent'] as const).filter(changed);
  if (unused.length) {
    throw new UsageError(`--data moving-mnist trains the video U-Net, unconditionally: ${unused.map((k) => `--${kebab(k)}`).join(', ')} ` +
      `${unused.length === 1 ? 'does' : 'do'} not apply`);
  }
  if (!Object.hasOwn(VIDEO_UNET_PRESETS, o.size)) {
    throw r.refuse('size', `a video U-Net size preset (${Object.keys(VIDEO_UNET_PRESETS).join(', ')})`);
  }
  const v = { size: o.size, objective: o.objective, clips: { frames: o.frames, size: o.canvas, digits: o.digits },
    batchSize: o.batchSize, steps: o.steps, lr: o.lr, lrSchedule: o.lrSchedule, warmupSteps: o.warmupSteps,
    gradClip: o.gradClip, emaDecay: o.emaDecay, seed: o.seed, out: o.out, logEvery: o.logEvery,
    sampleEvery: o.sampleEvery, checkpointEvery: o.checkpointEvery };
  const res = await runInTerminal('train', 'train', v.steps, v.out, (l) => l.toFixed(4),
    (ev) => trainVideo(v, o.resume, ev));
  console.log(`trained ${res.losses.length} steps in ${res.seconds.toFixed(0)} s; model in ${join(v.out, 'model')}`);
}
