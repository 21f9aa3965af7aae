/**
 * @file The randomness analytic datasets draw from, as an argument (docs/architecture.md, convention 12). The project's
 * counter-based RNG (engine/random) adapts to `RandomSource`; `seededRandom` is a small
 * deterministic stand-in (SplitMix32 + Box-Muller) for tests and toys, not a replacement.
 */

import type { RandomSource } from '../../engine/random/source.js';

export type { RandomSource };

/** A deterministic source from a 32-bit seed. */
export function seededRandom(seed: number): RandomSource & {
  uniform(n: number): Float64Array; normal(n: number): Float64Array } {
  let state = seed >>> 0;
  const next = (): number => {
    state = (state + 0x9e3779b9) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return ((z ^ (z >>> 16)) >>> 0) / 4294967296;
  };
  return {
    uniform: (n) => Float64Array.from({ length: n }, next),
    normal: (n) => {
      const out = new Float64Array(n);
      for (let i = 0; i < n; i += 2) {
        const u1 = 1 - next();
        const u2 = next();
        const rad = Math.sqrt(-2 * Math.log(u1));
        out[i] = rad * Math.cos(2 * Math.PI * u2);
        if (i + 1 < n) out[i + 1] = rad * Math.sin(2 * Math.PI * u2);
      }
      return out;
    },
  };
}
