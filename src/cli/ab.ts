/** @file `diffuse ab`: training methods compared at equal compute (pipelines/ab.ts). */
import { readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import type { Command } from 'commander';
import { loadTrainingData } from '../pipelines/data.js';
import type { ImageDataset } from '../data/dataset.js';
import { prepareMnistFid } from '../pipelines/eval.js';
import { mnistEvaluator, runAb, type AbSummary, type Arm } from '../pipelines/ab.js';
import type { TrainOptions } from '../pipelines/train.js';
import { Interrupted, UsageError } from './errors.js';
import {
  addOptions, commandOptions, int, num, parseConfig, path, pathList, resolveOptions,
} from './options.js';
import { progress, type Progress } from './progress.js';
import { TRAIN_OPTIONS, trainOptions } from './train.js';
import { stopOnSignal } from './training-run.js';

export const AB_OPTIONS = {
  base: path({ arg: '<file.json>', help: 'the control arm: a `diffuse train` config file (keys ' +
    'are train\'s long options: {"model": "dit", "size": "xs", "objective": "flow"})' }),
  variant: pathList({ arg: '<file.json>', help: 'a variant arm: a config file whose keys ' +
    'replace the base\'s ({"repa": 0.5}); named after the file; repeat for more arms' }),
  seeds: int({ min: 1, help: 'seeds 0..N-1, the same for every arm', default: 2 }),
  steps: int({ min: 1, help: 'training steps of every run (replaces the configs\' "steps")' }),
  evalEvery: int({ min: 1, help: 'evaluate every this many steps and at the end (default: a ' +
    'quarter of --steps)' }),
  evalN: int({ min: 2, help: 'samples per evaluation (MNIST-FID is biased upwards at small ' +
    'N: compare at equal N)', default: 500 }),
  sampleSteps: int({ min: 1, help: 'sampler steps per evaluation (DDIM, or flow Euler for ' +
    'flow runs)', default: 20 }),
  guidance: num({ range: '[0, 100]', help: 'classifier-free guidance of the evaluation ' +
    'samples (1: none)', default: 1 }),
  out: path({ arg: '<dir>', help: 'folder of the runs and results (running again resumes)',
    default: 'runs/ab' }),
};

/** Keys an arm's config may not set: the harness sets them per run. */
const HARNESS_KEYS = ['seed', 'out', 'resume', 'config', 'checkpointEvery'];

/** An arm's training options: the base file's, then the variant file's over them. */
function armOptions(files: readonly string[]): ReturnType<typeof trainOptions> {
  const values: Record<string, unknown> = {};
  for (const file of files) {
    let json: unknown;
    try {
      json = JSON.parse(readFileSync(file, 'utf8'));
    } catch (e) {
      throw new UsageError(`config file ${file}: ${(e as Error).message}`);
    }
    const parsed = parseConfig(TRAIN_OPTIONS, json, file, 'train');
    const taken = Object.keys(parsed).find((k) => HARNESS_KEYS.includes(k));
    if (taken) throw new UsageError(`"${taken}" in config file ${file}: diffuse ab sets it for each run`);
    Object.assign(values, parsed);
  }
  return trainOptions(resolveOptions(TRAIN_OPTIONS, 'train', values));
}

function summaryTable(s: readonly AbSummary[]): string {
  const last = new Map<string, AbSummary>();
  for (const r of s) if ((last.get(r.arm)?.step ?? -1) < r.step) last.set(r.arm, r);
  const lines = [...last.values()].map((r) => `${r.arm.padEnd(16)} ${String(r.images).padStart(9)} ` +
    `${r.fidMean.toFixed(3).padStart(9)} +- ${(r.fidStd).toFixed(3).padEnd(6)} ` +
    `[${r.fidMin.toFixed(3)}, ${r.fidMax.toFixed(3)}] ${r.seeds} seed${r.seeds === 1 ? "" : "s"}` +
    (r.accuracyMean === null ? '' : `  accuracy ${(100 * r.accuracyMean).toFixed(1)}%`));
  return [`${'arm'.padEnd(16)} ${'images'.padStart(9)} ${'MNIST-FID'.padStart(9)} (mean +- std over seeds [min, max])`,
    ...lines].join('\n');
}

export function registerAb(program: Command): void {
  addOptions(program.command('ab')
    .description('compare training methods at equal compute: every arm trained with the same ' +
      'seeds and budget, MNIST-FID and class accuracy at checkpoints; a CSV and a plot'), AB_OPTIONS)
    .action(async (_: unknown, cmd: Command) => {
      const r = commandOptions(AB_OPTIONS, cmd);
      const o = r.values;
      if (o.base === undefined) throw new UsageError('--base: expected a config file (the control arm)');
      const specs = [{ name: 'base', files: [o.base] },
        ...(o.variant ?? []).map((v) => ({ name: basename(v).replace(/\.json$/, ''), files: [o.base!, v] }))];
      if (specs.length < 2) throw new UsageError('--variant: expected at least one variant arm to compare with the base');
      const datasets = new Map<string, ImageDataset>();
      const arms: Arm[] = [];
      for (const spec of specs) {
        const { data, unconditional, resume: _, seed: __, out: ___, frames: _f, canvas: _c, digits: _d, ...f } =
          armOptions(spec.files);
        if (!datasets.has(data)) datasets.set(data, await loadTrainingData(data));
        const d = datasets.get(data)!;
        const options: Omit<TrainOptions, 'seed' | 'out'> = { ...f,
          steps: o.steps ?? f.steps, sampleEvery: 0, conditional: !unconditional && !!d.labels };
        arms.push({ name: spec.name, options, data: d });
      }
      const steps = arms[0]!.options.steps;
      const evalEvery = o.evalEvery ?? Math.max(1, Math.ceil(steps / 4));
      const fid = await prepareMnistFid({ n: o.evalN });
      const stop = stopOnSignal();
      let bar: Progress | undefined;
      try {
        console.log(`${arms.length} arms x ${o.seeds} seeds, ${steps} steps of ${arms[0]!.options.batchSize} ` +
          `images each, evaluated every ${evalEvery} steps (n = ${o.evalN}); MNIST-FID floor at this n: ` +
          `${fid.floor.toFixed(3)}`);
        const res = await runAb(arms, { out: o.out, seeds: o.seeds, evalEvery },
          mnistEvaluator(fid, { n: o.evalN, steps: o.sampleSteps, guidance: o.guidance }), {
            onRunStart: (arm, seed, resumed) => {
              bar?.stop();
              bar = progress(`${arm} seed ${seed}${resumed ? ' (resumed)' : ''}`, steps, ['loss', 'img/s']);
            },
            onEval: (row) => process.stderr.write(`\n${row.arm} seed ${row.seed} step ${row.step}: ` +
              `MNIST-FID ${row.fid.toFixed(3)}${row.accuracy === null ? '' : `, accuracy ${(100 * row.accuracy).toFixed(1)}%`}\n`),
            train: () => ({ signal: stop.signal,
              onStep: (s) => bar?.update(s.step, { loss: s.smoothed.toFixed(4), 'img/s': s.imagesPerSecond.toFixed(1) }) }),
          });
        bar?.stop();
        console.log(summaryTable(res.summary));
        console.log(`wrote ${join(o.out, 'ab.csv')}, ${join(o.out, 'ab-summary.csv')} and ${join(o.out, 'ab.png')}`);
        if (res.interrupted) {
          throw new Interrupted(`interrupted; every finished evaluation is kept. Continue with the same ` +
            'command: it resumes each run from its checkpoint');
        }
      } finally {
        bar?.stop();
        stop.release();
        await fid.dispose();
      }
    });
}
