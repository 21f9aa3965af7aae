/**
 * Every sampler, driven by the exact denoiser of a 2-D Gaussian mixture and of a 16-D mixture
 * of rank-2 Gaussians, converges to the true distribution as the number of steps grows
 * (METHODS 18): mean and covariance error, sliced Wasserstein distance to true samples,
 * distance to the union of subspaces, and component frequencies. Karras schedules (rho 7,
 * levels 100 -> 0.002 -> 0); starting points drawn from the exact marginal at the first level.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { HostArray } from '../../engine/host.js';
import {
  assignComponents,
  componentFrequencies,
  momentErrors,
  slicedWasserstein,
  subspaceResiduals,
} from '../../data/analytic/metrics.js';
import type { GaussianMixture } from '../../data/analytic/mixture.js';
import { seededRandom } from '../../data/analytic/random.js';
import { karrasLevels, scheduleFromLevels } from '../schedule.js';
import {
  mixture16d,
  mixture2d,
  noiseSource,
  predictionFor,
  SAMPLERS,
  type SamplerCase,
} from '../../../test/support/sampler-fixtures.js';

interface Scores {
  mean: number;
  cov: number;
  sw: number;
  tv: number;
  residual: number;
}

async function score(
  c: SamplerCase,
  mix: GaussianMixture,
  rows: number,
  steps: number,
): Promise<Scores> {
  const D = mix.dim;
  const schedule = scheduleFromLevels(c.process, karrasLevels(steps, 0.002, 100));
  const x0 = mix.sample(rows, seededRandom(5)).x;
  const z = seededRandom(6).normal(rows * D);
  const a = schedule.alphas[0]!;
  const s = schedule.sigmas[0]!;
  const x = new HostArray<'float32'>(
    Float32Array.from(x0, (v, i) => a * v + s * z[i]!),
    [rows, D],
    'float32',
  );
  const den = mix.denoiser(c.process, predictionFor(c.process));
  const out = (await c.sample(den, x, schedule, { noise: noiseSource(3) })).data;
  const moments = momentErrors(out, D, mix.moments());
  const truth = mix.sample(rows, seededRandom(99)).x;
  return {
    ...moments,
    sw: slicedWasserstein(out, truth, D, seededRandom(11), 32),
    tv: componentFrequencies(assignComponents(out, mix, 0.05), mix).tv,
    residual: subspaceResiduals(out, mix).residual.reduce((p, v) => p + v, 0) / rows,
  };
}

const fmt = (s: Scores): string =>
  `mean ${s.mean.toFixed(3)} cov ${s.cov.toFixed(3)} sw ${s.sw.toFixed(3)} ` +
  `tv ${s.tv.toFixed(3)} res ${s.residual.toExponential(1)}`;

// Sampling noise of a perfect sampler: the mean error is about sqrt(trace(Cov) / rows), 0.031
// in 2-D (2,000 rows) and 0.17 in 16-D (1,000 rows); two independent true sample sets are
// 0.04 (2-D) and 0.026 (16-D) apart in sliced W1. The bounds are about twice that, leaving room
// for the stochastic samplers' extra variance; 5 steps are far outside them.
const CASES = [
  {
    name: '2-D full-rank mixture',
    mix: mixture2d(),
    rows: 2000,
    bound: { mean: 0.08, cov: 0.2, sw: 0.07, tv: 0.03, residual: Infinity },
  },
  {
    name: '16-D rank-2 mixture',
    mix: mixture16d(),
    rows: 1000,
    bound: { mean: 0.3, cov: 1.2, sw: 0.06, tv: 0.04, residual: 1e-3 },
  },
];

for (const data of CASES) {
  describe(`samplers converge to the ${data.name}`, () => {
    for (const c of SAMPLERS) {
      it(c.name, async (t) => {
        const coarse = await score(c, data.mix, data.rows, 5);
        const fine = await score(c, data.mix, data.rows, 80);
        t.diagnostic(`5 steps: ${fmt(coarse)}`);
        t.diagnostic(`80 steps: ${fmt(fine)}`);
        assert.ok(fine.sw < coarse.sw, `sliced W1 falls with steps: ${coarse.sw} -> ${fine.sw}`);
        for (const k of ['mean', 'cov', 'sw', 'tv', 'residual'] as const) {
          assert.ok(
            fine[k] < data.bound[k],
            `${k} after 80 steps: ${fine[k]} >= ${data.bound[k]}`,
          );
        }
      });
    }
  });
}
