/**
 * @file DivControl's few-shot adaptation (methods/divcontrol.ts; Xie et al. 2025, sec. 3.4 and
 * 5.2.2): for a novel condition, new tailors for every factorised projection and the
 * condition's gate input are trained while the base, the learngenes, the old tailors and the
 * gate stay frozen. The paper initialises the new tailors randomly; here u and v are random
 * and s starts at 0, so the adapted model starts exactly as the zero-shot one (the gate on the
 * condition's descriptor) and the first steps move only s (as LoRA's B = 0 start does).
 */
import { HostArray } from '../engine/host.js';
import type { RngKey } from '../engine/random/philox.js';
import {
  readConfig, requireConfig, toDiffusersConfig, type ReadConfigOptions,
} from '../models/config.js';
import { normal, zeros } from '../nn/init.js';
import { Module, Param, type ParamsOf } from '../nn/module.js';
import type { DivControlNet } from './divcontrol.js';
import { projectionShape, type Projection } from './divcontrol-svd.js';

export const DIVCONTROL_ADAPTER_CLASS_NAME = 'DivControlAdapter';

export interface DivControlAdapterConfig {
  dim: number;
  ff_inner: number;
  control_blocks: number;
  /** Components of each projection's new tailor. */
  new_tailors: number;
  descriptor_dim: number;
}

/** New tailor components of one projection (s starts at 0: the adapted model starts as the
 *  zero-shot one). */
class NewTailor extends Module {
  readonly u: Param;
  readonly s: Param;
  readonly v: Param;
  constructor(inFeatures: number, outFeatures: number, r: number) {
    super();
    this.u = new Param([outFeatures, r], normal(1 / Math.sqrt(outFeatures)));
    this.s = new Param([r], zeros);
    this.v = new Param([inFeatures, r], normal(1 / Math.sqrt(inFeatures)));
  }
}

export class AdapterBlock extends Module {
  readonly to_q: NewTailor;
  readonly to_k: NewTailor;
  readonly to_v: NewTailor;
  readonly to_out: NewTailor;
  readonly ff_in: NewTailor;
  readonly ff_out: NewTailor;
  constructor(c: DivControlAdapterConfig) {
    super();
    const make = (p: Projection) => {
      const [o, i] = projectionShape(p, c.dim, c.ff_inner);
      return new NewTailor(i, o, c.new_tailors);
    };
    this.to_q = make('to_q');
    this.to_k = make('to_k');
    this.to_v = make('to_v');
    this.to_out = make('to_out');
    this.ff_in = make('ff_in');
    this.ff_out = make('ff_out');
  }
}

/** What few-shot adaptation trains: the novel condition's gate input and new tailors. */
export class DivControlAdapter extends Module {
  readonly descriptor: Param;
  readonly control_blocks: AdapterBlock[];
  constructor(readonly config: DivControlAdapterConfig) {
    super();
    const c = config;
    for (const k of ['dim', 'ff_inner', 'control_blocks', 'new_tailors', 'descriptor_dim'] as const) {
      requireConfig(Number.isInteger(c[k]) && c[k] >= 1, DIVCONTROL_ADAPTER_CLASS_NAME, k,
        'an integer >= 1', c[k]);
    }
    this.descriptor = new Param([c.descriptor_dim], zeros);
    this.control_blocks = Array.from({ length: c.control_blocks }, () => new AdapterBlock(c));
  }
}

export const DIVCONTROL_ADAPTER_DEFAULTS: DivControlAdapterConfig = {
  dim: 128, ff_inner: 512, control_blocks: 2, new_tailors: 8, descriptor_dim: 4,
};

export const divControlAdapterClass = {
  className: DIVCONTROL_ADAPTER_CLASS_NAME,
  readConfig: (raw: Record<string, unknown>, opts: ReadConfigOptions = {}) =>
    readConfig(DIVCONTROL_ADAPTER_CLASS_NAME, raw, DIVCONTROL_ADAPTER_DEFAULTS, opts),
  create: (config: DivControlAdapterConfig) => new DivControlAdapter(config),
  toConfig: (config: DivControlAdapterConfig) =>
    toDiffusersConfig(DIVCONTROL_ADAPTER_CLASS_NAME, { ...config }),
} as const;

/** An adapter for `net` with `newTailors` components per projection (adapterInitialize sets
 *  its descriptor). */
export function adapterFor(net: DivControlNet, newTailors: number): DivControlAdapter {
  const c = net.config;
  return new DivControlAdapter({ dim: c.dim, ff_inner: c.ff_inner, control_blocks: c.control_blocks,
    new_tailors: newTailors, descriptor_dim: c.descriptor_dim });
}

/** Fresh adapter weights: random new tailors with s = 0, the descriptor set to `descriptor`. */
export function adapterInitialize(adapter: DivControlAdapter, key: RngKey,
  descriptor: readonly number[]): ParamsOf<DivControlAdapter, HostArray> {
  if (descriptor.length !== adapter.config.descriptor_dim) {
    throw new RangeError(`DivControl adapter: a descriptor of ${descriptor.length} numbers, the ` +
      `gate takes ${adapter.config.descriptor_dim}`);
  }
  const p = adapter.init(key);
  return { ...p, descriptor: new HostArray(Float32Array.from(descriptor), [descriptor.length]) };
}
