/**
 * @file Classifier guidance of a pipeline's sampler (Dhariwal & Nichol 2021, sec. 4): the
 * guides `diffuse sample --guide classifier:DIR:SCALE` loads. DIR is
 * - a noise-aware classifier (`diffuse train-classifier --noise-aware`): it is given the noise
 *   level log(alpha^2 / sigma^2) of x_t, the time-dependent classifier of the paper;
 * - a clean classifier (the shipped models/mnist-classifier): applied to x_t as it is, the
 *   naive plug-in PPAP (Go et al. 2022) shows to fail on noisy inputs;
 * - an experts folder (`diffuse train-experts`, experts.json): one clean-classifier copy per
 *   timestep range, each used on its own range (PPAP's experts, or supervised ones).
 * The gradient graphs are compiled once per guide; the target labels are read per call, so
 * one guide serves every batch of a run.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import type { Tensor } from '../engine/tensor.js';
import { classifierGuidance, type Releasable } from '../diffusion/gradient-guidance.js';
import type { GuidanceFn } from '../diffusion/guidance.js';
import { loadModel } from '../io/diffusers.js';
import { classifierClass, DiffuseClassifier } from '../models/classifier.js';
import type { ParamsOf } from '../nn/module.js';
import { EXPERTS_FILE, readExperts } from './experts.js';
import type { Provider } from './sample.js';

/** What `--guide` names: the guide folder and its scale. */
export interface GuideSpec {
  dir: string;
  scale: number;
}

export const GUIDE_SPELLING = 'classifier:DIR or classifier:DIR:SCALE (DIR a classifier or ' +
  'experts folder, SCALE > 0, default 1)';

/** `classifier:DIR[:SCALE]`. */
export function parseGuide(v: string): GuideSpec {
  const m = /^classifier:(.+?)(?::([^:]+))?$/.exec(v);
  if (!m) throw new RangeError(`'${v}' is not ${GUIDE_SPELLING}`);
  const scale = m[2] === undefined ? 1 : Number(m[2]);
  if (!(Number.isFinite(scale) && scale > 0 && scale <= 1000)) {
    throw new RangeError(`guidance scale '${m[2]}' is not a number in (0, 1000]`);
  }
  return { dir: m[1]!, scale };
}

export interface LoadedGuide {
  spec: GuideSpec;
  kind: 'noise-aware' | 'clean' | 'experts';
  /** The classifier's number of classes (the targets a sampler may ask for). */
  classes: number;
  /** One line for a user: what guides and how. */
  description: string;
  /** Model time -> log(alpha^2 / sigma^2) for a noise-aware classifier (the pipeline's process). */
  guidance(levelOf: (t: number) => number, labels: () => readonly number[],
    provider?: Provider): GuidanceFn & Releasable;
}

type Classifier = { model: DiffuseClassifier; params: ParamsOf<DiffuseClassifier> };

async function loadClassifier(dir: string): Promise<Classifier> {
  const { config, params } = await loadModel(dir, classifierClass);
  const consts = ops.constantTree(params) as unknown as ParamsOf<DiffuseClassifier>;
  return { model: new DiffuseClassifier(config), params: consts };
}

/** A guidance function of one classifier; `level` maps the t handed to it. */
function classifierGuide(c: Classifier, scale: number, labels: () => readonly number[],
  noiseAware: boolean, provider?: Provider): GuidanceFn & Releasable {
  return classifierGuidance({
    logProb: (x: Tensor, level: Tensor, y: Tensor) =>
      c.model.logProb(c.params, x, y, noiseAware ? level : undefined),
    labels, scale, runtime: { name: 'classifier_guidance', ...(provider ? { provider } : {}) },
  });
}

/** Loads the guide `spec` names (see the file header for the three kinds). */
export async function loadGuide(spec: GuideSpec): Promise<LoadedGuide> {
  if (existsSync(join(spec.dir, EXPERTS_FILE))) {
    const e = await readExperts(spec.dir);
    const experts = await Promise.all(e.folders.map(loadClassifier));
    return {
      spec, kind: 'experts', classes: experts[0]!.model.config.num_classes,
      description: `${experts.length} ${e.method} classifier experts over timestep ranges ` +
        `${e.ranges.map(([a, b]) => `[${a}, ${b})`).join(' ')}, scale ${spec.scale}`,
      guidance(_levelOf, labels, provider) {
        const guides = experts.map((c) => classifierGuide(c, spec.scale, labels, false, provider));
        const fn: GuidanceFn = (x, t, denoised, coefficients) => {
          const k = e.ranges.findIndex(([a, b]) => t[0]! >= a && t[0]! < b);
          if (t.some((v) => v !== t[0])) {
            throw new RangeError('expert guidance: the rows of one call must share a timestep');
          }
          // A model time past the last range (a sampler's fractional end) uses the nearest expert.
          const pick = k >= 0 ? k : t[0]! < e.ranges[0]![0] ? 0 : guides.length - 1;
          return guides[pick]!(x, t, denoised, coefficients);
        };
        return Object.assign(fn, { dispose: async () => { await Promise.all(guides.map((g) => g.dispose())); } });
      },
    };
  }
  const c = await loadClassifier(spec.dir);
  const noiseAware = c.model.config.noise_conditioning;
  return {
    spec, kind: noiseAware ? 'noise-aware' : 'clean', classes: c.model.config.num_classes,
    description: `${noiseAware ? 'noise-aware' : 'clean (applied to noisy x_t)'} classifier ` +
      `${spec.dir}, scale ${spec.scale}`,
    guidance(levelOf, labels, provider) {
      const inner = classifierGuide(c, spec.scale, labels, noiseAware, provider);
      const fn: GuidanceFn = (x, t, denoised, coefficients) =>
        inner(x, Float64Array.from(t, levelOf), denoised, coefficients);
      return Object.assign(fn, { dispose: () => inner.dispose() });
    },
  };
}
