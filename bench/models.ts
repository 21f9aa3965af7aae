/**
 * @file Model benchmarks against BASELINE.md's tuned PyTorch figures (diffusers 0.31 on torch
 * 1.13, 2 threads): forward at batch 1 / 16 / 64, one training step at batch 64, training
 * images/s and DDIM-50 x 64, for the U-Net ('mnist-s') and the pixel and latent DiTs. The
 * configs are BASELINE.md's exactly, so each ratio is like for like: ratio = PyTorch time /
 * Diffuse time (> 1: Diffuse is faster). GFLOP/s counts the matmuls and convolutions of the
 * graph (countFlops), against the ORT matmul peak measured in the same run.
 *
 * - Forward: an inference graph with the random-init weights baked in as constants
 *   (`ops.constant`), as an inference user runs it; x and t (and labels) are inputs.
 * - Train step: noise, random t, add_noise, forward, MSE on eps, backward, AdamW, as BASELINE
 *   times it. Noise and t are drawn on the host (Philox) and fed in the batch; add_noise
 *   gathers sqrt(abar_t) and sqrt(1 - abar_t) from constant tables inside the same graph, so
 *   the whole step is one compileTrainStep run. The host drawing is inside the timing.
 * - DDIM-50 x 64: diffusers' DDIMScheduler (linear betas, eta 0) through src/diffusion's
 *   adapter: 50 forwards at batch 64 plus the host-side update of each step.
 * - DDIM-50 at batch 1, interactive use: for the class-conditional DiTs with classifier-free
 *   guidance (scale CFG_SCALE, the null class as the unconditional label), whose conditional
 *   and unconditional halves go through one batched call of 2; the U-Net is unconditional.
 */
import { countFlops } from '../src/engine/flops.js';
import { HostArray } from '../src/engine/host.js';
import * as ops from '../src/engine/ops.js';
import { RngKey } from '../src/engine/random/philox.js';
import { compile, type RuntimeOptions } from '../src/engine/runtime.js';
import type { Tensor } from '../src/engine/tensor.js';
import { mapTree, type Tree } from '../src/engine/tree.js';
import { callRows, inBatches, type Batch, type Denoiser } from '../src/diffusion/denoiser.js';
import { cpuCacheRows } from '../src/pipelines/graph-denoiser.js';
import { parseScheduler } from '../src/diffusion/diffusers/spec.js';
import { classifierFreeGuidance } from '../src/diffusion/guidance.js';
import { sample } from '../src/diffusion/sampling.js';
import {
  noisySample, trainingPoints, trainingScheduler, trainingTarget,
} from '../src/diffusion/training.js';
import { adamw } from '../src/nn/optim.js';
import { compileTrainStep } from '../src/nn/train.js';
import { UNet2DModel, UNET2D_PRESETS } from '../src/models/unet2d.js';
import { DiTTransformer2DModel, ditInitialize, ditPreset } from '../src/models/dit.js';
import { time, type Report } from './harness.js';

/** BASELINE.md, "Results (tuned, median, 2 threads, float32)": milliseconds. */
export const PYTORCH_TUNED = {
  unet: { fwd1: 27.6, fwd16: 202, fwd64: 900, train64: 2020, imgPerS: 31.7, ddim: 36_900 },
  'dit-pixel': { fwd1: 18.6, fwd16: 238, fwd64: 859, train64: 2550, imgPerS: 25.1, ddim: 44_900 },
  'dit-latent': { fwd1: 5.6, fwd16: 47, fwd64: 181, train64: 535, imgPerS: 119.7, ddim: 9_100 },
} as const;
type BaselineKey = keyof typeof PYTORCH_TUNED;

const isHost = (x: unknown): x is HostArray => x instanceof HostArray;
const TO = 'faster than PyTorch tuned (its time / ours)';

/** The model-specific parts a suite needs: the net as (params, x, t) -> eps, and its inputs. */
export interface BenchModel {
  key: BaselineKey;
  title: string;
  /** [C, H, W] of one sample. */
  sample: [number, number, number];
  params: Tree<HostArray>;
  /** The label that means "no class" (classifier-free guidance); absent: unconditional. */
  nullClass?: number;
  /** The denoiser: params, x [N, C, H, W], t int64 [N], labels int64 [N] -> eps. */
  apply(p: Tree<Tensor>, x: Tensor, t: Tensor, labels: Tensor): Tensor;
}

export function unetBenchModel(seed = 0): BenchModel {
  const model = new UNet2DModel(UNET2D_PRESETS['mnist-s'], { training: true });
  return {
    key: 'unet', title: 'UNet2DModel mnist-s (BASELINE.md U-Net, 4,023,233 params)',
    sample: [1, 32, 32], params: model.init(RngKey.fromSeed(seed)),
    apply: (p, x, t) => model.forward(p as never, x, t),
  };
}

export function ditBenchModel(which: 'pixel' | 'latent', seed = 0): BenchModel {
  const config = ditPreset(which === 'pixel' ? 'DiT-S/2-mnist' : 'DiT-S/2-latent');
  const model = new DiTTransformer2DModel(config);
  const params = ditInitialize(model.init(RngKey.fromSeed(seed)), RngKey.fromSeed(seed + 1));
  return {
    key: which === 'pixel' ? 'dit-pixel' : 'dit-latent',
    title: which === 'pixel' ? 'DiT pixel 32x32x1 (DiT-S/2-mnist)' : 'DiT latent 16x16x4 (DiT-S/2-latent)',
    sample: [config.in_channels, config.sample_size, config.sample_size], params,
    nullClass: config.num_embeds_ada_norm,
    apply: (p, x, t, labels) => model.forward(p as never, x, t, labels),
  };
}

const numel = (s: readonly number[]): number => s.reduce((a, b) => a * b, 1);
const ints = (v: ArrayLike<number>): HostArray =>
  new HostArray(BigInt64Array.from(Array.from(v, (x) => BigInt(x))), [v.length], 'int64');

/** The forward graph with weights baked in: (x, t, labels) -> eps. */
export function inferenceFn(m: BenchModel, opts: RuntimeOptions = {}) {
  const consts = mapTree(m.params, isHost, (a) => ops.constant(a));
  return compile((x: Tensor, t: Tensor, labels: Tensor) => m.apply(consts, x, t, labels),
    { name: `${m.key}_forward`, ...opts });
}

/** Random inputs at batch n: x ~ N(0, 1), t uniform in [0, 1000), labels in [0, 10). */
export function forwardInputs(m: BenchModel, n: number, seed = 1): [HostArray, HostArray, HostArray] {
  const k = RngKey.fromSeed(seed);
  const [kx, kt, kl] = k.split(3);
  return [new HostArray(kx!.normal(n * numel(m.sample)), [n, ...m.sample]),
    ints(kt!.uniformInt(n, 1000)), ints(kl!.uniformInt(n, 10))];
}

/**
 * The peer's training step (noise, random t, add_noise, forward, MSE on eps, AdamW) on a
 * batch of `n`, with the training maths `diffuse train` uses: the trainer and a batch maker.
 */
export function trainStepFor(m: BenchModel, n: number, opts: RuntimeOptions = {}) {
  const spec = trainingScheduler('eps');
  const loss = (p: Tree<Tensor>, b: Tree<Tensor>) => {
    const { x0, noise, t, alpha, sigma, labels } =
      b as Record<'x0' | 'noise' | 't' | 'alpha' | 'sigma' | 'labels', Tensor>;
    const xt = noisySample(x0, noise, alpha, sigma); // add_noise
    const eps = m.apply(p, xt, t, labels);
    return ops.mean(ops.square(ops.sub(eps, trainingTarget('eps', x0, noise, alpha, sigma))));
  };
  // torch.optim.AdamW defaults (lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 0.01).
  const trainer = compileTrainStep(loss, adamw({ lr: 1e-3, weightDecay: 0.01 }),
    { runtime: { ...opts } });
  const x0 = new HostArray(RngKey.fromSeed(11).uniform(n * numel(m.sample)).map((u) => 2 * u - 1),
    [n, ...m.sample]);
  let key = RngKey.fromSeed(12);
  /** A fresh batch: new noise and t each step (drawn on the host), fixed images and labels. */
  const batch = () => {
    const [kn, kt, next] = key.split(3);
    key = next!;
    const pts = trainingPoints(spec, kt!.uniform(n));
    return { x0, noise: new HostArray(kn!.normal(n * numel(m.sample)), [n, ...m.sample]),
      t: ints(pts.t), alpha: new HostArray(pts.alpha, [n, 1, 1, 1]),
      sigma: new HostArray(pts.sigma, [n, 1, 1, 1]),
      labels: ints(RngKey.fromSeed(13).uniformInt(n, 10)) };
  };
  return { trainer, batch };
}

/** One model's times, in the peer's units and names (bench/peer/diffusers_peer.py's JSON). */
export interface ModelTimes {
  fwd_bs1_ms: number;
  fwd_bs16_ms: number;
  fwd_bs64_ms: number;
  train_step_bs64_s: number;
  ddim50_x64_s: number;
  /** DDIM-50 of one image; with CFG (a batched call of 2) for class-conditional models. */
  ddim50_bs1_s: number;
}

/** The guidance scale of the batch-1 sampling row (DiT's paper samples with 4). */
export const CFG_SCALE = 4;

/** The forward, training and sampling rows for one model, and its times; with `peer`, each
 *  time is also compared with the peer timed on this machine (BASELINE.md's machine had
 *  AVX-512). */
export async function modelSuite(report: Report, peak: number, m: BenchModel,
  opts: { reps?: number; peer?: ModelTimes } = {}): Promise<ModelTimes> {
  report.section(`${m.title}: ratio = PyTorch tuned time / Diffuse time`);
  const base = PYTORCH_TUNED[m.key];
  const peer = opts.peer;
  const PEER = 'faster than PyTorch timed on this machine (bench/peer)';
  const vsPeer = (name: string, oursMs: number, peerMs: number | undefined) => {
    if (peerMs !== undefined) report.add({ name: `${name}, peer here ${(peerMs / 1000).toFixed(3)} s`, value: oursMs, unit: 'ms', ratio: peerMs / oursMs, ratioTo: PEER });
  };
  const reps = opts.reps ?? 7;
  const times: Partial<ModelTimes> = {};
  const fwd = inferenceFn(m);
  for (const [n, ref] of [[1, base.fwd1], [16, base.fwd16], [64, base.fwd64]] as const) {
    const args = forwardInputs(m, n);
    const t = await time(() => fwd(...args), { warmup: 3, reps: n === 1 ? 30 : reps, minMs: 2000 });
    times[`fwd_bs${n}_ms`] = t.medianMs;
    const flops = countFlops(fwd.trace(...args));
    report.add({ name: `forward bs${n}`, value: t.medianMs, unit: 'ms', ratio: ref / t.medianMs, ratioTo: TO });
    vsPeer(`forward bs${n}`, t.medianMs, peer?.[`fwd_bs${n}_ms`]);
    const rate = flops / t.medianMs / 1e6;
    report.add({ name: `forward bs${n} throughput`, value: rate, unit: 'GFLOP/s', ratio: rate / peak,
      ratioTo: 'of matmul peak' });
  }

  const { trainer, batch } = trainStepFor(m, 64);
  let state = trainer.init(m.params);
  const step = async () => {
    state = (await trainer.step(state, batch())).state;
  };
  const tt = await time(step, { warmup: 3, reps: Math.max(5, reps - 2), minMs: 4000 });
  times.train_step_bs64_s = tt.medianMs / 1000;
  report.add({ name: 'train step bs64', value: tt.medianMs, unit: 'ms', ratio: base.train64 / tt.medianMs, ratioTo: TO });
  vsPeer('train step bs64', tt.medianMs, peer && peer.train_step_bs64_s * 1000);
  const imgs = (64 * 1000) / tt.medianMs;
  report.add({ name: 'train images/s', value: imgs, unit: 'img/s', ratio: imgs / base.imgPerS, ratioTo: TO });
  const specs = [state.params, state.opt, [], HostArray.scalar(1), batch()];
  const trainFlops = countFlops(trainer.compiled.trace(...(specs as never[])));
  const trate = trainFlops / tt.medianMs / 1e6;
  report.add({ name: 'train step throughput (fwd+bwd matmul/conv flops)', value: trate, unit: 'GFLOP/s',
    ratio: trate / peak, ratioTo: 'of matmul peak' });
  await trainer.dispose();

  const rowsPerCall = cpuRowsPerCall(m, fwd);
  const ms = await ddimTime(m, fwd, 50, 64, { rowsPerCall });
  times.ddim50_x64_s = ms / 1000;
  const sizes = callRows(64, rowsPerCall);
  const calls = sizes.length > 1 ? `${sizes.length} calls of ${sizes[0]} rows, the cache's` : 'one call of 64 rows';
  report.add({ name: `DDIM-50 x64 (50 steps of ${calls} + host update)`, value: ms / 1000, unit: 's',
    ratio: base.ddim / ms, ratioTo: TO });
  report.add({ name: 'DDIM per step', value: ms / 50, unit: 'ms', ratio: base.ddim / ms, ratioTo: TO });
  vsPeer('DDIM-50 x64', ms, peer && peer.ddim50_x64_s * 1000);
  const guided = m.nullClass !== undefined;
  const ms1 = await ddimTime(m, fwd, 50, 1, { guided, reps: 3 });
  times.ddim50_bs1_s = ms1 / 1000;
  const label = `DDIM-50 bs1${guided ? ` with CFG ${CFG_SCALE} (one batched call of 2)` : ''}`;
  report.add({ name: `${label}, median of 3`, value: ms1, unit: 'ms' });
  vsPeer(label, ms1, peer && peer.ddim50_bs1_s * 1000);
  await fwd.dispose();
  return times as ModelTimes;
}

/** diffusers' DDIMPipeline (linear betas, eta 0, clip_sample as its default) through `sample`,
 *  from fixed noise: a function drawing the final images. `guided`: classifier-free guidance
 *  at CFG_SCALE against the model's null class. */
export function ddimRun(m: BenchModel, fwd: ReturnType<typeof inferenceFn>, steps: number,
  n: number, guided = false, rowsPerCall = Infinity): () => Promise<HostArray> {
  const spec = parseScheduler({ _class_name: 'DDIMScheduler' });
  const [x0, , labels] = forwardInputs(m, n, 21);
  if (guided && m.nullClass === undefined) throw new Error(`ddimRun: ${m.key} has no null class to guide against`);
  const denoiser: Denoiser = {
    prediction: spec.prediction,
    predict: async (x: Batch, t: Float64Array, condition?: unknown) =>
      (await fwd(x as HostArray, ints(t), condition ? ints(condition as number[]) : labels)) as HostArray<'float32'>,
  };
  const calls = Number.isFinite(rowsPerCall) ? inBatches(denoiser, rowsPerCall) : denoiser;
  const guide = guided ? classifierFreeGuidance(calls,
    { scale: CFG_SCALE, uncondition: new Array<number>(n).fill(m.nullClass!) }) : calls;
  const condition = Array.from(labels.data as BigInt64Array, Number); // one per row, so that calls split it
  return async () => (await sample(guide, x0 as HostArray<'float32'>, spec,
    { sampler: 'ddim', steps, condition })) as HostArray;
}

/** The rows per model call `diffuse sample` makes on this CPU (pipelines/sample.ts): the
 *  model's largest intermediate within the last-level cache; unbounded where its size is unknown. */
export function cpuRowsPerCall(m: BenchModel, fwd: ReturnType<typeof inferenceFn>): number {
  const at = (n: number) => {
    const ints = { shape: [n], dtype: 'int64' as const };
    return fwd.trace({ shape: [n, ...m.sample] }, ints, ints);
  };
  return cpuCacheRows(at(1), () => at(2)) ?? Infinity;
}

/** Median milliseconds of `reps` DDIM runs (ddimRun) after a warm-up call at each batch it
 *  makes (model calls of at most `rowsPerCall` rows, split as callRows splits them). */
export async function ddimTime(m: BenchModel, fwd: ReturnType<typeof inferenceFn>, steps: number,
  n: number, { guided = false, reps = 1, rowsPerCall = Infinity } = {}): Promise<number> {
  const run = ddimRun(m, fwd, steps, n, guided, rowsPerCall);
  for (const rows of new Set(callRows(guided ? 2 * n : n, rowsPerCall))) {
    const [x0, , labels] = forwardInputs(m, rows, 21);
    await fwd(x0, ints(new Array<number>(rows).fill(999)), labels); // sessions already warm
  }
  return (await time(run, { warmup: 0, reps })).medianMs;
}
