/** The diffusers-style loop: a Denoiser through a scheduler adapter; noise, abort, progress. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { alphasCumprod, discreteVp, makeBetas } from './process.js';
import { schedulerFromConfig } from './diffusers/schedulers.js';
import { runScheduler } from './loop.js';
import { mixture2d, noiseSource } from '../../test/support/sampler-fixtures.js';

describe('runScheduler', () => {
  const acp = alphasCumprod(
    makeBetas({ numTrainTimesteps: 1000, betaStart: 1e-4, betaEnd: 0.02, betaSchedule: 'linear' }),
  );
  const den = mixture2d().denoiser(discreteVp(acp), 'eps');
  for (const cls of [
    'DDPMScheduler',
    'DDIMScheduler',
    'EulerDiscreteScheduler',
    'EulerAncestralDiscreteScheduler',
    'HeunDiscreteScheduler',
    'DPMSolverMultistepScheduler',
    'UniPCMultistepScheduler',
  ]) {
    it(`${cls}: samples near the data, reports every step`, async () => {
      const s = schedulerFromConfig(
        { _class_name: cls, clip_sample: false, beta_start: 1e-4, beta_end: 0.02 },
        { warn: () => {} },
      );
      const steps: number[] = [];
      const out = await runScheduler(den, s, {
        steps: 25,
        shape: [256, 2],
        noise: noiseSource(1),
        onProgress: (p) => steps.push(p.step),
      });
      assert.equal(steps.length, s.timesteps.length);
      let m = 0;
      out.data.forEach((v) => (m += v / out.data.length));
      // the data mean is (-0.1, 0.31): 0.105 averaged over both coordinates
      assert.ok(Math.abs(m - 0.105) < 0.1, `mean ${m}`);
      assert.ok(out.data.every((v) => Math.abs(v) < 5));
    });
  }
  it('aborts and checks the prediction type', async () => {
    const s = schedulerFromConfig({ _class_name: 'DDIMScheduler' });
    const ctl = new AbortController();
    ctl.abort(new Error('cancelled'));
    await assert.rejects(
      runScheduler(den, s, { steps: 5, shape: [1, 2], noise: noiseSource(1), signal: ctl.signal }),
      /cancelled/,
    );
    const v = schedulerFromConfig({
      _class_name: 'DDIMScheduler',
      prediction_type: 'v_prediction',
    });
    await assert.rejects(
      runScheduler(den, v, { steps: 5, shape: [1, 2], noise: noiseSource(1) }),
      /predicts 'eps'/,
    );
  });
});
