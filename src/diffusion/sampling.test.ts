/**
 * The sampling path against diffusers' own recordings: each recorded loop (the default-config
 * files in the golden set and test/data/diffusion/schedulers_extra.json, diffusers 0.31.0 on
 * torch 1.13) is run through `sample` with a denoiser that answers the recorded model outputs
 * and checks that it is asked at the recorded (scaled) inputs. Every model input and every
 * step's state must be bit-exact (0 float32 ulps).
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { HostArray } from '../engine/host.js';
import { goldenDir, testDataDir } from '../../test/support/paths.js';
import type { Batch, Denoiser, StepRecord } from './denoiser.js';
import type { SchedulerClass } from './diffusers/config.js';
import { maxUlp } from './diffusers/replay.js';
import { parseScheduler } from './diffusers/spec.js';
import { sample, SAMPLER_NAMES, samplerSchedule, SAMPLERS, samplersFor, samplerSpec, type SamplerName } from './sampling.js';
import { trainingScheduler } from './training.js';
import { startScale } from './schedule.js';

interface Recording {
  className: SchedulerClass;
  config: Record<string, unknown>;
  steps: number;
  shape: number[];
  initial: number[];
  mu?: number;
  records: { t: number; model_input: number[]; model_output: number[]; noise?: number[];
    prev_sample: number[] }[];
}

const NAME: Record<SchedulerClass, SamplerName> = {
  DDPMScheduler: 'ddpm', DDIMScheduler: 'ddim', EulerDiscreteScheduler: 'euler',
  EulerAncestralDiscreteScheduler: 'euler-a', HeunDiscreteScheduler: 'heun',
  DPMSolverMultistepScheduler: 'dpm++2m', UniPCMultistepScheduler: 'unipc',
  FlowMatchEulerDiscreteScheduler: 'flow-euler', FlowMatchHeunDiscreteScheduler: 'flow-heun',
};

function samplerOf(r: Recording): SamplerName {
  const name = NAME[r.className];
  return name === 'dpm++2m' && r.config.solver_order === 3 ? 'dpm++3m' : name;
}

/**
 * The unit noise z whose start state is the recorded initial sample: diffusers' latents are
 * z * init_noise_sigma, and level-frame samplers apply that factor themselves.
 */
function unitNoise(r: Recording, scale: number): Float32Array {
  return Float32Array.from(r.initial, (y) => {
    let z = Math.fround(y / scale);
    const probe = new Float32Array(1);
    for (const step of [0, 1, -1, 2, -2]) {
      probe[0] = z;
      const i = new Int32Array(probe.buffer);
      i[0] = i[0]! + step;
      if (Math.fround(probe[0]! * scale) === y) return probe[0]!;
    }
    return z;
  });
}

/** Runs a recording through `sample`; returns the worst ulp distance of inputs and states. */
const replayed = new Set<string>();

async function replayThroughSample(r: Recording): Promise<{ inputs: number; states: number;
  calls: number }> {
  const name = samplerOf(r);
  replayed.add(name);
  const spec = parseScheduler({ ...r.config, _class_name: r.className });
  const schedule = samplerSchedule(name, spec, r.steps, r.mu);
  const levelFrame = ['euler', 'euler-a', 'heun'].includes(name);
  const x0 = levelFrame ? unitNoise(r, startScale(schedule)) : Float32Array.from(r.initial);
  let calls = 0;
  let inputs = 0;
  const denoiser: Denoiser = {
    prediction: spec.prediction,
    async predict(x: Batch): Promise<Batch> {
      const rec = r.records[calls++]!;
      inputs = Math.max(inputs, maxUlp(x.data, rec.model_input));
      return new HostArray<'float32'>(Float32Array.from(rec.model_output), r.shape, 'float32');
    },
  };
  // Heun-type recordings step twice per sampler step: the state after step i is the second
  // stage's (the last step, to level 0, has one stage).
  const twoStage = name === 'heun' || name === 'flow-heun';
  const stateAfter = (i: number): number[] =>
    r.records[twoStage ? Math.min(2 * i + 1, r.records.length - 1) : i]!.prev_sample;
  let states = 0;
  const onStep = (s: StepRecord): void => {
    states = Math.max(states, maxUlp(s.x.data, stateAfter(s.index)));
  };
  const noise = (n: number, step: number): Float32Array => {
    const z = r.records[twoStage ? 2 * step : step]!.noise;
    assert.ok(z, `step ${step} asked for noise that diffusers did not draw`);
    return Float32Array.from(z);
  };
  const out = await sample(denoiser, new HostArray<'float32'>(x0, r.shape, 'float32'), spec, {
    sampler: name, steps: r.steps, noise, onStep, ...(r.mu != null ? { mu: r.mu } : {}),
  });
  const final = r.records[r.records.length - 1]!.prev_sample;
  // Level-frame samplers return the process frame; at a final level of 0 that is the same.
  if (!levelFrame || schedule.levels[r.steps] === 0) {
    states = Math.max(states, maxUlp(out.data, final));
  }
  return { inputs, states, calls };
}

type Json = any; // recorded JSON of a fixed layout (see the generators)
const load = (path: string): Json => JSON.parse(readFileSync(path, 'utf8'));

describe('sample() replays diffusers recordings bit for bit', () => {
  const golden = ['ddpm', 'ddim', 'euler_discrete', 'dpmsolver_multistep', 'unipc_multistep',
    'flow_match_euler_discrete'];
  for (const file of golden) {
    const path = join(goldenDir, 'schedulers', `${file}.json`);
    it(`${file} (diffusers defaults)`, async () => {
      assert.ok(existsSync(path), `${path} is missing`);
      const g = load(path);
      for (const [key, rp] of Object.entries<Json>(g.replays)) {
        if (rp.step_kwargs.eta) continue; // the named ddim is eta 0; the adapter replays eta 1
        const r: Recording = {
          className: g.scheduler_class, config: g.config, steps: rp.num_inference_steps,
          shape: rp.sample_shape, initial: rp.initial_sample.data,
          records: rp.steps.map((s: Json) => ({
            t: s.t, model_input: s.scaled_model_input.data, model_output: s.model_output.data,
            noise: (s.internal_noise_drawn ?? s.variance_noise)?.data,
            prev_sample: s.prev_sample.data,
          })),
        };
        const rep = await replayThroughSample(r);
        assert.deepEqual(rep, { inputs: 0, states: 0, calls: r.records.length }, `replay ${key}`);
      }
    });
  }

  const d = load(join(testDataDir, 'diffusion', 'schedulers_extra.json'));
  for (const [name, c] of Object.entries<Json>(d.cases)) {
    // Named samplers run without churn and with DDIM's eta 0; the adapter replays the others.
    if (c.step_kwargs.s_churn || c.step_kwargs.eta) continue;
    it(name, async () => {
      const r: Recording = {
        className: c.class, config: c.config, steps: c.num_inference_steps,
        shape: d.meta.sample_shape, initial: c.initial_sample, mu: c.mu ?? undefined,
        records: c.steps.map((s: Json) => ({ t: s.t, model_input: s.scaled_model_input,
          model_output: s.model_output, noise: s.noise, prev_sample: s.prev_sample })),
      };
      const rep = await replayThroughSample(r);
      assert.deepEqual(rep, { inputs: 0, states: 0, calls: r.records.length });
    });
  }

  it('every named sampler was replayed above', () => {
    assert.deepEqual(Object.keys(SAMPLERS).filter((n) => !replayed.has(n)), []);
  });
});

describe('samplersFor', () => {
  it('lists exactly the samplers samplerSpec accepts for the model\'s process', () => {
    for (const objective of ['eps', 'flow'] as const) {
      const spec = trainingScheduler(objective);
      const accepted = SAMPLER_NAMES.filter((name) => {
        try {
          samplerSpec(name, spec);
          return true;
        } catch {
          return false;
        }
      });
      assert.deepEqual(samplersFor(spec), accepted);
    }
    assert.deepEqual(samplersFor(trainingScheduler('flow')), ['flow-euler', 'flow-heun']);
  });
});
