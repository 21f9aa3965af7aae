/**
 * @file DiffuseVAE's pipeline (methods/diffusevae.ts): `diffuse diffusevae train` trains a U-Net
 * refiner conditioned on a trained VAE's reconstructions; sampling draws z from the VAE's
 * prior, decodes x̂ and refines it; interpolation walks between two latents with the refiner's
 * noise held fixed; evaluation scores the VAE's samples and the refined ones by MNIST-FID.
 *
 * One simplification from the official training (which decodes a fresh posterior sample of
 * each image at every step): x̂ is the decoding of each training image's posterior mean,
 * computed once, so the VAE's decoder is not in every training step.
 *
 * Folder: model_index.json (DiffuseVAEPipeline, `_diffusevae: { form }`), unet/ (in_channels
 * 2C: [x_t, x̂]), vae/, scheduler/.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import type { Tree } from '../engine/tree.js';
import type { Batch, Denoiser, NoiseSource } from '../diffusion/denoiser.js';
import { parseScheduler, type SchedulerSpec } from '../diffusion/diffusers/spec.js';
import { sample } from '../diffusion/sampling.js';
import { noisySample, trainingPoints, trainingScheduler } from '../diffusion/training.js';
import { batchAt, datasetSize, type ImageDataset } from '../data/dataset.js';
import {
  DiffusersFolderError, loadModel, MODEL_INDEX_NAME, readModelIndex, readSchedulerConfig,
} from '../io/diffusers.js';
import { conditionedInput, DIFFUSEVAE_FORMS, type DiffuseVaeForm } from '../methods/diffusevae.js';
import type { UNet2DConfig } from '../models/unet2d.js';
import { UNET2D_CLASS } from '../models/unet2d.js';
import { adamw } from '../nn/optim.js';
import { compileTrainStep } from '../nn/train.js';
import type { PipelineFiles } from './checkpoint.js';
import { createImageModel, imageModelOf, type ImageModel } from './image-models.js';
import { latentCoder, loadVae, VAE_COMPONENT, vaeModel, type LoadedVae } from './latent.js';
import { takeRows } from './repa.js';
import { learningRate, trainingImageShape, type TrainOptions } from './train.js';
import { runTraining, type TrainEvents, type TrainResult } from './training-loop.js';

export const DIFFUSEVAE_PIPELINE_CLASS = 'DiffuseVAEPipeline';
const FORM_KEY = '_diffusevae';

export type DiffuseVaeTrainOptions = Pick<TrainOptions, 'size' | 'batchSize' | 'steps' | 'lr' | 'lrSchedule' |
  'warmupSteps' | 'gradClip' | 'emaDecay' | 'seed' | 'out' | 'logEvery' | 'sampleEvery' | 'checkpointEvery'> & {
  /** The VAE (latent.ts loadVae): a `diffuse train-vae` run, a pipeline with vae/, or a folder. */
  vae: string;
  form: DiffuseVaeForm;
};

/** A loaded DiffuseVAE: the refiner (a U-Net over [x_t, x̂]), its process, the VAE, the form. */
export interface DiffuseVaePipeline {
  model: ImageModel;
  params: Tree<HostArray>;
  scheduler: SchedulerSpec;
  vae: LoadedVae;
  form: DiffuseVaeForm;
}

/** The refiner for images [C, H, W]: a U-Net size preset taking 2C channels, giving C. */
export function refinerModel(size: string, [c, h, w]: readonly [number, number, number]): ImageModel {
  const base = createImageModel('unet', size, 0, [2 * c, h, w]);
  return imageModelOf('unet', { ...(base.config as UNet2DConfig), out_channels: c });
}

/** The VAE's decodings of the posterior means of `images` (x̂ of each training image). */
export async function reconstructions(vae: LoadedVae, images: HostArray<'float32'>): Promise<HostArray<'float32'>> {
  const coder = latentCoder(vae);
  try {
    return await coder.decode(await coder.encodeMean(images));
  } finally {
    await coder.dispose();
  }
}

type RefinerBatch = { x0: HostArray; xhat: HostArray; eps: HostArray; t: HostArray; a: HostArray; s: HostArray };

/** Trains the refiner on `data` (continuing `out/checkpoint` when `resume`). */
export async function trainDiffuseVae(o: DiffuseVaeTrainOptions, data: ImageDataset, resume: boolean,
  ev: TrainEvents = {}): Promise<TrainResult & { model: ImageModel }> {
  if (!DIFFUSEVAE_FORMS.includes(o.form)) throw new RangeError(`form: expected 1 or 2, got ${o.form}`);
  const shape = trainingImageShape(data, o.batchSize);
  const vae = await loadVae(o.vae);
  if (vae.model.config.in_channels !== shape[0]) {
    throw new RangeError(`--vae ${o.vae}: it takes ${vae.model.config.in_channels}-channel images, the data has ${shape[0]}`);
  }
  const n = datasetSize(data);
  ev.onPrepare?.('VAE reconstructions', 0, n);
  const xhats = await reconstructions(vae, data.images);
  ev.onPrepare?.('VAE reconstructions', n, n);
  const model = refinerModel(o.size, shape);
  const spec = trainingScheduler('eps');
  const key = RngKey.fromSeed(o.seed);
  const trainer = compileTrainStep<RefinerBatch & Tree<HostArray>>((params: Tree<Tensor>, bt: Tree<Tensor>) => {
    const b = bt as unknown as Record<keyof RefinerBatch, Tensor>;
    const yt = noisySample(b.x0, b.eps, b.a, b.s);
    const out = model.apply(params, conditionedInput(o.form, yt, b.xhat), b.t).out;
    return ops.mean(ops.square(ops.sub(out, b.eps)));
  }, adamw({ lr: learningRate(o), weightDecay: 0 }),
  { clipGradNorm: o.gradClip, ema: { maxDecay: o.emaDecay }, runtime: { name: 'diffusevae_train_step' } });
  const files: PipelineFiles = { model, scheduler: spec, pipelineClass: DIFFUSEVAE_PIPELINE_CLASS,
    frozen: [{ saved: vaeModel(vae.model.config), params: vae.params }], privateEntries: { [FORM_KEY]: { form: o.form } } };
  const r = await runTraining({
    options: o, files, trainer, exported: 'ema',
    run: { size: o.size, form: o.form, vae: o.vae, batchSize: o.batchSize, seed: o.seed, lr: o.lr,
      lrSchedule: o.lrSchedule, warmupSteps: o.warmupSteps, gradClip: o.gradClip, emaDecay: o.emaDecay },
    initialWeights: () => model.module.init(key.fold(2)) as Tree<HostArray>,
    batch: (step) => {
      const b = batchAt(data, key.fold(0), step, o.batchSize);
      const [kn, kt] = key.fold(1).fold(step).split(2);
      const m = o.batchSize;
      const pts = trainingPoints(spec, kt!.uniform(m));
      return { x0: b.images, xhat: takeRows(xhats, b.rows), eps: new HostArray(kn!.normal(b.images.size), b.images.shape),
        t: new HostArray(pts.t, [m]), a: new HostArray(pts.alpha, [m, 1, 1, 1]),
        s: new HostArray(pts.sigma, [m, 1, 1, 1]) } as RefinerBatch & Tree<HostArray>;
    },
    // The VAE's prior samples (rows 1-2) over their refinements (rows 3-4).
    grid: async (ema) => {
      const s = await sampleDiffuseVae({ model, params: ema, scheduler: spec, vae, form: o.form },
        { n: 16, steps: 25, sampler: 'ddim', seed: 1234 });
      const both = new Float32Array(s.vae.size + s.images.size);
      both.set(s.vae.data);
      both.set(s.images.data, s.vae.size);
      return { images: new HostArray(both, [32, ...s.images.shape.slice(1)]), cols: 8 };
    },
  }, resume, ev);
  return { ...r, model };
}

/** Loads a folder `diffuse diffusevae train` wrote (or its run folder). */
export async function loadDiffuseVae(dir: string): Promise<DiffuseVaePipeline> {
  // The pipeline itself, or a run folder holding it in model/.
  const root = existsSync(join(dir, MODEL_INDEX_NAME)) || !existsSync(join(dir, 'model')) ? dir : join(dir, 'model');
  const index = await readModelIndex(root);
  if (index.pipelineClass !== DIFFUSEVAE_PIPELINE_CLASS) {
    throw new DiffusersFolderError(index.path, `is a ${index.pipelineClass}, expected a ${DIFFUSEVAE_PIPELINE_CLASS} ` +
      '(what diffuse diffusevae train writes)');
  }
  const form = (index.privateEntries[FORM_KEY] as { form?: unknown } | undefined)?.form;
  if (!DIFFUSEVAE_FORMS.includes(form as DiffuseVaeForm)) {
    throw new DiffusersFolderError(index.path, `${FORM_KEY}.form must be 1 or 2, got ${JSON.stringify(form)}`);
  }
  const unet = await loadModel(join(root, 'unet'), UNET2D_CLASS);
  const vae = await loadVae(join(root, VAE_COMPONENT));
  const model = imageModelOf('unet', unet.config);
  const c = vae.model.config.out_channels;
  if (unet.config.in_channels !== 2 * c || unet.config.out_channels !== c) {
    throw new DiffusersFolderError(join(root, 'unet'), `takes ${unet.config.in_channels} and gives ` +
      `${unet.config.out_channels} channels; a refiner of ${c}-channel images takes ${2 * c} and gives ${c}`);
  }
  const scheduler = parseScheduler((await readSchedulerConfig(root)).config);
  return { model, params: unet.params as unknown as Tree<HostArray>, scheduler, vae, form: form as DiffuseVaeForm };
}

/** The refiner as a Denoiser whose condition is x̂ of the rows (a float32 HostArray). */
function refinerDenoiser(p: DiffuseVaePipeline): Denoiser & { dispose(): Promise<void> } {
  const consts = ops.constantTree(p.params);
  const f = compile((y: Tensor, t: Tensor, xhat: Tensor) => p.model.apply(consts, conditionedInput(p.form, y, xhat), t).out,
    { name: 'diffusevae_refiner' });
  return {
    prediction: 'eps',
    async predict(x: Batch, t: Float64Array, condition?: unknown): Promise<Batch> {
      const xhat = condition as HostArray<'float32'>;
      if (!(xhat instanceof HostArray) || xhat.shape.join() !== x.shape.join()) {
        throw new TypeError(`DiffuseVAE: the condition must be x̂ shaped like x [${x.shape.join(', ')}]`);
      }
      return f(new HostArray(Float32Array.from(x.data), x.shape), new HostArray(Float32Array.from(t), [t.length]), xhat) as
        Promise<HostArray<'float32'>>;
    },
    dispose: () => f.dispose(),
  };
}

export interface DiffuseVaeSampleOptions {
  n: number;
  steps: number;
  sampler: string;
  seed: number;
  /** VAE latents to decode [n, L, h, w] (default: draws from the prior N(0, I)). */
  z?: HostArray<'float32'>;
  /** The same refiner noise for every image (interpolation), instead of a stream per image. */
  sharedNoise?: boolean;
  onStep?: (step: number, total: number) => void;
}

/** [L, h, w] of the VAE latents behind the pipeline's images. */
function latentShapeOf(p: DiffuseVaePipeline): [number, number, number] {
  const f = p.vae.model.downFactor;
  return [p.vae.model.config.latent_channels, p.model.sampleShape[1] / f, p.model.sampleShape[2] / f];
}

/** n draws z ~ N(0, I) from the VAE's prior, [n, L, h, w]: those sampleDiffuseVae uses for
 *  this seed when given no z. */
export function priorDraws(p: DiffuseVaePipeline, n: number, seed: number): HostArray<'float32'> {
  const shape = [n, ...latentShapeOf(p)];
  return new HostArray<'float32'>(RngKey.fromSeed(seed).fold(0).normal(shape.reduce((a, b) => a * b)), shape, 'float32');
}

/** n samples: the VAE's decodings x̂ = D(z) and their refinements, each [n, C, H, W]. */
export async function sampleDiffuseVae(p: DiffuseVaePipeline, o: DiffuseVaeSampleOptions):
  Promise<{ vae: HostArray<'float32'>; images: HostArray<'float32'>; z: HostArray<'float32'> }> {
  const cfg = p.vae.model.config;
  const [c, h, w] = [cfg.out_channels, p.model.sampleShape[1], p.model.sampleShape[2]];
  const key = RngKey.fromSeed(o.seed);
  const z = o.z ?? priorDraws(p, o.n, o.seed);
  const zShape = [o.n, ...latentShapeOf(p)];
  if (z.shape.join() !== zShape.join()) {
    throw new RangeError(`DiffuseVAE: z must be [${zShape.join(', ')}], got [${z.shape.join(', ')}]`);
  }
  const coder = latentCoder(p.vae);
  const den = refinerDenoiser(p);
  try {
    const xhat = await coder.decode(z);
    const per = c * h * w;
    const noise: NoiseSource = o.sharedNoise
      ? (size, k) => {
        const one = key.fold(k + 2).normal(per);
        return Float32Array.from({ length: size }, (_, i) => one[i % per]!);
      }
      : (size, k) => key.fold(k + 2).normal(size);
    const x = await sample(den, new HostArray<'float32'>(noise(o.n * per, -1), [o.n, c, h, w], 'float32'), p.scheduler, {
      sampler: o.sampler, steps: o.steps, noise, condition: xhat,
      ...(o.onStep ? { onStep: (s) => o.onStep!(s.index + 1, s.total) } : {}),
    });
    const images = new HostArray<'float32'>(Float32Array.from(x.data, (v) => Math.min(1, Math.max(-1, v))), [o.n, c, h, w], 'float32');
    return { vae: xhat, images, z };
  } finally {
    await coder.dispose();
    await den.dispose();
  }
}

/** `count` latents on the great circle from a to b (each [L, h, w]; spherical interpolation
 *  keeps the norm a prior draw has, where a straight line would shrink it midway). */
export function slerpLatents(a: Float32Array, b: Float32Array, count: number, shape: readonly number[]): HostArray<'float32'> {
  const dot = a.reduce((s, v, i) => s + v * b[i]!, 0);
  const na = Math.hypot(...a);
  const nb = Math.hypot(...b);
  const omega = Math.acos(Math.min(1, Math.max(-1, dot / (na * nb))));
  const out = new Float32Array(count * a.length);
  for (let k = 0; k < count; k++) {
    const u = count === 1 ? 0 : k / (count - 1);
    const [wa, wb] = omega < 1e-6 ? [1 - u, u]
      : [Math.sin((1 - u) * omega) / Math.sin(omega), Math.sin(u * omega) / Math.sin(omega)];
    for (let i = 0; i < a.length; i++) out[k * a.length + i] = wa * a[i]! + wb * b[i]!;
  }
  return new HostArray(out, [count, ...shape]);
}
