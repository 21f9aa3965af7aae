import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import { callRows, inBatches, type Batch, type Denoiser } from './denoiser.js';

/** A denoiser whose output row r is x's row plus 100 t + its label, recording each call's rows. */
function recording(calls: number[]): Denoiser {
  return {
    prediction: 'eps',
    async predict(x: Batch, t: Float64Array, condition?: unknown): Promise<Batch> {
      const n = x.shape[0]!;
      calls.push(n);
      assert.ok(x instanceof HostArray, 'a float32 batch reaches the base as a HostArray');
      const per = x.data.length / n;
      const labels = condition as number[];
      return new HostArray(Float32Array.from(x.data, (v, i) => v + 100 * t[Math.floor(i / per)]! +
        labels[Math.floor(i / per)]!), x.shape, 'float32');
    },
  };
}

test('inBatches: calls of near-equal rows, the whole batch\'s result, labels and times per row', async () => {
  for (const [n, rows, want] of [[64, 21, [16, 16, 16, 16]], [10, 4, [4, 4, 2]], [8, 8, [8]], [5, 1, [1, 1, 1, 1, 1]]] as const) {
    const x = new HostArray(Float32Array.from({ length: n * 3 }, (_, i) => i), [n, 3], 'float32');
    const t = Float64Array.from({ length: n }, (_, i) => i / 10);
    const labels = Array.from({ length: n }, (_, i) => i % 7);
    const whole = await recording([]).predict(x, t, labels);
    const calls: number[] = [];
    const split = await inBatches(recording(calls), rows).predict(x, t, labels);
    assert.deepEqual(calls, want, `${n} rows at most ${rows} a call`);
    assert.deepEqual(split.shape, [n, 3]);
    assert.deepEqual(Array.from(split.data), Array.from(whole.data));
  }
  assert.throws(() => inBatches(recording([]), 0), /rows must be an integer >= 1, got 0/);
  assert.deepEqual(callRows(128, 32), [32, 32, 32, 32]);
  assert.deepEqual(callRows(64, Infinity), [64]);
});
