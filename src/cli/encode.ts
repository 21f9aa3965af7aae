/**
 * @file `diffuse encode`, `decode`, `translate` and `img2img`: images to DPM-Encoder codes (or
 * DDIM-inverted noise at --eta 0) and back, CycleDiffusion translation between two models with
 * the same noise schedule, and SDEdit (pipelines/encode.ts; the maths in
 * methods/dpm-encoder.ts).
 */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import {
  classPreservation, decodeLatents, encodeImages, img2img, readLatents, reconstructionError,
  translateImages, writeLatents, writeRowsGrid, type LatentCodes,
} from '../pipelines/encode.js';
import type { HostArray } from '../engine/host.js';
import {
  checkDestination, classCount, loadPipeline, PROVIDERS, writeSamples, type Pipeline,
} from '../pipelines/sample.js';
import { ensureWritableFile } from '../util/fs-errors.js';
import { Interrupted, UsageError } from './errors.js';
import { IMAGE_INPUT_OPTIONS, readInputImages, type InputImages } from './image-input.js';
import { addOptions, commandOptions, custom, flag, int, num, oneOf, path } from './options.js';
import { progress, type Progress } from './progress.js';
import { DEFAULT_MODEL_DIR, parseClasses } from './sample.js';

/** `--class 3` or `--class 1,3,7`: labels cycled over the images. */
export function parseLabels(v: string): number[] {
  const c = parseClasses(v);
  if (c === 'all') throw new RangeError("'all' means nothing here: give class numbers");
  return c;
}

const modelHelp = (what: string) => `${what} pipeline or model folder (default: ` +
  `${DEFAULT_MODEL_DIR})`;

/** Options every command of the family shares. */
const COMMON = {
  class: custom(parseLabels, { arg: '<c>', expected: 'a class number or a comma list such as ' +
    '1,3,7', help: 'class labels for a class-conditional model (cycled over the images; ' +
    'default: its null label, the unconditional prediction)' }),
  batchSize: int({ min: 1, help: 'most images per model call', default: 64 }),
  provider: oneOf(PROVIDERS, { arg: '<p>', help: 'ONNX Runtime provider', default: 'cpu' }),
};

const INPUT = { ...IMAGE_INPUT_OPTIONS, n: int({ min: 1, help: 'use only the first N images',
  default: 16 }) };

const WALK = {
  steps: int({ min: 1, help: 'steps of the walk (at most t0 + 1)', default: 100 }),
  eta: num({ range: '[0, 1]', help: 'DDIM eta: above 0 the stochastic DPM-Encoder (the ' +
    "paper's configs: 0.1), 0 deterministic DDIM inversion (codes are x_T alone)",
  default: 0.1 }),
  t0: int({ min: 0, help: 'start timestep (default T - 1, pure noise; lower keeps more of the ' +
    'image, like SDEdit strength)' }),
  seed: int({ min: 0, help: 'noise seed', default: 0 }),
  dropResidual: flag({ help: "leave out the last step's residual (the official codes: " +
    "decoding then ends at the model's x0 estimate: max abs error ~4e-2 on MNIST)" }),
};

export const ENCODE_OPTIONS = {
  model: path({ arg: '<dir>', help: modelHelp('the encoding') }),
  ...INPUT, ...WALK, ...COMMON,
  out: path({ arg: '<file>', help: 'the codes to write', default: 'latents.safetensors' }),
};

export const DECODE_OPTIONS = {
  latents: path({ arg: '<file>', help: 'codes written by diffuse encode (required)' }),
  model: path({ arg: '<dir>', help: 'the decoding pipeline or model folder (default: the one ' +
    'that encoded them; another one with the same noise schedule translates)' }),
  images: path({ arg: '<dir>', help: 'the original images, to print the reconstruction error ' +
    '(default: the source the file records, when it is still there)' }),
  testSplit: flag({ help: 'the originals are the MNIST held-out digits' }),
  ...COMMON,
  out: path({ arg: '<file.png>', help: 'the PNG grid to write', default: 'decoded.png' }),
};

export const TRANSLATE_OPTIONS = {
  from: path({ arg: '<dir>', help: modelHelp('the source domain\'s') }),
  to: path({ arg: '<dir>', help: 'the target domain\'s pipeline or model folder (default: ' +
    '--from, a reconstruction)' }),
  ...INPUT, ...WALK, ...COMMON,
  latents: path({ arg: '<file>', help: 'also write the codes here' }),
  out: path({ arg: '<file.png>', help: 'PNG grid: source row, translated row below',
    default: 'translated.png' }),
};

export const IMG2IMG_OPTIONS = {
  model: path({ arg: '<dir>', help: modelHelp('the') }),
  ...INPUT,
  strength: num({ range: '(0, 1]', help: 'how far to noise the images (t0 = strength * T - 1; ' +
    '1: pure noise)', default: 0.5 }),
  steps: int({ min: 1, help: 'DDIM steps (at most t0 + 1)', default: 50 }),
  seed: int({ min: 0, help: 'noise seed', default: 0 }),
  ...COMMON,
  out: path({ arg: '<file.png>', help: 'PNG grid: source row, edited row below',
    default: 'img2img.png' }),
};

// ---- shared steps ----

async function load(dir: string | undefined): Promise<Pipeline> {
  const d = dir ?? DEFAULT_MODEL_DIR;
  if (dir === undefined && !existsSync(d)) {
    throw new Error(`no model at ${d}: train one with \`diffuse train\` or pass a model folder`);
  }
  const p = await loadPipeline(d);
  for (const note of p.notes) console.error(`note: ${note}`);
  return p;
}

/** The images, and a source string a code file can be re-read from. */
async function inputs(o: { images?: string; testSplit: boolean; n?: number }):
  Promise<InputImages & { key: string }> {
  const input = await readInputImages(o);
  if (input.note) console.error(`note: ${input.note}`);
  return { ...input, key: o.testSplit ? 'test-split' : `images:${resolve(o.images!)}` };
}

/** The originals of codes, from flags or from the source the file records (if still there). */
async function originals(o: { images?: string; testSplit: boolean }, codes: LatentCodes):
  Promise<InputImages | undefined> {
  const n = codes.z.shape[0]!;
  if (o.images !== undefined || o.testSplit) return readInputImages({ ...o, n });
  const src = codes.source;
  if (src === 'test-split') return readInputImages({ testSplit: true, n });
  if (src?.startsWith('images:') && existsSync(src.slice(7))) {
    return readInputImages({ images: src.slice(7), testSplit: false, n });
  }
  return undefined;
}

function describe(p: Pipeline, labels: readonly number[] | undefined): string {
  const k = classCount(p.model);
  return `${p.model.cls.className} from ${p.modelFolder}` + (k === 0 ? ' (unconditional)'
    : labels ? ` (labels ${labels.join(',')})` : ` (${k} classes; null label: unconditional)`);
}

/** Runs `fn` with an abort signal tied to Ctrl-C and a progress bar fed by onStep. */
async function run<T>(label: string, fn: (signal: AbortSignal,
  onStep: (done: number, total: number) => void) => Promise<T>): Promise<T> {
  const stop = new AbortController();
  const onInt = () => stop.abort();
  process.once('SIGINT', onInt);
  let bar: Progress | undefined;
  try {
    const r = await fn(stop.signal, (done, total) => (bar ??= progress(label, total)).update(done));
    return r;
  } catch (e) {
    if (!stop.signal.aborted) throw e;
    throw new Interrupted(`interrupted while ${label}; nothing written`, { cause: e });
  } finally {
    bar?.stop();
    process.off('SIGINT', onInt);
  }
}

function printError(what: string, a: HostArray, b: HostArray): void {
  const e = reconstructionError(a, b);
  console.log(`${what}: max abs ${e.maxAbs.toExponential(2)}, mean squared ` +
    `${e.mse.toExponential(2)} (images in [-1, 1])`);
}

async function printPreservation(source: HostArray<'float32'>, out: HostArray<'float32'>,
  labels?: Int32Array): Promise<void> {
  const r = await classPreservation(source, out, labels);
  if ('unavailable' in r) {
    console.log(`class preservation not measured: ${r.unavailable}`);
    return;
  }
  const pct = (v: number) => `${(100 * v).toFixed(1)}%`;
  console.log(`class preserved (MNIST classifier, models/mnist-classifier): ` +
    `${pct(r.preserved)} of ${source.shape[0]}` + (r.translatedAccuracy === undefined ? ''
    : `; accuracy against the labels: source ${pct(r.sourceAccuracy!)}, translated ` +
      `${pct(r.translatedAccuracy)}`));
}

const walkOf = (o: { steps: number; eta: number; t0?: number; seed: number }) =>
  `${o.steps} steps from t0 = ${o.t0 ?? 'T - 1'}, eta ${o.eta}` +
  `${o.eta === 0 ? ' (DDIM inversion)' : ''}, seed ${o.seed}`;

// ---- commands ----

export function registerEncode(program: Command): void {
  addOptions(program.command('encode')
    .description('encode images into the latent space of a stochastic diffusion model ' +
      '(DPM-Encoder, Wu & De la Torre 2023; --eta 0: DDIM inversion) and write the codes as ' +
      'safetensors'), ENCODE_OPTIONS)
    .action(async (_: unknown, cmd: Command) => {
      const o = commandOptions(ENCODE_OPTIONS, cmd).values;
      const input = await inputs(o);
      const p = await load(o.model);
      await ensureWritableFile(o.out);
      console.log(`encoding ${input.images.shape[0]} images of ${input.source} with ` +
        `${describe(p, o.class)}: ${walkOf(o)}`);
      const r = await run('encoding', (signal, onStep) => encodeImages(p, input.images, {
        steps: o.steps, eta: o.eta, seed: o.seed, residual: !o.dropResidual,
        batchSize: o.batchSize, provider: o.provider, signal, onStep,
        ...(o.t0 !== undefined ? { t0: o.t0 } : {}), ...(o.class ? { labels: o.class } : {}),
      }, input.key));
      await writeLatents(o.out, r.codes);
      console.log(`encoded in ${r.seconds.toFixed(1)} s (${r.modelCalls} model calls); ` +
        `wrote ${o.out}`);
    });

  addOptions(program.command('decode')
    .description('decode codes written by diffuse encode with a model: the encoding model ' +
      'rebuilds the images, another one with the same noise schedule translates them ' +
      '(CycleDiffusion)'), DECODE_OPTIONS)
    .action(async (_: unknown, cmd: Command) => {
      const o = commandOptions(DECODE_OPTIONS, cmd).values;
      if (o.latents === undefined) {
        throw new UsageError('--latents <file> is required: the codes diffuse encode wrote');
      }
      const codes = await readLatents(o.latents);
      const p = await load(o.model ?? (existsSync(codes.model) ? codes.model : undefined));
      const n = codes.z.shape[0]!;
      await checkDestination(p, n, { out: o.out });
      const { steps, t0, eta } = codes.z.settings;
      console.log(`decoding ${n} codes (${walkOf({ steps, t0, eta, seed: codes.seed })}, from ` +
        `${codes.model}) with ${describe(p, o.class)}`);
      const r = await run('decoding', (signal, onStep) => decodeLatents(p, codes, {
        batchSize: o.batchSize, provider: o.provider, signal, onStep,
        ...(o.class ? { labels: o.class } : {}) }));
      await writeSamples(r.images, { out: o.out });
      console.log(`decoded in ${r.seconds.toFixed(1)} s; wrote ${o.out}`);
      const orig = await originals(o, codes);
      if (orig) {
        const same = resolve(p.modelFolder) === resolve(codes.model);
        printError(same ? 'reconstruction error' : 'difference from the originals (another ' +
          'model: a translation)', r.images, orig.images);
        if (!same) await printPreservation(orig.images, r.images, orig.labels);
      }
    });

  addOptions(program.command('translate')
    .description('zero-shot image-to-image translation (CycleDiffusion, Wu & De la Torre ' +
      '2023): encode with --from, decode the same codes with --to (same noise schedule); ' +
      '--eta 0 is the deterministic DDIM variant (DDIB)'), TRANSLATE_OPTIONS)
    .action(async (_: unknown, cmd: Command) => {
      const o = commandOptions(TRANSLATE_OPTIONS, cmd).values;
      const input = await inputs(o);
      const from = await load(o.from);
      const to = o.to === undefined ? from : await load(o.to);
      const same = resolve(to.modelFolder) === resolve(from.modelFolder);
      const n = input.images.shape[0]!;
      await checkDestination(to, 2 * n, { out: o.out });
      if (o.latents) await ensureWritableFile(o.latents);
      console.log(`translating ${n} images of ${input.source}: ${describe(from, o.class)} -> ` +
        `${same ? 'itself (a reconstruction)' : describe(to, o.class)}; ${walkOf(o)}`);
      const r = await run('translating', (signal, onStep) => translateImages(from, to,
        input.images, { steps: o.steps, eta: o.eta, seed: o.seed, residual: !o.dropResidual,
          batchSize: o.batchSize,
          provider: o.provider, signal, onStep, ...(o.t0 !== undefined ? { t0: o.t0 } : {}),
          ...(o.class ? { labels: o.class } : {}) }, input.key));
      await writeRowsGrid(o.out, [input.images, r.images], Math.min(n, 16));
      if (o.latents) await writeLatents(o.latents, r.codes);
      console.log(`translated in ${r.seconds.toFixed(1)} s; wrote ${o.out}` +
        `${o.latents ? ` and ${o.latents}` : ''}`);
      if (same) printError('reconstruction error', r.images, input.images);
      else await printPreservation(input.images, r.images, input.labels);
    });

  addOptions(program.command('img2img')
    .description('SDEdit (Meng et al. 2022): noise images to strength * T and sample them back ' +
      'with DDIM'), IMG2IMG_OPTIONS)
    .action(async (_: unknown, cmd: Command) => {
      const o = commandOptions(IMG2IMG_OPTIONS, cmd).values;
      const input = await inputs(o);
      const p = await load(o.model);
      const n = input.images.shape[0]!;
      await checkDestination(p, 2 * n, { out: o.out });
      console.log(`editing ${n} images of ${input.source} with ${describe(p, o.class)}: ` +
        `strength ${o.strength}, ${o.steps} DDIM steps, seed ${o.seed}`);
      const r = await run('editing', (signal, onStep) => img2img(p, input.images, {
        strength: o.strength, steps: o.steps, seed: o.seed, batchSize: o.batchSize,
        provider: o.provider, signal, onStep, ...(o.class ? { labels: o.class } : {}) }));
      await writeRowsGrid(o.out, [input.images, r.images], Math.min(n, 16));
      console.log(`edited from t0 = ${r.t0} in ${r.steps} steps, ${r.seconds.toFixed(1)} s; ` +
        `wrote ${o.out}`);
      printError('difference from the sources', r.images, input.images);
    });
}
