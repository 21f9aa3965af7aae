/** Classifier-free guidance (one batched call, rescale, interval) and the guidance hook. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { HostArray } from '../engine/host.js';
import type { Batch, Denoiser } from './denoiser.js';
import { classifierFreeGuidance, withGuidance } from './guidance.js';
import { toX0 } from './predictions.js';
import { cosineVp } from './process.js';

/** A denoiser that predicts eps = x + condition (per row) and counts its calls. */
function fake(): Denoiser & { calls: number[] } {
  const calls: number[] = [];
  return {
    calls,
    prediction: 'eps',
    async predict(x: Batch, _t: Float64Array, condition?: unknown): Promise<Batch> {
      const c = condition as HostArray<'float32'>;
      calls.push(x.shape[0]!);
      const per = x.data.length / x.shape[0]!;
      const out = Float32Array.from(x.data, (v, i) => v + c.data[Math.floor(i / per)]!);
      return new HostArray<'float32'>(out, x.shape, 'float32');
    },
  };
}

const x = new HostArray<'float32'>(Float32Array.of(1, 2, 3, 4), [2, 2], 'float32');
const cond = new HostArray<'float32'>(Float32Array.of(1, 2), [2, 1], 'float32');
const uncond = new HostArray<'float32'>(Float32Array.of(0, 0), [2, 1], 'float32');

describe('classifier-free guidance', () => {
  it('one batched call; u + w (c - u)', async () => {
    const base = fake();
    const g = classifierFreeGuidance(base, { scale: 3, uncondition: uncond });
    const out = await g.predict(x, Float64Array.of(0.5, 0.5), cond);
    assert.deepEqual(base.calls, [4]);
    assert.deepEqual(Array.from(out.data), [1 + 3, 2 + 3, 3 + 6, 4 + 6]);
  });
  it('outside the guidance interval: one conditional call', async () => {
    const base = fake();
    const g = classifierFreeGuidance(base, {
      scale: 3,
      uncondition: uncond,
      interval: [0.2, 0.4],
    });
    const out = await g.predict(x, Float64Array.of(0.5, 0.5), cond);
    assert.deepEqual(base.calls, [2]);
    assert.deepEqual(Array.from(out.data), [2, 3, 5, 6]);
  });
  it('rescale (phi = 1) gives the per-sample std of the conditional prediction', async () => {
    const base = fake();
    const g = classifierFreeGuidance(base, { scale: 3, uncondition: uncond, rescale: 1 });
    const out = await g.predict(
      new HostArray<'float32'>(Float32Array.of(1, 3, 2, 7), [2, 2], 'float32'),
      Float64Array.of(0.5, 0.5),
      cond,
    );
    const std = (a: number, b: number): number => Math.abs(a - b) / Math.SQRT2;
    assert.ok(Math.abs(std(out.data[0]!, out.data[1]!) - std(2, 4)) < 1e-5);
    assert.ok(Math.abs(std(out.data[2]!, out.data[3]!) - std(4, 9)) < 1e-5);
  });
  it('rejects conditions it cannot batch', async () => {
    const g = classifierFreeGuidance(fake(), { scale: 2, uncondition: 'x' });
    await assert.rejects(g.predict(x, Float64Array.of(0.5, 0.5), { prompt: 'a' }), /opts\.concat/);
  });
});

describe('gradient guidance hook', () => {
  it('shifts the x0 estimate by the correction, in the base prediction type', async () => {
    const proc = cosineVp();
    const base = fake();
    const shift = 0.25;
    const g = withGuidance(base, proc, (_x, _t, denoised) => denoised.map(() => shift));
    const t = Float64Array.of(0.3, 0.3);
    const plain = await base.predict(x, t, cond);
    const guided = await g.predict(x, t, cond);
    const { alpha, sigma } = proc.at(0.3);
    const a = toX0('eps', x.data, plain.data, alpha, sigma);
    const b = toX0('eps', x.data, guided.data, alpha, sigma);
    a.forEach((v, i) => assert.ok(Math.abs(b[i]! - v - shift) < 1e-5));
  });
});
