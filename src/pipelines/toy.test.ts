/** The toy pipeline learns: after a short run its samples are far closer to the data than
 *  the untrained model's, for deterministic and stochastic samplers. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { sampleToy, toyDistance, trainToy } from './toy.js';

test('a short toy run on 8 gaussians lowers the loss and the sliced Wasserstein distance', async () => {
  const untrained = await trainToy({ data: 'eight_gaussians', steps: 1, model: { hidden: 64, layers: 2 } });
  const trained = await trainToy({ data: 'eight_gaussians', steps: 600, lr: 3e-3, model: { hidden: 64, layers: 2 } });
  const tail = trained.losses.slice(-50).reduce((a, b) => a + b, 0) / 50;
  assert.ok(tail < 0.7 * trained.losses[0]!, `loss ${trained.losses[0]} -> ${tail}`);
  const before = toyDistance('eight_gaussians', (await sampleToy(untrained, { sampler: 'ddim', steps: 20, n: 1000 })).samples);
  for (const [sampler, steps] of [['dpm++2m', 25], ['ddpm', 100]] as const) {
    const after = toyDistance('eight_gaussians', (await sampleToy(trained, { sampler, steps, n: 1000 })).samples);
    assert.ok(after.sw < 0.5 * before.sw, `${sampler}: sliced W1 ${after.sw} vs untrained ${before.sw}`);
    assert.ok(after.sw < 6 * after.floor, `${sampler}: sliced W1 ${after.sw}, floor ${after.floor}`);
  }
});

test('sampling is deterministic for a seed', async () => {
  const m = await trainToy({ data: 'two_moons', steps: 5, model: { hidden: 16, layers: 1 } });
  const a = await sampleToy(m, { sampler: 'euler-a', steps: 5, n: 64, seed: 3 });
  const b = await sampleToy(m, { sampler: 'euler-a', steps: 5, n: 64, seed: 3 });
  const c = await sampleToy(m, { sampler: 'euler-a', steps: 5, n: 64, seed: 4 });
  assert.deepEqual(a.samples, b.samples);
  assert.notDeepEqual(a.samples, c.samples);
});
