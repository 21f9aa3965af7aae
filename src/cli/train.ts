/** @file `diffuse train`: train an image diffusion model (flags and/or a JSON config file). */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { InvalidArgumentError, type Command } from 'commander';
import { loadImageFolder } from '../data/image-folder.js';
import { mnistSplits } from '../data/mnist.js';
import { MODEL_FAMILIES, presetNames, type ModelFamily } from '../pipelines/image-models.js';
import { train, type TrainOptions } from '../pipelines/train.js';
import { choice, positiveInt, positiveNumber, UsageError } from './parse.js';
import { progress } from './progress.js';

const int = (v: string) => positiveInt(v);
const int0 = (v: string) => positiveInt(v, true);
const num = (v: string) => positiveNumber(v);
const unit = (v: string) => {
  const n = Number(v);
  if (!(n >= 0 && n < 1)) throw new InvalidArgumentError(`expected a number in [0, 1), got '${v}'`);
  return n;
};

/** The defaults, in one place: --help prints them and config files are checked against them. */
const DEFAULTS = {
  data: 'mnist', model: 'unet', size: 's', objective: 'eps', weighting: 'uniform', minSnrGamma: 5,
  unconditional: false, labelDropout: 0.1, batchSize: 64, steps: 2000, lr: 2e-4, lrSchedule: 'cosine',
  warmupSteps: 100, gradClip: 1, emaDecay: 0.999, seed: 0, out: 'runs/train', logEvery: 10,
  sampleEvery: 500, checkpointEvery: 200, resume: false,
};
type Flags = typeof DEFAULTS & { config?: string };

function readConfigFile(path: string): Partial<Flags> {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new UsageError(`config file ${path}: ${(e as Error).message}`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new UsageError(`config file ${path}: expected a JSON object of options`);
  }
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(raw)) {
    const key = k.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
    if (!(key in DEFAULTS)) throw new UsageError(`config file ${path}: unknown option '${k}'`);
    const want = typeof DEFAULTS[key as keyof typeof DEFAULTS];
    if (typeof v !== want) {
      throw new UsageError(`config file ${path}: '${k}' must be a ${want}, got ${JSON.stringify(v)}`);
    }
    out[key] = v;
  }
  return out as Partial<Flags>;
}

export function registerTrain(program: Command): void {
  program.command('train')
    .description('train an image diffusion model (U-Net, DiT or DiT-MoE); checkpoints in diffusers\' ' +
      'layout, exact --resume, a JSONL log and sample grids')
    .option('--config <file.json>', 'read options from a JSON file (keys as the long options; flags win)')
    .option('--data <mnist|DIR>', 'mnist, or a folder of PNGs (labels from sub-folder names)', DEFAULTS.data)
    .option('--model <family>', `model family: ${MODEL_FAMILIES.join(' | ')}`, choice(MODEL_FAMILIES), DEFAULTS.model)
    .option('--size <preset>', `size preset: unet ${presetNames('unet').join('|')}, dit ${presetNames('dit').join('|')}, ` +
      `dit-moe ${presetNames('dit-moe').join('|')}`, DEFAULTS.size)
    .option('--objective <kind>', 'what the model predicts: eps | v | x0 | flow', choice(['eps', 'v', 'x0', 'flow']), DEFAULTS.objective)
    .option('--weighting <kind>', 'uniform | min-snr', choice(['uniform', 'min-snr']), DEFAULTS.weighting)
    .option('--min-snr-gamma <x>', 'gamma of Min-SNR weighting', num, DEFAULTS.minSnrGamma)
    .option('--unconditional', 'ignore labels (default: class-conditional when the data has labels)')
    .option('--label-dropout <p>', 'probability of dropping a label (classifier-free guidance)', unit, DEFAULTS.labelDropout)
    .option('--batch-size <n>', 'images per step', int, DEFAULTS.batchSize)
    .option('--steps <n>', 'optimisation steps in total', int, DEFAULTS.steps)
    .option('--lr <x>', 'peak learning rate (AdamW)', num, DEFAULTS.lr)
    .option('--lr-schedule <kind>', 'constant | cosine (both after warm-up)', choice(['constant', 'cosine']), DEFAULTS.lrSchedule)
    .option('--warmup-steps <n>', 'linear warm-up steps', int0, DEFAULTS.warmupSteps)
    .option('--grad-clip <x>', 'clip the global gradient norm', num, DEFAULTS.gradClip)
    .option('--ema-decay <x>', 'largest EMA decay (warm-up (1+s)/(10+s))', unit, DEFAULTS.emaDecay)
    .option('--seed <n>', 'seed of the whole run (data order, noise, init)', int0, DEFAULTS.seed)
    .option('--out <dir>', 'run folder: checkpoint/, model/, log.jsonl, samples/', DEFAULTS.out)
    .option('--log-every <n>', 'JSONL log interval (steps)', int, DEFAULTS.logEvery)
    .option('--sample-every <n>', 'sample grid interval (steps; 0 = never)', int0, DEFAULTS.sampleEvery)
    .option('--checkpoint-every <n>', 'checkpoint interval (steps; also on Ctrl-C and at the end)', int0, DEFAULTS.checkpointEvery)
    .option('--resume', 'continue the run in --out from its checkpoint')
    .action(async (flags: Flags, cmd: Command) => {
      // Flags given on the command line win over the config file, which wins over defaults.
      const fromFile = flags.config ? readConfigFile(flags.config) : {};
      const explicit = Object.fromEntries(Object.keys(flags).filter((k) => cmd.getOptionValueSource(k) === 'cli')
        .map((k) => [k, flags[k as keyof Flags]]));
      const f = { ...DEFAULTS, ...fromFile, ...explicit } as Flags;
      if (!presetNames(f.model as ModelFamily).includes(f.size)) {
        throw new UsageError(`--size: '${f.size}' is not a ${f.model} preset (${presetNames(f.model as ModelFamily).join(', ')})`);
      }
      const data = f.data === 'mnist' ? mnistSplits().train : await loadImageFolder(f.data);
      const o: TrainOptions = {
        model: f.model as ModelFamily, size: f.size, objective: f.objective as TrainOptions['objective'],
        weighting: f.weighting as TrainOptions['weighting'], minSnrGamma: f.minSnrGamma,
        conditional: !f.unconditional && !!data.labels, labelDropout: f.labelDropout, batchSize: f.batchSize,
        steps: f.steps, lr: f.lr, lrSchedule: f.lrSchedule as TrainOptions['lrSchedule'], warmupSteps: f.warmupSteps,
        gradClip: f.gradClip, emaDecay: f.emaDecay, seed: f.seed, out: f.out, logEvery: f.logEvery,
        sampleEvery: f.sampleEvery, checkpointEvery: f.checkpointEvery,
      };
      const stop = new AbortController();
      const onSignal = () => {
        process.stderr.write('\nstopping after this step; writing a checkpoint...\n');
        stop.abort();
      };
      process.once('SIGINT', onSignal);
      process.once('SIGTERM', onSignal);
      const bar = progress('train', o.steps, ['loss', 'img/s']);
      const r = await train(o, data, f.resume, {
        signal: stop.signal,
        onStep: (s) => bar.update(s.step, { loss: s.smoothed.toFixed(4), 'img/s': s.imagesPerSecond.toFixed(1) }),
        onSample: (step, path) => process.stderr.write(`\nstep ${step}: samples in ${path}\n`),
      });
      bar.stop();
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      if (r.interrupted) {
        console.log(`interrupted at step ${r.state.step}; checkpoint in ${join(o.out, 'checkpoint')}. ` +
          `Continue with: diffuse train --out ${o.out} --resume (and the same options)`);
        process.exitCode = 130;
        return;
      }
      console.log(`trained ${r.losses.length} steps in ${r.seconds.toFixed(0)} s; model in ${join(o.out, 'model')}`);
    });
}
