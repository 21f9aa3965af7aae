/** @file `diffuse d2nwg`: generate MNIST classifier heads with a latent diffusion model over
 *  trained heads' weights (D2NWG, Soro et al. 2024) and score them against baselines. */
import type { Command } from 'commander';
import {
  D2NWG_CSV_COLUMNS, D2NWG_DEFAULTS as D, D2NWG_PREDICTIONS, D2NWG_SAMPLERS, runD2nwgMnist,
  type D2nwgStage,
} from '../pipelines/d2nwg.js';
import { addOptions, commandOptions, int, num, oneOf, path } from './options.js';
import { progress, type Progress } from './progress.js';

export const D2NWG_OPTIONS = {
  heads: int({ min: 2, help: 'trained heads: the weight dataset', default: D.heads }),
  minFraction: num({ range: '(0, 1]', help: 'smallest share of the 9,000 training digits a ' +
    'head is trained on (shares are drawn log-uniformly up to 1)', default: D.minFraction }),
  maxEpochs: int({ min: 1, help: 'epochs per head, drawn from 1 to this', default: D.maxEpochs }),
  probeLr: num({ range: '(0, 10]', help: 'the heads\' Adam learning rate', default: D.probeLr }),
  latent: int({ min: 1, help: 'VAE latent dimensions', default: D.latent }),
  vaeHidden: int({ min: 1, help: 'VAE hidden width', default: D.vaeHidden }),
  vaeLayers: int({ min: 1, help: 'hidden layers of the VAE encoder and of its decoder',
    default: D.vaeLayers }),
  vaeSteps: int({ min: 1, help: 'VAE training steps', default: D.vaeSteps }),
  beta: num({ range: '[0, 100]', help: 'weight of the VAE\'s KL term (the reconstruction ' +
    'term is a per-weight mean)', default: D.beta }),
  inputNoise: num({ range: '[0, 10]', help: 'std of the noise on the VAE encoder\'s input, ' +
    'in units of the heads\' RMS spread', default: D.inputNoise }),
  diffusionSteps: int({ min: 1, help: 'latent diffusion training steps',
    default: D.diffusionSteps }),
  diffusionHidden: int({ min: 1, help: 'denoiser (ToyMlp) hidden width',
    default: D.diffusionHidden }),
  prediction: oneOf(D2NWG_PREDICTIONS, { help: 'what the denoiser predicts (eps sent a few ' +
    'samples far off the data in our runs)', default: D.prediction }),
  batchSize: int({ min: 1, help: 'rows per step of the VAE and of the denoiser',
    default: D.batchSize }),
  lr: num({ range: '(0, 10]', help: 'peak learning rate of the VAE and of the denoiser ' +
    '(AdamW, warm-up then cosine)', default: D.lr }),
  sampler: oneOf(D2NWG_SAMPLERS, { help: 'sampler', default: 'ddim' }),
  steps: int({ min: 1, help: 'sampling steps', default: D.samplingSteps }),
  samples: int({ min: 1, help: 'heads generated per source (generated, vae-prior, random)',
    default: D.samples }),
  seed: int({ min: 0, help: 'seed of every draw (subsets, batches, noise)', default: D.seed }),
  csv: path({ arg: '<file>', help: `per-head results (columns ${D2NWG_CSV_COLUMNS.join(', ')})`,
    default: 'd2nwg.csv' }),
  plot: path({ arg: '<file.png>', help: 'accuracy quantile curves per source',
    default: 'd2nwg.png' }),
};

const pct = (v: number): string => `${(100 * v).toFixed(1)}%`;

export function registerD2nwg(program: Command): void {
  addOptions(program.command('d2nwg')
    .description('D2NWG (Soro et al. 2024) on MNIST: train linear heads on the shipped ' +
      'classifier\'s features, fit a VAE to their weights and a diffusion model to its ' +
      'latents, generate heads, and compare their held-out accuracy with the trained heads, ' +
      'with decoded N(0, I) latents and with random heads'), D2NWG_OPTIONS)
    .action(async (_: unknown, cmd: Command) => {
      const o = commandOptions(D2NWG_OPTIONS, cmd).values;
      const { steps, plot, ...rest } = o;
      let bar: { stage: D2nwgStage; p: Progress } | undefined;
      const r = await runD2nwgMnist({ ...rest, samplingSteps: steps, png: plot }, (e) => {
        if (bar?.stage !== e.stage) {
          bar?.p.stop();
          const fields = e.loss === undefined ? [] : ['loss'];
          bar = { stage: e.stage, p: progress(e.stage, e.total, fields) };
        }
        if (e.loss === undefined) bar.p.update(e.done);
        else if (e.done % 20 === 0 || e.done === e.total) {
          bar.p.update(e.done, { loss: e.loss.toFixed(4) });
        }
      });
      bar?.p.stop();
      const cols = ['source', 'n', 'mean', 'min', 'q10', 'median', 'q90', 'max', 'W1', 'nearest'];
      const widths = [14, 4, 7, 7, 7, 7, 7, 7, 7, 8];
      const line = (cells: string[]) =>
        cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' ');
      console.log(`\nheld-out accuracy of ${r.task.test.labels.length} digits, by source:`);
      console.log(line(cols));
      for (const s of r.stats) {
        console.log(line([s.source, String(s.n), ...[s.mean, s.min, s.q10, s.median, s.q90, s.max]
          .map(pct), s.w1.toFixed(4), s.nearest.toFixed(3)]));
      }
      console.log('W1: distance of the accuracy distribution to the trained heads\'; nearest: ' +
        'median RMS distance to the nearest trained head (leave-one-out for trained)');
      const t = r.seconds;
      console.log(`seconds: features ${t.features.toFixed(0)}, heads ${t.heads.toFixed(0)}, ` +
        `VAE ${t.vae.toFixed(0)}, diffusion ${t.diffusion.toFixed(0)}, sampling ` +
        `${t.sample.toFixed(1)}, scoring ${t.evaluate.toFixed(0)}`);
      console.log(`wrote ${o.csv} and ${o.plot}`);
    });
}
