/**
 * torch / NumPy numerics reproduced in numerics.ts and sleef.ts, against values recorded from
 * torch 1.13.1 (test/data/diffusion/torch_numerics.json, see generate_torch_numerics.py).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { testDataDir } from '../../../test/support/paths.js';
import {
  fmaF32,
  numpyArange,
  numpyLinspace,
  roundHalfEven,
  solveSmallF32,
  torchLinspaceF32,
  torchQuantileF32,
} from './numerics.js';
import { sleefExpF32, sleefExpm1F32, sleefLogF32 } from './sleef.js';

// recorded JSON of a fixed layout (see the generator); read structurally
const data: any = JSON.parse(
  readFileSync(join(testDataDir, 'diffusion', 'torch_numerics.json'), 'utf8'),
);

describe('SLEEF float32 kernels (torch.exp / log / expm1)', () => {
  for (const [name, fn] of [
    ['exp', sleefExpF32],
    ['log', sleefLogF32],
    ['expm1', sleefExpm1F32],
  ] as const) {
    it(`${name} equals torch, including where torch is not correctly rounded`, () => {
      const { in: xs, out, not_correctly_rounded: n } = data[name];
      assert.ok(n > 0, 'the file holds cases where Math rounding differs');
      xs.forEach((x: number, i: number) => assert.equal(fn(x), out[i], `${name}(${x})`));
    });
  }
  it('special values', () => {
    assert.equal(sleefExpF32(-200), 0);
    assert.equal(sleefExpF32(200), Infinity);
    assert.equal(sleefLogF32(0), -Infinity);
    assert.ok(Number.isNaN(sleefLogF32(-1)));
    assert.equal(sleefExpm1F32(-50), -1);
  });
});

describe('torch / numpy array builders', () => {
  it('torch.linspace float32 bit-exact', () => {
    for (const c of data.linspace)
      assert.deepEqual(Array.from(torchLinspaceF32(c.start, c.end, c.steps)), c.out);
  });
  it('numpy.linspace, arange and round half to even', () => {
    assert.deepEqual(Array.from(numpyLinspace(0, 1, 5)), [0, 0.25, 0.5, 0.75, 1]);
    assert.deepEqual(
      Array.from(numpyArange(1000, 0, -1000 / 3)).map(roundHalfEven),
      [1000, 667, 333],
    );
    assert.deepEqual([0.5, 1.5, 2.5, -0.5, -1.5].map(roundHalfEven), [0, 2, 2, -0, -2]);
  });
  it('fmaF32 rounds once', () => {
    // 1 + 2^-24 is a float32 tie; the product's low part decides
    const a = Math.fround(1 + 2 ** -12);
    assert.equal(fmaF32(a, a, -1), Math.fround(2 ** -11 + 2 ** -24));
    assert.equal(fmaF32(2, 3, 4), 10);
  });
  it('torch.quantile (linear) of a row', () => {
    assert.equal(torchQuantileF32([0, 1, 2, 3, 4], 0.5), 2);
    assert.equal(torchQuantileF32([4, 0, 1], 0.995), Math.fround(3.97));
  });
});

describe('torch.linalg.solve (reference LAPACK)', () => {
  it('contiguous 2x2, 3x3 and non-contiguous 2x2 systems bit-exact', () => {
    for (const c of data.solve) {
      assert.deepEqual(
        solveSmallF32(c.A, c.b, Math.fround, c.contiguous),
        c.x,
        `${c.kind} ${JSON.stringify(c.A)}`,
      );
    }
  });
  it('float64 mode solves exactly enough', () => {
    const x = solveSmallF32(
      [
        [2, 1],
        [1, 3],
      ],
      [3, 5],
      (v) => v,
    );
    assert.ok(Math.abs(x[0]! - 0.8) < 1e-12 && Math.abs(x[1]! - 1.4) < 1e-12);
  });
});
