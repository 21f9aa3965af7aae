/** Forward processes: beta tables, zero terminal SNR, continuous processes, level inversion. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  alphasCumprod,
  coefficientsAtLevel,
  cosineVp,
  discreteVp,
  makeBetas,
  rectifiedFlow,
  shiftFlow,
  veProcess,
} from './process.js';
import { karrasLevels, scheduleFromLevels, scheduleFromTimes, uniformTimes } from './schedule.js';

describe('discrete VP tables', () => {
  it('beta schedules have their endpoints and shapes', () => {
    const lin = makeBetas({
      numTrainTimesteps: 1000,
      betaStart: 1e-4,
      betaEnd: 0.02,
      betaSchedule: 'linear',
    });
    assert.equal(lin[0], Math.fround(1e-4));
    assert.equal(lin[999], Math.fround(0.02));
    const sc = makeBetas({
      numTrainTimesteps: 1000,
      betaStart: 0.00085,
      betaEnd: 0.012,
      betaSchedule: 'scaled_linear',
    });
    assert.ok(Math.abs(sc[999]! - 0.012) < 1e-8);
    const cos = makeBetas({
      numTrainTimesteps: 1000,
      betaStart: 0,
      betaEnd: 0,
      betaSchedule: 'squaredcos_cap_v2',
    });
    assert.equal(cos[999], Math.fround(0.999));
    const trained = makeBetas({
      numTrainTimesteps: 3,
      betaStart: 0,
      betaEnd: 0,
      betaSchedule: 'linear',
      trainedBetas: [0.1, 0.2, 0.3],
    });
    assert.deepEqual(Array.from(trained), [0.1, 0.2, 0.3].map(Math.fround));
  });
  it('zero terminal SNR rescaling keeps alpha-bar_0 and zeroes the last', () => {
    const o = {
      numTrainTimesteps: 1000,
      betaStart: 0.00085,
      betaEnd: 0.012,
      betaSchedule: 'scaled_linear' as const,
    };
    const before = alphasCumprod(makeBetas(o));
    const after = alphasCumprod(makeBetas({ ...o, rescaleBetasZeroSnr: true }));
    assert.ok(Math.abs(after[0]! - before[0]!) < 1e-6);
    assert.equal(after[999], 0);
  });
  it('discreteVp interpolates noise levels and inverts them', () => {
    const acp = alphasCumprod(
      makeBetas({
        numTrainTimesteps: 1000,
        betaStart: 1e-4,
        betaEnd: 0.02,
        betaSchedule: 'linear',
      }),
    );
    const p = discreteVp(acp);
    const { alpha } = p.at(500);
    assert.ok(Math.abs(alpha * alpha - acp[500]!) < 1e-6);
    for (const t of [3, 250.5, 990]) {
      const { alpha: a, sigma: s } = p.at(t);
      assert.ok(Math.abs(p.timeAtLevel(s / a) - t) < 0.05, `t ${t}`);
    }
  });
});

describe('continuous processes', () => {
  for (const p of [cosineVp(), veProcess(), rectifiedFlow({ timeScale: 1000 })]) {
    it(`${p.kind}: timeAtLevel inverts at(), coefficients match the kind`, () => {
      for (const f of [0.1, 0.5, 0.9]) {
        const t = p.tMin + f * (p.tMax - p.tMin);
        const { alpha, sigma } = p.at(t);
        assert.ok(Math.abs(p.timeAtLevel(sigma / alpha) - t) < 1e-9 * Math.max(1, p.tMax));
        const c = coefficientsAtLevel(p.kind, sigma / alpha);
        assert.ok(Math.abs(c.alpha - alpha) < 1e-12 && Math.abs(c.sigma - sigma) < 1e-12);
      }
    });
  }
  it('VP: alpha^2 + sigma^2 = 1; flow: alpha + sigma = 1; shift fixes 0 and 1', () => {
    const { alpha, sigma } = cosineVp().at(0.3);
    assert.ok(Math.abs(alpha * alpha + sigma * sigma - 1) < 1e-12);
    const f = rectifiedFlow({ timeScale: 1 }).at(0.3);
    assert.equal(f.alpha + f.sigma, 1);
    assert.equal(shiftFlow(0, 3), 0);
    assert.equal(shiftFlow(1, 3), 1);
    assert.ok(shiftFlow(0.5, 3) > 0.5);
  });
});

describe('schedules', () => {
  it('Karras levels run from sigma_max to sigma_min, then 0', () => {
    const l = karrasLevels(10, 0.002, 80);
    assert.ok(Math.abs(l[0]! - 80) < 1e-9 && Math.abs(l[9]! - 0.002) < 1e-12 && l[10] === 0);
    for (let i = 1; i < 10; i++) assert.ok(l[i]! < l[i - 1]!);
  });
  it('schedules are immutable and consistent', () => {
    const s = scheduleFromTimes(cosineVp(), uniformTimes(5, 0.9, 0));
    assert.ok(Object.isFrozen(s));
    assert.equal(s.timesteps.length, 5);
    assert.equal(s.sigmas[5], 0);
    s.levels.forEach((l, i) => assert.ok(Math.abs(l - s.sigmas[i]! / s.alphas[i]!) < 1e-12));
    const e = scheduleFromLevels(veProcess(), karrasLevels(4, 0.01, 10));
    assert.deepEqual(Array.from(e.timesteps), Array.from(e.levels.subarray(0, 4)));
  });
});
