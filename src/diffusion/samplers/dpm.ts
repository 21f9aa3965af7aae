/**
 * @file DPM-Solver++ multistep: Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided
 * Sampling of Diffusion Probabilistic Models", Algorithm 2 (2M, data prediction) and its
 * third-order extension (3M), as diffusers' DPMSolverMultistepScheduler implements them
 * (`midpoint` and `heun` second-order variants). An exponential integrator in
 * lambda = log(alpha / sigma): x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D + ...
 *
 * | here     | paper                                    |
 * | -------- | ---------------------------------------- |
 * | m0,m1,m2 | x0 predictions at the last three points  |
 * | h, h0    | lambda_t - lambda_s0, lambda_s0 - lambda_s1 |
 * | r0, r1   | h0 / h, h1 / h                           |
 * | D0,D1,D2 | divided differences of the predictions   |
 */
import { mathOf, roundOf, zerosLike, type FloatArray } from '../arith.js';
import {
  evaluate,
  throwIfAborted,
  withData,
  type Batch,
  type Denoiser,
  type SamplerOptions,
} from '../denoiser.js';
import { toX0 } from '../predictions.js';
import type { Schedule } from '../schedule.js';
import { postprocessX0, report, requireProcess, type X0Options } from './common.js';

export type DpmSolverType = 'midpoint' | 'heun';

/** A schedule point: alpha and sigma. */
export interface AlphaSigma {
  alpha: number;
  sigma: number;
}

/**
 * One multistep update from point s0 to point t. `history` holds x0 predictions, newest last
 * (m0 = history[len - 1]); `from` holds their points (from[len - 1] = s0). `order` 1..3.
 */
export function dpmSolverPPStep(
  x: FloatArray,
  history: readonly FloatArray[],
  from: readonly AlphaSigma[],
  to: AlphaSigma,
  order: 1 | 2 | 3,
  solverType: DpmSolverType = 'midpoint',
): FloatArray {
  const r = roundOf(x);
  const m = mathOf(x);
  const lambda = (p: AlphaSigma): number => r(m.log(r(p.alpha)) - m.log(r(p.sigma)));
  to = { alpha: r(to.alpha), sigma: r(to.sigma) };
  const k = history.length;
  const s0 = { alpha: r(from[k - 1]!.alpha), sigma: r(from[k - 1]!.sigma) };
  const m0 = history[k - 1]!;
  const lt = lambda(to);
  const ls0 = lambda(s0);
  const h = r(lt - ls0);
  const em1 = r(m.exp(-h) - 1);
  const c1 = r(to.sigma / s0.sigma);
  const c2 = r(to.alpha * em1);
  const out = zerosLike(x);
  if (order === 1) {
    for (let i = 0; i < x.length; i++) out[i] = r(r(c1 * x[i]!) - r(c2 * m0[i]!));
    return out;
  }
  const m1 = history[k - 2]!;
  const h0 = r(ls0 - lambda(from[k - 2]!));
  const r0 = r(h0 / h);
  const inv0 = r(1 / r0);
  if (order === 2) {
    const c3 = solverType === 'midpoint' ? r(0.5 * c2) : r(to.alpha * r(r(em1 / h) + 1));
    for (let i = 0; i < x.length; i++) {
      const d1 = r(inv0 * r(m0[i]! - m1[i]!));
      const base = r(r(c1 * x[i]!) - r(c2 * m0[i]!));
      out[i] = solverType === 'midpoint' ? r(base - r(c3 * d1)) : r(base + r(c3 * d1));
    }
    return out;
  }
  const m2 = history[k - 3]!;
  const h1 = r(lambda(from[k - 2]!) - lambda(from[k - 3]!));
  const r1 = r(h1 / h);
  const inv1 = r(1 / r1);
  const r01 = r(r0 + r1);
  const w = r(r0 / r01);
  const inv01 = r(1 / r01);
  const c3 = r(to.alpha * r(r(em1 / h) + 1));
  const c4 = r(to.alpha * r(r(r(em1 + h) / r(h * h)) - 0.5));
  for (let i = 0; i < x.length; i++) {
    const d10 = r(inv0 * r(m0[i]! - m1[i]!));
    const d11 = r(inv1 * r(m1[i]! - m2[i]!));
    const diff = r(d10 - d11);
    const d1 = r(d10 + r(w * diff));
    const d2 = r(inv01 * diff);
    out[i] = r(r(r(r(c1 * x[i]!) - r(c2 * m0[i]!)) + r(c3 * d1)) - r(c4 * d2));
  }
  return out;
}

/**
 * The order diffusers uses at step i of n: lower orders while history builds up, first order
 * on a last step that lands on level 0 (or always, with eulerAtFinal), and for n < 15 with
 * lowerOrderFinal, order <= 1 on the last and <= 2 on the second-to-last step.
 */
export function dpmOrderAt(
  i: number,
  n: number,
  o: { order: number; lowerOrderFinal: boolean; eulerAtFinal: boolean; finalIsZero: boolean },
): 1 | 2 | 3 {
  const done = Math.min(i, o.order);
  const lastFirst =
    i === n - 1 && (o.eulerAtFinal || (o.lowerOrderFinal && n < 15) || o.finalIsZero);
  const secondLast = i === n - 2 && o.lowerOrderFinal && n < 15;
  if (o.order === 1 || done < 1 || lastFirst) return 1;
  if (o.order === 2 || done < 2 || secondLast) return 2;
  return 3;
}

export interface DpmSolverOptions extends SamplerOptions, X0Options {
  /** 1, 2 (2M, default) or 3 (3M). */
  order?: 1 | 2 | 3;
  solverType?: DpmSolverType;
  /** Default true: lower orders on the last steps when n < 15. */
  lowerOrderFinal?: boolean;
  eulerAtFinal?: boolean;
}

/** DPM-Solver++(2M / 3M) sampler (Lu et al. 2022, Algorithm 2) on any (alpha, sigma) schedule. */
export async function sampleDpmSolverPP(
  denoiser: Denoiser,
  x: Batch,
  schedule: Schedule,
  opts: DpmSolverOptions = {},
): Promise<Batch> {
  requireProcess(schedule, 'sampleDpmSolverPP', ['vp', 've', 'flow']);
  const n = schedule.timesteps.length;
  const order = opts.order ?? 2;
  const orderOpts = {
    order,
    lowerOrderFinal: opts.lowerOrderFinal ?? true,
    eulerAtFinal: opts.eulerAtFinal ?? false,
    finalIsZero: schedule.sigmas[n] === 0,
  };
  const point = (i: number): AlphaSigma => ({
    alpha: schedule.alphas[i]!,
    sigma: schedule.sigmas[i]!,
  });
  const history: FloatArray[] = [];
  const points: AlphaSigma[] = [];
  let cur: FloatArray = x.data.slice();
  for (let i = 0; i < n; i++) {
    throwIfAborted(opts.signal);
    const t = schedule.timesteps[i]!;
    opts.perturb?.(cur, i, t);
    const p = await evaluate(denoiser, withData(x, cur), t, opts.condition);
    const x0 = postprocessX0(
      toX0(denoiser.prediction, cur, p, point(i).alpha, point(i).sigma),
      x.shape,
      opts,
    );
    history.push(x0);
    points.push(point(i));
    if (history.length > order) {
      history.shift();
      points.shift();
    }
    const o = dpmOrderAt(i, n, orderOpts);
    cur = dpmSolverPPStep(
      cur,
      history.slice(-o),
      points.slice(-o),
      point(i + 1),
      o,
      opts.solverType,
    );
    report(opts, `dpmsolver++${order}m`, schedule, i, t, x, cur, x0);
  }
  return withData(x, cur);
}
