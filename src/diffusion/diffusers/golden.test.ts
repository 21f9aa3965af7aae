/**
 * Scheduler replays against diffusers' own recordings: the default configs in
 * test/data/golden/schedulers/*.json (diffusers 0.31.0, torch 1.13.1) and other configs in
 * test/data/diffusion/schedulers_extra.json (diffusers 0.31.0's scheduler code, same stack;
 * see generate_schedulers_extra.py there). Every table and every step output must be
 * bit-exact (0 float32 ulps).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { HostArray } from '../../engine/host.js';
import { goldenDir, testDataDir } from '../../../test/support/paths.js';
import type { SchedulerClass } from './config.js';
import { maxUlp, replay, type RecordedLoop, type RecordedStep } from './replay.js';
import { FlowMatchEulerDiscreteScheduler, schedulerFromConfig } from './schedulers.js';
import { trainTables } from './tables.js';

interface Tensor {
  shape: number[];
  data: number[];
}
// recorded JSON of a fixed layout (see the generators); read structurally
type Json = any;

const GOLDEN = [
  'ddpm',
  'ddim',
  'euler_discrete',
  'dpmsolver_multistep',
  'unipc_multistep',
  'flow_match_euler_discrete',
];
const load = (path: string): Json => JSON.parse(readFileSync(path, 'utf8'));
const f32 = (t: Tensor | number[]): Float32Array =>
  Float32Array.from(Array.isArray(t) ? t : t.data);
const host = (t: Tensor | number[], shape?: number[]): HostArray<'float32'> =>
  new HostArray<'float32'>(f32(t), shape ?? (t as Tensor).shape, 'float32');
const scalar = (v: number | Tensor | undefined): number | undefined =>
  v === undefined ? undefined : typeof v === 'number' ? v : v.data[0];

describe('golden scheduler replays (test/data/golden/schedulers, diffusers defaults)', () => {
  for (const name of GOLDEN) {
    const path = join(goldenDir, 'schedulers', `${name}.json`);
    it(
      `${name}: tables and every step bit-exact`,
      () => {
        const g = load(path);
        const cls = g.scheduler_class as SchedulerClass;
        const config = { ...g.config, _class_name: cls };
        if (g.train_arrays.alphas_cumprod) {
          const tt = trainTables(schedulerFromConfig(config).config);
          assert.equal(maxUlp(tt.betas, g.train_arrays.betas.data), 0, 'betas');
          assert.equal(
            maxUlp(tt.alphasCumprod, g.train_arrays.alphas_cumprod.data),
            0,
            'alphas_cumprod',
          );
        }
        for (const [n, st] of Object.entries<Json>(g.set_timesteps)) {
          const s = schedulerFromConfig(config);
          s.setTimesteps(Number(n));
          assert.deepEqual(
            Array.from(s.timesteps),
            st.timesteps.data.map(Math.fround),
            `timesteps n=${n}`,
          );
          if (st.sigmas) assert.equal(maxUlp(s.sigmas, st.sigmas.data), 0, `sigmas n=${n}`);
          assert.equal(
            s.initNoiseSigma,
            scalar(st.init_noise_sigma) ?? 1,
            `init_noise_sigma n=${n}`,
          );
        }
        for (const [key, rp] of Object.entries<Json>(g.replays)) {
          const records: RecordedStep[] = rp.steps.map((s: Json) => ({
            t: s.t,
            sample_in: s.sample_in.data,
            scaled_model_input: s.scaled_model_input.data,
            model_output: s.model_output.data,
            noise: (s.internal_noise_drawn ?? s.variance_noise)?.data,
            prev_sample: s.prev_sample.data,
            pred_original_sample: s.pred_original_sample?.data,
          }));
          const rec: RecordedLoop = {
            className: cls,
            config: g.config,
            steps: rp.num_inference_steps,
            shape: rp.sample_shape,
            initialSample: rp.initial_sample.data,
            timesteps: rp.timesteps.data,
            records,
            ...(rp.step_kwargs.eta !== undefined
              ? { stepOptions: { eta: rp.step_kwargs.eta } }
              : {}),
          };
          assert.deepEqual(
            replay(rec),
            {
              timesteps: 0,
              sigmas: 0,
              initNoiseSigma: 0,
              scaledInput: 0,
              prevSample: 0,
              predOriginalSample: 0,
            },
            `replay ${key}`,
          );
        }
        if (g.add_noise) {
          const a = g.add_noise;
          const s = schedulerFromConfig(config);
          const out = s.addNoise(host(a.original_samples), host(a.noise), a.timesteps.data);
          assert.equal(maxUlp(out.data, a.noisy_samples.data), 0, 'add_noise');
        }
        if (g.scale_noise) {
          const a = g.scale_noise;
          const s = schedulerFromConfig(config) as FlowMatchEulerDiscreteScheduler;
          s.setTimesteps(10);
          const out = s.scaleNoise(host(a.sample), scalar(a.timestep)!, host(a.noise));
          assert.equal(maxUlp(out.data, a.result.data), 0, 'scale_noise');
        }
      },
    );
  }
});

describe('scheduler replays beyond the defaults (test/data/diffusion/schedulers_extra)', () => {
  const d = load(join(testDataDir, 'diffusion', 'schedulers_extra.json'));
  for (const [name, c] of Object.entries<Json>(d.cases)) {
    it(`${name}: bit-exact`, () => {
      const kw = c.step_kwargs;
      const stepOptions = {
        ...(kw.eta !== undefined ? { eta: kw.eta } : {}),
        ...(kw.s_churn !== undefined
          ? { sChurn: kw.s_churn, sTmin: kw.s_tmin, sTmax: kw.s_tmax }
          : {}),
      };
      const report = replay({
        className: c.class,
        config: c.config,
        steps: c.num_inference_steps,
        shape: d.meta.sample_shape,
        initialSample: c.initial_sample,
        timesteps: c.timesteps,
        sigmas: c.sigmas,
        initNoiseSigma: c.init_noise_sigma,
        mu: c.mu,
        stepOptions,
        records: c.steps,
      });
      assert.deepEqual(report, {
        timesteps: 0,
        sigmas: 0,
        initNoiseSigma: 0,
        scaledInput: 0,
        prevSample: 0,
        predOriginalSample: 0,
      });
      // timesteps exactly (float64 where diffusers keeps them float64, e.g. Heun with Karras)
      const s = schedulerFromConfig({ ...c.config, _class_name: c.class });
      s.setTimesteps(c.num_inference_steps, c.mu != null ? { mu: c.mu } : {});
      assert.deepEqual(Array.from(s.timesteps), c.timesteps);
    });
  }

  it('add_noise of the schedule-based classes (scale_noise for FlowMatch)', () => {
    const a = d.add_noise_zsnr;
    for (const [cls, r] of Object.entries<Json>(d.add_noise_schedules)) {
      const s = schedulerFromConfig({ _class_name: cls });
      s.setTimesteps(10);
      const x0 = host(a.original_samples, [3, 1, 2, 2]);
      const z = host(a.noise, [3, 1, 2, 2]);
      assert.equal(maxUlp(s.addNoise(x0, z, r.timesteps).data, r.noisy_samples), 0, cls);
    }
  });

  it('add_noise and get_velocity with zero terminal SNR', () => {
    const a = d.add_noise_zsnr;
    const s = schedulerFromConfig({ _class_name: 'DDIMScheduler', rescale_betas_zero_snr: true });
    const x0 = host(a.original_samples, [3, 1, 2, 2]);
    const z = host(a.noise, [3, 1, 2, 2]);
    assert.equal(maxUlp(s.addNoise(x0, z, a.timesteps).data, a.noisy_samples), 0);
    assert.equal(maxUlp(s.getVelocity(x0, z, a.timesteps).data, a.velocity), 0);
  });
});

describe('diffusers quirks', () => {
  it('DDIM steps to t - T // n by default; prevFromSchedule steps to the next timestep', () => {
    const cfg = { _class_name: 'DDIMScheduler', timestep_spacing: 'trailing', clip_sample: false };
    const quirky = schedulerFromConfig(cfg);
    const fixed = schedulerFromConfig(cfg, { prevFromSchedule: true });
    quirky.setTimesteps(7);
    fixed.setTimesteps(7);
    const x = host([0.5, -0.25], [1, 2]);
    const eps = host([0.1, 0.2], [1, 2]);
    const t0 = quirky.timesteps[0]!;
    const a = quirky.step(eps, t0, x).prevSample.data;
    const b = fixed.step(eps, t0, x).prevSample.data;
    assert.notDeepEqual(Array.from(a), Array.from(b));
  });
});
