/**
 * @file The 2-D toy pipeline behind `diffuse toy`: train a small MLP eps-denoiser on a toy
 * distribution (DDPM linear betas, T = 1000) with one ORT run per step, sample it with any
 * named sampler, and score the samples by sliced Wasserstein distance to held-out data.
 */
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { RngStream } from '../engine/random/stream.js';
import type { Tensor } from '../engine/tensor.js';
import type { Tree } from '../engine/tree.js';
import { SCHEDULER_FAMILY } from '../diffusion/diffusers/spec.js';
import { sample, SAMPLER_NAMES, SAMPLERS, type SamplerName } from '../diffusion/sampling.js';
import {
  noisySample, trainingPoints, trainingScheduler, trainingTarget,
} from '../diffusion/training.js';
import { slicedWasserstein } from '../data/analytic/metrics.js';
import { sampleToy2D, type Toy2D } from '../data/analytic/toy2d.js';
import { scatterPanels } from '../io/plot.js';
import { writePng } from '../io/png.js';
import { ToyMlp, type ToyMlpConfig } from '../models/toy-mlp.js';
import type { ParamsOf } from '../nn/module.js';
import { adamw } from '../nn/optim.js';
import { cosineLr } from '../nn/schedules.js';
import { compileTrainStep } from '../nn/train.js';
import { graphDenoiser } from './graph-denoiser.js';

export const TOY_DATASETS: Record<string, Toy2D> = {
  moons: 'two_moons', swissroll: 'swiss_roll', '8gaussians': 'eight_gaussians', checkerboard: 'checkerboard',
};

/** The training process: DDPM's linear betas, an eps-prediction model. */
const TOY_SCHEDULER = trainingScheduler('eps');

/** The samplers that fit the toy model's process (not the flow-matching ones). */
export const TOY_SAMPLERS: readonly SamplerName[] = SAMPLER_NAMES.filter((name) =>
  SCHEDULER_FAMILY[SAMPLERS[name].className] === TOY_SCHEDULER.family);

export interface ToyTrainOptions {
  data: Toy2D;
  steps: number;
  batchSize?: number;
  lr?: number;
  seed?: number;
  model?: Partial<ToyMlpConfig>;
  onStep?: (step: number, loss: number) => void;
  signal?: AbortSignal;
}

export interface ToyModel {
  model: ToyMlp;
  /** EMA parameters (what sampling uses). */
  params: ParamsOf<ToyMlp, HostArray>;
  losses: number[];
  seconds: number;
}

export async function trainToy(o: ToyTrainOptions): Promise<ToyModel> {
  const model = new ToyMlp({ in_features: 2, hidden: 256, layers: 4, time_features: 32, ...o.model });
  const batchSize = o.batchSize ?? 512;
  const key = RngKey.fromSeed(o.seed ?? 0);
  const loss = (p: Tree<Tensor>, b: Tree<Tensor>): Tensor => {
    const { x0, eps, t, alpha, sigma } = b as Record<string, Tensor>;
    const xt = noisySample(x0!, eps!, alpha!, sigma!); // [B, 2]
    const target = trainingTarget(TOY_SCHEDULER.prediction, x0!, eps!, alpha!, sigma!);
    return ops.mean(ops.square(ops.sub(model.forward(p as ParamsOf<ToyMlp>, xt, t!), target)));
  };
  const trainer = compileTrainStep(loss, adamw({ lr: cosineLr(o.lr ?? 1e-3, o.steps, 100, 1e-5), weightDecay: 0 }),
    { ema: { maxDecay: 0.995 }, clipGradNorm: 1, runtime: { name: 'toy_train' } });
  let state = trainer.init(model.init(key.fold(0)));
  const data = new RngStream(key.fold(1));
  const losses: number[] = [];
  const start = performance.now();
  for (let i = 0; i < o.steps; i++) {
    if (o.signal?.aborted) throw o.signal.reason ?? new Error('aborted');
    const pts = trainingPoints(TOY_SCHEDULER, data.uniform(batchSize));
    const batch = {
      x0: new HostArray(Float32Array.from(sampleToy2D(o.data, batchSize, data)), [batchSize, 2]),
      eps: new HostArray(data.normal32(batchSize * 2), [batchSize, 2]),
      t: new HostArray(pts.t, [batchSize]),
      alpha: new HostArray(pts.alpha, [batchSize, 1]),
      sigma: new HostArray(pts.sigma, [batchSize, 1]),
    };
    const r = await trainer.step(state, batch);
    state = r.state;
    losses.push(r.metrics.loss);
    o.onStep?.(i, r.metrics.loss);
  }
  await trainer.dispose();
  return { model, params: state.ema as ParamsOf<ToyMlp, HostArray>, losses,
    seconds: (performance.now() - start) / 1000 };
}

export interface ToySampleOptions {
  sampler: string;
  steps: number;
  n: number;
  seed?: number;
  onStep?: (step: number, total: number) => void;
  signal?: AbortSignal;
}

/** n samples [n, 2] from a trained toy model. */
export async function sampleToy(m: ToyModel, o: ToySampleOptions): Promise<{ samples: Float32Array; seconds: number }> {
  const consts = ops.constantTree(m.params as Tree<HostArray>) as ParamsOf<ToyMlp>;
  const denoiser = graphDenoiser((x, t) => m.model.forward(consts, x, t), TOY_SCHEDULER.prediction,
    { name: 'toy_denoiser' });
  const key = RngKey.fromSeed(o.seed ?? 1);
  const start = performance.now();
  try {
    const noise = (n: number, step: number): Float32Array => key.fold(step + 1).normal(n);
    const x = new HostArray<'float32'>(noise(o.n * 2, -1), [o.n, 2], 'float32');
    const out = await sample(denoiser, x, TOY_SCHEDULER, {
      sampler: o.sampler, steps: o.steps, noise,
      ...(o.signal ? { signal: o.signal } : {}),
      onStep: (r) => o.onStep?.(r.index, r.total),
    });
    return { samples: Float32Array.from(out.data), seconds: (performance.now() - start) / 1000 };
  } finally {
    await denoiser.dispose();
  }
}

/** Sliced Wasserstein distance (64 projections) between samples and fresh held-out data, and
 *  the floor: the same distance between two independent held-out sets of that size. */
export function toyDistance(data: Toy2D, samples: ArrayLike<number>, seed = 99): { sw: number; floor: number; heldOut: Float64Array } {
  const n = samples.length / 2;
  const rng = new RngStream(RngKey.fromSeed(seed));
  const heldOut = sampleToy2D(data, n, rng);
  const other = sampleToy2D(data, n, rng);
  const proj = () => new RngStream(RngKey.fromSeed(seed + 1));
  return { sw: slicedWasserstein(samples, heldOut, 2, proj()), floor: slicedWasserstein(other, heldOut, 2, proj()), heldOut };
}

/** Writes a PNG of held-out data and samples side by side on shared axes. */
export async function writeToyPicture(path: string, o: { data: string; heldOut: ArrayLike<number>;
  samples: ArrayLike<number>; sampler: string; steps: number }): Promise<void> {
  await writePng(path, scatterPanels([
    { title: `data: ${o.data}`, points: o.heldOut },
    { title: `samples: ${o.sampler}, ${o.steps} steps`, points: o.samples },
  ]));
}
