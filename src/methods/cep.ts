/**
 * @file Condition embedding perturbation (CEP): Chen et al. 2024, "Slight Corruption in
 * Pre-training Data Makes Better Diffusion Models" (NeurIPS 2024), eq. 8.
 *
 * Claim: slightly corrupted conditions in pre-training make a class-conditional diffusion
 * model generate more diverse and better images, and perturbing the condition embedding
 * during training imitates it: FID -2.53 for LDM-4 and -1.25 for DiT-XL/2 on ImageNet.
 *
 * Training only: the class embedding c(y) becomes c(y) + delta, one fresh delta per sample,
 * CEP-U delta ~ U(-gamma / sqrt(d), gamma / sqrt(d)), CEP-G delta ~ N(0, (gamma / sqrt(d))^2)
 * over the embedding's d dimensions, gamma = 1 by default. The paper's Gaussian scale reads as
 * either a variance or a standard deviation; this takes gamma / sqrt(d) as the standard
 * deviation. Every training row is perturbed, the null (CFG) label's included; sampling is
 * unchanged. No official code was found.
 */
import { HostArray } from '../engine/host.js';
import type { RngKey } from '../engine/random/philox.js';

export type CepKind = 'uniform' | 'gaussian';
export const CEP_KINDS: readonly CepKind[] = ['uniform', 'gaussian'];

/** The shifts [n, dim] of one training batch. */
export function conditionShift(kind: CepKind, gamma: number, n: number, dim: number,
  key: RngKey): HostArray<'float32'> {
  const scale = gamma / Math.sqrt(dim);
  const draw = kind === 'uniform'
    ? Float32Array.from(key.uniform(n * dim), (u) => (2 * u - 1) * scale)
    : Float32Array.from(key.normal(n * dim), (z) => z * scale);
  return new HostArray(draw, [n, dim]);
}
