/** DeepCache: the schedules, the partial graph's size, and exactness when nothing is cached. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { mapTree, type Tree } from '../engine/tree.js';
import type { Tensor } from '../engine/tensor.js';
import { UNET2D_PRESETS, UNet2DModel } from '../models/unet2d.js';
import type { ParamsOf } from '../nn/module.js';
import { sampleImages } from '../pipelines/sample.js';
import { withTinyPipeline } from '../../test/support/tiny-pipeline.js';
import { deepCacheDenoiser, deepCacheSchedule, nonUniformPoints } from './deepcache.js';

test('uniform schedule: a full call every N; N = 1 is every call', () => {
  const at = (s: boolean[]) => s.flatMap((f, j) => (f ? [j] : []));
  assert.deepEqual(at(deepCacheSchedule(10, { interval: 3 })), [0, 3, 6, 9]);
  assert.deepEqual(at(deepCacheSchedule(4, { interval: 1 })), [0, 1, 2, 3]);
  assert.throws(() => deepCacheSchedule(4, { interval: 0 }), /interval must be an integer >= 1/);
});

test('non-uniform schedule: floor(T/N) full steps from 0, denser around the center', () => {
  const pts = nonUniformPoints(50, 10, 15, 1.4);
  assert.equal(pts.length, 10);
  assert.equal(pts[0], 0);
  assert.ok(pts.every((p, i) => i === 0 || p > pts[i - 1]!), `increasing: ${pts}`);
  assert.ok(pts.every((p) => p < 50));
  const gaps = pts.slice(1).map((p, i) => p - pts[i]!);
  const nearCenter = gaps[pts.findIndex((p) => p >= 15) - 1]!;
  assert.ok(nearCenter < Math.max(...gaps), `gaps ${gaps}: smallest near 15`);
  const s = deepCacheSchedule(50, { interval: 5, nonUniform: true });
  assert.equal(s.filter(Boolean).length, 10);
  // sign(u)|u|^pow, not NaN from a negative base: the points left of the center exist.
  assert.ok(pts.some((p) => p > 0 && p < 15), `points before the center: ${pts}`);
});

test('the partial step is a smaller graph: the MNIST U-Net at its shallowest branch', () => {
  // mnist-s: 3 up blocks of 3 resnets each
  const unet = new UNet2DModel(UNET2D_PRESETS['mnist-s-cond']);
  const params = mapTree(unet.init(RngKey.fromSeed(0)) as Tree<HostArray>,
    (x): x is HostArray => x instanceof HostArray, (a) => ops.constant(a));
  const d = deepCacheDenoiser(unet, params as ParamsOf<UNet2DModel>, 'eps',
    { interval: 3, conditional: true, rows: 4, isFull: () => true });
  const shallow = d.partialFlops([1, 1, 32, 32]);
  const deeper = deepCacheDenoiser(unet, params as ParamsOf<UNet2DModel>, 'eps',
    { interval: 3, branch: 4, conditional: true, rows: 4, isFull: () => true })
    .partialFlops([1, 1, 32, 32]);
  assert.ok(shallow > 0 && shallow < 0.2, `branch 1: ${shallow.toFixed(3)} of the full FLOPs`);
  assert.ok(deeper > shallow && deeper < 1, `branch 4: ${deeper.toFixed(3)}`);
  assert.throws(() => deepCacheDenoiser(unet, params as ParamsOf<UNet2DModel>, 'eps',
    { interval: 3, branch: unet.upResnetCount(), conditional: true, rows: 4, isFull: () => true }),
  /branch must be a number of up-path resnets in \[1, 8\], got 9/);
});

test('with guidance: N = 1 is the plain sampler bit for bit; N = 3 runs a third full', () =>
  withTinyPipeline('unet', 'eps', async (p) => {
    const o = { sampler: 'ddim', steps: 6, n: 5, seed: 3, guidance: 2, batchSize: 4 } as const;
    const plain = await sampleImages(p, o);
    const one = await sampleImages(p, { ...o, accel: { method: 'deepcache', interval: 1 } });
    assert.deepEqual(one.images.data, plain.images.data);
    const three = await sampleImages(p, { ...o, accel: { method: 'deepcache', interval: 3 } });
    assert.notDeepEqual(three.images.data, plain.images.data);
    let mse = 0;
    plain.images.data.forEach((v, i) => { mse += (v - three.images.data[i]!) ** 2; });
    assert.ok(mse / plain.images.data.length < 0.05, `close to the full sample: ${mse}`);
    await assert.rejects(sampleImages(p, { ...o, sampler: 'heun',
      accel: { method: 'deepcache', interval: 3, nonUniform: true } }), /one model call per step/);
  }));

test('the partial pass on the same step\'s cache reproduces the full pass', async () => {
  const { compile } = await import('../engine/runtime.js');
  const { deepCachePasses } = await import('./deepcache.js');
  const unet = new UNet2DModel({ ...UNET2D_PRESETS['mnist-s'], sample_size: 8,
    block_out_channels: [8, 16, 16], norm_num_groups: 4 });
  const params = mapTree(unet.init(RngKey.fromSeed(1)) as Tree<HostArray>,
    (x): x is HostArray => x instanceof HostArray, (a) => ops.constant(a)) as ParamsOf<UNet2DModel>;
  const x = new HostArray(RngKey.fromSeed(2).normal(2 * 64), [2, 1, 8, 8], 'float32');
  const t = new HostArray(Float32Array.from([10, 700]), [2]);
  for (const branch of [1, 3, 5]) {
    const { full, partial } = deepCachePasses(unet, params, branch, false);
    const f = compile((a: Tensor, b: Tensor) => full(a, b));
    const p = compile((a: Tensor, b: Tensor, h: Tensor) => partial(a, b, h));
    const [out, h] = (await f(x, t)) as [HostArray, HostArray];
    const again = (await p(x, t, h)) as HostArray;
    const diff = Math.max(...Array.from(out.data as Float32Array,
      (v, i) => Math.abs(v - (again.data as Float32Array)[i]!)));
    assert.ok(diff < 1e-5, `branch ${branch}: max difference ${diff}`);
    await Promise.all([f.dispose(), p.dispose()]);
  }
});
