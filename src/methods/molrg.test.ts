/** MoLRG (Wang et al. 2024): the low-rank DAE with the true bases is the exact oracle of
 *  data/analytic/mixture.ts; the success metric separates MoLRG samples from noise; and a
 *  tiny training run learns the subspaces from many samples but not from fewer than d. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import { RngKey } from '../engine/random/philox.js';
import { RngStream } from '../engine/random/stream.js';
import { processOf } from '../diffusion/training.js';
import {
  balancedSamples, daeDenoiser, LowRankDae, MOLRG_SCHEDULER, randomMolrg, relativeResiduals,
  sampleDae, subspaceDistance, successRate, trainLowRankDae, trueParams,
} from './molrg.js';

const rngOf = (seed: number) => new RngStream(RngKey.fromSeed(seed));

test('the low-rank DAE with the true bases equals the exact mixture denoiser', async () => {
  const shapes = [{ ambient: 48, dim: 4, components: 2 }, { ambient: 20, dim: 3, components: 3 }];
  for (const shape of shapes) {
    const rng = rngOf(3);
    const mix = randomMolrg(shape, rng);
    const D = shape.ambient;
    const proc = processOf(MOLRG_SCHEDULER);
    const oracle = mix.denoiser(proc, 'x0');
    const model = new LowRankDae(shape);
    const dae = daeDenoiser(model, trueParams(mix));
    const wrong = daeDenoiser(model, model.init(RngKey.fromSeed(9)));
    try {
      // 37.5: a time between table steps, interpolated in the noise level as discreteVp does
      for (const t of [0, 10, 100, 400, 800, 999, 37.5]) {
        const n = 12 * shape.components;
        const x0 = balancedSamples(mix, 12, rng);
        const eps = rng.normal(n * D);
        const { alpha, sigma } = proc.at(t);
        const xt = new HostArray<'float32'>(
          Float32Array.from(x0, (v, i) => alpha * v + sigma * eps[i]!), [n, D], 'float32');
        const ts = new Float64Array(n).fill(t);
        const want = (await oracle.predict(xt, ts)).data;
        const got = (await dae.predict(xt, ts)).data;
        const off = (await wrong.predict(xt, ts)).data;
        let err = 0;
        let offErr = 0;
        let scale = 0;
        want.forEach((v, i) => {
          err = Math.max(err, Math.abs((got[i] as number) - (v as number)));
          offErr = Math.max(offErr, Math.abs((off[i] as number) - (v as number)));
          scale = Math.max(scale, Math.abs(v as number));
        });
        assert.ok(err <= 2e-6 * Math.max(scale, 1), `t=${t}: max error ${err} (scale ${scale})`);
        // random bases are far from it at the low noise levels, where the bases matter most
        if (t <= 100) assert.ok(offErr > 0.1 * scale, `t=${t}: random bases too close, ${offErr}`);
      }
    } finally {
      await Promise.all([dae.dispose(), wrong.dispose()]);
    }
  }
});

test('success is 1 for MoLRG samples and 0 for isotropic noise; residuals are exact', () => {
  const shape = { ambient: 48, dim: 8, components: 2 };
  const rng = rngOf(5);
  const mix = randomMolrg(shape, rng);
  assert.equal(successRate(balancedSamples(mix, 200, rng), mix), 1);
  const noise = rng.normal(400 * 48);
  assert.equal(successRate(noise, mix), 0);
  // isotropic noise sits at about sqrt((D - d) / D) = 0.91 from the nearer subspace
  const r = relativeResiduals(noise, mix);
  const mean = r.reduce((s, v) => s + v, 0) / r.length;
  assert.ok(Math.abs(mean - Math.sqrt(40 / 48)) < 0.03, `mean residual ${mean}`);
  // a basis vector of component 0 plus 0.5 times one of component 1 (orthogonal to it):
  // residual 0.5 / sqrt(1.25) to component 0, 1 / sqrt(1.25) to component 1
  const [u, v] = [mix.components[0]!.basis, mix.components[1]!.basis];
  const x = Float64Array.from({ length: 48 }, (_, i) => u[i * 8]! + 0.5 * v[i * 8]!);
  assert.ok(Math.abs(relativeResiduals(x, mix)[0]! - 0.5 / Math.sqrt(1.25)) < 1e-12);
  // subspace distance: 0 for the truth, about sqrt(1 - d / D) for unrelated subspaces
  assert.ok(subspaceDistance(trueParams(mix).bases, mix) < 1e-6);
  const other = subspaceDistance(trueParams(randomMolrg(shape, rng)).bases, mix);
  assert.ok(Math.abs(other - Math.sqrt(1 - 8 / 48)) < 0.06, `unrelated distance ${other}`);
});

test('a tiny run learns the subspaces from 4d samples per component, not from 1', async () => {
  const shape = { ambient: 16, dim: 4, components: 2 };
  const score = async (n: number) => {
    const rng = rngOf(11);
    const mix = randomMolrg(shape, rng);
    const trained = await trainLowRankDae({ data: balancedSamples(mix, n, rng), shape,
      steps: 300, seed: 1 });
    const x = await sampleDae(trained, 128, { steps: 20, seed: 2 });
    return { success: successRate(x, mix), distance: subspaceDistance(trained.params.bases, mix) };
  };
  const [few, many] = [await score(1), await score(16)];
  assert.ok(many.success > 0.95, `N = 16: success ${many.success}`);
  assert.ok(many.distance < 0.1, `N = 16: subspace distance ${many.distance}`);
  // one sample per component gives at best one of the d = 4 directions: distance about
  // sqrt(3 / 4) when the other three are random
  assert.ok(few.distance > 0.5, `N = 1: subspace distance ${few.distance}`);
  assert.ok(many.success > few.success, `success ${many.success} vs ${few.success}`);
});
