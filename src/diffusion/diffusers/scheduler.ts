/**
 * @file The diffusers scheduler contract as a base class: setTimesteps, timesteps,
 * initNoiseSigma, scaleModelInput, step -> {prevSample, predOriginalSample}, addNoise,
 * getVelocity, toConfig. A thin adapter (docs/architecture.md, convention 9): the schedule comes from tables.ts and every
 * update from the samplers' step functions; subclasses keep only diffusers' step index and
 * history. The classes are in schedulers.ts and multistep.ts.
 */
import { HostArray } from '../../engine/host.js';
import { roundOf, zerosLike, type FloatArray } from '../arith.js';
import type { Batch } from '../denoiser.js';
import { fromX0Eps, type Prediction } from '../predictions.js';
import type { Schedule } from '../schedule.js';
import {
  configToJson,
  parseSchedulerConfig,
  type ParseOptions,
  type SchedulerClass,
  type SchedulerConfig,
} from './config.js';
import { specOf, type SchedulerSpec } from './spec.js';
import { buildSchedule, trainTables } from './tables.js';

export interface StepOptions {
  /** The N(0, 1) draw this step needs (DDPM's internal noise, DDIM's variance_noise, churn). */
  noise?: FloatArray;
  /** DDIM. */
  eta?: number;
  useClippedModelOutput?: boolean;
  /** Euler churn (Karras et al. 2022): s_churn, s_tmin, s_tmax, s_noise. */
  sChurn?: number;
  sTmin?: number;
  sTmax?: number;
  sNoise?: number;
}

export interface StepOutput {
  prevSample: Batch;
  /** The x0 estimate, for the schedulers whose diffusers step returns one (else null). */
  predOriginalSample: Batch | null;
}

export interface AdapterOptions {
  /** Opt out of diffusers' DDPM / DDIM prev = t - T // n quirk: step to the next timestep. */
  prevFromSchedule?: boolean;
}

export const out = (like: Batch, data: FloatArray): Batch =>
  new HostArray<'float32'>(Float32Array.from(data), like.shape, 'float32');

/** A concrete scheduler class (what `fromConfig` is called on). */
export type SchedulerCtor<T extends DiffusersScheduler> = (new (
  config: SchedulerConfig,
  opts?: AdapterOptions,
) => T) & { readonly className: SchedulerClass };

/** Common state and the contract; subclasses supply only `update`. */
export abstract class DiffusersScheduler {
  readonly config: SchedulerConfig;
  /** The config's typed view: family, prediction, x0 post-processing. */
  readonly spec: SchedulerSpec;
  protected schedule: Schedule | null = null;
  protected index: number | null = null;
  readonly alphasCumprod: Float32Array | null;

  /**
   * diffusers' `from_config`: this class from a scheduler_config.json object, which may be
   * another class's config (diffusers' `_compatibles`): `_class_name` is ignored.
   */
  static fromConfig<T extends DiffusersScheduler>(
    this: SchedulerCtor<T>,
    json: Record<string, unknown>,
    opts: ParseOptions & AdapterOptions = {},
  ): T {
    return new this(parseSchedulerConfig(json, { ...opts, className: this.className }), opts);
  }

  constructor(
    config: SchedulerConfig,
    protected readonly opts: AdapterOptions = {},
  ) {
    this.config = config;
    this.spec = specOf(config);
    this.alphasCumprod = this.spec.family === 'flow' ? null : trainTables(config).alphasCumprod;
  }

  get prediction(): Prediction {
    return this.spec.prediction;
  }

  /** Computes the schedule for n inference steps (and resets the step index and history). */
  setTimesteps(n: number, opts: { mu?: number } = {}): void {
    this.schedule = buildSchedule(this.config, n, { ...this.opts, ...opts });
    this.index = null;
    this.reset();
  }

  protected reset(): void {}

  protected get s(): Schedule {
    if (!this.schedule)
      throw new Error(`${this.config._class_name}: call setTimesteps(n) before stepping`);
    return this.schedule;
  }

  /** The timesteps diffusers exposes (Heun-type schedulers repeat the inner ones). */
  get timesteps(): Float64Array {
    return this.s.timesteps;
  }

  /** diffusers' `sigmas` (noise levels with the final one), where the class has them. */
  get sigmas(): Float64Array {
    return this.s.levels;
  }

  get initNoiseSigma(): number {
    return 1;
  }

  scaleModelInput(sample: Batch, _t: number): Batch {
    return sample;
  }

  /** Position of timestep t (diffusers' index_for_timestep: the second match if repeated). */
  protected locate(t: number): number {
    const ts = this.timesteps;
    const hits: number[] = [];
    ts.forEach((v, i) => v === t && hits.push(i));
    if (hits.length === 0)
      throw new RangeError(`${this.config._class_name}: timestep ${t} is not in the schedule`);
    return hits.length > 1 ? hits[1]! : hits[0]!;
  }

  protected stepIndex(t: number): number {
    if (this.index === null) this.index = this.locate(t);
    return this.index;
  }

  step(modelOutput: Batch, t: number, sample: Batch, opts: StepOptions = {}): StepOutput {
    const i = this.stepIndex(t);
    const { prev, x0 } = this.update(modelOutput.data, i, t, sample, opts);
    this.index = i + 1;
    return { prevSample: out(sample, prev), predOriginalSample: x0 ? out(sample, x0) : null };
  }

  protected abstract update(
    m: FloatArray,
    i: number,
    t: number,
    sample: Batch,
    opts: StepOptions,
  ): { prev: FloatArray; x0: FloatArray | null };

  /**
   * Forward process at timesteps t (one per row): alpha_t x0 + sigma_t noise. DDPM / DDIM read
   * t as a training index; schedule-based classes override this and read t from the schedule,
   * as diffusers does.
   */
  addNoise(original: Batch, noise: Batch, timesteps: ArrayLike<number>): Batch {
    return this.perRow(
      original,
      timesteps,
      (i, x, z, r) => {
        const a = this.alphasCumprod![timesteps[i]!]!;
        const sa = r(Math.sqrt(a));
        const sb = r(Math.sqrt(r(1 - a)));
        return x.map((v, k) => r(r(sa * v) + r(sb * z[k]!)));
      },
      noise,
    );
  }

  /** v = sqrt(abar) noise - sqrt(1 - abar) sample at training timesteps (one per row). */
  getVelocity(sample: Batch, noise: Batch, timesteps: ArrayLike<number>): Batch {
    return this.perRow(
      sample,
      timesteps,
      (i, x, z) => {
        const a = this.alphasCumprod![timesteps[i]!]!;
        return fromX0Eps(
          'v',
          x,
          z,
          Math.fround(Math.sqrt(a)),
          Math.fround(Math.sqrt(Math.fround(1 - a))),
        );
      },
      noise,
    );
  }

  /** diffusers' add_noise of the level-frame classes: x0 + noise * level at t's point. */
  protected addNoiseAtLevels(original: Batch, noise: Batch, timesteps: ArrayLike<number>): Batch {
    return this.atSchedulePoints(original, noise, timesteps, (k, x, z, r) => {
      const level = r(this.sigmas[k]!);
      return x.map((v, i) => r(v + r(z[i]! * level)));
    });
  }

  /** Rows of `x` at the schedule points of timesteps `ts`, mapped by `f(point index, ...)`. */
  protected atSchedulePoints(
    x: Batch,
    noise: Batch,
    ts: ArrayLike<number>,
    f: (point: number, x: FloatArray, z: FloatArray, r: (v: number) => number) => FloatArray,
  ): Batch {
    return this.perRow(x, ts, (b, xb, zb, r) => f(this.locate(ts[b]!), xb, zb, r), noise);
  }

  protected perRow(
    x: Batch,
    ts: ArrayLike<number>,
    f: (row: number, x: FloatArray, z: FloatArray, r: (v: number) => number) => FloatArray,
    noise: Batch,
  ): Batch {
    const rows = x.shape[0] ?? 1;
    const per = x.data.length / rows;
    if (ts.length !== rows) throw new RangeError(`${ts.length} timesteps for ${rows} rows`);
    const res = zerosLike(x.data);
    for (let b = 0; b < rows; b++) {
      const sl = (a: FloatArray): FloatArray => a.subarray(b * per, (b + 1) * per);
      res.set(f(b, sl(x.data), sl(noise.data), roundOf(x.data)), b * per);
    }
    return out(x, res);
  }

  toConfig(): Record<string, unknown> {
    return configToJson(this.config);
  }
}

export function needNoise(o: StepOptions, who: string): FloatArray {
  if (!o.noise)
    throw new TypeError(
      `${who}.step: opts.noise (an N(0, 1) draw shaped like the sample) is required`,
    );
  return o.noise;
}
