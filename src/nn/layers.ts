/** @file Basic layers with torch's parameter names, shapes and default initialisation. */
import * as ops from '../engine/ops.js';
import type { ConvOptions } from '../engine/ops/linalg.js';
import type { Tensor } from '../engine/tensor.js';
import { normal, ones, torchDefault, zeros } from './init.js';
import { Module, Param, type ParamsOf } from './module.js';

export class Linear extends Module {
  readonly weight: Param;
  readonly bias?: Param;
  constructor(readonly inFeatures: number, readonly outFeatures: number, opts: { bias?: boolean } = {}) {
    super();
    this.weight = new Param([outFeatures, inFeatures], torchDefault(inFeatures));
    if (opts.bias ?? true) this.bias = new Param([outFeatures], torchDefault(inFeatures));
  }
  /** x [..., in] -> [..., out] */
  forward(p: ParamsOf<Linear>, x: Tensor): Tensor {
    return ops.linear(x, p.weight, p.bias);
  }
}

type Pair = number | readonly [number, number];
export interface Conv2dOptions {
  stride?: Pair;
  padding?: Pair;
  dilation?: Pair;
  groups?: number;
  bias?: boolean;
}

export class Conv2d extends Module {
  readonly weight: Param;
  readonly bias?: Param;
  private readonly conv: ConvOptions;
  constructor(readonly inChannels: number, readonly outChannels: number, kernel: Pair,
    opts: Conv2dOptions = {}) {
    super();
    const [kh, kw] = typeof kernel === 'number' ? [kernel, kernel] : kernel;
    const groups = opts.groups ?? 1;
    const fanIn = (inChannels / groups) * kh * kw;
    this.weight = new Param([outChannels, inChannels / groups, kh, kw], torchDefault(fanIn));
    if (opts.bias ?? true) this.bias = new Param([outChannels], torchDefault(fanIn));
    this.conv = { stride: opts.stride ?? 1, padding: opts.padding ?? 0, dilation: opts.dilation ?? 1, groups };
  }
  /** x [N, in, H, W] -> [N, out, H', W'] */
  forward(p: ParamsOf<Conv2d>, x: Tensor): Tensor {
    return ops.conv2d(x, p.weight, { ...this.conv, bias: p.bias });
  }
}

export class GroupNorm extends Module {
  readonly weight?: Param;
  readonly bias?: Param;
  constructor(readonly numGroups: number, readonly numChannels: number,
    readonly eps = 1e-5, affine = true) {
    super();
    if (numChannels % numGroups !== 0) {
      throw new RangeError(`GroupNorm: ${numGroups} groups must divide ${numChannels} channels`);
    }
    if (affine) {
      this.weight = new Param([numChannels], ones);
      this.bias = new Param([numChannels], zeros);
    }
  }
  forward(p: ParamsOf<GroupNorm>, x: Tensor): Tensor {
    return ops.groupNorm(x, this.numGroups, { eps: this.eps, scale: p.weight, bias: p.bias });
  }
}

export class LayerNorm extends Module {
  readonly weight?: Param;
  readonly bias?: Param;
  constructor(readonly dim: number, readonly eps = 1e-5, affine = true) {
    super();
    if (affine) {
      this.weight = new Param([dim], ones);
      this.bias = new Param([dim], zeros);
    }
  }
  /** Normalises the last axis. */
  forward(p: ParamsOf<LayerNorm>, x: Tensor): Tensor {
    return ops.layerNorm(x, { eps: this.eps, scale: p.weight, bias: p.bias });
  }
}

export class Embedding extends Module {
  readonly weight: Param;
  constructor(readonly numEmbeddings: number, readonly dim: number) {
    super();
    this.weight = new Param([numEmbeddings, dim], normal(1));
  }
  /** int64 ids [...] -> [..., dim] */
  forward(p: ParamsOf<Embedding>, ids: Tensor): Tensor {
    return ops.gather(p.weight, ids, 0);
  }
}
