/** @file `diffuse invdiff`: InvDiff (Hou et al. 2024) on MNIST with stroke thickness as the
 *  spurious attribute, plain CFG against invariant guidance (pipelines/invdiff.ts; the method
 *  and the stand-in in methods/invdiff.ts and data/biased-mnist.ts). */
import type { Command } from 'commander';
import { INVDIFF_CSV_COLUMNS, runInvDiff, type InvDiffOptions } from '../pipelines/invdiff.js';
import { presetNames } from '../pipelines/image-models.js';
import { PROVIDERS, SAMPLER_NAMES } from '../pipelines/sample.js';
import { Interrupted } from './errors.js';
import { addOptions, commandOptions, flag, int, num, oneOf, path } from './options.js';
import { progress, type Progress } from './progress.js';
import { stopOnSignal } from './training-run.js';

const UNET_SIZES = presetNames('unet');

export const INVDIFF_OPTIONS = {
  out: path({ arg: '<dir>', help: 'run folder: base/, oracle/, module/, invdiff.csv, invdiff.png ' +
    '(finished stages are reused, unfinished ones resumed)', default: 'runs/invdiff' }),
  aligned: num({ range: '[0.5, 1]', arg: '<p>', help: 'share of bold images among digits 0-4 ' +
    '(1 - p among 5-9) in the biased training set', default: 0.95 }),
  dataSeed: int({ min: 0, help: 'seed of which images are made bold', default: 0 }),
  base: path({ arg: '<dir>', help: 'a class-conditional pipeline already trained on this biased ' +
    'set (default: train one in OUT/base)' }),
  oracle: flag({ help: 'also train the base recipe on the 50/50 set in OUT/oracle and sample it' }),
  oracleModel: path({ arg: '<dir>', help: 'an oracle pipeline already trained on the 50/50 set' }),
  // The base recipe: the shipped models/mnist-unet's (README), 2,000 steps instead of 3,600.
  size: oneOf(UNET_SIZES, { arg: '<preset>', help: 'U-Net size of the base (and oracle)',
    default: 'xs' }),
  baseSteps: int({ min: 1, help: 'training steps of the base (and oracle)', default: 2000 }),
  batchSize: int({ min: 1, help: 'base training batch', default: 64 }),
  lr: num({ range: '(0, 10]', help: 'base peak learning rate', default: 1e-3 }),
  seed: int({ min: 0, help: 'seed of the base and oracle runs, the module run and the losses',
    default: 0 }),
  draws: int({ min: 1, help: '(t, eps) draws per image for the biased model\'s per-image loss ' +
    '(the environments\' score)', default: 16 }),
  moduleSize: oneOf(UNET_SIZES, { arg: '<preset>', help: 'U-Net size of the module G_psi',
    default: 'tiny' }),
  moduleSteps: int({ min: 1, help: 'module training steps', default: 2000 }),
  moduleBatch: int({ min: 2, help: 'module batch, half from each environment', default: 64 }),
  moduleLr: num({ range: '(0, 10]', help: 'module peak learning rate', default: 1e-3 }),
  lambda: num({ range: '[0, 1e4]', help: 'weight of the variance of the environments\' mean ' +
    'losses (1 in the official scripts)', default: 1 }),
  sampler: oneOf(SAMPLER_NAMES, { arg: '<name>', help: 'sampler of every arm',
    default: 'dpm++2m' }),
  steps: int({ min: 1, help: 'sampling steps', default: 20 }),
  guidance: num({ range: '[0, 100]', arg: '<w>', help: 'CFG weight of every arm', default: 1.5 }),
  scale: num({ range: '[0, 100]', arg: '<s>', help: 'scale of the module\'s shift at sampling ' +
    '(trained at 1)', default: 1 }),
  perClass: int({ min: 1, max: 1000, help: 'samples per class and arm', default: 100 }),
  sampleSeed: int({ min: 0, help: 'seed of the sampling noise (the same for every arm)',
    default: 1 }),
  checkpointEvery: int({ min: 0, help: 'checkpoint interval of the module run', default: 200 }),
  sampleEvery: int({ min: 0, help: 'grid interval of the module run (0: never)', default: 500 }),
  classifier: path({ arg: '<dir>', help: 'classifier for class accuracy and MNIST-FID (default: ' +
    'the shipped models/mnist-classifier)' }),
  provider: oneOf(PROVIDERS, { arg: '<p>', help: 'ONNX Runtime provider for losses and ' +
    'sampling', default: 'cpu' }),
};

const pct = (v: number | null): string => (v === null ? '' : `${(100 * v).toFixed(1)}%`);

export function registerInvDiff(program: Command): void {
  addOptions(program.command('invdiff')
    .description('InvDiff (Hou et al. 2024) at MNIST scale: train a class-conditional model on ' +
      'digits whose stroke thickness goes with the class (0-4 mostly bold, 5-9 mostly thin), ' +
      'infer bias environments from its per-image losses, train a small module on the frozen ' +
      'model to equalise the environments\' losses, and compare per-class bold shares, class ' +
      'accuracy and MNIST-FID of plain CFG and InvDiff guidance'), INVDIFF_OPTIONS)
    .action(async (_: unknown, cmd: Command) => {
      const o = commandOptions(INVDIFF_OPTIONS, cmd).values;
      const stop = stopOnSignal();
      let bar: { stage: string; p: Progress } | undefined;
      const options: InvDiffOptions = {
        out: o.out, aligned: o.aligned, dataSeed: o.dataSeed, draws: o.draws, scale: o.scale,
        ...(o.base ? { base: o.base } : {}), oracle: o.oracleModel ?? o.oracle,
        recipe: { model: 'unet', size: o.size, objective: 'eps', weighting: 'min-snr',
          minSnrGamma: 5, conditional: true, labelDropout: 0.1, batchSize: o.batchSize,
          steps: o.baseSteps, lr: o.lr, lrSchedule: 'cosine', warmupSteps: 200, gradClip: 1,
          emaDecay: 0.999, seed: o.seed,
          logEvery: 10, sampleEvery: 500, checkpointEvery: 200, cep: 'none', cepGamma: 1, repa: 0,
          repaEncoder: '', dtrBeta: 0.8 },
        module: { size: o.moduleSize, steps: o.moduleSteps, batchSize: o.moduleBatch,
          lr: o.moduleLr, lambda: o.lambda, labelDropout: 0.1, emaDecay: 0.999, seed: o.seed,
          checkpointEvery: o.checkpointEvery, sampleEvery: o.sampleEvery },
        sample: { sampler: o.sampler, steps: o.steps, guidance: o.guidance, perClass: o.perClass,
          seed: o.sampleSeed, provider: o.provider },
        ...(o.classifier ? { classifier: o.classifier } : {}), signal: stop.signal,
      };
      try {
        const r = await runInvDiff(options, (stage, done, total) => {
          if (bar?.stage !== stage) {
            bar?.p.stop();
            bar = { stage, p: progress(stage, total) };
          }
          bar.p.update(done);
        });
        bar?.p.stop();
        const e = r.environments;
        console.log(`\nenvironments: ${e.size} images in the suspected bias-conflicting one; ` +
          `precision ${pct(e.precision)}, recall ${pct(e.recall)} against the hidden attribute`);
        console.log(`bold: stroke width above ${r.threshold.toFixed(2)} px (fitted on held-out ` +
          'digits and the same digits dilated)\n');
        const line = (cells: string[]) =>
          cells.map((c, i) => (i ? c.padStart(12) : c.padEnd(14))).join('');
        console.log(line(['arm', 'n', 'bias', 'correlation', 'bold 0-4', 'bold 5-9', 'accuracy',
          'MNIST-FID']));
        for (const a of r.arms) {
          const mean = (from: number) =>
            a.boldShare.slice(from, from + 5).reduce((s, v) => s + v, 0) / 5;
          console.log(line([a.arm, String(a.n), a.bias.toFixed(3), a.correlation.toFixed(3),
            pct(mean(0)), pct(mean(5)), pct(a.accuracy), a.fid === null ? '' : a.fid.toFixed(3)]));
        }
        console.log(`\nwrote ${r.csv} (${INVDIFF_CSV_COLUMNS.length} columns) and ${r.png}`);
      } catch (err) {
        if (stop.signal.aborted) {
          throw new Interrupted(`${(err as Error).message} (diffuse invdiff --out ${o.out} ...)`);
        }
        throw err;
      } finally {
        bar?.p.stop();
        stop.release();
      }
    });
}
