/**
 * @file `diffuse echodistill train|eval`: EchoDistill (pipelines/echodistill.ts) — the shipped
 * one-step BOOT student personalised to bold digits alone, by one-way distillation from the
 * teacher, or with the echo back to the teacher; then MNIST-FID against the bold digits of
 * every student (one step) and teacher (DDIM).
 */
import { join, relative } from 'node:path';
import type { Command } from 'commander';
import { imageGrid, writePng } from '../io/png.js';
import {
  ECHO_ARMS, ECHODISTILL_DEFAULTS as D, echoEvalCsv, evaluateEchoDistill, trainEchoDistill,
  type EchoEvalRow,
} from '../pipelines/echodistill.js';
import { packageRoot } from '../util/package-root.js';
import { writeFileAtomic } from '../util/atomic.js';
import { addOptions, commandOptions, flag, int, num, oneOf, path, pathList } from './options.js';
import { progress } from './progress.js';
import { DEFAULT_GUIDANCE, DEFAULT_MODEL_DIR, GUIDANCE_RANGE } from './sample.js';
import { TRAIN_OPTIONS } from './train.js';
import { runInTerminal } from './training-run.js';

const DEFAULT_STUDENT_DIR = join(packageRoot(), 'models', 'mnist-unet-boot');
const { gradClip, seed, logEvery, checkpointEvery } = TRAIN_OPTIONS;
const shown = (dir: string): string => relative(process.cwd(), dir) || dir;

const models = {
  teacher: path({ arg: '<dir>', help: `the multi-step teacher (default: ${shown(DEFAULT_MODEL_DIR)})` }),
  student: path({ arg: '<dir>', help: 'the one-step student (a diffuse distill --method boot ' +
    `model; default: ${shown(DEFAULT_STUDENT_DIR)})` }),
};

export const ECHODISTILL_TRAIN_OPTIONS = {
  arm: oneOf(ECHO_ARMS, { help: 'student: the student alone (adversarial loss on the concept ' +
    'images); one-way: the teacher fine-tuned on them too and the student aligned to it; echo: ' +
    'one-way plus the teacher trained on the student\'s samples (EchoDistill)' }),
  ...models,
  conceptSize: int({ min: 2, help: 'concept images: bold training digits drawn with the seed',
    default: D.conceptSize }),
  steps: int({ min: 1, help: 'optimisation steps', default: 200 }),
  batchSize: int({ min: 2, help: 'concept images (and student samples) per step', default: 16 }),
  align: num({ range: '[0, 1e3]', help: 'weight of the alignment loss (per-image squared error ' +
    'to the teacher\'s denoised estimate of the student\'s sample)', default: D.align }),
  adversarial: num({ range: '[0, 1e3]', help: 'weight of the student\'s adversarial (hinge) ' +
    'loss', default: D.adversarial }),
  echo: num({ range: '[0, 1e3]', help: 'arm echo: weight of the teacher\'s diffusion loss on ' +
    'the student\'s samples', default: D.echo }),
  echoFrom: int({ min: 0, help: 'arm echo: the step the echo starts at (default: half the steps)' }),
  labelDropout: num({ range: '[0, 1)', help: 'share of the teacher\'s concept rows trained with ' +
    'the null class (for its guidance)', default: D.labelDropout }),
  lr: num({ range: '(0, 1]', help: 'learning rate of Adam for the teacher, the shared class ' +
    'table and the discriminator', default: D.lr }),
  studentLr: num({ range: '(0, 1]', help: 'learning rate of Adam for the student',
    default: D.studentLr }),
  gradClip: { ...gradClip, default: D.gradClip },
  seed, logEvery,
  sampleEvery: int({ min: 0, help: 'student sample grid interval (steps; 0: never)', default: 50 }),
  checkpointEvery: { ...checkpointEvery, default: 50 },
  out: path({ arg: '<dir>', help: 'run folder: checkpoint/, model/ (the student), teacher/, ' +
    'log.jsonl, samples/ (default: runs/echodistill/<arm>)' }),
  resume: flag({ help: 'continue the run in --out from its checkpoint' }),
};

export const ECHODISTILL_EVAL_OPTIONS = {
  runs: pathList({ help: 'run folders of diffuse echodistill train (comma-separated or repeated)' }),
  ...models,
  n: int({ min: 2, max: 1000, help: 'samples per model (and held-out digits for the floors)',
    default: 500 }),
  teacherSteps: int({ min: 1, help: 'DDIM steps of the teachers', default: 10 }),
  guidance: num({ range: GUIDANCE_RANGE, arg: '<w>', help: 'guidance of the teachers (the ' +
    'students have theirs in their weights)', default: DEFAULT_GUIDANCE }),
  seed: int({ min: 0, help: 'seed of the samples (the same noise for every model)', default: 0 }),
  csv: path({ arg: '<file>', help: 'write the scores as CSV' }),
  grid: path({ arg: '<file.png>', help: 'write real bold digits and each model\'s classes 0-9, ' +
    'a row each' }),
};

const fmtRow = (r: EchoEvalRow): string => `${r.role.padEnd(8)} ${r.arm.padEnd(8)} ` +
  `${`${r.sampler} ${r.steps}`.padEnd(8)} ${r.fidBold.toFixed(3).padStart(9)} ` +
  `${r.fidMnist.toFixed(3).padStart(9)} ${`${(100 * r.accuracy).toFixed(1)}%`.padStart(7)}  ${r.model}`;

export function registerEchoDistill(program: Command): void {
  const cmd = program.command('echodistill').description('EchoDistill (Yang et al. 2025): ' +
    'personalise the one-step student to bold digits with a teacher trained alongside it, ' +
    'the concept echoed back to the teacher; compare the arms');
  addOptions(cmd.command('train').description('one arm: student alone, one-way distillation, ' +
    'or EchoDistill'), ECHODISTILL_TRAIN_OPTIONS)
    .action(async (_: unknown, c: Command) => {
      const r = commandOptions(ECHODISTILL_TRAIN_OPTIONS, c);
      const { resume, arm, teacher, student, out, echoFrom, ...o } = r.values;
      if (arm === undefined) throw r.refuse('arm', `one of ${ECHO_ARMS.join(', ')}`, 'it is required');
      if (o.batchSize > o.conceptSize) throw r.refuse('batchSize', `at most --concept-size (${o.conceptSize})`);
      const dir = out ?? join('runs', 'echodistill', arm);
      const res = await runInTerminal('echodistill train', `echodistill ${arm}`, o.steps, dir,
        (l) => l.toFixed(3), (ev) => trainEchoDistill({ ...o, arm, out: dir,
          teacher: teacher ?? DEFAULT_MODEL_DIR, student: student ?? DEFAULT_STUDENT_DIR,
          echoFrom: echoFrom ?? Math.floor(o.steps / 2) }, resume, ev));
      console.log(`trained ${res.losses.length} steps in ${res.seconds.toFixed(0)} s; student in ` +
        `${join(dir, 'model')}${res.teacherDir ? `, teacher in ${res.teacherDir}` : ''}`);
    });
  addOptions(cmd.command('eval').description('MNIST-FID against the bold digits and class ' +
    'accuracy of the shipped and the runs\' students (1 step) and teachers (DDIM)'),
  ECHODISTILL_EVAL_OPTIONS)
    .action(async (_: unknown, c: Command) => {
      const r = commandOptions(ECHODISTILL_EVAL_OPTIONS, c);
      const o = r.values;
      if (o.runs === undefined) throw r.refuse('runs', 'one or more run folders');
      const total = 2 + 2 * o.runs.length;
      const bar = progress('scoring', total, ['model']);
      let done = 0;
      const res = await evaluateEchoDistill({ runs: o.runs, n: o.n, teacherSteps: o.teacherSteps,
        teacherGuidance: o.guidance, seed: o.seed,
        teacher: shown(o.teacher ?? DEFAULT_MODEL_DIR), student: shown(o.student ?? DEFAULT_STUDENT_DIR),
        onModel: (label) => bar.update(done++, { model: label }) });
      bar.update(total, { model: 'done' });
      bar.stop();
      console.log(`n = ${o.n}; MNIST-FID (the shipped classifier's features, not Inception) ` +
        'against the bold and the plain training digits');
      console.log(`${'role'.padEnd(8)} ${'arm'.padEnd(8)} ${'sampler'.padEnd(8)} ${'FID bold'.padStart(9)} ` +
        `${'FID plain'.padStart(9)} ${'acc'.padStart(7)}  model`);
      for (const row of res.rows) console.log(fmtRow(row));
      console.log(`floors (held-out digits): bold ${res.floors.bold.toFixed(3)}, ` +
        `plain ${res.floors.mnist.toFixed(3)}`);
      if (o.csv) {
        await writeFileAtomic(o.csv, echoEvalCsv(res.rows, res.floors));
        console.log(`wrote ${o.csv}`);
      }
      if (o.grid) {
        await writePng(o.grid, imageGrid(res.grid, { cols: res.cols }));
        const order = res.rows.map((x) => `${x.role} ${x.arm}`).join(', ');
        console.log(`wrote ${o.grid}: real bold digits, then ${order}`);
      }
    });
}
