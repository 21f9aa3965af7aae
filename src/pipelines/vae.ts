/**
 * @file The autoencoder of latent diffusion (Rombach et al. 2022, "High-Resolution Image
 * Synthesis with Latent Diffusion Models", sec. 3.1 and appendix G): `diffuse train-vae`
 * trains an AutoencoderKL, and a latent pipeline loads one to encode its training images and
 * decode its samples.
 *
 * The loss is LDM's first stage without its adversarial and LPIPS terms: a reconstruction
 * loss summed over each image's pixels (L1 as LDM, or L2), plus kl_weight times KL(q(z|x) ||
 * N(0, I)) summed over the latent, both averaged over the batch (LDM's f4 KL models use
 * kl_weight 1e-6: the latent stays close to an autoencoder's, the KL only keeps its scale in
 * check). No perceptual term: the only trained image network here is the MNIST classifier,
 * which is also the judge of MNIST-FID and class accuracy; a loss on its features would
 * flatter the scores without making better digits.
 *
 * The scaling factor (LDM sec. 4.3.2, appendix D.1: latents are divided by their standard
 * deviation so the diffusion model sees unit variance) is computed once training ends, from
 * posterior samples of the training images, and written into the exported config.json as
 * diffusers stores it (`scaling_factor`), so every latent pipeline made from this VAE uses it.
 */
import { join } from 'node:path';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import type { Tensor } from '../engine/tensor.js';
import type { Tree } from '../engine/tree.js';
import { batchAt, datasetSize, subset, type ImageDataset } from '../data/dataset.js';
import {
  AUTOENCODER_KL_PRESETS, type AutoencoderKL, autoencoderKLClass, type AutoencoderKLConfig,
} from '../models/autoencoder-kl.js';
import type { ParamsOf } from '../nn/module.js';
import { adamw } from '../nn/optim.js';
import { compileTrainStep } from '../nn/train.js';
import { exportPipeline, type PipelineFiles } from './checkpoint.js';
import {
  latentCoder, latentScalingFactor, reconstructionMse, vaeModel, type LoadedVae, type VaeModel,
} from './latent.js';
import { learningRate, trainingImageShape, type TrainOptions } from './train.js';
import { runTraining, type TrainEvents, type TrainResult } from './training-loop.js';

export const VAE_PIPELINE_CLASS = 'DiffuseAutoencoderPipeline';

/** The names of the AutoencoderKL presets `diffuse train-vae --size` takes. */
export const VAE_PRESET_NAMES: readonly string[] = Object.keys(AUTOENCODER_KL_PRESETS);

export type ReconstructionLoss = 'l1' | 'l2';
export const RECONSTRUCTION_LOSSES: readonly ReconstructionLoss[] = ['l1', 'l2'];

export type VaeTrainOptions = Pick<TrainOptions, 'batchSize' | 'steps' | 'lr' | 'lrSchedule' |
  'warmupSteps' | 'gradClip' | 'seed' | 'out' | 'logEvery' | 'sampleEvery' | 'checkpointEvery'> & {
  /** An AUTOENCODER_KL_PRESETS name ('mnist-f4': 32 x 32 x 1 -> 8 x 8 x 4). */
  size: string;
  /** Latent channels (default: the preset's). */
  latentChannels?: number;
  klWeight: number;
  reconstruction: ReconstructionLoss;
};

type VaeBatch = { x: HostArray; noise: HostArray };

/** LDM's first-stage loss of one batch: reconstruction summed per image plus weighted KL. */
export function vaeLoss(vae: AutoencoderKL, p: ParamsOf<AutoencoderKL>, x: Tensor, noise: Tensor,
  o: Pick<VaeTrainOptions, 'klWeight' | 'reconstruction'>): Tensor {
  const posterior = vae.encode(p, x);
  const recon = vae.decode(p, vae.sample(posterior, noise)); // [B, C, H, W]
  const diff = ops.sub(recon, x);
  const perPixel = o.reconstruction === 'l1' ? ops.abs(diff) : ops.square(diff);
  const rec = ops.mean(ops.sum(perPixel, [1, 2, 3]));
  return ops.add(rec, ops.mul(vae.klLoss(posterior), o.klWeight));
}

/** The config `o` asks for: the preset, its channels adapted to the images. */
function vaeConfig(o: VaeTrainOptions, channels: number, side: number): AutoencoderKLConfig {
  const preset = AUTOENCODER_KL_PRESETS[o.size];
  if (!preset) throw new RangeError(`VAE size '${o.size}': expected one of ${VAE_PRESET_NAMES.join(', ')}`);
  const config = autoencoderKLClass.readConfig(autoencoderKLClass.toConfig({ ...preset,
    in_channels: channels, out_channels: channels, sample_size: side,
    latent_channels: o.latentChannels ?? preset.latent_channels, scaling_factor: 1 }));
  const f = 2 ** (config.block_out_channels.length - 1);
  if (side % f !== 0) {
    throw new RangeError(`VAE size '${o.size}' downsamples by ${f}; the images are ${side}x${side}, ` +
      `not a multiple of ${f}`);
  }
  return config;
}

export interface VaeTrainResult extends TrainResult {
  model: VaeModel;
  /** Computed from the training images once training ended (absent if interrupted). */
  scalingFactor?: number;
  /** Held-out reconstruction MSE per pixel (images in [-1, 1]) with the posterior mean. */
  heldOutMse?: number;
}

/**
 * Trains an AutoencoderKL on `data` (continuing `out/checkpoint` when `resume`); when the run
 * completes, computes the latent scaling factor and exports `out/model` (a pipeline whose
 * `vae/` is the model) with it. `heldOut` images give the reconstruction grids and error.
 */
export async function trainVae(o: VaeTrainOptions, data: ImageDataset, heldOut: ImageDataset,
  resume: boolean, ev: TrainEvents<VaeModel> = {}): Promise<VaeTrainResult> {
  const [c, h] = trainingImageShape(data, o.batchSize);
  const model = vaeModel(vaeConfig(o, c, h));
  const net = model.module;
  const f = net.downFactor;
  const latentShape = [o.batchSize, model.config.latent_channels, h / f, h / f];
  const key = RngKey.fromSeed(o.seed);
  const trainer = compileTrainStep<VaeBatch & Tree<HostArray>>((params: Tree<Tensor>, bt: Tree<Tensor>) => {
    const b = bt as unknown as Record<keyof VaeBatch, Tensor>;
    return vaeLoss(net, params as unknown as ParamsOf<AutoencoderKL>, b.x, b.noise, o);
  }, adamw({ lr: learningRate(o), weightDecay: 0 }), { clipGradNorm: o.gradClip, runtime: { name: 'vae_train_step' } });
  const files: PipelineFiles<VaeModel> = { model, pipelineClass: VAE_PIPELINE_CLASS };
  const shown = spreadImages(heldOut, 16);
  const r = await runTraining({
    options: o, files, trainer, exported: 'params',
    run: { size: o.size, latentChannels: model.config.latent_channels, klWeight: o.klWeight,
      reconstruction: o.reconstruction, batchSize: o.batchSize, seed: o.seed, lr: o.lr,
      lrSchedule: o.lrSchedule, warmupSteps: o.warmupSteps, gradClip: o.gradClip },
    initialWeights: () => net.init(key.fold(2)) as Tree<HostArray>,
    batch: (step) => ({ x: batchAt(data, key.fold(0), step, o.batchSize).images,
      noise: new HostArray(key.fold(1).fold(step).normal(latentShape.reduce((a, b) => a * b)), latentShape),
    }) as VaeBatch & Tree<HostArray>,
    // Held-out digits (rows 1 and 3) over their reconstructions (rows 2 and 4), prior draws (row 5).
    grid: async (params) => ({ images: await reconstructionGrid({ model: net, params, folder: o.out }, shown), cols: 8 }),
  }, resume, ev);
  if (r.interrupted) return { ...r, model };
  const trained: LoadedVae = { model: net, params: r.state.params, folder: join(o.out, 'model') };
  const coder = latentCoder(trained);
  try {
    const scalingFactor = await latentScalingFactor(coder, data, key.fold(3));
    const final = vaeModel({ ...model.config, scaling_factor: scalingFactor });
    await exportPipeline(join(o.out, 'model'), { ...files, model: final }, r.state.params);
    return { ...r, model: final, scalingFactor, heldOutMse: await reconstructionMse(coder, heldOut) };
  } finally {
    await coder.dispose();
  }
}

/** `n` images spread evenly over `d` (MNIST's held-out split is ordered by digit). */
function spreadImages(d: ImageDataset, n: number): HostArray<'float32'> {
  const size = datasetSize(d);
  const k = Math.min(n, size);
  return subset(d, Array.from({ length: k }, (_, i) => Math.floor((i * size) / k))).images;
}

/** Originals and reconstructions interleaved by rows of 8, then a row of decoded draws from
 *  the prior N(0, I) (digits only when the KL weight made the latent a VAE's), for a grid of
 *  8 columns. */
async function reconstructionGrid(vae: LoadedVae, images: HostArray<'float32'>): Promise<HostArray> {
  const coder = latentCoder(vae);
  try {
    const codes = await coder.encodeMean(images);
    const recon = await coder.decode(codes);
    const prior = await coder.decode(new HostArray(RngKey.fromSeed(1234).normal(8 * codes.size / codes.shape[0]!),
      [8, ...codes.shape.slice(1)]));
    const [n, c, h, w] = images.shape as [number, number, number, number];
    const per = c * h * w;
    const rows = Math.ceil(n / 8);
    const out = new Float32Array((2 * rows + 1) * 8 * per).fill(-1);
    for (let i = 0; i < n; i++) {
      const [row, col] = [Math.floor(i / 8), i % 8];
      out.set(images.data.subarray(i * per, (i + 1) * per), ((2 * row) * 8 + col) * per);
      out.set(recon.data.subarray(i * per, (i + 1) * per), ((2 * row + 1) * 8 + col) * per);
    }
    out.set(prior.data, 2 * rows * 8 * per);
    return new HostArray(out, [(2 * rows + 1) * 8, c, h, w]);
  } finally {
    await coder.dispose();
  }
}

