/**
 * @file A latent pipeline's VAE at run time (Rombach et al. 2022, latent diffusion): loading an
 * AutoencoderKL from the folders it comes in, encoding images to the latents a diffusion
 * model trains on, and decoding what it samples; the latent scaling factor and the
 * reconstruction error. Training the VAE is vae.ts.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import type { RngKey } from '../engine/random/philox.js';
import { compile, type RuntimeOptions } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import type { Tree } from '../engine/tree.js';
import type { ImageDataset } from '../data/dataset.js';
import { DiffusersFolderError, loadModel, type ModelClass } from '../io/diffusers.js';
import {
  AutoencoderKL, autoencoderKLClass, type AutoencoderKLConfig,
} from '../models/autoencoder-kl.js';
import type { Module, ParamsOf } from '../nn/module.js';
import type { SavedModel } from './checkpoint.js';

/** The folder of a pipeline's VAE. */
export const VAE_COMPONENT = 'vae';

/** A VAE as the training loop saves it. */
export interface VaeModel extends SavedModel {
  readonly config: AutoencoderKLConfig;
  readonly module: AutoencoderKL;
}

export function vaeModel(config: AutoencoderKLConfig): VaeModel {
  return { cls: autoencoderKLClass as unknown as ModelClass<Module, unknown>, config,
    component: VAE_COMPONENT, module: new AutoencoderKL(config) };
}

/** A trained VAE, ready to encode and decode. */
export interface LoadedVae {
  model: AutoencoderKL;
  params: Tree<HostArray>;
  /** The folder its config.json and weights were read from. */
  folder: string;
}

/** Compiled encoder and decoder of a VAE, run over any number of rows in zero-padded batches
 *  (rows are independent: GroupNorm and the mid-block attention are per image). */
export interface LatentCoder {
  /** The VAE it runs. */
  readonly vae: LoadedVae;
  /** Images [N, C, H, W] in [-1, 1] -> posterior mean and std, each [N, L, H/f, W/f]
   *  (unscaled VAE latents). */
  encode(images: HostArray<'float32'>): Promise<{ mean: HostArray<'float32'>; std: HostArray<'float32'> }>;
  encodeMean(images: HostArray<'float32'>): Promise<HostArray<'float32'>>;
  /** Images -> what the diffusion model samples: the posterior means, scaled (toLatent). */
  encodeLatents(images: HostArray<'float32'>): Promise<HostArray<'float32'>>;
  /** Unscaled VAE latents [N, L, h, w] -> images [N, C, h f, w f], clamped to [-1, 1]. */
  decode(z: HostArray<'float32'>): Promise<HostArray<'float32'>>;
  /** What the diffusion model samples (scaled latents) -> images, clamped to [-1, 1]. */
  decodeLatents(latents: HostArray<'float32'>): Promise<HostArray<'float32'>>;
  dispose(): Promise<void>;
}

export function latentCoder(vae: LoadedVae, opts: { batchSize?: number; runtime?: RuntimeOptions } = {}):
  LatentCoder {
  const net = vae.model;
  const p = ops.constantTree(vae.params) as unknown as ParamsOf<AutoencoderKL>;
  const runtime = opts.runtime ?? {};
  const enc = compile((x: Tensor) => {
    const q = net.encode(p, x);
    return { mean: q.mean, std: q.std };
  }, { ...runtime, name: 'vae_encode' });
  const encLatent = compile((x: Tensor) => net.toLatent(net.encode(p, x).mean), { ...runtime, name: 'vae_encode_latents' });
  const dec = compile((z: Tensor) => ops.clamp(net.decode(p, z), -1, 1), { ...runtime, name: 'vae_decode' });
  const decLatent = compile((l: Tensor) => ops.clamp(net.decode(p, net.fromLatent(l)), -1, 1),
    { ...runtime, name: 'vae_decode_latents' });
  const maxBatch = opts.batchSize ?? 64;
  const cfg = net.config;
  const f = net.downFactor;

  /** Runs `fn` over rows of `x` [N, ...in] in padded batches; outputs [N, ...out] per key. */
  async function batched<K extends string>(x: HostArray<'float32'>, outShape: (key: K) => number[],
    run: (xb: HostArray) => Promise<Record<K, HostArray>>, keys: readonly K[]): Promise<Record<K, HostArray<'float32'>>> {
    const n = x.shape[0]!;
    const inPer = x.size / n;
    const batch = Math.max(1, Math.min(maxBatch, n));
    const outs = Object.fromEntries(keys.map((k) => [k, HostArray.zeros([n, ...outShape(k)])])) as
      Record<K, HostArray<'float32'>>;
    for (let start = 0; start < n; start += batch) {
      const rows = Math.min(batch, n - start);
      const xb = new Float32Array(batch * inPer);
      xb.set(x.data.subarray(start * inPer, (start + rows) * inPer));
      const r = await run(new HostArray(xb, [batch, ...x.shape.slice(1)]));
      for (const k of keys) {
        const per = outs[k].size / n;
        outs[k].data.set((r[k].data as Float32Array).subarray(0, rows * per), start * per);
      }
    }
    return outs;
  }
  const checkImages = (x: HostArray): void => {
    if (x.shape.length !== 4 || x.shape[1] !== cfg.in_channels || x.shape[2]! % f || x.shape[3]! % f) {
      throw new RangeError(`VAE ${vae.folder}: expected images [N, ${cfg.in_channels}, H, W] with H and W ` +
        `multiples of ${f}, got [${x.shape.join(', ')}]`);
    }
  };
  const checkLatents = (z: HostArray): void => {
    if (z.shape.length !== 4 || z.shape[1] !== cfg.latent_channels) {
      throw new RangeError(`VAE ${vae.folder}: expected latents [N, ${cfg.latent_channels}, h, w], got ` +
        `[${z.shape.join(', ')}]`);
    }
  };
  const latentOf = (x: HostArray) => [cfg.latent_channels, x.shape[2]! / f, x.shape[3]! / f];
  const imageOf = (z: HostArray) => [cfg.out_channels, z.shape[2]! * f, z.shape[3]! * f];
  return {
    vae,
    async encode(images) {
      checkImages(images);
      return batched(images, () => latentOf(images), (xb) => enc(xb), ['mean', 'std'] as const);
    },
    async encodeMean(images) {
      return (await this.encode(images)).mean;
    },
    async encodeLatents(images) {
      checkImages(images);
      return (await batched(images, () => latentOf(images), async (xb) => ({ l: await encLatent(xb) }), ['l'] as const)).l;
    },
    async decode(z) {
      checkLatents(z);
      return (await batched(z, () => imageOf(z), async (zb) => ({ x: await dec(zb) }), ['x'] as const)).x;
    },
    async decodeLatents(latents) {
      checkLatents(latents);
      return (await batched(latents, () => imageOf(latents), async (lb) => ({ x: await decLatent(lb) }),
        ['x'] as const)).x;
    },
    dispose: async () => {
      await Promise.all([enc.dispose(), encLatent.dispose(), dec.dispose(), decLatent.dispose()]);
    },
  };
}

/** 1 / the standard deviation of posterior samples z = mean + std * noise over `data` (LDM
 *  D.1 rescales by the std of the first batch's latents; all of them here). */
export async function latentScalingFactor(coder: LatentCoder, data: ImageDataset, key: RngKey): Promise<number> {
  const { mean, std } = await coder.encode(data.images);
  const noise = key.normal(mean.size);
  let sum = 0;
  let sq = 0;
  for (let i = 0; i < mean.size; i++) {
    const z = mean.data[i]! + std.data[i]! * noise[i]!;
    sum += z;
    sq += z * z;
  }
  const m = sum / mean.size;
  const sd = Math.sqrt(Math.max(sq / mean.size - m * m, 0));
  if (!(sd > 0)) throw new Error(`VAE ${coder.vae.folder}: its latents have no spread (std ${sd}); the run diverged or collapsed`);
  return 1 / sd;
}

/** Mean squared error per pixel of the posterior-mean reconstructions of `data`. */
export async function reconstructionMse(coder: LatentCoder, data: ImageDataset): Promise<number> {
  const recon = await coder.decode(await coder.encodeMean(data.images));
  let se = 0;
  for (let i = 0; i < recon.size; i++) se += (recon.data[i]! - data.images.data[i]!) ** 2;
  return se / recon.size;
}

/**
 * Loads a VAE from `dir`: a bare AutoencoderKL folder (config.json and weights, as
 * stabilityai/sd-vae-ft-mse), a pipeline with a `vae/` (what `diffuse train-vae` exports), or
 * a `diffuse train-vae` run folder (its `model/vae`).
 */
export async function loadVae(dir: string): Promise<LoadedVae> {
  const candidates = [join(dir, 'model', VAE_COMPONENT), join(dir, VAE_COMPONENT), dir];
  const folder = candidates.find((c) => existsSync(join(c, 'config.json')));
  if (!folder) {
    throw new DiffusersFolderError(dir, `no VAE here: looked for config.json in ${candidates.join(', ')} ` +
      '(an AutoencoderKL folder, a pipeline with vae/, or a diffuse train-vae run)');
  }
  const loaded = await loadModel(folder, autoencoderKLClass);
  return { model: loaded.model, params: loaded.params as unknown as Tree<HostArray>, folder: loaded.folder };
}
