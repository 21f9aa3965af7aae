/**
 * @file Shared setup of the sampler tests: the two analytic datasets (a full-rank 2-D
 * Gaussian mixture and a 16-D mixture of rank-2 Gaussians), the sampler table the suites
 * iterate over, and seeded noise sources.
 */
import { GaussianMixture, randomBasis } from '../../src/data/analytic/mixture.js';
import { seededRandom } from '../../src/data/analytic/random.js';
import type { Batch, Denoiser, NoiseSource, SamplerOptions } from '../../src/diffusion/denoiser.js';
import { cosineVp, rectifiedFlow, type Process } from '../../src/diffusion/process.js';
import type { Schedule } from '../../src/diffusion/schedule.js';
import { sampleDdim } from '../../src/diffusion/samplers/ddim.js';
import { sampleDdpm } from '../../src/diffusion/samplers/ddpm.js';
import { sampleDpmSolverPP } from '../../src/diffusion/samplers/dpm.js';
import { sampleEuler, sampleEulerAncestral } from '../../src/diffusion/samplers/euler.js';
import { sampleFlowEuler, sampleFlowHeun } from '../../src/diffusion/samplers/flow.js';
import { sampleHeun } from '../../src/diffusion/samplers/heun.js';
import { sampleUniPc } from '../../src/diffusion/samplers/unipc.js';

/** Three full-rank components in 2-D (weights 0.5 / 0.3 / 0.2). */
export function mixture2d(): GaussianMixture {
  return GaussianMixture.full(
    [0.5, 0.3, 0.2],
    [
      [-1, 0.5],
      [1, 1],
      [0.5, -1.2],
    ],
    [
      [0.25, 0.05, 0.05, 0.16],
      [0.09, 0, 0, 0.36],
      [0.2, -0.1, -0.1, 0.2],
    ],
  );
}

/** Three rank-2 components in 16-D with random means (scale 1.5) and bases. */
export function mixture16d(): GaussianMixture {
  const rng = seededRandom(7);
  const D = 16;
  const means = [0, 1, 2].map(() => Array.from(rng.normal(D), (v) => 1.5 * v));
  const bases = [0, 1, 2].map(() => Array.from(randomBasis(D, 2, rng)));
  return GaussianMixture.lowRank([0.5, 0.3, 0.2], means, bases, [2, 2, 2]);
}

export const vp = cosineVp({ tMax: 0.995 });
export const flow = rectifiedFlow({ timeScale: 1 });

/** Noise for step k from its own seeded stream. */
export function noiseSource(seed: number): NoiseSource {
  return (n, step) => Float32Array.from(seededRandom(seed * 7919 + step + 1).normal(n));
}

export type Sampler = (d: Denoiser, x: Batch, s: Schedule, o: SamplerOptions) => Promise<Batch>;

export interface SamplerCase {
  name: string;
  process: Process;
  sample: Sampler;
  stochastic: boolean;
}

/** Every sampler, with the options that select its variant. */
export const SAMPLERS: readonly SamplerCase[] = [
  { name: 'ddpm', process: vp, sample: (d, x, s, o) => sampleDdpm(d, x, s, o), stochastic: true },
  {
    name: 'ddim (eta 0)',
    process: vp,
    sample: (d, x, s, o) => sampleDdim(d, x, s, o),
    stochastic: false,
  },
  {
    name: 'ddim (eta 1)',
    process: vp,
    sample: (d, x, s, o) => sampleDdim(d, x, s, { ...o, eta: 1 }),
    stochastic: true,
  },
  {
    name: 'euler',
    process: vp,
    sample: (d, x, s, o) => sampleEuler(d, x, s, o),
    stochastic: false,
  },
  {
    name: 'euler (churn)',
    process: vp,
    stochastic: true,
    sample: (d, x, s, o) => sampleEuler(d, x, s, { ...o, churn: { churn: 20, process: vp } }),
  },
  {
    name: 'euler ancestral',
    process: vp,
    sample: (d, x, s, o) => sampleEulerAncestral(d, x, s, o),
    stochastic: true,
  },
  { name: 'heun', process: vp, sample: (d, x, s, o) => sampleHeun(d, x, s, o), stochastic: false },
  {
    name: 'heun (churn)',
    process: vp,
    stochastic: true,
    sample: (d, x, s, o) => sampleHeun(d, x, s, { ...o, churn: { churn: 10, process: vp } }),
  },
  {
    name: 'dpm-solver++ 2m',
    process: vp,
    sample: (d, x, s, o) => sampleDpmSolverPP(d, x, s, o),
    stochastic: false,
  },
  {
    name: 'dpm-solver++ 3m',
    process: vp,
    stochastic: false,
    sample: (d, x, s, o) => sampleDpmSolverPP(d, x, s, { ...o, order: 3 }),
  },
  {
    name: 'unipc bh2',
    process: vp,
    sample: (d, x, s, o) => sampleUniPc(d, x, s, o),
    stochastic: false,
  },
  {
    name: 'flow euler',
    process: flow,
    sample: (d, x, s, o) => sampleFlowEuler(d, x, s, o),
    stochastic: false,
  },
  {
    name: 'flow heun',
    process: flow,
    sample: (d, x, s, o) => sampleFlowHeun(d, x, s, o),
    stochastic: false,
  },
];

/** The prediction type each process's denoiser uses in the tests. */
export function predictionFor(p: Process): 'eps' | 'flow' {
  return p.kind === 'flow' ? 'flow' : 'eps';
}
