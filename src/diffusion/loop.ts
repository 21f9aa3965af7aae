/**
 * @file The diffusers-style sampling loop: a Denoiser driven through a scheduler adapter
 * (setTimesteps, scaleModelInput, step), with seeded noise, an AbortSignal and a per-step
 * progress callback. This is the loop of diffusers' pipelines
 * (`for t in scheduler.timesteps: ...; latents = scheduler.step(...).prev_sample`).
 */
import { numel } from '../engine/host.js';
import { asPrecisionOf } from './arith.js';
import {
  throwIfAborted,
  withData,
  type Batch,
  type Denoiser,
  type NoiseSource,
} from './denoiser.js';
import type { DiffusersScheduler, StepOptions } from './diffusers/schedulers.js';

export interface LoopProgress {
  /** 0-based step and the number of scheduler steps. */
  readonly step: number;
  readonly total: number;
  readonly t: number;
  readonly sample: Batch;
}

export interface LoopOptions {
  steps: number;
  /** Standard normal noise: stream -1 is the initial latent, stream k the noise of step k. */
  noise: NoiseSource;
  /** Shape of the latent; required unless `latents` is given. */
  shape?: readonly number[];
  /** Initial unit-variance latents (scaled by the scheduler's initNoiseSigma). */
  latents?: Batch;
  condition?: unknown;
  signal?: AbortSignal;
  onProgress?: (p: LoopProgress) => void;
  /** Extra step options (DDIM eta, Euler churn). */
  stepOptions?: Omit<StepOptions, 'noise'>;
  /** Dynamic-shift mu for FlowMatch schedulers with use_dynamic_shifting. */
  mu?: number;
}

/** Runs the full sampling loop and returns the final sample. */
export async function runScheduler(
  denoiser: Denoiser,
  scheduler: DiffusersScheduler,
  opts: LoopOptions,
): Promise<Batch> {
  if (denoiser.prediction !== scheduler.prediction) {
    throw new TypeError(
      `runScheduler: the denoiser predicts '${denoiser.prediction}' ` +
        `but the scheduler config expects '${scheduler.prediction}'`,
    );
  }
  scheduler.setTimesteps(opts.steps, opts.mu === undefined ? {} : { mu: opts.mu });
  const shape = opts.latents?.shape ?? opts.shape;
  if (!shape) throw new TypeError('runScheduler: pass opts.shape or opts.latents');
  const size = numel(shape);
  const z = opts.latents?.data ?? opts.noise(size, -1);
  const s0 = scheduler.initNoiseSigma;
  const init = Float32Array.from(z, (v) => Math.fround(v * s0));
  let sample: Batch = withData({ data: init, shape }, init);
  const rows = shape[0] ?? 1;
  const ts = scheduler.timesteps;
  for (let k = 0; k < ts.length; k++) {
    throwIfAborted(opts.signal);
    const t = ts[k]!;
    const input = scheduler.scaleModelInput(sample, t);
    const out = await denoiser.predict(input, new Float64Array(rows).fill(t), opts.condition);
    const noise = asPrecisionOf(opts.noise(size, k), sample.data);
    sample = scheduler.step(out, t, sample, { ...opts.stepOptions, noise }).prevSample;
    opts.onProgress?.({ step: k, total: ts.length, t, sample });
  }
  return sample;
}
