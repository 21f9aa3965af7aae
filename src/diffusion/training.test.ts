/** Training targets, loss weightings and timestep sampling. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { seededRandom } from '../data/analytic/random.js';
import { HostArray } from '../engine/host.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { trainTables } from './diffusers/tables.js';
import { fromX0Eps, PREDICTIONS } from './predictions.js';
import {
  lossWeight, noisySample, pointsAt, sampleTimesteps, trainingPoints, trainingScheduler,
  trainingTarget,
} from './training.js';

describe('training', () => {
  it('traced noisy samples and targets equal the host conversions (predictions.ts) per row', async () => {
    const x0 = HostArray.fromNested([[1, 2], [3, 4]]);
    const eps = HostArray.fromNested([[0.5, -0.5], [1, -1]]);
    const alpha = HostArray.fromNested([[0.6], [1]]);
    const sigma = HostArray.fromNested([[0.8], [0]]);
    const xt = await compile((a: Tensor, b: Tensor, c: Tensor, d: Tensor) => noisySample(a, b, c, d))(
      x0, eps, alpha, sigma);
    const want = [0.6 + 0.4, 1.2 - 0.4, 3, 4];
    (xt.data as Float32Array).forEach((v, i) => assert.ok(Math.abs(v - want[i]!) < 1e-6, `${v}`));
    for (const pred of PREDICTIONS) {
      const f = compile((a: Tensor, b: Tensor, c: Tensor, d: Tensor) =>
        trainingTarget(pred, a, b, c, d));
      const got = Array.from((await f(x0, eps, alpha, sigma)).data as Float32Array);
      const want = [0, 1].flatMap((r) => Array.from(fromX0Eps(pred,
        (x0.data as Float32Array).subarray(2 * r, 2 * r + 2),
        (eps.data as Float32Array).subarray(2 * r, 2 * r + 2), [0.6, 1][r]!, [0.8, 0][r]!)));
      assert.deepEqual(got, want, pred);
      await f.dispose();
    }
  });
  it('training points: DDPM steps read alphas_cumprod, flow times are s T', () => {
    const ddpm = trainingScheduler('eps');
    const acp = trainTables(ddpm.config).alphasCumprod;
    const p = trainingPoints(ddpm, [0, 0.5, 0.9999999]);
    assert.deepEqual(Array.from(p.t), [0, 500, 999]);
    assert.equal(p.alpha[1], Math.fround(Math.sqrt(acp[500]!)));
    assert.equal(p.sigma[2], Math.fround(Math.sqrt(1 - acp[999]!)));
    assert.throws(() => pointsAt(ddpm, [1000]), /1000 is not a step in \[0, 1000\)/);
    const flow = trainingPoints(trainingScheduler('flow'), [0.25]);
    assert.deepEqual([flow.t[0], flow.alpha[0], flow.sigma[0]], [250, 0.75, 0.25]);
    assert.equal(trainingScheduler('v').config.prediction_type, 'v_prediction');
    assert.equal(trainingScheduler('x0').prediction, 'x0');
    assert.equal(trainingScheduler('eps').config.clip_sample, false);
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
