/**
 * @file A small MLP denoiser for low-dimensional data (the 2-D toys): sinusoidal features of
 * the timestep, concatenated with x, through SiLU layers to a prediction of x's size.
 */
import * as ops from '../engine/ops.js';
import type { Tensor } from '../engine/tensor.js';
import { Linear } from '../nn/layers.js';
import { Module, type ParamsOf } from '../nn/module.js';
import { readConfig } from './config.js';

// ---- config ----

export type ToyMlpConfig = {
  in_features: number;
  hidden: number;
  layers: number;
  time_features: number;
};

export const TOY_MLP_DEFAULTS: ToyMlpConfig = { in_features: 2, hidden: 128, layers: 3, time_features: 32 };

// ---- model ----

/** Sinusoidal features of t [N] -> [N, dim] (half sin, half cos, periods up to 10,000). */
function timestepFeatures(t: Tensor, dim: number): Tensor {
  const half = dim / 2;
  const freqs = Array.from({ length: half }, (_, i) => Math.exp((-Math.log(10000) * i) / half));
  const args = ops.mul(ops.reshape(ops.cast(t, 'float32'), [-1, 1]), ops.constant([freqs])); // [N, half]
  return ops.concat([ops.sin(args), ops.cos(args)], 1); // [N, dim]
}

export class ToyMlp extends Module {
  readonly layers: Linear[];
  readonly out: Linear;
  constructor(readonly config: ToyMlpConfig) {
    super();
    const c = config;
    this.layers = Array.from({ length: c.layers }, (_, i) =>
      new Linear(i === 0 ? c.in_features + c.time_features : c.hidden, c.hidden));
    this.out = new Linear(c.hidden, c.in_features);
  }

  /** x [N, D], t [N] -> [N, D] */
  forward(p: ParamsOf<ToyMlp>, x: Tensor, t: Tensor): Tensor {
    let h = ops.concat([x, timestepFeatures(t, this.config.time_features)], 1); // [N, D + F]
    this.layers.forEach((l, i) => (h = ops.silu(l.forward(p.layers[i]!, h)))); // [N, H]
    return this.out.forward(p.out, h); // [N, D]
  }
}

export const toyMlpClass = {
  className: 'DiffuseToyMLP',
  readConfig: (raw: Record<string, unknown>): ToyMlpConfig => readConfig('DiffuseToyMLP', raw, TOY_MLP_DEFAULTS),
  create: (config: ToyMlpConfig): ToyMlp => new ToyMlp(config),
  toConfig: (config: ToyMlpConfig): Record<string, unknown> => ({ ...config }),
};
