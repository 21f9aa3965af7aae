/** Faster Diffusion: key steps, the parallel decoder's exactness, noise injection. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { mapTree, type Tree } from '../engine/tree.js';
import { UNET2D_PRESETS, UNet2DModel } from '../models/unet2d.js';
import type { ParamsOf } from '../nn/module.js';
import { sampleImages } from '../pipelines/sample.js';
import { withTinyPipeline } from '../../test/support/tiny-pipeline.js';
import {
  fasterDiffusionDenoiser, fasterDiffusionPasses, keyStepGroups, keyStepSchedule, PAPER_KEY_STEPS,
} from './faster-diffusion.js';

const at = (s: boolean[]) => s.flatMap((k, j) => (k ? [j] : []));
const maxDiff = (a: ArrayLike<number>, b: ArrayLike<number>) =>
  Array.from(a).reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);

test('key steps: the paper\'s 50-step list, every k; groups run to the next key step', () => {
  assert.deepEqual(at(keyStepSchedule(50, 'paper')), [...PAPER_KEY_STEPS]);
  assert.deepEqual(at(keyStepSchedule(10, 3)), [0, 3, 6, 9]);
  assert.deepEqual(at(keyStepSchedule(20, 'paper')), [0, 1, 2, 3, 5, 10, 15]);
  assert.deepEqual(keyStepGroups(keyStepSchedule(12, 'paper')),
    [[0], [1], [2], [3, 4], [5, 6, 7, 8, 9], [10, 11]]);
  assert.throws(() => keyStepSchedule(10, 0), /'paper' or an integer k >= 1/);
});

function smallUnet() {
  const unet = new UNet2DModel({ ...UNET2D_PRESETS['mnist-s'], sample_size: 8,
    block_out_channels: [8, 16, 16], norm_num_groups: 4 });
  const params = mapTree(unet.init(RngKey.fromSeed(1)) as Tree<HostArray>,
    (x): x is HostArray => x instanceof HostArray, (a) => ops.constant(a)) as ParamsOf<UNet2DModel>;
  return { unet, params };
}

test('the key pass: its first rows are the whole U-Net; the decoder on its features at ' +
  'other times equals the batched decoder', async () => {
  const { unet, params } = smallUnet();
  const { key, decoder } = fasterDiffusionPasses(unet, params, false);
  const x = new HostArray(RngKey.fromSeed(2).normal(2 * 64), [2, 1, 8, 8], 'float32');
  const t = new HostArray(Float32Array.from([900, 900]), [2]);
  const ts = new HostArray(Float32Array.from([900, 900, 880, 880, 860, 860]), [6]);
  const f = compile((a: Tensor, b: Tensor, c: Tensor) => ({ ...key(a, b, c),
    plain: unet.forward(params, a, b) }));
  const d = compile((h: Tensor, s: Tensor[], c: Tensor) => decoder(h, s, c));
  const r = (await f(x, t, ts)) as { out: HostArray; hidden: HostArray; skips: HostArray[];
    plain: HostArray };
  const n = 2 * 64;
  const outs = r.out.data as Float32Array;
  assert.ok(maxDiff(outs.subarray(0, n), r.plain.data as Float32Array) < 1e-5);
  const alone = (await d(r.hidden, r.skips, new HostArray(Float32Array.from([860, 860]), [2]))) as HostArray;
  assert.ok(maxDiff(outs.subarray(2 * n), alone.data as Float32Array) < 1e-5);
  // A different time gives a different output: the decoder does see its own t.
  assert.ok(maxDiff(outs.subarray(0, n), outs.subarray(2 * n)) > 1e-4);
  await Promise.all([f.dispose(), d.dispose()]);
});

test('the decoder-only pass is a fraction of the U-Net\'s FLOPs', () => {
  const unet = new UNet2DModel(UNET2D_PRESETS['mnist-s-cond']);
  const params = mapTree(unet.init(RngKey.fromSeed(0)) as Tree<HostArray>,
    (x): x is HostArray => x instanceof HostArray, (a) => ops.constant(a)) as ParamsOf<UNet2DModel>;
  const d = fasterDiffusionDenoiser(unet, params, 'eps', { keySteps: 'paper', conditional: true,
    rows: 4, times: [999, 500], trainTimesteps: 1000 });
  const share = d.decoderFlops([1, 1, 32, 32]);
  assert.ok(share > 0.3 && share < 0.8, `decoder ${share.toFixed(3)} of the full FLOPs`);
});

test('prior noise injection adds 0.003 x_T once t < T / 2', () => {
  const { unet, params } = smallUnet();
  const d = fasterDiffusionDenoiser(unet, params, 'eps', { keySteps: 2, conditional: false,
    rows: 4, times: [900, 600, 400], trainTimesteps: 1000 });
  const state = Float32Array.from([1, -2]);
  d.perturb!(state, 0, 900);
  d.perturb!(state, 1, 600);
  assert.deepEqual(Array.from(state), [1, -2]);
  d.perturb!(state, 2, 400);
  assert.deepEqual(Array.from(state), [Math.fround(1 + Math.fround(0.003)),
    Math.fround(-2 + Math.fround(-0.006))]);
  const off = fasterDiffusionDenoiser(unet, params, 'eps', { keySteps: 2, conditional: false,
    rows: 4, times: [900], trainTimesteps: 1000, noiseInjection: false });
  assert.equal(off.perturb, undefined);
});

test('sampling: every step a key step is the plain sampler bit for bit; parallel equals ' +
  'serial; a group decodes in one call where the batch size leaves room', () =>
  withTinyPipeline('unet', 'eps', async (p) => {
    const o = { sampler: 'ddim', steps: 6, n: 5, seed: 3, guidance: 2, batchSize: 4 } as const;
    const plain = await sampleImages(p, o);
    const every = await sampleImages(p, { ...o,
      accel: { method: 'faster', keySteps: 1, noiseInjection: false } });
    assert.deepEqual(every.images.data, plain.images.data);
    const parallel = await sampleImages(p, { ...o,
      accel: { method: 'faster', keySteps: 3, noiseInjection: false } });
    const serial = await sampleImages(p, { ...o,
      accel: { method: 'faster', keySteps: 3, noiseInjection: false, parallel: false } });
    assert.ok(maxDiff(parallel.images.data, serial.images.data) < 1e-5);
    assert.ok(maxDiff(parallel.images.data, plain.images.data) > 1e-4, 'features were reused');
    // 10 rows (5 images x CFG) in slices of 4, 4, 2 and calls of at most 4 rows: the full
    // slices decode one step a call (3 calls a group), the half slice two (2 calls a group).
    assert.equal(parallel.modelCalls, 2 * (3 + 3 + 2));
    assert.equal(serial.modelCalls, 2 * (3 + 3 + 3));
    const injected = await sampleImages(p, { ...o, accel: { method: 'faster', keySteps: 3 } });
    assert.ok(maxDiff(injected.images.data, parallel.images.data) > 1e-6, 'injection changes x');
    await assert.rejects(sampleImages(p, { ...o, sampler: 'heun',
      accel: { method: 'faster', keySteps: 'paper' } }), /one model call per step, not heun/);
  }));

test('a group larger than maxRows decodes in chunks, with the same predictions', async () => {
  const { unet, params } = smallUnet();
  const times = [900, 800, 700, 600, 500, 400, 300, 200];
  const x = { data: RngKey.fromSeed(4).normal(2 * 64), shape: [2, 1, 8, 8] };
  const labelled = new UNet2DModel({ ...unet.config, num_class_embeds: 4 });
  const labelledParams = mapTree(labelled.init(RngKey.fromSeed(5)) as Tree<HostArray>,
    (v): v is HostArray => v instanceof HostArray, (a) => ops.constant(a)) as ParamsOf<UNet2DModel>;
  const run = async (maxRows?: number) => {
    const d = fasterDiffusionDenoiser(labelled, labelledParams, 'eps', { keySteps: 4,
      conditional: true, rows: 2, times, trainTimesteps: 1000, ...(maxRows ? { maxRows } : {}) });
    const outs: number[] = [];
    for (const t of times) {
      outs.push(...(await d.predict(x, new Float64Array(2).fill(t), [1, 3])).data);
    }
    await d.dispose();
    return { outs, calls: d.stats.rowCalls };
  };
  const whole = await run();
  const chunked = await run(4); // 2 steps of 2 rows a call: key [0, 1], decoder [2, 3], ...
  assert.equal(whole.calls, 2);
  assert.equal(chunked.calls, 4);
  assert.ok(maxDiff(whole.outs, chunked.outs) < 1e-5);
});
