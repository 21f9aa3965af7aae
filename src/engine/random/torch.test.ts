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

  test('empty shapes draw nothing; bad shapes throw', () => {
    const g = new TorchGenerator(0);
    assert.equal(g.randn([0, 3]).length, 0);
    assert.deepEqual(g.rand([2]), new TorchGenerator(0).rand([2]));
    assert.throws(() => g.randn([2, -1]), /TorchGenerator.randn: bad shape/);
  });
});
