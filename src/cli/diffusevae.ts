/**
 * @file `diffuse diffusevae train|sample|eval`: DiffuseVAE (pipelines/diffusevae.ts) — a
 * U-Net refiner conditioned on a trained VAE's reconstructions, samples from the VAE's prior
 * refined by it, an interpolation strip, and MNIST-FID of the VAE alone against DiffuseVAE.
 */
import { join } from 'node:path';
import type { Command } from 'commander';
import { HostArray } from '../engine/host.js';
import { imageGrid, writePng } from '../io/png.js';
import { DIFFUSEVAE_FORMS, type DiffuseVaeForm } from '../methods/diffusevae.js';
import { mnistSplits } from '../pipelines/data.js';
import {
  loadDiffuseVae, priorDraws, sampleDiffuseVae, slerpLatents, trainDiffuseVae,
} from '../pipelines/diffusevae.js';
import { prepareMnistFid, scoreImages } from '../pipelines/eval.js';
import { presetNames } from '../pipelines/image-models.js';
import { SAMPLER_NAMES } from '../pipelines/sample.js';
import { writeFileAtomic } from '../util/atomic.js';
import { addOptions, commandOptions, custom, flag, int, oneOf, path } from './options.js';
import { progress } from './progress.js';
import { TRAIN_OPTIONS } from './train.js';
import { runInTerminal } from './training-run.js';

const form = custom((v): DiffuseVaeForm => {
  const n = Number(v);
  if (!DIFFUSEVAE_FORMS.includes(n as DiffuseVaeForm)) throw new Error('not 1 or 2');
  return n as DiffuseVaeForm;
}, { arg: '<1|2>', expected: '1 or 2', help: 'DiffuseVAE\'s formulation: 1 conditions the ' +
  'denoiser on x̂ by channel concatenation; 2 also shifts the chain\'s mean by x̂', default: 1 as DiffuseVaeForm });

const { batchSize, lr, lrSchedule, warmupSteps, gradClip, emaDecay, seed, logEvery, checkpointEvery } = TRAIN_OPTIONS;

export const DIFFUSEVAE_TRAIN_OPTIONS = {
  vae: path({ arg: '<dir>', help: 'the VAE: a diffuse train-vae run (train it with a KL weight ' +
    'that makes its prior samplable, e.g. --size mnist-f8 --kl-weight 0.1), a pipeline with vae/, ' +
    'or an AutoencoderKL folder' }),
  form,
  size: oneOf(presetNames('unet'), { arg: '<preset>', help: 'U-Net size preset of the refiner', default: 'xs' }),
  batchSize, steps: int({ min: 1, help: 'optimisation steps in total', default: 2000 }),
  lr, lrSchedule, warmupSteps, gradClip, emaDecay, seed, logEvery,
  sampleEvery: int({ min: 0, help: 'sample grid interval (steps; 0: never)', default: 500 }),
  checkpointEvery,
  out: path({ arg: '<dir>', help: 'run folder: checkpoint/, model/, log.jsonl, samples/', default: 'runs/diffusevae' }),
  resume: flag({ help: 'continue the run in --out from its checkpoint' }),
};

const sampling = {
  model: path({ arg: '<dir>', help: 'a DiffuseVAE pipeline (diffuse diffusevae train\'s model/ or its run folder)' }),
  sampler: oneOf(SAMPLER_NAMES.filter((s) => !s.startsWith('flow')), { arg: '<name>', help: 'the refiner\'s sampler',
    default: 'ddim' }),
  steps: int({ min: 1, help: 'refiner steps', default: 50 }),
  seed: int({ min: 0, help: 'seed of the prior draws and the refiner\'s noise', default: 0 }),
};

export const DIFFUSEVAE_SAMPLE_OPTIONS = {
  ...sampling,
  n: int({ min: 1, max: 1024, help: 'samples', default: 32 }),
  interpolate: int({ min: 0, max: 64, help: 'instead: this many points on the path between two ' +
    'prior draws, the refiner\'s noise shared (the VAE latent\'s control)', default: 0 }),
  out: path({ arg: '<file.png>', help: 'grid: the VAE\'s samples in the top half, their refinements below',
    default: 'diffusevae.png' }),
};

export const DIFFUSEVAE_EVAL_OPTIONS = {
  ...sampling,
  n: int({ min: 2, max: 1000, help: 'samples scored (and held-out digits for the floor)', default: 1000 }),
  csv: path({ arg: '<file>', help: 'also write the scores as CSV' }),
};

export function registerDiffuseVae(program: Command): void {
  const cmd = program.command('diffusevae').description('DiffuseVAE (Pandey et al. 2022): a DDPM ' +
    'refiner conditioned on a VAE\'s reconstructions; sample from the VAE\'s prior, interpolate, score');
  addOptions(cmd.command('train').description('train the refiner on MNIST with a trained VAE'), DIFFUSEVAE_TRAIN_OPTIONS)
    .action(async (_: unknown, c: Command) => {
      const r = commandOptions(DIFFUSEVAE_TRAIN_OPTIONS, c);
      const { resume, vae, ...o } = r.values;
      if (vae === undefined) throw r.refuse('vae', 'a trained VAE folder');
      const data = mnistSplits().train;
      const res = await runInTerminal('diffusevae train', 'train', o.steps, o.out, (l) => l.toFixed(4),
        (ev) => trainDiffuseVae({ ...o, vae }, data, resume, ev));
      console.log(`trained ${res.losses.length} steps in ${res.seconds.toFixed(0)} s; model in ${join(o.out, 'model')}`);
    });
  addOptions(cmd.command('sample').description('sample from the VAE\'s prior and refine, or interpolate'),
    DIFFUSEVAE_SAMPLE_OPTIONS)
    .action(async (_: unknown, c: Command) => {
      const r = commandOptions(DIFFUSEVAE_SAMPLE_OPTIONS, c);
      const o = r.values;
      if (o.model === undefined) throw r.refuse('model', 'a DiffuseVAE pipeline folder');
      const p = await loadDiffuseVae(o.model);
      const n = o.interpolate || o.n;
      let z: HostArray<'float32'> | undefined;
      if (o.interpolate) {
        const ends = priorDraws(p, 2, o.seed);
        const per = ends.size / 2;
        z = slerpLatents(ends.data.subarray(0, per), ends.data.subarray(per), o.interpolate, ends.shape.slice(1));
      }
      const bar = progress('sampling', o.steps, []);
      const s = await sampleDiffuseVae(p, { n, steps: o.steps, sampler: o.sampler, seed: o.seed,
        ...(z ? { z, sharedNoise: true } : {}), onStep: (i) => bar.update(i, {}) });
      bar.stop();
      const cols = o.interpolate || Math.ceil(Math.sqrt(n));
      const rows = Math.ceil(n / cols);
      const grid = new Float32Array(2 * rows * cols * (s.vae.size / n)).fill(-1);
      const per = s.vae.size / n;
      for (let i = 0; i < n; i++) {
        grid.set(s.vae.data.subarray(i * per, (i + 1) * per), i * per);
        grid.set(s.images.data.subarray(i * per, (i + 1) * per), (rows * cols + i) * per);
      }
      await writePng(o.out, imageGrid(new HostArray(grid, [2 * rows * cols, ...s.vae.shape.slice(1)]), { cols }));
      console.log(`wrote ${o.out}: ${n} VAE samples (top) and their DiffuseVAE refinements (bottom), form ${p.form}`);
    });
  addOptions(cmd.command('eval').description('MNIST-FID of the VAE\'s samples and of DiffuseVAE\'s'),
    DIFFUSEVAE_EVAL_OPTIONS)
    .action(async (_: unknown, c: Command) => {
      const r = commandOptions(DIFFUSEVAE_EVAL_OPTIONS, c);
      const o = r.values;
      if (o.model === undefined) throw r.refuse('model', 'a DiffuseVAE pipeline folder');
      const p = await loadDiffuseVae(o.model);
      const fid = await prepareMnistFid({ n: o.n });
      try {
        const bar = progress('sampling', o.steps, []);
        const s = await sampleDiffuseVae(p, { n: o.n, steps: o.steps, sampler: o.sampler, seed: o.seed,
          onStep: (i) => bar.update(i, {}) });
        bar.stop();
        const vae = await scoreImages(fid, s.vae);
        const refined = await scoreImages(fid, s.images);
        console.log(`MNIST-FID over ${o.n} samples (held-out floor ${fid.floor.toFixed(3)}):`);
        console.log(`  VAE alone          ${vae.fid.toFixed(3)}`);
        console.log(`  DiffuseVAE form ${p.form}  ${refined.fid.toFixed(3)}  (${o.sampler}, ${o.steps} steps)`);
        if (o.csv) {
          await writeFileAtomic(o.csv, 'model,form,sampler,steps,n,vae_fid,diffusevae_fid,floor\n' +
            `${o.model},${p.form},${o.sampler},${o.steps},${o.n},${vae.fid.toFixed(4)},${refined.fid.toFixed(4)},${fid.floor.toFixed(4)}\n`);
        }
      } finally {
        await fid.dispose();
      }
    });
}
