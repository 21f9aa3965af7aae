/**
 * @file `diffuse train-joint` and `diffuse sample-joint`: one DiT that denoises an image and
 * its class label together (multi-task diffusion, Chen et al. 2024; methods/multi-task.ts),
 * trained on labelled images and sampled jointly, image-given-label or label-given-image
 * (classification by sampling the label).
 */
import { join } from 'node:path';
import type { Command } from 'commander';
import { loadTrainingData } from '../pipelines/data.js';
import { floorLine, prepareMnistFid, scoreImages } from '../pipelines/eval.js';
import {
  agreement, JOINT_SIZES, loadJointPipeline, sampleJoint, trainJoint, type JointSampleRequest,
  type JointSamples, type JointTrainOptions,
} from '../pipelines/multi-task.js';
import { writeSamples } from '../pipelines/sample.js';
import { writeFileAtomic } from '../util/atomic.js';
import { UsageError } from './errors.js';
import { IMAGE_INPUT_OPTIONS, readInputImages } from './image-input.js';
import {
  addOptions, commandOptions, configFile, custom, flag, int, num, oneOf, path,
} from './options.js';
import { progress } from './progress.js';
import { runInTerminal } from './training-run.js';
import { TRAIN_OPTIONS } from './train.js';

const { steps, lrSchedule, gradClip, emaDecay, seed, logEvery, checkpointEvery } = TRAIN_OPTIONS;
const LOOP_OPTIONS = { steps, lrSchedule, gradClip, emaDecay, seed, logEvery, checkpointEvery };

export const TRAIN_JOINT_OPTIONS = {
  config: configFile('read options from a JSON file; its keys are the long options ' +
    '("batch-size": 32), checked as the flags are; flags given here win over it'),
  data: path({ arg: '<mnist|mnist-bold|DIR>', help: 'labelled images: mnist, mnist-bold, or ' +
    'a folder of PNGs in class sub-folders', default: 'mnist' }),
  size: oneOf(JOINT_SIZES, { arg: '<preset>', help: 'DiT size preset of the shared backbone',
    default: 'xs' }),
  labelScale: num({ range: '(0, 100]', help: 'label vectors are +scale at the class and ' +
    '-scale elsewhere: larger makes the label legible at higher noise (stronger ' +
    'image-given-label, weaker label-given-image)', default: 2 }),
  labelWeight: num({ range: '[0, 1000]', help: 'weight of the label term of the loss (the ' +
    'image term has 1)', default: 1 }),
  // The optimisation options are diffuse train's own; only the defaults differ.
  ...LOOP_OPTIONS,
  batchSize: int({ min: 1, help: 'pairs per step', default: 64 }),
  lr: num({ range: '(0, 10]', help: 'peak learning rate (AdamW)', default: 5e-4 }),
  warmupSteps: int({ min: 0, help: 'linear warm-up steps', default: 200 }),
  out: path({ arg: '<dir>', help: 'run folder: checkpoint/, model/, log.jsonl, samples/',
    default: 'runs/multi-task' }),
  sampleEvery: int({ min: 0, help: 'grid of image-given-label samples every this many steps ' +
    '(0: never)', default: 500 }),
  resume: flag({ help: 'continue the run in --out from its checkpoint' }),
};

/** `--classes 3,1,4`: class numbers. */
export function parseClasses(v: string): number[] {
  const parts = v.split(',').map((s) => s.trim());
  const bad = parts.find((s) => !/^\d+$/.test(s));
  if (bad !== undefined) throw new RangeError(`'${bad}' is not a class number`);
  return parts.map(Number);
}

export const SAMPLE_JOINT_OPTIONS = {
  model: path({ arg: '<dir>', help: 'a train-joint model folder (RUN/model)',
    default: 'runs/multi-task/model' }),
  mode: oneOf(['joint', 'image', 'label'], { arg: '<mode>', help: 'generate image and label ' +
    'together (joint), the image given classes (image), or the label given images (label: ' +
    'classification by sampling)', default: 'joint' }),
  ...IMAGE_INPUT_OPTIONS,
  n: int({ min: 1, help: 'joint and image modes: samples to draw (default 64); label mode: ' +
    'use N of the images (a fixed random subset, the same every run)' }),
  classes: custom(parseClasses, { arg: '<list>', expected: 'class numbers separated by commas',
    help: 'image mode: the classes asked for, repeated to --n (default: every class in turn)' }),
  steps: int({ min: 1, help: 'flow Euler steps', default: 25 }),
  resample: int({ min: 1, help: 'image and label modes: take each step this many times, ' +
    'noising the generated modality back in between (RePaint); 1: plain replacement',
  default: 1 }),
  seed: int({ min: 0, help: 'noise seed', default: 0 }),
  batchSize: int({ min: 1, help: 'samples per model call', default: 100 }),
  out: path({ arg: '<file>', help: 'a PNG grid (joint, image) or a CSV of generated labels ' +
    '(label); default joint-<mode>.png or joint-labels.csv' }),
  eval: flag({ help: 'joint and image modes: MNIST-FID of the images and the MNIST ' +
    'classifier\'s agreement with their labels (generated or asked for)' }),
  classifier: path({ arg: '<dir>', help: 'classifier for --eval (default: the shipped ' +
    'models/mnist-classifier)' }),
};

export function registerMultiTask(program: Command): void {
  addOptions(program.command('train-joint')
    .description('train one DiT on images and their class labels together (multi-task ' +
      'diffusion, Chen et al. 2024): both diffused by flow matching at a shared time, the ' +
      'label as one extra token'), TRAIN_JOINT_OPTIONS)
    .action(async (_: unknown, cmd: Command) => {
      const { config: __, data: spec, resume, ...o } =
        commandOptions(TRAIN_JOINT_OPTIONS, cmd).values;
      const data = await loadTrainingData(spec);
      const opts: JointTrainOptions = o;
      const r = await runInTerminal('train-joint', 'train-joint', o.steps, o.out,
        (l) => l.toFixed(4), (ev) => trainJoint(opts, data, resume, ev));
      console.log(`trained ${r.losses.length} steps in ${r.seconds.toFixed(0)} s; model in ` +
        `${join(o.out, 'model')}`);
    });

  addOptions(program.command('sample-joint')
    .description('sample a train-joint model: image-label pairs (joint), images of given ' +
      'classes (image), or labels of given images (label), the known part held at its ' +
      'noised value at every step'), SAMPLE_JOINT_OPTIONS)
    .action(async (_: unknown, cmd: Command) => {
      const o = commandOptions(SAMPLE_JOINT_OPTIONS, cmd).values;
      const p = await loadJointPipeline(o.model);
      const K = p.model.config.label_dim;
      const req: JointSampleRequest = { mode: o.mode, steps: o.steps, seed: o.seed,
        batchSize: o.batchSize, resample: o.resample };
      let truth: Int32Array | undefined;
      if (o.mode === 'label') {
        const input = await readInputImages(o);
        req.images = input.images;
        truth = input.labels;
      } else {
        if (o.images !== undefined || o.testSplit) {
          throw new UsageError('--images and --test-split are for --mode label');
        }
        const n = o.n ?? 64;
        if (o.mode === 'joint') req.n = n;
        else {
          const asked = o.classes ?? Array.from({ length: K }, (_, k) => k);
          const bad = asked.find((k) => k >= K);
          if (bad !== undefined) {
            throw new UsageError(`--classes: ${bad} is not a class of a ${K}-class model`);
          }
          req.labels = Int32Array.from({ length: n }, (_, i) => asked[i % asked.length]!);
        }
      }
      const bar = progress('sampling', req.n ?? req.labels?.length ?? req.images!.shape[0]!);
      let s: JointSamples;
      try {
        s = await sampleJoint(p, { ...req, onBatch: (done) => bar.update(done) });
      } finally {
        bar.stop();
      }
      const n = s.labels.length;
      console.log(`${n} samples in ${s.seconds.toFixed(1)} s ` +
        `(${(s.seconds / n).toFixed(3)} s each)`);
      if (o.mode === 'label') {
        const out = o.out ?? 'joint-labels.csv';
        await writeFileAtomic(out, labelsCsv(s, K, truth));
        if (truth) {
          const source = o.testSplit ? 'the MNIST held-out split' : o.images;
          const pct = (100 * agreement(s.labels, truth)).toFixed(2);
          console.log(`classification by sampling the label: ${pct}% of ${n} images of ${source}`);
        }
        console.log(`wrote ${out}`);
        return;
      }
      const counts = Array.from({ length: K }, (_, k) => s.labels.filter((v) => v === k).length);
      if (o.mode === 'joint') console.log(`generated labels per class: ${counts.join(' ')}`);
      const out = o.out ?? `joint-${o.mode}.png`;
      await writeSamples(s.images, { out });
      console.log(`wrote ${out}`);
      if (!o.eval) return;
      const m = await prepareMnistFid({ n, ...(o.classifier ? { classifier: o.classifier } : {}) });
      try {
        const score = await scoreImages(m, s.images, s.labels);
        const what = o.mode === 'joint'
          ? 'pairs whose image the classifier gives the generated label'
          : 'images the classifier gives the class asked for';
        console.log(`${what}: ${(100 * score.accuracy!).toFixed(2)}% (n = ${n})`);
        console.log(`MNIST-FID (the project's classifier features, not Inception): ` +
          `${score.fid.toFixed(3)}; ${floorLine(m)}`);
      } finally {
        await m.dispose();
      }
    });
}

/** One row per image: index, true class (when known), generated class, the label vector. */
function labelsCsv(s: JointSamples, K: number, truth?: Int32Array): string {
  const head = ['index', 'label', 'predicted', ...Array.from({ length: K }, (_, k) => `y${k}`)];
  const rows = Array.from(s.labels, (pred, i) => [i, truth ? truth[i] : '', pred,
    ...Array.from(s.labelVectors.subarray(i * K, (i + 1) * K), (v) => v.toPrecision(5))].join(','));
  return `${head.join(',')}\n${rows.join('\n')}\n`;
}
