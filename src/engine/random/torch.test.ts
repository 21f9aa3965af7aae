/**
 * @file Tests of torch.ts against test/data/torch-randn.json, written by
 * test/data/make-torch-randn.py with Debian's torch 1.13 (AVX2 kernel): every value bit for bit.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';

import { testDataDir } from '../../../test/support/paths.js';
import { TorchGenerator } from './torch.js';

interface Draw {
  op: 'randn' | 'rand';
  shape: number[];
  values: number[];
}
interface Golden {
  torch: string;
  cpuCapability: string;
  randn: { seed: number; shape: number[]; values: number[] }[];
  sequences: { seed: number; calls: Draw[] }[];
  large: { seed: number; shape: number[]; first: number[]; last: number[]; sum: number }[];
}

const golden = JSON.parse(
  readFileSync(join(testDataDir, 'torch-randn.json'), 'utf8'),
) as Golden;

/** Indices where got and expected differ as float32 bit patterns (Object.is: -0 differs). */
function mismatches(got: ArrayLike<number>, expected: readonly number[]): string[] {
  assert.equal(got.length, expected.length, 'length');
  const bad: string[] = [];
  for (let i = 0; i < expected.length; i++) {
    if (!Object.is(got[i], expected[i])) bad.push(`[${i}] ${got[i]} != ${expected[i]}`);
  }
  return bad;
}

describe(`TorchGenerator vs torch ${golden.torch} (${golden.cpuCapability})`, () => {
  for (const c of golden.randn) {
    test(`randn seed ${c.seed} shape [${c.shape.join(', ')}]`, () => {
      const bad = mismatches(new TorchGenerator(c.seed).randn(c.shape), c.values);
      assert.deepEqual(bad, []);
    });
  }

  for (const s of golden.sequences) {
    const ops = s.calls.map((d) => `${d.op}[${d.shape.join(',')}]`).join(' ');
    test(`successive draws seed ${s.seed}: ${ops}`, () => {
      const g = new TorchGenerator(s.seed);
      for (const d of s.calls) {
        const got = d.op === 'randn' ? g.randn(d.shape) : g.rand(d.shape);
        assert.deepEqual(mismatches(got, d.values), [], `${d.op} [${d.shape.join(', ')}]`);
      }
    });
  }

  for (const c of golden.large) {
    test(`randn seed ${c.seed} shape [${c.shape.join(', ')}]: ends and sum`, () => {
      const got = new TorchGenerator(c.seed).randn(c.shape);
      assert.deepEqual(mismatches(got.subarray(0, 64), c.first), []);
      assert.deepEqual(mismatches(got.subarray(got.length - 64), c.last), []);
      let sum = 0;
      for (const v of got) sum += v;
      assert.equal(sum, c.sum);
    });
  }
});

describe('TorchGenerator', () => {
  test('seeds use the low 32 bits, as at::mt19937 does; out-of-range seeds throw', () => {
    const a = new TorchGenerator(5).randn([20]);
    assert.deepEqual(new TorchGenerator(2 ** 32 + 5).randn([20]), a);
    assert.deepEqual(new TorchGenerator(2n ** 32n + 5n).randn([20]), a);
    const minusOne = new TorchGenerator(-1).randn([3]);
    assert.deepEqual(minusOne, new TorchGenerator(2 ** 32 - 1).randn([3]));
    assert.throws(() => new TorchGenerator(2n ** 64n), RangeError);
    assert.throws(() => new TorchGenerator(0.5), RangeError);
  });

  // Pinned by torch itself through the golden weights (test/data/golden/README.md): diffusers'
  // UNet2DModel conv_in, built right after torch.manual_seed(0), is Conv2d(1, 32, 3): weight
  // kaiming_uniform_(a=sqrt(5)), bound sqrt(3) sqrt(2/6) / sqrt(9), then bias uniform(-1/3, 1/3).
  // (test/support/torch-init.test.ts checks all 7.5M golden weights the same way.)
  test('uniform matches nn.Conv2d(1, 32, 3) default init after torch.manual_seed(0)', () => {
    const g = new TorchGenerator(0);
    const a2 = Math.sqrt(5) * Math.sqrt(5); // Python's math.sqrt(5) ** 2, 5.000000000000001
    const bound = Math.sqrt(3) * (Math.sqrt(2 / (1 + a2)) / Math.sqrt(9));
    const weight = g.uniform([32, 1, 3, 3], -bound, bound);
    const bias = g.uniform([32], -1 / 3, 1 / 3);
    assert.deepEqual(mismatches(weight.subarray(0, 6), [
      -0.0024956068955361843, 0.17881453037261963, -0.2743483781814575, -0.24531301856040955,
      -0.1283847987651825, 0.08938579261302948,
    ]), []);
    assert.deepEqual(mismatches(bias.subarray(0, 4), [
      -0.0762253999710083, -0.014823715202510357, -0.20301473140716553, 0.11273364722728729,
    ]), []);
    const sum = (a: Float32Array) => a.reduce((s, v) => s + v, 0);
    assert.equal(sum(weight), -4.403385692101438);
    assert.equal(sum(bias), -0.4370788736268878);
  });

  test('uniform(0, 1) is rand; uniform(a, b) stays in [a, b)', () => {
    assert.deepEqual(new TorchGenerator(3).uniform([40], 0, 1), new TorchGenerator(3).rand([40]));
    for (const v of new TorchGenerator(4).uniform([1000], -2, 0.5)) {
      assert.ok(v >= -2 && v < 0.5, `${v}`);
    }
  });

  test('empty shapes draw nothing; bad shapes throw', () => {
    const g = new TorchGenerator(0);
    assert.equal(g.randn([0, 3]).length, 0);
    assert.deepEqual(g.rand([2]), new TorchGenerator(0).rand([2]));
    assert.throws(() => g.randn([2, -1]), /TorchGenerator.randn: bad shape/);
  });
});
