/**
 * The contract every sampler keeps (docs/architecture.md, convention 18): shape and precision preserved (a float32
 * HostArray in, a HostArray out), deterministic under a seeded noise source, one typed step
 * record per step, abortable, and clear errors for missing noise or a wrong process.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { HostArray } from '../../engine/host.js';
import type { StepRecord } from '../denoiser.js';
import { karrasLevels, scheduleFromLevels } from '../schedule.js';
import { flow, mixture2d, noiseSource, predictionFor, SAMPLERS, vp } from '../../../test/support/sampler-fixtures.js';

const mix = mixture2d();
const x = (): HostArray<'float32'> =>
  new HostArray<'float32'>(
    Float32Array.from({ length: 8 }, (_, i) => Math.sin(i + 1)),
    [4, 2],
    'float32',
  );

describe('sampler contract', () => {
  for (const c of SAMPLERS) {
    const schedule = scheduleFromLevels(c.process, karrasLevels(6, 0.01, 50));
    const den = mix.denoiser(c.process, predictionFor(c.process));
    it(`${c.name}: shape, precision, determinism, step records`, async () => {
      const records: StepRecord[] = [];
      const a = await c.sample(den, x(), schedule, {
        noise: noiseSource(1),
        onStep: (r) => records.push(r),
      });
      const b = await c.sample(den, x(), schedule, { noise: noiseSource(1) });
      assert.ok(a instanceof HostArray);
      assert.deepEqual(a.shape, [4, 2]);
      assert.ok(a.data instanceof Float32Array);
      assert.deepEqual(Array.from(a.data), Array.from(b.data));
      assert.ok(a.data.every(Number.isFinite));
      assert.equal(records.length, 6);
      records.forEach((r, i) => {
        assert.equal(r.index, i);
        assert.equal(r.total, 6);
        // churn evaluates at a raised level, i.e. a later (noisier) time
        if (c.name.includes('churn')) assert.ok(r.t >= schedule.timesteps[i]!);
        else assert.equal(r.t, schedule.timesteps[i]);
        assert.deepEqual(r.x.shape, [4, 2]);
        assert.deepEqual(r.denoised.shape, [4, 2]);
      });
      if (c.stochastic) {
        const other = await c.sample(den, x(), schedule, { noise: noiseSource(2) });
        assert.notDeepEqual(Array.from(a.data), Array.from(other.data));
      }
    });

    it(`${c.name}: aborts, and names what is missing`, async () => {
      const ctl = new AbortController();
      ctl.abort(new Error('stop'));
      await assert.rejects(
        c.sample(den, x(), schedule, { noise: noiseSource(1), signal: ctl.signal }),
        /stop/,
      );
      if (c.stochastic)
        await assert.rejects(c.sample(den, x(), schedule, {}), /opts\.noise is required/);
      const wrong = scheduleFromLevels(c.process === flow ? vp : flow, karrasLevels(6, 0.01, 50));
      if (!c.name.startsWith('dpm') && !c.name.startsWith('unipc')) {
        await assert.rejects(
          c.sample(den, x(), wrong, { noise: noiseSource(1) }),
          /process '(vp|flow)' is not supported/,
        );
      }
    });
  }
});
