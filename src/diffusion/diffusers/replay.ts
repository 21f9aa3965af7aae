/**
 * @file Replaying a recorded diffusers sampling loop (the golden files in test/data/golden and
 * test/data/diffusion) through the adapter, measuring the distance in float32 ulps at every
 * step. Used by the tests; handy for checking a new config against a diffusers recording.
 */
import { HostArray } from '../../engine/host.js';
import { schedulerFromConfig, type AdapterOptions, type StepOptions } from './schedulers.js';
import type { SchedulerClass } from './config.js';

const i32 = new Int32Array(1);
const f32 = new Float32Array(i32.buffer);

/** Position of a float32 on the integer line (adjacent floats differ by 1). */
function ordinal(x: number): number {
  f32[0] = x;
  const b = i32[0]!;
  return b < 0 ? -2147483648 - b : b;
}

/** Largest distance in float32 ulps between two arrays (Infinity on a length mismatch / NaN). */
export function maxUlp(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(ordinal(a[i]!) - ordinal(b[i]!));
    m = Math.max(m, Number.isNaN(d) ? Infinity : d);
  }
  return m;
}

export interface RecordedStep {
  t: number;
  sample_in: number[];
  scaled_model_input?: number[];
  model_output: number[];
  /** The N(0, 1) draw the step used (internal noise, variance_noise or churn noise). */
  noise?: number[];
  prev_sample: number[];
  pred_original_sample?: number[];
}

export interface RecordedLoop {
  className: SchedulerClass;
  config: Record<string, unknown>;
  steps: number;
  shape: number[];
  initialSample: number[];
  timesteps: number[];
  sigmas?: number[] | null;
  initNoiseSigma?: number;
  mu?: number | null;
  stepOptions?: Omit<StepOptions, 'noise'>;
  records: RecordedStep[];
}

export interface ReplayReport {
  timesteps: number;
  sigmas: number;
  initNoiseSigma: number;
  scaledInput: number;
  prevSample: number;
  predOriginalSample: number;
}

/**
 * Runs the recorded loop on the adapter (from the recorded state, feeding back our own
 * samples) and returns the worst ulp distance of each recorded quantity.
 */
export function replay(rec: RecordedLoop, opts: AdapterOptions = {}): ReplayReport {
  const sch = schedulerFromConfig(
    { ...rec.config, _class_name: rec.className },
    { ...opts, warn: () => {} },
  );
  sch.setTimesteps(rec.steps, rec.mu != null ? { mu: rec.mu } : {});
  const report: ReplayReport = {
    timesteps: maxUlp(sch.timesteps, rec.timesteps),
    sigmas: rec.sigmas ? maxUlp(sch.sigmas, rec.sigmas) : 0,
    initNoiseSigma:
      rec.initNoiseSigma === undefined ? 0 : maxUlp([sch.initNoiseSigma], [rec.initNoiseSigma]),
    scaledInput: 0,
    prevSample: 0,
    predOriginalSample: 0,
  };
  const batch = (v: ArrayLike<number>): HostArray<'float32'> =>
    new HostArray<'float32'>(Float32Array.from(v), rec.shape, 'float32');
  let sample = batch(rec.initialSample);
  for (const s of rec.records) {
    if (s.scaled_model_input) {
      report.scaledInput = Math.max(
        report.scaledInput,
        maxUlp(sch.scaleModelInput(sample, s.t).data, s.scaled_model_input),
      );
    }
    const out = sch.step(batch(s.model_output), s.t, sample, {
      ...rec.stepOptions,
      ...(s.noise ? { noise: Float32Array.from(s.noise) } : {}),
    });
    report.prevSample = Math.max(report.prevSample, maxUlp(out.prevSample.data, s.prev_sample));
    if (s.pred_original_sample) {
      const x0 = out.predOriginalSample?.data ?? [];
      report.predOriginalSample = Math.max(
        report.predOriginalSample,
        maxUlp(x0, s.pred_original_sample),
      );
    }
    sample = out.prevSample as HostArray<'float32'>;
  }
  return report;
}
