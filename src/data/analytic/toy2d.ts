/**
 * @file 2-D toy datasets: two moons (as scikit-learn's make_moons), swiss roll (its 2-D
 * projection), 8 gaussians and checkerboard (as in FFJORD, Grathwohl et al. 2019). Each draws
 * n points [n x 2] from a RandomSource; `eightGaussians` is also a GaussianMixture, so it has
 * an exact denoiser.
 */
import { GaussianMixture } from './mixture.js';
import type { RandomSource } from './random.js';

export type Toy2D = 'two_moons' | 'swiss_roll' | 'eight_gaussians' | 'checkerboard';

/** Two interleaved half circles: (cos t, sin t) and (1 - cos t, 1/2 - sin t), t in [0, pi]. */
export function twoMoons(n: number, rng: RandomSource, noise = 0.05): Float64Array {
  const out = new Float64Array(2 * n);
  const t = rng.uniform(n);
  const z = rng.normal(2 * n);
  for (let i = 0; i < n; i++) {
    const a = Math.PI * t[i]!;
    const upper = i % 2 === 0;
    out[2 * i] = (upper ? Math.cos(a) : 1 - Math.cos(a)) + noise * z[2 * i]!;
    out[2 * i + 1] = (upper ? Math.sin(a) : 0.5 - Math.sin(a)) + noise * z[2 * i + 1]!;
  }
  return out;
}

/** Swiss roll in 2-D: t (cos t, sin t) / 5 with t = 1.5 pi (1 + 2u). */
export function swissRoll(n: number, rng: RandomSource, noise = 0.1): Float64Array {
  const out = new Float64Array(2 * n);
  const u = rng.uniform(n);
  const z = rng.normal(2 * n);
  for (let i = 0; i < n; i++) {
    const t = 1.5 * Math.PI * (1 + 2 * u[i]!);
    out[2 * i] = (t * Math.cos(t)) / 5 + noise * z[2 * i]!;
    out[2 * i + 1] = (t * Math.sin(t)) / 5 + noise * z[2 * i + 1]!;
  }
  return out;
}

/** Eight isotropic Gaussians (std `std`) at radius `radius`, angles k pi / 4, equal weights. */
export function eightGaussiansMixture(radius = 2, std = 0.1): GaussianMixture {
  const means = Array.from({ length: 8 }, (_, k) => [
    radius * Math.cos((k * Math.PI) / 4),
    radius * Math.sin((k * Math.PI) / 4),
  ]);
  const cov = [std * std, 0, 0, std * std];
  return GaussianMixture.full(
    new Array(8).fill(1),
    means,
    means.map(() => cov),
  );
}

export function eightGaussians(n: number, rng: RandomSource, radius = 2, std = 0.1): Float64Array {
  return eightGaussiansMixture(radius, std).sample(n, rng).x;
}

/** Checkerboard on [-2, 2]^2: uniform on the 8 cells where floor(x) + floor(y) is even. */
export function checkerboard(n: number, rng: RandomSource): Float64Array {
  const out = new Float64Array(2 * n);
  const u = rng.uniform(3 * n);
  for (let i = 0; i < n; i++) {
    const x = 4 * u[3 * i]! - 2;
    const row = Math.floor(u[3 * i + 1]! * 2) * 2; // 0 or 2: which of the two matching rows
    const y = u[3 * i + 2]! - 2 + row + (((Math.floor(x) % 2) + 2) % 2);
    out[2 * i] = x;
    out[2 * i + 1] = y;
  }
  return out;
}

/** Draws from a toy dataset by name. */
export function sampleToy2D(name: Toy2D, n: number, rng: RandomSource): Float64Array {
  switch (name) {
    case 'two_moons':
      return twoMoons(n, rng);
    case 'swiss_roll':
      return swissRoll(n, rng);
    case 'eight_gaussians':
      return eightGaussians(n, rng);
    case 'checkerboard':
      return checkerboard(n, rng);
  }
}
