/** scheduler_config.json parsing: defaults, validation errors, unknown keys, round trip. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError, configToJson, parseSchedulerConfig, SCHEDULER_CLASSES } from './config.js';
import { EulerDiscreteScheduler, schedulerFromConfig } from './schedulers.js';

describe('scheduler configs', () => {
  it('fills diffusers defaults for every class', () => {
    for (const cls of SCHEDULER_CLASSES) {
      const c = parseSchedulerConfig({ _class_name: cls });
      assert.equal(c._class_name, cls);
      assert.equal(c['num_train_timesteps'], 1000);
    }
    assert.equal(
      parseSchedulerConfig({ _class_name: 'HeunDiscreteScheduler' })['beta_start'],
      0.00085,
    );
    assert.equal(
      parseSchedulerConfig({ _class_name: 'DDIMScheduler' })['timestep_spacing'],
      'leading',
    );
  });

  it('throws a ConfigError naming the key, value and allowed set', () => {
    const bad = (json: Record<string, unknown>, key: string, pattern: RegExp): void => {
      assert.throws(
        () => parseSchedulerConfig(json),
        (e: unknown) => {
          assert.ok(e instanceof ConfigError);
          assert.equal(e.key, key);
          assert.match(e.message, pattern);
          return true;
        },
      );
    };
    bad(
      { _class_name: 'DDIMScheduler', timestep_spacing: 'even' },
      'timestep_spacing',
      /"linspace" \| "leading" \| "trailing"/,
    );
    bad(
      { _class_name: 'DDPMScheduler', variance_type: 'learned' },
      'variance_type',
      /not implemented/,
    );
    bad(
      { _class_name: 'EulerDiscreteScheduler', num_train_timesteps: 10.5 },
      'num_train_timesteps',
      /integer/,
    );
    bad(
      { _class_name: 'DPMSolverMultistepScheduler', algorithm_type: 'sde-dpmsolver++' },
      'algorithm_type',
      /not implemented/,
    );
    bad({ _class_name: 'NoSuchScheduler' }, '_class_name', /DDPMScheduler/);
  });

  it('refuses schedules out of range before building a table', () => {
    const cases: [Record<string, unknown>, string, RegExp][] = [
      [{ _class_name: 'DDPMScheduler', beta_end: 5 }, 'beta_end', /in \(0, 1\)/],
      [{ _class_name: 'DDIMScheduler', beta_start: 0 }, 'beta_start', /in \(0, 1\)/],
      [{ _class_name: 'DDIMScheduler', num_train_timesteps: 1e9 }, 'num_train_timesteps',
        /an integer in \[1, 100000\]/],
      [{ _class_name: 'FlowMatchEulerDiscreteScheduler', num_train_timesteps: 1e9 },
        'num_train_timesteps', /\[1, 100000\]/],
      [{ _class_name: 'FlowMatchEulerDiscreteScheduler', shift: 0 }, 'shift', /\(0, inf\)/],
      [{ _class_name: 'DDPMScheduler', steps_offset: 1e12 }, 'steps_offset', /\[0, 100000\)/],
      [{ _class_name: 'DDPMScheduler', trained_betas: [0.1, 1.5] }, 'trained_betas', /\(0, 1\]/],
      [{ _class_name: 'DPMSolverMultistepScheduler', solver_order: 4 }, 'solver_order', /\[1, 3\]/],
      [{ _class_name: 'DDIMScheduler', dynamic_thresholding_ratio: 2 }, 'dynamic_thresholding_ratio',
        /\(0, 1\]/],
    ];
    for (const [json, key, expected] of cases) {
      assert.throws(() => parseSchedulerConfig(json), (e: unknown) => {
        assert.ok(e instanceof ConfigError, String(e));
        assert.equal(e.key, key);
        assert.match(e.message, expected);
        return true;
      });
    }
    // The edges that real configs use stay accepted.
    const ok = parseSchedulerConfig({ _class_name: 'DDPMScheduler', num_train_timesteps: 100000,
      beta_end: 0.999, trained_betas: [0.5, 1] });
    assert.equal(ok['num_train_timesteps'], 100000);
  });

  it('warns about unknown keys and ignores metadata', () => {
    const warnings: string[] = [];
    parseSchedulerConfig(
      { _class_name: 'DDIMScheduler', _diffusers_version: '0.31.0', clip_sample_max: 2 },
      { warn: (m) => warnings.push(m) },
    );
    assert.deepEqual(warnings, ["DDIMScheduler: unknown config key 'clip_sample_max' ignored"]);
  });

  it('round-trips through scheduler_config.json form', () => {
    const s = schedulerFromConfig({
      _class_name: 'DPMSolverMultistepScheduler',
      solver_order: 3,
      use_karras_sigmas: true,
    });
    const json = s.toConfig();
    assert.equal(json['lambda_min_clipped'], '-inf');
    const again = schedulerFromConfig(JSON.parse(JSON.stringify(json)));
    assert.deepEqual(again.config, s.config);
    assert.deepEqual(configToJson(again.config), json);
  });

  it('is frozen', () => {
    const c = parseSchedulerConfig({ _class_name: 'DDPMScheduler' });
    assert.throws(() => {
      (c as Record<string, unknown>)['beta_start'] = 1;
    }, TypeError);
  });

  it("fromConfig drives one class with another class's config (diffusers _compatibles)", () => {
    const ddpm = schedulerFromConfig({
      _class_name: 'DDPMScheduler',
      beta_schedule: 'scaled_linear',
    });
    const warnings: string[] = [];
    const euler = EulerDiscreteScheduler.fromConfig(ddpm.toConfig(), {
      warn: (m) => warnings.push(m),
    });
    assert.ok(euler instanceof EulerDiscreteScheduler);
    assert.equal(euler.config['beta_schedule'], 'scaled_linear');
    assert.equal(euler.config['timestep_spacing'], 'leading');
    assert.ok(warnings.some((w) => w.includes("'variance_type'")));
  });
});
