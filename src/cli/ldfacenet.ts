/** @file `diffuse ldfacenet`: LDFaceNet's guided swap (Mehta et al. 2024) at MNIST scale, four
 *  guidance arms on held-out digit pairs (pipelines/ldfacenet.ts; the stand-in in
 *  methods/ldfacenet.ts). */
import { join } from 'node:path';
import type { Command } from 'commander';
import {
  LDFACENET_CSV_COLUMNS, runLdfacenet, SWAP_DEFAULTS as D, type LdfacenetArm,
} from '../pipelines/ldfacenet.js';
import { loadPipeline, PROVIDERS } from '../pipelines/sample.js';
import { packageRoot } from '../util/package-root.js';
import { addOptions, commandOptions, int, num, oneOf, path } from './options.js';
import { progress, type Progress } from './progress.js';

export const LDFACENET_OPTIONS = {
  model: path({ arg: '<dir>', help: 'a DDPM-family pipeline: latent (with vae/) or pixel-space',
    default: join(packageRoot(), 'models', 'mnist-latent') }),
  n: int({ min: 1, max: 500, help: 'source / target pairs of held-out digits of different ' +
    'classes', default: 100 }),
  t0: int({ min: 1, help: 'SDEdit start timestep: the target is noised to it', default: D.t0 }),
  steps: int({ min: 1, help: 'DDIM steps from t0 to the image', default: D.steps }),
  // Defaults from a scan on the model of docs/ldfacenet.csv at 3000 of its 6000 training steps
  // (t0 600, 25 steps, 24 pairs): w_id 20 moved 70% of pairs to the source's class, 50 about
  // 85%; w_struct 500 brought the combined arm's keep-mask MSE to 4e-4 (unguided: 4e-2), and
  // 2000 to 1e-4 at the cost of a quarter of the transfer (83% -> 63%).
  identity: num({ range: '[0, 1e6]', help: 'w_id, the weight of 1 - cos(classifier features of ' +
    'the output, of the source)', default: 50 }),
  structure: num({ range: '[0, 1e6]', help: 'w_struct, the weight of the MSE to the target ' +
    'outside the band around its ink', default: 500 }),
  band: int({ min: 0, help: 'pixels the target\'s ink is dilated by: the region the swap may ' +
    'redraw (the rest is kept)', default: D.band }),
  seed: int({ min: 0, help: 'seed of the pairs and of the noise', default: D.seed }),
  batchSize: int({ min: 1, help: 'rows per guided graph', default: D.batchSize }),
  classifier: path({ arg: '<dir>', help: 'the identity network (default: the shipped ' +
    'models/mnist-classifier)' }),
  provider: oneOf(PROVIDERS, { arg: '<p>', help: 'ONNX Runtime provider', default: 'cpu' }),
  outCsv: path({ arg: '<file.csv>', help: `one row per pair and arm (columns ` +
    `${LDFACENET_CSV_COLUMNS.join(', ')})`, default: 'ldfacenet.csv' }),
  outPng: path({ arg: '<file.png>', help: 'rows: sources, targets, then each arm\'s outputs',
    default: 'ldfacenet.png' }),
};

const pct = (v: number): string => `${(100 * v).toFixed(1)}%`;

export function registerLdfacenet(program: Command): void {
  addOptions(program.command('ldfacenet')
    .description('LDFaceNet (Mehta et al. 2024) at MNIST scale: swap held-out digits onto ' +
      'targets of other classes by SDEdit from the target with energy guidance (identity: ' +
      'the shipped classifier\'s features; structure: the target outside a band around its ' +
      'ink), in four arms (none, identity, structure, both), and score identity transfer and ' +
      'structure kept'), LDFACENET_OPTIONS)
    .action(async (_: unknown, cmd: Command) => {
      const o = commandOptions(LDFACENET_OPTIONS, cmd).values;
      const p = await loadPipeline(o.model);
      for (const note of p.notes) console.warn(`note: ${note}`);
      let bar: { arm: LdfacenetArm; p: Progress } | undefined;
      const { outCsv, outPng, classifier, ...rest } = o;
      const r = await runLdfacenet(p, { ...rest, csv: outCsv, png: outPng,
        ...(classifier ? { classifierDir: classifier } : {}) }, (arm, done, total) => {
        if (bar?.arm !== arm) {
          bar?.p.stop();
          bar = { arm, p: progress(arm, total) };
        }
        bar.p.update(done);
      });
      bar?.p.stop();
      const cols = ['arm', 'n', 'source class', 'target class', 'cosine', 'IoU', 'keep MSE',
        'seconds'];
      const widths = [10, 4, 13, 13, 7, 6, 9, 8];
      const line = (cells: string[]) =>
        cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' ');
      console.log(`\n${o.n} pairs, t0 ${o.t0}, ${o.steps} DDIM steps, w_id ${o.identity}, ` +
        `w_struct ${o.structure}, band ${o.band} (target: the unchanged targets)`);
      console.log(line(cols));
      for (const a of r.arms) {
        console.log(line([a.arm, String(a.n), pct(a.identityTransfer), pct(a.targetClass),
          a.cosine.toFixed(3), a.iou.toFixed(3), a.keepMse.toFixed(4), a.seconds.toFixed(1)]));
      }
      console.log(`wrote ${outCsv} and ${outPng} (${r.seconds.toFixed(0)} s)`);
    });
}
