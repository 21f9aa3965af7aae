/**
 * DDIM (eta = 0) inversion with the exact denoiser of a full-rank mixture round-trips its
 * input: x -> invertDdim -> sampleDdim returns x up to an error that falls at first order in
 * the step size (Song et al. 2021, sec. 4.3). Cosine VP, uniform t in [0.99, 0.001], float64.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { seededRandom } from '../../data/analytic/random.js';
import { scheduleFromTimes, uniformTimes } from '../schedule.js';
import { invertDdim, sampleDdim } from './ddim.js';
import { mixture2d, vp } from '../../../test/support/sampler-fixtures.js';

describe('DDIM inversion', () => {
  it('round-trips with a first-order error at 10, 100 and 1,000 steps', async (t) => {
    const mix = mixture2d();
    const rows = 256;
    const x0 = mix.sample(rows, seededRandom(3)).x;
    const den = mix.denoiser(vp, 'eps');
    const errors: number[] = [];
    for (const n of [10, 100, 1000]) {
      const schedule = scheduleFromTimes(vp, uniformTimes(n, 0.99, 0.001));
      const noise = await invertDdim(den, { data: x0, shape: [rows, 2] }, schedule);
      const back = await sampleDdim(den, noise, schedule);
      let sq = 0;
      back.data.forEach((v, i) => (sq += (v - x0[i]!) ** 2));
      errors.push(Math.sqrt(sq / rows));
    }
    t.diagnostic(
      `rms round-trip error at 10 / 100 / 1000 steps: ` +
        errors.map((e) => e.toExponential(3)).join(' / '),
    );
    assert.ok(errors[0]! < 0.5);
    for (let i = 1; i < errors.length; i++) {
      const ratio = errors[i]! / errors[i - 1]!;
      assert.ok(
        ratio > 0.05 && ratio < 0.2,
        `10x the steps should cut the error about 10x, got ${ratio}`,
      );
    }
  });

  it('needs an end point with sigma > 0', async () => {
    const schedule = scheduleFromTimes(vp, uniformTimes(4, 0.99, 0));
    await assert.rejects(
      invertDdim(
        mixture2d().denoiser(vp, 'eps'),
        { data: new Float64Array(2), shape: [1, 2] },
        schedule,
      ),
      /sigma > 0/,
    );
  });
});
