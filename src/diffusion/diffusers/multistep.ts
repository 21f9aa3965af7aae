/**
 * @file diffusers' multistep schedulers (DPMSolverMultistepScheduler, UniPCMultistepScheduler)
 * on the adapter base: they keep the x0 predictions of the last `solver_order` points (and
 * UniPC the state its corrector needs); the updates are samplers/dpm.ts and samplers/unipc.ts.
 */
import type { FloatArray } from '../arith.js';
import type { Batch } from '../denoiser.js';
import { toX0 } from '../predictions.js';
import { postprocessX0 } from '../samplers/common.js';
import {
  dpmOrderAt,
  dpmSolverPPStep,
  type AlphaSigma,
  type DpmSolverType,
} from '../samplers/dpm.js';
import {
  uniCorrector,
  uniPcOrderAt,
  uniPredictor,
  type UniPcSolverType,
} from '../samplers/unipc.js';
import type { SchedulerClass } from './config.js';
import { DiffusersScheduler } from './scheduler.js';

/** Multistep classes keep the x0 history of the last `solver_order` points. */
abstract class MultistepScheduler extends DiffusersScheduler {
  protected history: FloatArray[] = [];
  protected points: AlphaSigma[] = [];

  protected override reset(): void {
    this.history = [];
    this.points = [];
  }

  /** diffusers' add_noise here: alpha x0 + sigma noise at the schedule point of each t. */
  override addNoise(original: Batch, noise: Batch, timesteps: ArrayLike<number>): Batch {
    return this.atSchedulePoints(original, noise, timesteps, (k, x, z, r) => {
      const { alpha, sigma } = this.point(k);
      return x.map((v, i) => r(r(alpha * v) + r(sigma * z[i]!)));
    });
  }

  protected point(i: number): AlphaSigma {
    return { alpha: this.s.alphas[i]!, sigma: this.s.sigmas[i]! };
  }

  protected convert(m: FloatArray, i: number, sample: Batch): FloatArray {
    const p = this.point(i);
    return postprocessX0(toX0(this.prediction, sample.data, m, p.alpha, p.sigma), sample.shape, {
      thresholding: this.spec.x0.thresholding ?? null,
    });
  }

  protected remember(x0: FloatArray, i: number): void {
    this.history.push(x0);
    this.points.push(this.point(i));
    if (this.history.length > (this.config['solver_order'] as number)) {
      this.history.shift();
      this.points.shift();
    }
  }
}

export class DPMSolverMultistepScheduler extends MultistepScheduler {
  static readonly className: SchedulerClass = 'DPMSolverMultistepScheduler';

  protected update(m: FloatArray, i: number, _t: number, sample: Batch) {
    const c = this.config;
    const n = this.s.timesteps.length;
    this.remember(this.convert(m, i, sample), i);
    const o = dpmOrderAt(i, n, {
      order: c['solver_order'] as number,
      lowerOrderFinal: c['lower_order_final'] === true,
      eulerAtFinal: c['euler_at_final'] === true,
      finalIsZero: c['final_sigmas_type'] === 'zero',
    });
    const prev = dpmSolverPPStep(
      sample.data,
      this.history.slice(-o),
      this.points.slice(-o),
      this.point(i + 1),
      o,
      c['solver_type'] as DpmSolverType,
    );
    return { prev, x0: null };
  }
}

export class UniPCMultistepScheduler extends MultistepScheduler {
  static readonly className: SchedulerClass = 'UniPCMultistepScheduler';

  private last: { x: FloatArray; order: number } | null = null;

  protected override reset(): void {
    super.reset();
    this.last = null;
  }

  protected update(m: FloatArray, i: number, _t: number, sample: Batch) {
    const c = this.config;
    const type = c['solver_type'] as UniPcSolverType;
    const x0 = this.convert(m, i, sample);
    let x = sample.data;
    if (this.last && i > 0 && !(c['disable_corrector'] as number[]).includes(i - 1)) {
      x = uniCorrector(
        x,
        x0,
        this.last.x,
        this.history,
        this.points,
        this.point(i),
        this.last.order,
        type,
      );
    }
    this.remember(x0, i);
    const order = uniPcOrderAt(
      i,
      this.s.timesteps.length,
      c['solver_order'] as number,
      c['lower_order_final'] === true,
    );
    this.last = { x, order };
    return {
      prev: uniPredictor(x, this.history, this.points, this.point(i + 1), order, type),
      x0: null,
    };
  }
}
