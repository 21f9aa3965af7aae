/**
 * Deterministic solvers show their order of accuracy on the probability-flow ODE of a
 * full-rank Gaussian mixture (smooth down to sigma = 0), in float64 (METHODS 19): the error
 * against a 2,000-step Heun reference falls like N^-p over N = 5, 10, 20, 40, 80, with p about
 * 1 for DDIM / Euler / flow Euler and about 2 for Heun, DPM-Solver++ 2M, UniPC and flow Heun.
 * Schedules are uniform in time (cosine VP t in [0.99, 0]; flow s in [0.995, 0]).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { seededRandom } from '../../data/analytic/random.js';
import type { Batch } from '../denoiser.js';
import type { Process } from '../process.js';
import { scheduleFromTimes, uniformTimes } from '../schedule.js';
import { sampleDdim } from './ddim.js';
import { sampleDpmSolverPP } from './dpm.js';
import { sampleEuler } from './euler.js';
import { flow, mixture2d, predictionFor, vp, type Sampler } from '../../../test/support/sampler-fixtures.js';
import { sampleFlowEuler, sampleFlowHeun } from './flow.js';
import { sampleHeun } from './heun.js';
import { sampleUniPc } from './unipc.js';

const mix = mixture2d();
const ROWS = 64;
const STEPS = [5, 10, 20, 40, 80];
const z = seededRandom(1).normal(ROWS * 2);

async function solve(p: Process, sampler: Sampler, n: number): Promise<Float64Array> {
  const schedule = scheduleFromTimes(p, uniformTimes(n, p.kind === 'flow' ? 0.995 : 0.99, 0));
  const x: Batch = { data: z.map((v) => v * schedule.sigmas[0]!), shape: [ROWS, 2] };
  const out = await sampler(mix.denoiser(p, predictionFor(p)), x, schedule, {});
  return out.data as Float64Array;
}

const rms = (a: Float64Array, b: Float64Array): number =>
  Math.sqrt(a.reduce((s, v, i) => s + (v - b[i]!) ** 2, 0) / ROWS);

/** Least-squares slope of log(error) against log(N). */
function slope(errors: number[]): number {
  const xs = STEPS.map(Math.log);
  const ys = errors.map(Math.log);
  const mx = xs.reduce((s, v) => s + v, 0) / xs.length;
  const my = ys.reduce((s, v) => s + v, 0) / ys.length;
  let num = 0;
  let den = 0;
  xs.forEach((x, i) => {
    num += (x - mx) * (ys[i]! - my);
    den += (x - mx) ** 2;
  });
  return -num / den;
}

const CASES: { name: string; process: Process; sample: Sampler; order: [number, number] }[] = [
  { name: 'ddim', process: vp, sample: sampleDdim, order: [0.8, 1.2] },
  { name: 'euler', process: vp, sample: sampleEuler, order: [0.8, 1.2] },
  { name: 'heun', process: vp, sample: sampleHeun, order: [1.7, 2.6] },
  { name: 'dpm-solver++ 2m', process: vp, sample: sampleDpmSolverPP, order: [1.7, 2.5] },
  // the last step to sigma = 0 is first order, which caps 3M near 2 on this schedule
  {
    name: 'dpm-solver++ 3m',
    process: vp,
    sample: (d, x, s, o) => sampleDpmSolverPP(d, x, s, { ...o, order: 3 }),
    order: [1.4, 3.2],
  },
  { name: 'unipc bh2', process: vp, sample: sampleUniPc, order: [1.7, 2.5] },
  { name: 'flow euler', process: flow, sample: sampleFlowEuler, order: [0.8, 1.2] },
  { name: 'flow heun', process: flow, sample: sampleFlowHeun, order: [1.7, 2.5] },
];

describe('order of accuracy on the PF-ODE (2-D full-rank mixture, float64)', async () => {
  const reference = new Map<Process, Float64Array>([
    [vp, await solve(vp, sampleHeun, 2000)],
    [flow, await solve(flow, sampleFlowHeun, 2000)],
  ]);
  for (const c of CASES) {
    it(`${c.name}: slope in [${c.order.join(', ')}]`, async (t) => {
      const ref = reference.get(c.process)!;
      const errors: number[] = [];
      for (const n of STEPS) errors.push(rms(await solve(c.process, c.sample, n), ref));
      const p = slope(errors);
      t.diagnostic(
        `errors ${errors.map((e) => e.toExponential(2)).join(' ')}; slope ${p.toFixed(2)}`,
      );
      assert.ok(
        errors.every((e, i) => i === 0 || e < errors[i - 1]!),
        `errors fall monotonically: ${errors}`,
      );
      assert.ok(
        p > c.order[0] && p < c.order[1],
        `slope ${p.toFixed(2)} outside [${c.order.join(', ')}]`,
      );
    });
  }
});
