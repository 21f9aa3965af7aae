/** MMD-DDM: the unbiased MMD^2 estimate against a plain-TypeScript U-statistic, its gradient,
 *  and the loss's gradient through an unrolled DDIM chain against finite differences. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { checkGrad, randn } from '../../test/support/gradcheck.js';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { mapTree, type Tree } from '../engine/tree.js';
import { samplerSchedule } from '../diffusion/sampling.js';
import { trainingScheduler } from '../diffusion/training.js';
import { UNET2D_PRESETS, UNet2DModel } from '../models/unet2d.js';
import type { ParamsOf } from '../nn/module.js';
import { mmd2Unbiased, mmdDdmLoss } from './mmd-ddm.js';

/** The unbiased MMD^2 U-statistic with k(x, y) = (<x, y> / d + 1)^3, in float64, pair by pair;
 *  `paired` leaves the cross pairs i = j out too. */
function referenceMmd2(x: Float32Array, y: Float32Array, n: number, m: number, d: number,
  paired = false): number {
  const k = (a: Float32Array, i: number, b: Float32Array, j: number): number => {
    let s = 0;
    for (let q = 0; q < d; q++) s += a[i * d + q]! * b[j * d + q]!;
    return (s / d + 1) ** 3;
  };
  let xx = 0;
  let yy = 0;
  let xy = 0;
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) if (i !== j) xx += k(x, i, x, j);
  for (let i = 0; i < m; i++) for (let j = 0; j < m; j++) if (i !== j) yy += k(y, i, y, j);
  for (let i = 0; i < n; i++) for (let j = 0; j < m; j++) if (!paired || i !== j) xy += k(x, i, y, j);
  return xx / (n * (n - 1)) + yy / (m * (m - 1)) - (2 * xy) / (paired ? n * (n - 1) : n * m);
}

const value = (a: HostArray): number => a.data[0] as number;

test('mmd2Unbiased equals the U-statistic; near zero for one distribution, positive for two', async () => {
  const f = compile((x: Tensor, y: Tensor) => mmd2Unbiased(x, y));
  const [n, m, d] = [12, 9, 16];
  const x = randn([n, d], 1);
  const shifted = randn([m, d], 2, 1);
  for (let i = 0; i < shifted.data.length; i++) shifted.data[i]! += 0.7;
  for (const y of [randn([m, d], 3), shifted]) {
    const got = value(await f(x, y));
    const want = referenceMmd2(x.data, y.data, n, m, d);
    assert.ok(Math.abs(got - want) <= 1e-4 * Math.max(1, Math.abs(want)), `${got} vs ${want}`);
  }
  // Same distribution: the estimate scatters around 0 (it is unbiased, so it can be negative).
  const same = value(await f(x, randn([m, d], 3)));
  const apart = value(await f(x, shifted));
  assert.ok(apart > 10 * Math.abs(same), `shifted ${apart} vs same ${same}`);
  await assert.rejects(f(randn([1, d], 4), randn([m, d], 5)), /at least 2 rows/);
  await f.dispose();
});

test('paired rows: the cross mean leaves out i = j, which removes the bias of class-matched batches', async () => {
  const paired = compile((x: Tensor, y: Tensor) => mmd2Unbiased(x, y, true));
  const all = compile((x: Tensor, y: Tensor) => mmd2Unbiased(x, y));
  const [n, d] = [10, 8];
  const x = randn([n, d], 11);
  const y = randn([n, d], 12);
  const got = value(await paired(x, y));
  const want = referenceMmd2(x.data, y.data, n, n, d, true);
  assert.ok(Math.abs(got - want) <= 1e-4 * Math.max(1, Math.abs(want)), `${got} vs ${want}`);
  // Rows i of x and y close to each other (same "class"), the sets otherwise alike: the
  // all-pairs estimate goes well below 0, the paired one stays near it.
  const mates = x.clone();
  for (let i = 0; i < mates.data.length; i++) mates.data[i]! += 0.1 * y.data[i]!;
  const [p, a] = [value(await paired(x, mates)), value(await all(x, mates))];
  assert.ok(a < -0.5 && Math.abs(p) < Math.abs(a) / 5, `paired ${p}, all pairs ${a}`);
  await assert.rejects(paired(randn([4, d], 1), randn([5, d], 2)), /equal sets/);
  await Promise.all([paired.dispose(), all.dispose()]);
});

test('the gradient of mmd2Unbiased matches finite differences', async () => {
  await checkGrad('mmd2Unbiased', (x, y) => mmd2Unbiased(x!, y!), [randn([6, 5], 7), randn([5, 5], 8)],
    { rtol: 2e-2, atol: 1e-3 });
  await checkGrad('mmd2Unbiased paired', (x, y) => mmd2Unbiased(x!, y!, true),
    [randn([5, 5], 9), randn([5, 5], 10)], { rtol: 2e-2, atol: 1e-3 });
});

test('the MMD-DDM loss differentiates through a 2-step guided DDIM chain (finite differences)', async () => {
  // A tiny class-conditional U-Net on 8x8 images; the gradient is checked for its output conv.
  const model = new UNet2DModel({ ...UNET2D_PRESETS['mnist-s'], block_out_channels: [8, 16],
    layers_per_block: 1, norm_num_groups: 4, down_block_types: ['DownBlock2D', 'AttnDownBlock2D'],
    up_block_types: ['AttnUpBlock2D', 'UpBlock2D'], sample_size: 8, num_class_embeds: 4 });
  const init = model.init(RngKey.fromSeed(3)) as Tree<HostArray>;
  const consts = mapTree(init, (a): a is HostArray => a instanceof HostArray, (a) => ops.constant(a));
  const spec = trainingScheduler('eps');
  const schedule = samplerSchedule('ddim', spec, 2);
  const projection = ops.constant(randn([64, 6], 21, 0.3));
  const n = 4;
  const labels = new HostArray(BigInt64Array.from([0n, 1n, 2n, 1n]), [n], 'int64');
  const loss = (w: Tensor, noise: Tensor, real: Tensor): Tensor => {
    const params = { ...(consts as Record<string, Tree<Tensor>>),
      conv_out: { ...(consts as Record<string, Record<string, Tensor>>)['conv_out'], weight: w } };
    return mmdDdmLoss({
      model: (p) => (x, t, y) => model.forward(p as ParamsOf<UNet2DModel>, x, t, y),
      prediction: 'eps', schedule, guidance: 2, nullClass: 3,
      features: (x) => ops.matmul(ops.reshape(x, [n, 64]), projection),
    })(params as Tree<Tensor>, { noise, real, labels: ops.constant(labels) } as unknown as Tree<Tensor>);
  };
  const w = (init as Record<string, Record<string, HostArray>>)['conv_out']!['weight']!;
  await checkGrad('MMD-DDM through 2 DDIM steps', (a, b, c) => loss(a!, b!, c!),
    [w, randn([n, 1, 8, 8], 22), randn([n, 1, 8, 8], 23, 0.5)], { wrt: [0], eps: 1e-3, rtol: 3e-2, atol: 1e-4 });
});
