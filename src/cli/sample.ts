/** @file `diffuse sample`: sample a diffusers UNet2DModel / DiT folder into a PNG grid or PNGs. */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { InvalidArgumentError, type Command } from 'commander';
import { HostArray } from '../engine/host.js';
import type { Provider } from '../engine/runtime.js';
import { SAMPLER_NAMES } from '../diffusion/sampling.js';
import { imageGrid, writePng } from '../io/png.js';
import { classCount, guidanceClipWarning, loadPipeline, sampleImages } from '../pipelines/sample.js';
import { packageRoot } from '../util/package-root.js';
import { choice, positiveInt } from './parse.js';
import { progress } from './progress.js';

/** The model `diffuse sample` reads without --model: models/mnist-unet in the package. */
export const DEFAULT_MODEL_DIR = join(packageRoot(), 'models', 'mnist-unet');

/** Guidance for class-conditional models unless --guidance says otherwise: on the shipped
 *  MNIST U-Net it lifts class accuracy from 90.5% (none) to 99% at a small cost in MNIST-FID
 *  (README, "Shipped models"). */
export const DEFAULT_GUIDANCE = 1.5;

/** `--class`: a label, a comma list of labels, or `all`. */
export function parseClasses(v: string): number[] | 'all' {
  if (v === 'all') return 'all';
  const parts = v.split(',').map((s) => s.trim());
  if (parts.some((s) => !/^\d+$/.test(s))) {
    throw new InvalidArgumentError(`expected a class number, a comma list such as 1,3,7, or ` +
      `'all', got '${v}'`);
  }
  return parts.map(Number);
}

function nonNegativeNumber(v: string): number {
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || n < 0) {
    throw new InvalidArgumentError(`expected a number >= 0, got '${v}'`);
  }
  return n;
}

interface SampleCliOptions {
  model?: string; sampler: string; steps: number; guidance?: number; class?: number[] | 'all';
  n: number; seed: number; generator: 'philox' | 'torch'; batchSize: number; provider: Provider;
  out: string; outDir?: string;
}

export function registerSample(program: Command): void {
  program.command('sample')
    .description('sample images from a diffusers UNet2DModel or DiT folder (a pipeline with ' +
      'model_index.json, or a bare model folder) and write a PNG grid or one PNG per image')
    .option('--model <dir>', `pipeline or model folder (default: ${DEFAULT_MODEL_DIR})`)
    .option('--sampler <name>', `sampler: ${SAMPLER_NAMES.join(' | ')} (default dpm++2m, ` +
      'flow-euler for flow-matching models)', choice(SAMPLER_NAMES))
    .option('--steps <n>', 'sampling steps', (v: string) => positiveInt(v, false, 'steps'), 20)
    .option('--guidance <w>', 'classifier-free guidance weight (1: none, 0: unconditional; ' +
      `default ${DEFAULT_GUIDANCE} for class-conditional models, 1 otherwise)`, nonNegativeNumber)
    .option('--class <c>', "class labels: a number, a comma list (cycled), or 'all' " +
      '(0..K-1 cycled; the default for conditional models)', parseClasses)
    .option('--n <n>', 'number of images', (v: string) => positiveInt(v, false, 'n'), 64)
    .option('--seed <n>', 'seed', (v: string) => positiveInt(v, true, 'seed'), 0)
    .option('--generator <g>', 'noise: philox (Diffuse) | torch (torch.randn on the CPU, as ' +
      'diffusers draws it)', choice(['philox', 'torch']), 'philox')
    .option('--batch-size <n>', 'most images per model call',
      (v: string) => positiveInt(v, false, 'batch size'), 64)
    .option('--provider <p>', 'cpu | webgpu | cuda', choice(['cpu', 'webgpu', 'cuda']), 'cpu')
    .option('--out <file.png>', 'the PNG grid to write', 'samples.png')
    .option('--out-dir <dir>', 'write DIR/000000.png, DIR/000001.png, ... instead of a grid')
    .action(async (o: SampleCliOptions) => {
      const dir = o.model ?? DEFAULT_MODEL_DIR;
      if (o.model === undefined && !existsSync(dir)) {
        throw new Error(`no model at ${dir}: train one with \`diffuse train\` (its pipeline is ` +
          '<out>/model) or pass --model DIR');
      }
      const pipeline = await loadPipeline(dir);
      for (const note of pipeline.notes) console.error(`note: ${note}`);
      const flow = pipeline.scheduler.family === 'flow';
      const sampler = o.sampler ?? (flow ? 'flow-euler' : 'dpm++2m');
      const k = classCount(pipeline.model);
      const guidance = o.guidance ?? (k ? DEFAULT_GUIDANCE : 1);
      const warning = k ? guidanceClipWarning(sampler, pipeline.scheduler, guidance) : undefined;
      if (warning) console.error(`warning: ${warning}`);
      console.log(`${pipeline.model.cls.className} from ${pipeline.modelFolder} ` +
        `(${k ? `${k} classes` : 'unconditional'}): ${o.n} images, ${sampler}, ${o.steps} steps` +
        `${guidance !== 1 ? `, guidance ${guidance}` : ''}, seed ${o.seed} (${o.generator})`);
      const stop = new AbortController();
      const onInt = () => stop.abort(new Error('interrupted'));
      process.once('SIGINT', onInt);
      let bar: ReturnType<typeof progress> | undefined;
      try {
        const r = await sampleImages(pipeline, {
          sampler, steps: o.steps, n: o.n, guidance, seed: o.seed,
          generator: o.generator, batchSize: o.batchSize, provider: o.provider,
          ...(o.class !== undefined ? { classes: o.class } : {}), signal: stop.signal,
          onStep: (step, total) => (bar ??= progress('sampling', total)).update(step + 1),
        });
        bar?.stop();
        bar = undefined;
        console.log(`sampled ${o.n} images in ${r.seconds.toFixed(2)} s ` +
          `(${((1000 * r.seconds) / o.n).toFixed(1)} ms per image, ${r.modelCalls} model calls)`);
        await writeImages(r.images, o);
      } finally {
        bar?.stop();
        process.off('SIGINT', onInt);
      }
    });
}

async function writeImages(images: HostArray<'float32'>, o: SampleCliOptions): Promise<void> {
  if (o.outDir === undefined) {
    await writePng(o.out, imageGrid(images));
    console.log(`wrote ${o.out}`);
    return;
  }
  const [n, c, h, w] = images.shape as [number, number, number, number];
  const per = c * h * w;
  for (let i = 0; i < n; i++) {
    const one = new HostArray(images.data.subarray(i * per, (i + 1) * per), [1, c, h, w]);
    await writePng(join(o.outDir, `${String(i).padStart(6, '0')}.png`),
      imageGrid(one, { cols: 1, pad: 0 }));
  }
  console.log(`wrote ${n} images to ${o.outDir}`);
}
