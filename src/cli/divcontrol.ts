/**
 * @file `diffuse divcontrol train|adapt|eval`: DivControl (Xie et al. 2025; pipelines/divcontrol.ts)
 * on the shipped MNIST DiT — a control branch of SVD-factorised blocks trained on several
 * conditions with a gate over its tailors, few-shot adaptation to a held-out condition, and
 * the comparison of both with no control and with a branch trained from scratch.
 */
import { join } from 'node:path';
import type { Command } from 'commander';
import { imageGrid, writePng } from '../io/png.js';
import { CONDITION_KINDS, type ConditionKind } from '../methods/divcontrol-conditions.js';
import { adaptDivControl, trainDivControl } from '../pipelines/divcontrol.js';
import { evalCsv, evaluateDivControl } from '../pipelines/divcontrol-eval.js';
import { writeFileAtomic } from '../util/atomic.js';
import { addOptions, commandOptions, custom, flag, int, num, oneOf, path } from './options.js';
import { progress } from './progress.js';
import { TRAIN_OPTIONS } from './train.js';
import { runInTerminal } from './training-run.js';

const conditionList = custom((v): ConditionKind[] => {
  const items = v.split(',').map((s) => s.trim());
  const bad = items.find((s) => !CONDITION_KINDS.includes(s as ConditionKind));
  if (bad !== undefined) throw new Error(`'${bad}' is not a condition`);
  if (new Set(items).size !== items.length) throw new Error('a condition is named twice');
  return items as ConditionKind[];
}, { arg: '<kinds>', expected: `conditions among ${CONDITION_KINDS.join(', ')}, separated by commas`,
  help: 'the conditions the control branch learns (one per step, in turn)',
  default: ['edge', 'lowres', 'silhouette'] as ConditionKind[] });

const { lrSchedule, gradClip, emaDecay, seed, logEvery, checkpointEvery } = TRAIN_OPTIONS;
const resume = flag({ help: 'continue the run in --out from its checkpoint' });
const sampleEvery = int({ min: 0, help: 'sample grid interval (steps; 0: never)', default: 500 });

export const DIVCONTROL_TRAIN_OPTIONS = {
  base: path({ arg: '<dir>', help: 'the frozen base: a flow-matching DiT pipeline',
    default: 'models/mnist-dit' }),
  conditions: conditionList,
  images: int({ min: 0, help: 'training digits (a seeded subset of the 9,000; 0: all)', default: 0 }),
  controlBlocks: int({ min: 1, help: 'control blocks (copies of the base\'s first blocks)',
    default: 2 }),
  learngenes: int({ min: 1, help: 'N_G: shared SVD components of each matrix', default: 64 }),
  tailors: int({ min: 1, help: 'N_T: gated SVD components of each matrix (N_G + N_T <= width)',
    default: 64 }),
  activeTailors: int({ min: 1, help: 'K: tailors the gate keeps per condition (paper: N_T / 2)',
    default: 32 }),
  repaWeight: num({ range: '[0, 10]', help: 'lambda of the REPA term (paper 0.05; 0: none)',
    default: 0.05 }),
  repaEncoder: path({ arg: '<dir>', help: 'REPA\'s frozen encoder of the condition images (a U-Net ' +
    'pipeline, read at its mid block)', default: 'models/mnist-unet' }),
  batchSize: int({ min: 1, help: 'images per step', default: 32 }),
  steps: int({ min: 1, help: 'optimisation steps in total', default: 2000 }),
  lr: num({ range: '(0, 10]', help: 'peak learning rate (AdamW)', default: 3e-4 }),
  lrSchedule, warmupSteps: int({ min: 0, help: 'linear warm-up steps', default: 50 }),
  gradClip, emaDecay, seed, logEvery, sampleEvery, checkpointEvery,
  out: path({ arg: '<dir>', help: 'run folder: checkpoint/, model/, log.jsonl, samples/',
    default: 'runs/divcontrol/train' }),
  resume,
};

export const DIVCONTROL_ADAPT_OPTIONS = {
  control: path({ arg: '<dir>',
    help: 'the trained DivControl pipeline (diffuse divcontrol train\'s run)' }),
  condition: oneOf(CONDITION_KINDS, { arg: '<kind>', help: 'the novel condition', default: 'blur' }),
  images: int({ min: 1, help: 'training digits (the few shots)', default: 200 }),
  newTailors: int({ min: 1, help: 'components of each matrix\'s new tailor', default: 8 }),
  batchSize: int({ min: 1, help: 'images per step', default: 32 }),
  steps: int({ min: 1, help: 'optimisation steps in total', default: 300 }),
  lr: num({ range: '(0, 10]', help: 'peak learning rate (AdamW)', default: 1e-3 }),
  lrSchedule, warmupSteps: int({ min: 0, help: 'linear warm-up steps', default: 20 }),
  gradClip, emaDecay, seed, logEvery, sampleEvery, checkpointEvery,
  out: path({ arg: '<dir>', help: 'run folder', default: 'runs/divcontrol/adapt' }),
  resume,
};

export const DIVCONTROL_EVAL_OPTIONS = {
  control: path({ arg: '<dir>', help: 'the multi-condition DivControl pipeline' }),
  adapted: path({ arg: '<dir>', help: 'also score this adapted pipeline (diffuse divcontrol adapt)' }),
  scratch: path({ arg: '<dir>', help: 'also score this control branch trained from scratch on the ' +
    'novel condition (diffuse divcontrol train --conditions blur)' }),
  n: int({ min: 10, max: 1000, help: 'held-out digits scored', default: 200 }),
  steps: int({ min: 1, help: 'flow Euler steps', default: 20 }),
  seed: int({ min: 0, help: 'seed of the start noise (the same for every arm)', default: 0 }),
  csv: path({ arg: '<file>', help: 'write the scores as CSV' }),
  png: path({ arg: '<file.png>', help: 'write the grid: source digits, per condition its images and ' +
    'samples, then no control' }),
};

export function registerDivControl(program: Command): void {
  const cmd = program.command('divcontrol').description('DivControl (Xie et al. 2025): an SVD-factorised ' +
    'control branch with learngenes, gated tailors and few-shot adaptation, on the MNIST DiT');
  addOptions(cmd.command('train').description('train the control branch on conditions of MNIST digits'),
    DIVCONTROL_TRAIN_OPTIONS).action(async (_: unknown, c: Command) => {
    const { resume: again, ...o } = commandOptions(DIVCONTROL_TRAIN_OPTIONS, c).values;
    const res = await runInTerminal('divcontrol train', 'train', o.steps, o.out, (l) => l.toFixed(4),
      (ev) => trainDivControl(o, again, ev));
    console.log(`trained ${res.losses.length} steps in ${res.seconds.toFixed(0)} s ` +
      `(${res.net.numParams()} control parameters); pipeline in ${join(o.out, 'model')}`);
  });
  addOptions(cmd.command('adapt').description('few-shot adaptation to a novel condition (new tailors only)'),
    DIVCONTROL_ADAPT_OPTIONS).action(async (_: unknown, c: Command) => {
    const r = commandOptions(DIVCONTROL_ADAPT_OPTIONS, c);
    const { resume: again, control, ...o } = r.values;
    if (control === undefined) throw r.refuse('control', 'a trained DivControl pipeline');
    const res = await runInTerminal('divcontrol adapt', 'adapt', o.steps, o.out, (l) => l.toFixed(4),
      (ev) => adaptDivControl({ ...o, control }, again, ev));
    console.log(`adapted in ${res.losses.length} steps, ${res.seconds.toFixed(0)} s ` +
      `(${res.adapter.numParams()} trained parameters); pipeline in ${join(o.out, 'model')}`);
  });
  addOptions(cmd.command('eval').description('control fidelity and class agreement of every arm'),
    DIVCONTROL_EVAL_OPTIONS).action(async (_: unknown, c: Command) => {
    const r = commandOptions(DIVCONTROL_EVAL_OPTIONS, c);
    const { control, ...o } = r.values;
    if (control === undefined) throw r.refuse('control', 'a trained DivControl pipeline');
    let bar: ReturnType<typeof progress> | undefined;
    const res = await evaluateDivControl({ ...o, control, onArm: (done, total) => {
      bar ??= progress('arms', total, []);
      bar.update(done, {});
    } });
    bar?.stop();
    console.log(`${'arm'.padEnd(31)} ${'condition'.padEnd(11)} ${'setting'.padEnd(10)} ` +
      `${'params'.padStart(8)} ${'fidelity MSE'.padStart(17)} ${'class agr.'.padStart(10)}`);
    for (const row of res.rows) {
      const fidelity = `${row.fidelityMse.toFixed(4)} ± ${row.fidelitySe.toFixed(4)}`;
      console.log(`${row.arm.padEnd(31)} ${row.condition.padEnd(11)} ${row.setting.padEnd(10)} ` +
        `${String(row.trainableParams).padStart(8)} ${fidelity.padStart(17)} ` +
        `${(100 * row.classAgreement).toFixed(1).padStart(9)}%`);
    }
    console.log(`gate (cosine of tailor weights): ${res.gateSimilarity
      .map((g) => `${g.a}~${g.b} ${g.cos.toFixed(2)}`).join(', ')}`);
    if (o.csv) await writeFileAtomic(o.csv, evalCsv(res.rows));
    if (o.png) {
      await writePng(o.png, imageGrid(res.grid.images, { cols: res.grid.cols }));
      console.log(`wrote ${o.png}: rows ${res.grid.rowNames.join('; ')}`);
    }
  });
}
