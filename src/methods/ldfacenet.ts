/**
 * @file LDFaceNet: Mehta, Mehta & Narang 2024, "LDFaceNet: Latent Diffusion-based Network for
 * High-Fidelity Deepfake Generation" (arXiv 2408.02078). No official code was found.
 *
 * Claim: a face swap needs no swap-specific training. Start a pretrained latent diffusion
 * model from the target image's noised latent and guide its denoising with the gradients of
 * two off-the-shelf networks applied to the decoded clean estimate: a face-recognition network
 * (ArcFace), pulling the identity embedding towards the source face's, and a face-segmentation
 * network (BiSeNet), holding the target's layout (pose, expression, hair, background). The
 * paper's guidance is G = lambda_id(t) G_id + lambda_seg(t) G_seg, plus a latent-level blending
 * of the target's background (not done here: the structure term below is its soft form).
 *
 * Stand-in at MNIST scale (this file and pipelines/ldfacenet.ts). The "faces" are held-out
 * MNIST digits of different classes. Identity is the digit's class and style as the shipped
 * MNIST classifier sees it: its penultimate features f (128 numbers), the vector MNIST-FID uses.
 * The segmentation network is a fixed one: the target's ink (pixels above 0, i.e. above
 * halfway in [-1, 1]) dilated by `band` pixels is the region the swap may redraw (the "face");
 * its complement, the background far from the strokes, is the region to keep (the "hair and
 * background"). The two terms conflict by construction: a source digit of another class needs
 * ink where the target has none, and the keep mask forbids exactly that outside the band, so
 * the weights trade identity transfer against layout.
 *
 * The energy of a clean estimate x0hat (a latent for a latent pipeline, an image otherwise):
 *
 *   E(x0hat) = w_id (1 - cos(f(D(x0hat)), f(source)))
 *            + w_struct sum(keep (D(x0hat) - target)^2) / (C sum(keep))
 *
 * with D the VAE decoder, unclamped (a clamp would zero the gradient wherever the decoder
 * overshoots [-1, 1]: 45% of the pixels of 64 held-out digits reconstructed by the MNIST VAE
 * behind docs/ldfacenet.csv, half of the background), or the identity in pixel space.
 * energyGuidance (diffusion/gradient-guidance.ts) differentiates it through the denoiser.
 *
 * | paper                               | here                                              |
 * | ----------------------------------- | ------------------------------------------------- |
 * | x_src, x_tgt (source, target faces) | `sources`, `targets` [N, C, H, W] in [-1, 1]      |
 * | ArcFace embedding                   | f = DiffuseClassifier.features (penultimate)      |
 * | BiSeNet segmentation of x_tgt       | keepMask: 1 - dilate(ink(x_tgt), band)            |
 * | G_id                                | the identity term, 1 - cosine                     |
 * | G_seg                               | the structure term, MSE over the keep mask        |
 * | lambda_id(t), lambda_seg(t)         | w_id, w_struct; the t-dependence is the guidance  |
 * |                                     | factor sigma_t^2 / alpha_t of energyGuidance      |
 * | z_t: the target's noised latent     | SDEdit's start at t0 (pipelines/ldfacenet.ts)     |
 *
 * TODO: the paper's exact G_seg (a distance between segmentation maps, or a masked pixel loss)
 * and its lambda schedules could not be read from the sources found; the form above is this
 * project's stand-in.
 */
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import type { Tensor } from '../engine/tensor.js';
import type { Tree } from '../engine/tree.js';
import { CLEAN_LOG_SNR, type DiffuseClassifier } from '../models/classifier.js';
import type { ParamsOf } from '../nn/module.js';

/** Identity features f(x) [N, F] of images x [N, C, H, W] in [-1, 1], in ops. */
export function identityFeatures(net: DiffuseClassifier, p: ParamsOf<DiffuseClassifier>,
  x: Tensor): Tensor {
  const n = x.shape[0]!;
  return net.config.noise_conditioning
    ? net.features(p, x, ops.full([n], CLEAN_LOG_SNR)) : net.features(p, x);
}

export interface SwapEnergyOptions {
  /** The identity network and its weights (baked into the graph as constants). */
  classifier: DiffuseClassifier;
  params: ParamsOf<DiffuseClassifier, HostArray>;
  /** x0hat -> image [B, C, H, W] (the VAE decoder); absent: x0hat is the image. */
  decode?: (x0: Tensor) => Tensor;
  /** f(source) per row [B, F]. */
  sourceFeatures: HostArray<'float32'>;
  /** The target images [B, C, H, W] and the keep mask [B, 1, H, W] (keepMask). */
  targets: HostArray<'float32'>;
  keep: HostArray<'float32'>;
  /** w_id and w_struct. */
  identity: number;
  structure: number;
}

/** The two terms per row, before weighting: identity 1 - cos and structure masked MSE. */
export interface SwapTerms {
  identity: Tensor; // [B]
  structure: Tensor; // [B]
}

/** Both terms of the energy of x0hat, in ops (for reporting; swapEnergy weights them). */
export function swapEnergyTerms(o: SwapEnergyOptions): (x0: Tensor) => SwapTerms {
  const p = ops.constantTree(o.params as unknown as Tree<HostArray>) as unknown as
    ParamsOf<DiffuseClassifier>;
  const [rows, c] = o.targets.shape as [number, number];
  // 1 / (C sum(keep)) per row; an empty keep mask gives a structure term of 0, not NaN.
  const inv = new Float32Array(rows);
  const per = o.keep.size / rows;
  for (let b = 0; b < rows; b++) {
    let s = 0;
    for (let i = b * per; i < (b + 1) * per; i++) s += o.keep.data[i]!;
    inv[b] = s > 0 ? 1 / (c * s) : 0;
  }
  return (x0) => {
    const img = o.decode ? o.decode(x0) : x0; // [B, C, H, W]
    const f = identityFeatures(o.classifier, p, img); // [B, F]
    const g = ops.constant(o.sourceFeatures); // [B, F]
    const dot = ops.sum(ops.mul(f, g), -1); // [B]
    const norms = ops.mul(ops.sum(ops.mul(f, f), -1), ops.sum(ops.mul(g, g), -1)); // [B]
    const cos = ops.div(dot, ops.sqrt(ops.maximum(norms, 1e-12)));
    const d = ops.sub(img, ops.constant(o.targets));
    const se = ops.sum(ops.mul(ops.constant(o.keep), ops.mul(d, d)), [1, 2, 3]); // [B]
    const structure = ops.mul(se, ops.constant(new HostArray(inv, [rows])));
    return { identity: ops.sub(1, cos), structure };
  };
}

/** E(x0hat) per row [B] (the header's formula), for energyGuidance's `energy`. */
export function swapEnergy(o: SwapEnergyOptions): (x0: Tensor, t?: Tensor) => Tensor {
  const terms = swapEnergyTerms(o);
  return (x0) => {
    const e = terms(x0);
    return ops.add(ops.mul(e.identity, o.identity), ops.mul(e.structure, o.structure));
  };
}

// ---- the stand-in segmentation and the measures, on the host ----

/** 1 where a pixel of images [N, C, H, W] in [-1, 1] is ink (any channel above 0), [N, H, W]. */
export function inkMask(images: HostArray): Uint8Array {
  const [n, c, h, w] = images.shape as [number, number, number, number];
  const out = new Uint8Array(n * h * w);
  for (let b = 0; b < n; b++) {
    for (let k = 0; k < c; k++) {
      for (let i = 0; i < h * w; i++) {
        if ((images.data[(b * c + k) * h * w + i] as number) > 0) out[b * h * w + i] = 1;
      }
    }
  }
  return out;
}

/** Dilation of masks [N, H, W] by a (2 r + 1)^2 square: pixels within Chebyshev distance r. */
export function dilate(mask: Uint8Array, [n, h, w]: readonly [number, number, number],
  r: number): Uint8Array {
  if (!Number.isInteger(r) || r < 0) {
    throw new RangeError(`dilate: radius must be an integer >= 0, got ${r}`);
  }
  const out = new Uint8Array(mask.length);
  for (let b = 0; b < n; b++) {
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        if (!mask[(b * h + y) * w + x]) continue;
        for (let yy = Math.max(0, y - r); yy <= Math.min(h - 1, y + r); yy++) {
          const row = (b * h + yy) * w;
          out.fill(1, row + Math.max(0, x - r), row + Math.min(w - 1, x + r) + 1);
        }
      }
    }
  }
  return out;
}

/** The keep mask of targets [N, C, H, W]: 1 - dilate(ink, band), float32 [N, 1, H, W]. */
export function keepMask(targets: HostArray, band: number): HostArray<'float32'> {
  const [n, , h, w] = targets.shape as [number, number, number, number];
  const region = dilate(inkMask(targets), [n, h, w], band);
  return new HostArray(Float32Array.from(region, (v) => 1 - v), [n, 1, h, w], 'float32');
}

/** Intersection over union of two ink masks [N, H, W], per row (1 where both are empty). */
export function maskIou(a: Uint8Array, b: Uint8Array, n: number): Float64Array {
  const per = a.length / n;
  return Float64Array.from({ length: n }, (_, r) => {
    let inter = 0;
    let union = 0;
    for (let i = r * per; i < (r + 1) * per; i++) {
      inter += a[i]! & b[i]!;
      union += a[i]! | b[i]!;
    }
    return union ? inter / union : 1;
  });
}

/** Mean squared error of images against targets over the keep mask [N, 1, H, W], per row
 *  (0 where the mask is empty): the structure term's value on final images. */
export function keepMse(images: HostArray, targets: HostArray, keep: HostArray): Float64Array {
  const [n, c, h, w] = images.shape as [number, number, number, number];
  return Float64Array.from({ length: n }, (_, b) => {
    let se = 0;
    let count = 0;
    for (let k = 0; k < c; k++) {
      for (let i = 0; i < h * w; i++) {
        const m = keep.data[b * h * w + i] as number;
        const j = (b * c + k) * h * w + i;
        se += m * ((images.data[j] as number) - (targets.data[j] as number)) ** 2;
        count += m;
      }
    }
    return count ? se / count : 0;
  });
}

/** Cosine similarity of rows of a and b [N, F]. */
export function rowCosines(a: ArrayLike<number>, b: ArrayLike<number>, n: number): Float64Array {
  const f = a.length / n;
  return Float64Array.from({ length: n }, (_, r) => {
    let [ab, aa, bb] = [0, 0, 0];
    for (let i = r * f; i < (r + 1) * f; i++) {
      ab += a[i]! * b[i]!;
      aa += a[i]! * a[i]!;
      bb += b[i]! * b[i]!;
    }
    return ab / Math.sqrt(Math.max(aa * bb, 1e-12));
  });
}
