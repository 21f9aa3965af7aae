/** Training targets, loss weightings and timestep sampling. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { seededRandom } from '../data/analytic/random.js';
import { lossWeight, noisySample, sampleTimesteps, trainingTarget } from './training.js';

describe('training', () => {
  const x0 = Float64Array.of(1, 2, 3, 4);
  const eps = Float64Array.of(0.5, -0.5, 1, -1);
  it('noisy samples and targets per row', () => {
    const alpha = [0.6, 1];
    const sigma = [0.8, 0];
    assert.deepEqual(Array.from(noisySample(x0, eps, alpha, sigma)), [0.6 + 0.4, 1.2 - 0.4, 3, 4]);
    assert.deepEqual(Array.from(trainingTarget('eps', x0, eps, alpha, sigma)), Array.from(eps));
    assert.deepEqual(Array.from(trainingTarget('x0', x0, eps, alpha, sigma)), Array.from(x0));
    assert.deepEqual(
      Array.from(trainingTarget('flow', x0, eps, alpha, sigma)),
      [-0.5, -2.5, -2, -5],
    );
    const v = trainingTarget('v', x0, eps, alpha, sigma);
    assert.ok(Math.abs(v[0]! - (0.6 * 0.5 - 0.8 * 1)) < 1e-15);
  });
  it('Min-SNR-gamma: min(snr, g) / snr for eps, / (snr + 1) for v, min(snr, g) for x0', () => {
    const [alpha, sigma] = [0.6, 0.8];
    const snr = (alpha * alpha) / (sigma * sigma);
    const w = { kind: 'min_snr' as const, gamma: 5 };
    assert.ok(Math.abs(lossWeight(w, 'eps', alpha, sigma) - Math.min(snr, 5) / snr) < 1e-12);
    assert.ok(Math.abs(lossWeight(w, 'v', alpha, sigma) - Math.min(snr, 5) / (snr + 1)) < 1e-12);
    assert.equal(lossWeight(w, 'x0', 0.99, 0.1), 5);
    assert.equal(lossWeight({ kind: 'uniform' }, 'eps', alpha, sigma), 1);
  });
  it('EDM weighting is (s^2 + sd^2) / (s sd)^2 on x0', () => {
    const w = { kind: 'edm' as const, sigmaData: 0.5 };
    assert.ok(Math.abs(lossWeight(w, 'x0', 1, 2) - (4 + 0.25) / (2 * 0.5) ** 2) < 1e-12);
    // for eps the x0 weight is multiplied by (sigma / alpha)^2
    assert.ok(Math.abs(lossWeight(w, 'eps', 1, 2) - 4 * lossWeight(w, 'x0', 1, 2)) < 1e-12);
  });
  it('timestep samplers have the right ranges and moments', () => {
    const rng = seededRandom(4);
    const d = sampleTimesteps({ kind: 'uniform_discrete', numTrainTimesteps: 1000 }, 4000, rng);
    assert.ok(d.every((t) => Number.isInteger(t) && t >= 0 && t < 1000));
    assert.ok(Math.abs(d.reduce((s, t) => s + t, 0) / 4000 - 499.5) < 15);
    const u = sampleTimesteps({ kind: 'uniform', tMin: 0.2, tMax: 0.4 }, 1000, rng);
    assert.ok(u.every((t) => t >= 0.2 && t <= 0.4));
    const ln = sampleTimesteps({ kind: 'logit_normal', mean: 0, std: 1 }, 4000, rng);
    assert.ok(ln.every((t) => t > 0 && t < 1));
    assert.ok(Math.abs(ln.reduce((s, t) => s + t, 0) / 4000 - 0.5) < 0.02);
    const e = sampleTimesteps({ kind: 'edm_lognormal', pMean: -1.2, pStd: 1.2 }, 4000, rng);
    const meanLog = e.reduce((s, t) => s + Math.log(t), 0) / 4000;
    assert.ok(Math.abs(meanLog + 1.2) < 0.08);
  });
});
