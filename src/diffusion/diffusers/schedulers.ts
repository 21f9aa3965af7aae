/**
 * @file diffusers' schedulers on the adapter contract of scheduler.ts (for users porting
 * diffusers code and for replaying diffusers' own files): DDPM, DDIM, Euler, Euler ancestral,
 * Heun, FlowMatch Euler / Heun here, the multistep ones in multistep.ts, and `fromConfig`.
 * Each class only maps diffusers' step index onto the schedule and calls the samplers' step
 * functions (docs/architecture.md, convention 9).
 */
import { roundOf, type FloatArray } from '../arith.js';
import type { Batch } from '../denoiser.js';
import { toEps, toX0, toX0Scaled } from '../predictions.js';
import { postprocessX0 } from '../samplers/common.js';
import { ddimStep } from '../samplers/ddim.js';
import { ddpmStep, type DdpmVariance } from '../samplers/ddpm.js';
import {
  addChurnNoise,
  ancestralLevels,
  ancestralStep,
  churnLevel,
  eulerUpdate,
  scaleModelInput,
} from '../samplers/euler.js';
import { flowDenoised, flowEulerStep } from '../samplers/flow.js';
import { heunFirst, heunSecond } from '../samplers/heun.js';
import {
  parseSchedulerConfig,
  type ParseOptions,
  type SchedulerClass,
  type SchedulerConfig,
} from './config.js';
import { DPMSolverMultistepScheduler, UniPCMultistepScheduler } from './multistep.js';
import {
  DiffusersScheduler,
  needNoise,
  out,
  type AdapterOptions,
  type StepOptions,
  type StepOutput,
} from './scheduler.js';

export { DPMSolverMultistepScheduler, UniPCMultistepScheduler };
export * from './scheduler.js';

export class DDPMScheduler extends DiffusersScheduler {
  static readonly className: SchedulerClass = 'DDPMScheduler';

  protected update(m: FloatArray, i: number, t: number, sample: Batch, o: StepOptions) {
    const s = this.s;
    const x = sample.data;
    const x0 = postprocessX0(
      toX0(this.prediction, x, m, s.alphas[i]!, s.sigmas[i]!),
      sample.shape,
      this.spec.x0,
    );
    const target = s.targetAlphaBars?.[i] ?? s.alphaBars[i + 1]!;
    const z = t > 0 ? needNoise(o, 'DDPMScheduler') : null;
    return {
      prev: ddpmStep(
        x,
        x0,
        s.alphaBars[i]!,
        target,
        this.config['variance_type'] as DdpmVariance,
        z,
      ),
      x0,
    };
  }

  protected override stepIndex(t: number): number {
    return this.locate(t);
  }
}

export class DDIMScheduler extends DiffusersScheduler {
  static readonly className: SchedulerClass = 'DDIMScheduler';

  protected update(m: FloatArray, i: number, _t: number, sample: Batch, o: StepOptions) {
    const s = this.s;
    const x = sample.data;
    const [a, sg] = [s.alphas[i]!, s.sigmas[i]!];
    const x0 = postprocessX0(
      toX0(this.prediction, x, m, a, sg),
      sample.shape,
      this.spec.x0,
    );
    const eps = o.useClippedModelOutput
      ? toEps('x0', x, x0, a, sg)
      : toEps(this.prediction, x, m, a, sg);
    const eta = o.eta ?? 0;
    const target = s.targetAlphaBars?.[i] ?? s.alphaBars[i + 1]!;
    const z = eta > 0 ? needNoise(o, 'DDIMScheduler') : null;
    return { prev: ddimStep(x0, eps, s.alphaBars[i]!, target, eta, z), x0 };
  }

  protected override stepIndex(t: number): number {
    return this.locate(t);
  }
}

/** Euler-type classes sample in the level frame and scale inputs by 1 / sqrt(level^2 + 1). */
abstract class LevelFrameScheduler extends DiffusersScheduler {
  override addNoise(original: Batch, noise: Batch, timesteps: ArrayLike<number>): Batch {
    return this.addNoiseAtLevels(original, noise, timesteps);
  }

  override get initNoiseSigma(): number {
    return this.s.startScale!;
  }

  override scaleModelInput(sample: Batch, t: number): Batch {
    return out(sample, scaleModelInput(sample.data, this.sigmas[this.stepIndex(t)]!, true));
  }
}

export class EulerDiscreteScheduler extends LevelFrameScheduler {
  static readonly className: SchedulerClass = 'EulerDiscreteScheduler';

  protected update(m: FloatArray, i: number, _t: number, sample: Batch, o: StepOptions) {
    const level = this.s.levels[i]!;
    const n = this.s.timesteps.length;
    const hat = churnLevel(level, n, {
      churn: o.sChurn ?? 0,
      tMin: o.sTmin ?? 0,
      tMax: o.sTmax ?? Infinity,
    });
    let x = sample.data;
    if (hat !== level)
      x = addChurnNoise(x, level, hat, o.sNoise ?? 1, needNoise(o, 'EulerDiscreteScheduler'));
    // diffusers reads a v-prediction at the un-churned level (a quirk that only shows with churn)
    const D = toX0Scaled(this.prediction, x, m, this.prediction === 'v' ? level : hat, true);
    return { prev: eulerUpdate(x, D, hat, this.s.levels[i + 1]!), x0: D };
  }
}

export class EulerAncestralDiscreteScheduler extends LevelFrameScheduler {
  static readonly className: SchedulerClass = 'EulerAncestralDiscreteScheduler';

  protected update(m: FloatArray, i: number, _t: number, sample: Batch, o: StepOptions) {
    const level = this.s.levels[i]!;
    const D = toX0Scaled(this.prediction, sample.data, m, level, true);
    const { up, down } = ancestralLevels(level, this.s.levels[i + 1]!, 1);
    const z = needNoise(o, 'EulerAncestralDiscreteScheduler');
    return { prev: ancestralStep(sample.data, D, level, down, up, z), x0: D };
  }
}

/**
 * Heun-type classes expose diffusers' interleaved tables (timesteps t0, t1, t1, t2, t2, ...;
 * levels s0, s1, s1, ..., 0): a step is a first stage unless one is pending.
 */
abstract class TwoStageScheduler extends DiffusersScheduler {
  private stage: { d: FloatArray; dt: number; start: FloatArray } | null = null;

  protected override reset(): void {
    this.stage = null;
  }

  /** The per-point values the stages step along: noise levels, or s for flow matching. */
  protected abstract get path(): Float64Array;

  /** x0 from the model output at a point of the path. */
  protected abstract denoised(x: FloatArray, m: FloatArray, at: number): FloatArray;

  override get timesteps(): Float64Array {
    const ts = this.s.timesteps;
    return Float64Array.from({ length: 2 * ts.length - 1 }, (_, k) => ts[Math.ceil(k / 2)]!);
  }

  override get sigmas(): Float64Array {
    const p = this.path;
    return Float64Array.from(
      { length: 2 * this.s.timesteps.length },
      (_, k) => p[Math.ceil(k / 2)]!,
    );
  }

  protected update(m: FloatArray, k: number, _t: number, sample: Batch) {
    const i = Math.floor(k / 2);
    const p = this.path;
    if (this.stage === null) {
      const D = this.denoised(sample.data, m, p[i]!);
      const { d, dt, x2 } = heunFirst(sample.data, D, p[i]!, p[i + 1]!);
      this.stage = { d, dt, start: sample.data };
      return { prev: x2, x0: D };
    }
    const D2 = this.denoised(sample.data, m, p[i + 1]!);
    const { d, dt, start } = this.stage;
    this.stage = null;
    return { prev: heunSecond(start, d, dt, sample.data, D2, p[i + 1]!), x0: D2 };
  }
}

export class HeunDiscreteScheduler extends TwoStageScheduler {
  static readonly className: SchedulerClass = 'HeunDiscreteScheduler';

  protected get path(): Float64Array {
    return this.s.levels;
  }

  override addNoise(original: Batch, noise: Batch, timesteps: ArrayLike<number>): Batch {
    return this.addNoiseAtLevels(original, noise, timesteps);
  }

  override get initNoiseSigma(): number {
    return this.s.startScale!;
  }

  override scaleModelInput(sample: Batch, t: number): Batch {
    return out(sample, scaleModelInput(sample.data, this.sigmas[this.stepIndex(t)]!, true));
  }

  protected denoised(x: FloatArray, m: FloatArray, level: number): FloatArray {
    return postprocessX0(toX0Scaled(this.prediction, x, m, level, true), [1], this.spec.x0);
  }
}

export class FlowMatchHeunDiscreteScheduler extends TwoStageScheduler {
  static readonly className: SchedulerClass = 'FlowMatchHeunDiscreteScheduler';

  protected get path(): Float64Array {
    return this.s.sigmas;
  }

  protected denoised(x: FloatArray, m: FloatArray, s: number): FloatArray {
    return flowDenoised(x, m, s);
  }

  override step(modelOutput: Batch, t: number, sample: Batch, opts: StepOptions = {}): StepOutput {
    return { ...super.step(modelOutput, t, sample, opts), predOriginalSample: null };
  }
}

export class FlowMatchEulerDiscreteScheduler extends DiffusersScheduler {
  static readonly className: SchedulerClass = 'FlowMatchEulerDiscreteScheduler';

  override get sigmas(): Float64Array {
    return this.s.sigmas;
  }

  protected update(m: FloatArray, i: number, _t: number, sample: Batch) {
    return {
      prev: flowEulerStep(sample.data, m, this.s.sigmas[i]!, this.s.sigmas[i + 1]!),
      x0: null,
    };
  }

  /** FlowMatch has no add_noise: its forward process is `scaleNoise`, here per row. */
  override addNoise(original: Batch, noise: Batch, timesteps: ArrayLike<number>): Batch {
    return this.atSchedulePoints(original, noise, timesteps, (k, x, z, r) => {
      const s = this.s.sigmas[k]!;
      return x.map((v, i) => r(r(s * z[i]!) + r(r(1 - s) * v)));
    });
  }

  /** diffusers' `scale_noise`: s noise + (1 - s) sample at the schedule's s for timestep t. */
  scaleNoise(sample: Batch, t: number, noise: Batch): Batch {
    const s = this.s.sigmas[this.locate(t)]!;
    const r = roundOf(sample.data);
    return out(
      sample,
      sample.data.map((v, k) => r(r(s * noise.data[k]!) + r(r(1 - s) * v))),
    );
  }
}

const CLASSES: Record<
  SchedulerClass,
  new (c: SchedulerConfig, o?: AdapterOptions) => DiffusersScheduler
> = {
  DDPMScheduler,
  DDIMScheduler,
  EulerDiscreteScheduler,
  EulerAncestralDiscreteScheduler,
  HeunDiscreteScheduler,
  DPMSolverMultistepScheduler,
  UniPCMultistepScheduler,
  FlowMatchEulerDiscreteScheduler,
  FlowMatchHeunDiscreteScheduler,
};

/** A scheduler from the contents of a scheduler_config.json (`_class_name` picks the class). */
export function schedulerFromConfig(
  json: Record<string, unknown>,
  opts: ParseOptions & AdapterOptions = {},
): DiffusersScheduler {
  const config = parseSchedulerConfig(json, opts);
  return new CLASSES[config._class_name](config, opts);
}
