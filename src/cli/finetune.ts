/**
 * @file `diffuse finetune`: adapt a trained pipeline to new data by full fine-tuning or by a
 * parameter-efficient method (BitFit, DiffFit, Diffscaler; methods/peft.ts), with the
 * training loop of `diffuse train` (checkpoints, exact --resume, logs, sample grids). The
 * exported model is a plain one of the same class, the trained parts merged in.
 */
import { join } from 'node:path';
import type { Command } from 'commander';
import { RngKey } from '../engine/random/philox.js';
import { PEFT_METHODS, peft, trainableShare, type PeftMethod } from '../methods/peft.js';
import { loadTrainingData } from '../pipelines/data.js';
import { classCount, loadPipeline, requirePixelSpace } from '../pipelines/sample.js';
import { METHOD_DEFAULTS, train, type TrainOptions } from '../pipelines/train.js';
import { UsageError } from './errors.js';
import { addOptions, commandOptions, custom, int, num, oneOf, path } from './options.js';
import { TRAIN_OPTIONS } from './train.js';
import { runInTerminal } from './training-run.js';

/** The learning rate each method starts from when --lr is not given. Full fine-tuning: the
 *  rate `diffuse train` defaults to. The small methods: 5e-3, DiffFit's rule (about 10x the
 *  pre-training rate adapts its parameters best) applied to the rate models/mnist-dit was
 *  trained at (5e-4); BitFit and Diffscaler train parameters of the same kinds, so they get
 *  the same. Measured (DiffFit, mnist-dit to mnist-bold, 500 steps of 64, MNIST-FID against
 *  the bold digits): 2e-3 0.879, 5e-3 0.728, 1e-2 0.687; full fine-tuning at 2e-4 0.450. */
export const DEFAULT_LR: Record<PeftMethod, number> = {
  full: 2e-4, bitfit: 5e-3, difffit: 5e-3, diffscaler: 5e-3,
};

// The model, its size, objective, conditioning and routing come from --from, and so does the
// start; --lr and --out get defaults of their own.
const {
  init: _i, model: _m, size: _s, objective: _o, unconditional: _u, dtrAlpha: _a, dtrBeta: _b,
  lr: _l, out, config, ...SHARED
} = TRAIN_OPTIONS;

/** Every option of `diffuse finetune`: those of `diffuse train` that still apply, and its own. */
export const FINETUNE_OPTIONS = {
  config,
  from: path({ arg: '<dir>', help: 'the trained pipeline to start from (its model family, ' +
    'size, objective and classes are kept)' }),
  method: oneOf(PEFT_METHODS, { arg: '<method>', help: 'what is trained: full (every weight), ' +
    'bitfit (biases), difffit (biases, norms, class embeddings and per-channel scales of the ' +
    'first half of the DiT blocks\' branches), diffscaler (biases, per-channel scales of ' +
    'every weight and a rank --rank update)', default: 'difffit' }),
  rank: int({ min: 0, help: 'diffscaler: rank of the low-rank update per weight', default: 1 }),
  gammaBlocks: int({ min: 0, help: 'difffit: how many DiT blocks, from the first, get the ' +
    'scales (default: half; the paper\'s ablation of their placement)' }),
  alsoTrain: custom((t) => new RegExp(t), { arg: '<regex>', expected: 'a regular expression ' +
    'over parameter paths, e.g. "pos_embed\\.proj|proj_out_2"', help: 'also train every ' +
    'weight whose dotted path matches (an ablation beyond the method\'s own set)' }),
  ...SHARED,
  lr: num({ range: '(0, 10]', help: 'peak learning rate ' +
    '(AdamW); default by method: full 2e-4 (diffuse train\'s default), bitfit, difffit and ' +
    'diffscaler 5e-3 (DiffFit found ~10x the pre-training rate best for such parameters; ' +
    'models/mnist-dit was trained at 5e-4)' }),
  out: path({ arg: '<dir>', help: out.help, default: 'runs/finetune' }),
};

export function registerFinetune(program: Command): void {
  addOptions(program.command('finetune')
    .description('fine-tune a trained pipeline on new data: all weights, or a ' +
      'parameter-efficient subset (BitFit, DiffFit, Diffscaler); exports a plain model'),
  FINETUNE_OPTIONS)
    .action(async (_: unknown, cmd: Command) => {
      const r = commandOptions(FINETUNE_OPTIONS, cmd);
      const { config: _c, from, method, rank, gammaBlocks, alsoTrain, data: spec, resume, ...f } =
        r.values;
      if (from === undefined) throw new UsageError('--from: a trained pipeline folder is required');
      const start = await loadPipeline(from);
      requirePixelSpace(start, 'diffuse finetune');
      if (gammaBlocks !== undefined && method !== 'difffit') {
        throw new UsageError(`--gamma-blocks: only difffit has scales, not ${method}`);
      }
      const adapt = peft(method, { rank, gammaBlocks, alsoTrain });
      const share = trainableShare(adapt.init(start.params, RngKey.fromSeed(f.seed)),
        start.params);
      console.log(`${adapt.name}: training ${share.trainable.toLocaleString('en-US')} of ` +
        `${share.total.toLocaleString('en-US')} parameters (${(100 * share.share).toFixed(3)}%)`);
      const data = await loadTrainingData(spec);
      const o: TrainOptions = { ...f, lr: f.lr ?? DEFAULT_LR[method], init: from, adapt,
        model: start.model.family, size: 'init', objective: start.scheduler.prediction,
        conditional: classCount(start.model) > 0, dtrBeta: METHOD_DEFAULTS.dtrBeta };
      const res = await runInTerminal('finetune', 'finetune', o.steps, o.out, (l) => l.toFixed(4),
        (ev) => train(o, data, resume, ev));
      console.log(`fine-tuned ${res.losses.length} steps in ${res.seconds.toFixed(0)} s; ` +
        `model in ${join(o.out, 'model')}`);
    });
}
