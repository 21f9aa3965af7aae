/** The bench's batch-1 sampling row: classifier-free guidance as one batched call of 2 with the
 *  null class, combined as uncond + scale (cond - uncond) (bench/models.ts ddimRun). */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HostArray } from '../src/engine/host.js';
import { CFG_SCALE, ddimRun, ditBenchModel, unetBenchModel } from '../bench/models.js';

type Fwd = Parameters<typeof ddimRun>[1];

test('ddimRun guided: one call of 2 rows per step, [class, null], eps_u + s (eps_c - eps_u)', async () => {
  const m = ditBenchModel('latent');
  const calls: string[] = [];
  // eps 0.1 for a class, 0 for the null class: guided eps is CFG_SCALE * 0.1 everywhere.
  const fake = (async (x: HostArray, _t: HostArray, labels: HostArray) => {
    const ls = Array.from(labels.data as BigInt64Array, Number);
    calls.push(`${x.shape.join('x')}:${ls.join(',')}`);
    const per = x.data.length / ls.length;
    return new HostArray(Float32Array.from({ length: x.data.length },
      (_, i) => (ls[Math.floor(i / per)] === m.nullClass ? 0 : 0.1)), x.shape);
  }) as unknown as Fwd;
  const constant = (async (x: HostArray) =>
    new HostArray(new Float32Array(x.data.length).fill(CFG_SCALE * 0.1), x.shape)) as unknown as Fwd;
  const guided = await ddimRun(m, fake, 4, 1, true)();
  const plain = await ddimRun(m, constant, 4, 1)();
  assert.equal(calls.length, 4);
  assert.match(calls[0]!, new RegExp(`^2x4x16x16:\\d+,${m.nullClass}$`));
  assert.deepEqual(guided.shape, [1, 4, 16, 16]);
  for (let i = 0; i < guided.data.length; i++) {
    assert.ok(Math.abs((guided.data[i] as number) - (plain.data[i] as number)) < 1e-6, `element ${i}`);
  }
});

test('ddimRun guided refuses an unconditional model', () => {
  const m = unetBenchModel();
  assert.equal(m.nullClass, undefined);
  assert.throws(() => ddimRun(m, (async () => null) as unknown as Fwd, 2, 1, true), /unet has no null class/);
});
