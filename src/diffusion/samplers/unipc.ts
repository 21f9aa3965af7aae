/**
 * @file UniPC: Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast
 * Sampling of Diffusion Models", Algorithm 1 (UniP-p predictor) and Algorithm 2 (UniC
 * corrector, which reuses the model evaluation at the new point), data prediction (x0), with
 * B(h) = e^h - 1 ("bh2") or h ("bh1"), as diffusers' UniPCMultistepScheduler implements them.
 *
 * | here   | paper                                          |
 * | ------ | ---------------------------------------------- |
 * | hh     | -h (data prediction), h = lambda_t - lambda_s0 |
 * | rks    | r_k = (lambda_{s_k} - lambda_s0) / h, then 1   |
 * | R, b   | the Vandermonde system of eq. (8)               |
 * | rhos   | a_k, the solution (1/2 when it is 1 x 1)        |
 */
import { mathOf, roundOf, zerosLike, type FloatArray } from '../arith.js';
import { solveSmallF32 } from '../diffusers/numerics.js';
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
import type { AlphaSigma } from './dpm.js';

export type UniPcSolverType = 'bh1' | 'bh2';

interface Coefs {
  h: number;
  hPhi1: number;
  bh: number;
  rks: number[];
  b: number[];
}

/** h, phi_1, B(h), r_k and b for an update from s0 to t; `older` points newest first. */
function coefficients(
  x: FloatArray,
  s0: AlphaSigma,
  t: AlphaSigma,
  older: readonly AlphaSigma[],
  order: number,
  type: UniPcSolverType,
): Coefs {
  const r = roundOf(x);
  const m = mathOf(x);
  const lambda = (p: AlphaSigma): number => r(m.log(r(p.alpha)) - m.log(r(p.sigma)));
  const ls0 = lambda(s0);
  const h = r(lambda(t) - ls0);
  const rks = older.slice(0, order - 1).map((p) => r(r(lambda(p) - ls0) / h));
  rks.push(1);
  const hh = -h;
  const hPhi1 = m.expm1(hh);
  const bh = type === 'bh2' ? m.expm1(hh) : hh;
  let hPhiK = r(r(hPhi1 / hh) - 1);
  let factorial = 1;
  const b: number[] = [];
  for (let i = 1; i <= order; i++) {
    b.push(r(r(hPhiK * factorial) / bh));
    factorial *= i + 1;
    hPhiK = r(r(hPhiK / hh) - r(1 / factorial));
  }
  return { h, hPhi1, bh, rks, b };
}

/** Rows of R: R[i][k] = rks[k]^i. */
function vandermonde(rks: number[], size: number, r: (x: number) => number): number[][] {
  return Array.from({ length: size }, (_, i) =>
    rks.slice(0, size).map((v) => {
      let p = 1;
      for (let k = 0; k < i; k++) p = k === 0 ? v : r(p * v);
      return p;
    }),
  );
}

/**
 * UniP predictor from s0 (newest entry of `history`/`points`) to `to`; `history` holds x0
 * predictions oldest first.
 */
export function uniPredictor(
  x: FloatArray,
  history: readonly FloatArray[],
  points: readonly AlphaSigma[],
  to: AlphaSigma,
  order: number,
  type: UniPcSolverType = 'bh2',
): FloatArray {
  const r = roundOf(x);
  const k = history.length;
  const s0 = points[k - 1]!;
  const m0 = history[k - 1]!;
  const older = points.slice(0, k - 1).reverse();
  const c = coefficients(x, s0, to, older, order, type);
  const D1s = older.slice(0, order - 1).map((_, j) => {
    const mi = history[k - 2 - j]!;
    return m0.map((v, i) => r(r(mi[i]! - v) / c.rks[j]!));
  });
  let rhos: number[] = [];
  if (D1s.length === 1) rhos = [0.5];
  else if (D1s.length > 1) {
    // diffusers solves the slice R[:-1, :-1], which torch factors without transposing
    rhos = solveSmallF32(vandermonde(c.rks, order - 1, r), c.b.slice(0, order - 1), r, false);
  }
  const c1 = r(r(to.sigma) / r(s0.sigma));
  const c2 = r(r(to.alpha) * c.hPhi1);
  const cb = r(r(to.alpha) * c.bh);
  const out = zerosLike(x);
  for (let i = 0; i < x.length; i++) {
    let v = r(r(c1 * x[i]!) - r(c2 * m0[i]!));
    if (D1s.length > 0) {
      let res = r(rhos[0]! * D1s[0]![i]!);
      for (let j = 1; j < D1s.length; j++) res = r(res + r(rhos[j]! * D1s[j]![i]!));
      v = r(v - r(cb * res));
    }
    out[i] = v;
  }
  return out;
}

/**
 * UniC corrector: refines `xt` (the predictor's result at point t) using the model's x0
 * prediction `mt` there. `lastX` is the state at s0; history / points as for the predictor,
 * still without `mt`; `order` is the order the predictor used.
 */
export function uniCorrector(
  xt: FloatArray,
  mt: FloatArray,
  lastX: FloatArray,
  history: readonly FloatArray[],
  points: readonly AlphaSigma[],
  t: AlphaSigma,
  order: number,
  type: UniPcSolverType = 'bh2',
): FloatArray {
  const r = roundOf(xt);
  const k = history.length;
  const s0 = points[k - 1]!;
  const m0 = history[k - 1]!;
  const older = points.slice(0, k - 1).reverse();
  const c = coefficients(xt, s0, t, older, order, type);
  const D1s = older.slice(0, order - 1).map((_, j) => {
    const mi = history[k - 2 - j]!;
    return m0.map((v, i) => r(r(mi[i]! - v) / c.rks[j]!));
  });
  const rhos = order === 1 ? [0.5] : solveSmallF32(vandermonde(c.rks, order, r), c.b, r);
  const c1 = r(r(t.sigma) / r(s0.sigma));
  const c2 = r(r(t.alpha) * c.hPhi1);
  const cb = r(r(t.alpha) * c.bh);
  const last = rhos[rhos.length - 1]!;
  const out = zerosLike(xt);
  for (let i = 0; i < xt.length; i++) {
    const base = r(r(c1 * lastX[i]!) - r(c2 * m0[i]!));
    let res = D1s.length > 0 ? r(rhos[0]! * D1s[0]![i]!) : 0;
    for (let j = 1; j < D1s.length; j++) res = r(res + r(rhos[j]! * D1s[j]![i]!));
    out[i] = r(base - r(cb * r(res + r(last * r(mt[i]! - m0[i]!)))));
  }
  return out;
}

/** The predictor order diffusers uses at step i of n (before capping by the history). */
export function uniPcOrderAt(
  i: number,
  n: number,
  order: number,
  lowerOrderFinal: boolean,
): number {
  const o = lowerOrderFinal ? Math.min(order, n - i) : order;
  return Math.min(o, Math.min(i, order) + 1);
}

export interface UniPcOptions extends SamplerOptions, X0Options {
  /** 1..3, default 2. */
  order?: number;
  solverType?: UniPcSolverType;
  lowerOrderFinal?: boolean;
  /** Steps after which the corrector is skipped (diffusers' disable_corrector). */
  disableCorrector?: readonly number[];
}

/** UniPC sampler (UniP-p + UniC, Zhao et al. 2023) over any (alpha, sigma) schedule. */
export async function sampleUniPc(
  denoiser: Denoiser,
  x: Batch,
  schedule: Schedule,
  opts: UniPcOptions = {},
): Promise<Batch> {
  requireProcess(schedule, 'sampleUniPc', ['vp', 've', 'flow']);
  const n = schedule.timesteps.length;
  const order = opts.order ?? 2;
  const type = opts.solverType ?? 'bh2';
  const point = (i: number): AlphaSigma => ({
    alpha: schedule.alphas[i]!,
    sigma: schedule.sigmas[i]!,
  });
  const history: FloatArray[] = [];
  const points: AlphaSigma[] = [];
  let cur: FloatArray = x.data.slice();
  let lastX: FloatArray | null = null;
  let lastOrder = 1;
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
    if (lastX && !(opts.disableCorrector ?? []).includes(i - 1)) {
      cur = uniCorrector(cur, x0, lastX, history, points, point(i), lastOrder, type);
    }
    history.push(x0);
    points.push(point(i));
    if (history.length > order) {
      history.shift();
      points.shift();
    }
    lastOrder = uniPcOrderAt(i, n, order, opts.lowerOrderFinal ?? true);
    lastX = cur;
    cur = uniPredictor(cur, history, points, point(i + 1), lastOrder, type);
    report(opts, `unipc-${type}`, schedule, i, t, x, cur, x0);
  }
  return withData(x, cur);
}
