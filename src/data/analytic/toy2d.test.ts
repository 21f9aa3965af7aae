/** 2-D toy datasets: shapes, supports and the 8-gaussians oracle. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { assignComponents, componentFrequencies } from './metrics.js';
import { seededRandom } from './random.js';
import { checkerboard, eightGaussiansMixture, sampleToy2D, twoMoons } from './toy2d.js';

describe('toy 2-D datasets', () => {
  it('every dataset draws n finite points, deterministically', () => {
    for (const name of ['two_moons', 'swiss_roll', 'eight_gaussians', 'checkerboard'] as const) {
      const a = sampleToy2D(name, 500, seededRandom(1));
      const b = sampleToy2D(name, 500, seededRandom(1));
      assert.equal(a.length, 1000);
      assert.ok(a.every(Number.isFinite));
      assert.deepEqual(a, b);
    }
  });
  it('checkerboard lives on the black squares of [-2, 2]^2', () => {
    const x = checkerboard(2000, seededRandom(2));
    for (let i = 0; i < 2000; i++) {
      const [u, v] = [x[2 * i]!, x[2 * i + 1]!];
      assert.ok(u >= -2 && u < 2 && v >= -2 && v < 2);
      assert.equal((((Math.floor(u) + Math.floor(v)) % 2) + 2) % 2, 0);
    }
  });
  it('two moons without noise lie on their half circles', () => {
    const x = twoMoons(400, seededRandom(3), 0);
    for (let i = 0; i < 400; i++) {
      const [u, v] = [x[2 * i]!, x[2 * i + 1]!];
      const r = i % 2 === 0 ? Math.hypot(u, v) : Math.hypot(u - 1, v - 0.5);
      assert.ok(Math.abs(r - 1) < 1e-12);
    }
  });
  it('eight gaussians is a mixture with equal weights', () => {
    const mix = eightGaussiansMixture();
    const { x } = mix.sample(8000, seededRandom(4));
    assert.ok(componentFrequencies(assignComponents(x, mix), mix).tv < 0.03);
  });
});
