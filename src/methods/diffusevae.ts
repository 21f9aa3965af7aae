/**
 * @file DiffuseVAE (Pandey et al. 2022, "DiffuseVAE: Efficient, Controllable and High-Fidelity
 * Generation from Low-Dimensional Latents"): a VAE, then a DDPM conditioned on the VAE's
 * reconstruction x̂. Sampling draws z from the VAE's prior, decodes x̂ = D(z), and the DDPM
 * refines it. The paper claims (1) samples far better than the VAE's own (CIFAR-10 FID from
 * the VAE's ~100s down to a DDPM's), (2) control of the output through the VAE's
 * low-dimensional latent (interpolating z interpolates the refined images), (3) a better
 * speed/quality trade-off at few steps, since x̂ carries the structure.
 *
 * Two forms, as the official code writes them (main/models/diffusion/ddpm.py, ddpm_form2.py):
 * - Form 1: the denoiser sees [x_t, x̂] concatenated on channels; the chain is DDPM's own.
 * - Form 2: the chain's mean is shifted by x̂: x_t = sqrt(abar) x0 + x̂ + sqrt(1 - abar) eps,
 *   started from x̂ + noise, its last step subtracting x̂. With y_t = x_t - x̂ this is DDPM's
 *   chain on y_t: DDPMv2's posterior mean c1 x0 + c2 x_t + (1 - c2) x̂ equals
 *   (c1 x0 + c2 y_t) + x̂, and its x0 from eps is the plain formula on y_t. So Diffuse samples
 *   y_t with its own samplers and shifts only what the network sees: form 2 is form 1 with
 *   y_t + x̂ in place of y_t (form2PosteriorMean below checks the identity).
 */
import * as ops from '../engine/ops.js';
import type { Tensor } from '../engine/tensor.js';

export type DiffuseVaeForm = 1 | 2;
export const DIFFUSEVAE_FORMS: readonly DiffuseVaeForm[] = [1, 2];

/** The denoiser's input for state y_t and reconstruction x̂ (each [B, C, H, W]):
 *  [y_t, x̂] (form 1) or [y_t + x̂, x̂] (form 2), [B, 2C, H, W]. */
export function conditionedInput(form: DiffuseVaeForm, yt: Tensor, xhat: Tensor): Tensor {
  return ops.concat([form === 2 ? ops.add(yt, xhat) : yt, xhat], 1);
}

/**
 * DDPMv2's posterior mean of x_{t-1} as the official code computes it, in the shifted frame
 * x_t: x0 = (x_t - x̂) / sqrt(abar) - sqrt(1 / abar - 1) eps, then c1 x0 + c2 x_t + (1 - c2) x̂
 * with c1 = beta sqrt(abar_prev) / (1 - abar), c2 = sqrt(alpha) (1 - abar_prev) / (1 - abar).
 * A reference for tests (plain numbers), not used by sampling.
 */
export function form2PosteriorMean(xt: number, xhat: number, eps: number,
  c: { beta: number; abar: number; abarPrev: number }): number {
  const x0 = (xt - xhat) / Math.sqrt(c.abar) - Math.sqrt(1 / c.abar - 1) * eps;
  const c1 = (c.beta * Math.sqrt(c.abarPrev)) / (1 - c.abar);
  const c2 = (Math.sqrt(1 - c.beta) * (1 - c.abarPrev)) / (1 - c.abar);
  return c1 * x0 + c2 * xt + (1 - c2) * xhat;
}
