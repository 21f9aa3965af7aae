/** @file `diffuse sample`: sample a diffusers UNet2DModel / DiT folder into a PNG grid or PNGs. */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Command } from 'commander';
import { ENSEMBLE_MODES } from '../methods/ddm.js';
import {
  ACCEL_SPELLINGS, checkDestination, classCount, DEFAULT_GUIDANCE, describeAccel, loadPipeline,
  parseAccelOption,
  PROVIDERS, SAMPLER_NAMES, sampleImages, sampleInBatches, samplingChoice, writeSamples,
} from '../pipelines/sample.js';
import { GUIDE_SPELLING, loadGuide, parseGuide } from '../pipelines/guide.js';
import { packageRoot } from '../util/package-root.js';
import { Interrupted } from './errors.js';
import { addOptions, commandOptions, custom, int, num, oneOf, path } from './options.js';
import { progress } from './progress.js';

/** The model `diffuse sample` reads without --model: models/mnist-unet in the package. */
export const DEFAULT_MODEL_DIR = join(packageRoot(), 'models', 'mnist-unet');

export { DEFAULT_GUIDANCE };

/** The range of a classifier-free guidance weight: useful weights are below about 10; 1000
 *  keeps a typo (1e9) from silently producing noise. */
export const GUIDANCE_RANGE = '[0, 1000]';

/** `--class`: a label, a comma list of labels, or `all`. */
export function parseClasses(v: string): number[] | 'all' {
  if (v === 'all') return 'all';
  const parts = v.split(',').map((s) => s.trim());
  if (parts.some((s) => !/^\d+$/.test(s) || !Number.isSafeInteger(Number(s)))) {
    throw new RangeError(`not a class number: '${parts.find((s) => !/^\d+$/.test(s)) ?? v}'`);
  }
  return parts.map(Number);
}

export const SAMPLE_OPTIONS = {
  model: path({ arg: '<dir>', help: `pipeline or model folder (default: ${DEFAULT_MODEL_DIR})` }),
  sampler: oneOf(SAMPLER_NAMES, { help: 'sampler (default dpm++2m, flow-euler for ' +
    'flow-matching models)' }),
  steps: int({ min: 1, help: 'sampling steps', default: 20 }),
  guidance: num({ range: GUIDANCE_RANGE, arg: '<w>', help: 'classifier-free guidance weight ' +
    `(1: none, 0: unconditional; default ${DEFAULT_GUIDANCE} for class-conditional models, ` +
    '1 otherwise)' }),
  class: custom(parseClasses, { arg: '<c>', expected: "a class number, a comma list such as " +
    "1,3,7, or 'all'", help: "class labels: a number, a comma list (cycled), or 'all' " +
    '(0..K-1 cycled; the default for conditional models)' }),
  n: int({ min: 1, help: 'number of images', default: 64 }),
  seed: int({ min: 0, help: 'seed', default: 0 }),
  generator: oneOf(['philox', 'torch'], { arg: '<g>', help: 'noise: philox (Diffuse) or torch ' +
    '(torch.randn on the CPU, as diffusers draws it)', default: 'philox' }),
  accel: custom(parseAccelOption, { arg: '<spec>', expected: ACCEL_SPELLINGS, help: 'training-free acceleration. U-Net: deepcache:3 runs the ' +
    'full U-Net every 3rd step and only its shallow branch between (,nonuniform: full steps ' +
    'denser around step 15; ,branch=K: recompute the last K up-path resnets, default 1); ' +
    'faster runs the encoder at the paper\'s key steps only and the decoder of the steps ' +
    'between in one batch (faster:K: every K-th step is a key step; ,serial: no batching; ' +
    ',noinject: no prior noise injection). DiT: ras:0.5 refreshes half the tokens per step ' +
    '(,random: the random-selection control)' }),
  ensemble: oneOf(ENSEMBLE_MODES, { arg: '<mode>', help: 'routing of a decentralized-experts ' +
    'ensemble (diffuse ddm train): top1, top2 or full (default: the one it was trained with)' }),
  guide: custom(parseGuide, { arg: '<spec>', expected: GUIDE_SPELLING, help: 'classifier ' +
    'guidance towards --class: classifier:DIR:SCALE with DIR a noise-aware classifier ' +
    '(train-classifier --noise-aware), a clean one (applied to noisy images as they are) or ' +
    'an experts folder (train-experts); with --guidance 0 it guides the unconditional model' }),
  batchSize: int({ min: 1, help: 'most images per model call', default: 64 }),
  provider: oneOf(PROVIDERS, { arg: '<p>', help: 'ONNX Runtime provider', default: 'cpu' }),
  out: path({ arg: '<file.png>', help: 'the PNG grid to write', default: 'samples.png' }),
  outDir: path({ arg: '<dir>', help: 'write DIR/000000.png, DIR/000001.png, ... instead of a ' +
    'grid, a batch at a time (any --n up to a million, in bounded memory)' }),
  maxMemory: int({ min: 64, arg: '<MiB>', help: 'memory the run may plan for; larger requests ' +
    'are refused (or batches made smaller) before anything is allocated', default: 1024 }),
};

export function registerSample(program: Command): void {
  addOptions(program.command('sample')
    .description('sample images from a diffusers UNet2DModel or DiT folder (a pipeline with ' +
      'model_index.json, or a bare model folder) and write a PNG grid or one PNG per image'),
  SAMPLE_OPTIONS)
    .action(async (_: unknown, cmd: Command) => {
      const opts = commandOptions(SAMPLE_OPTIONS, cmd);
      const o = opts.values;
      if (o.outDir !== undefined && opts.sources.out !== 'default') {
        throw opts.refuse('out', 'either --out (a grid) or --out-dir (one PNG per image)',
          'both were given');
      }
      const dir = o.model ?? DEFAULT_MODEL_DIR;
      if (o.model === undefined && !existsSync(dir)) {
        throw new Error(`no model at ${dir}: train one with \`diffuse train\` (its pipeline is ` +
          '<out>/model) or pass --model DIR');
      }
      const pipeline = await loadPipeline(dir);
      for (const note of pipeline.notes) console.error(`note: ${note}`);
      const k = classCount(pipeline.model);
      // A distilled student runs as it was trained unless the user says otherwise.
      const { sampler, steps, guidance } = samplingChoice({ flow: pipeline.scheduler.family === 'flow',
        classes: k, student: pipeline.student }, { sampler: o.sampler,
        steps: opts.sources.steps === 'default' ? undefined : o.steps, guidance: o.guidance }, o.steps);
      console.log(`${pipeline.model.cls.className} from ${pipeline.modelFolder} ` +
        `(${k ? `${k} classes` : 'unconditional'}): ${o.n} images, ${sampler}, ${steps} steps` +
        `${guidance !== 1 ? `, guidance ${guidance}` : ''}` +
        `${o.accel ? `, ${describeAccel(o.accel)}` : ''}` +
        `${pipeline.ensemble ? `, ${pipeline.ensemble.experts.length} experts routed ${o.ensemble ?? pipeline.ensemble.routing}` : ''}` +
        `${pipeline.vae ? `, in the latent space of its VAE (${pipeline.model.sampleShape.join('x')} latents)` : ''}, seed ${o.seed} ` +
        `(${o.generator})`);
      const guide = o.guide ? await loadGuide(o.guide) : undefined;
      if (guide) console.log(`classifier guidance: ${guide.description}`);
      const to = o.outDir === undefined ? { out: o.out } : { outDir: o.outDir };
      await checkDestination(pipeline, o.n, to); // seconds in, not after sampling
      let written = 0;
      const stop = new AbortController();
      const onInt = () => stop.abort();
      process.once('SIGINT', onInt);
      let bar: ReturnType<typeof progress> | undefined;
      const options = {
        sampler, steps, n: o.n, guidance, seed: o.seed, generator: o.generator,
        batchSize: o.batchSize, provider: o.provider, memoryLimit: o.maxMemory * 2 ** 20,
        ...(o.accel ? { accel: o.accel } : {}), ...(guide ? { guide } : {}),
        ...(o.ensemble ? { ensemble: o.ensemble } : {}),
        ...(o.class !== undefined ? { classes: o.class } : {}), signal: stop.signal,
        onWarning: (message: string) => console.error(`warning: ${message}`),
        onStep: (step: number, total: number) =>
          (bar ??= progress('sampling', total)).update(step + 1),
      };
      try {
        const stats = 'out' in to ? await sampleImages(pipeline, options).then(async (r) => {
          await writeSamples(r.images, to);
          return r;
        }) : await sampleInBatches(pipeline, options, async (images, first) => {
          written += (await writeSamples(images, to, first)).length;
        });
        bar?.stop();
        bar = undefined;
        console.log(`sampled ${o.n} images in ${stats.seconds.toFixed(2)} s ` +
          `(${((1000 * stats.seconds) / o.n).toFixed(1)} ms per image, ${stats.modelCalls} ` +
          'model calls)');
        console.log('out' in to ? `wrote ${to.out}` : `wrote ${o.n} images to ${to.outDir}`);
      } catch (e) {
        if (!stop.signal.aborted) throw e;
        throw new Interrupted(o.outDir === undefined ? 'interrupted while sampling; nothing written'
          : `interrupted after writing ${written} of ${o.n} images to ${o.outDir}`, { cause: e });
      } finally {
        bar?.stop();
        process.off('SIGINT', onInt);
      }
    });
}
