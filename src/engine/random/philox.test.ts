/**
 * @file Tests of philox.ts: Random123's known answers, a BigInt reference for the integer path,
 * golden draws that pin the stream, the portable log and sincos against Math.*, statistics, and
 * key derivation.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { RngKey, philox4x32, portableLog, portableSinCos2Pi } from './philox.js';

const hex = (a: ArrayLike<number>): string[] =>
  Array.from(a, (x) => x.toString(16).padStart(8, '0'));

/** Philox-4x32-10 with BigInt arithmetic: the slow, obviously exact reference. */
function philoxReference(ctr: readonly number[], key: readonly number[]): number[] {
  const mask = 0xffffffffn;
  let [c0, c1, c2, c3] = ctr.map(BigInt) as [bigint, bigint, bigint, bigint];
  let [k0, k1] = key.map(BigInt) as [bigint, bigint];
  for (let r = 0; r < 10; r++) {
    if (r > 0) {
      k0 = (k0 + 0x9e3779b9n) & mask;
      k1 = (k1 + 0xbb67ae85n) & mask;
    }
    const p0 = 0xd2511f53n * c0;
    const p1 = 0xcd9e8d57n * c2;
    [c0, c1, c2, c3] = [(p1 >> 32n) ^ c1 ^ k0, p1 & mask, (p0 >> 32n) ^ c3 ^ k1, p0 & mask];
  }
  return [c0, c1, c2, c3].map(Number);
}

describe('philox4x32', () => {
  // Random123 tests/kat_vectors (commit 9545ff6), the three "philox4x32 10" lines:
  // counter (4 words), key (2 words), expected output (4 words).
  const kat: [number[], number[], string[]][] = [
    [[0, 0, 0, 0], [0, 0], ['6627e8d5', 'e169c58d', 'bc57ac4c', '9b00dbd8']],
    [
      [0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff],
      [0xffffffff, 0xffffffff],
      ['408f276d', '41c83b0e', 'a20bc7c6', '6d5451fd'],
    ],
    [
      [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
      [0xa4093822, 0x299f31d0],
      ['d16cfe09', '94fdcceb', '5001e420', '24126ea1'],
    ],
  ];
  for (const [ctr, key, expected] of kat) {
    test(`Random123 known answer for counter ${hex(ctr).join(' ')}`, () => {
      assert.deepEqual(hex(philox4x32(new Uint32Array(ctr), new Uint32Array(key))), expected);
    });
  }

  test('matches a BigInt reference on 2000 counters and keys, edge words included', () => {
    const words = Array.from(RngKey.fromSeed(2024).bits(2000 * 6));
    const edges = [0, 1, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff, 0xd2511f53, 0xcd9e8d57];
    for (let i = 0; i < 96; i++) words[i] = edges[(i * 5 + (i >> 3)) % 8]!; // 16 edge cases
    for (let i = 0; i < 2000; i++) {
      const ctr = words.slice(6 * i, 6 * i + 4);
      const key = words.slice(6 * i + 4, 6 * i + 6);
      const got = Array.from(philox4x32(new Uint32Array(ctr), new Uint32Array(key)));
      assert.deepEqual(got, philoxReference(ctr, key), `counter ${hex(ctr)} key ${hex(key)}`);
    }
  });

  test('rejects counters and keys of the wrong length', () => {
    assert.throws(() => philox4x32(new Uint32Array(3), new Uint32Array(2)), RangeError);
  });
});

describe('portable log and sincos', () => {
  const xs = Array.from(RngKey.fromSeed(5).bits(100000), (w, i) =>
    i % 2 === 0 ? (w + 1) * 2 ** -32 : (w + 1) * 2 ** ((i % 97) - 40));

  test('portableLog is within 1e-12 relative of Math.log (measured ~2e-16)', () => {
    let worst = 0;
    for (const x of [...xs, 1, 2, 0.5, Math.SQRT2, 1 + 2 ** -52, 1 - 2 ** -53, 5e-324, 1e308]) {
      const ref = Math.log(x);
      const err = ref === 0 ? Math.abs(portableLog(x)) : Math.abs(portableLog(x) / ref - 1);
      worst = Math.max(worst, err);
    }
    assert.ok(worst < 1e-12, `max relative error ${worst}`);
    assert.equal(portableLog(1), 0);
    assert.equal(portableLog(0), -Infinity);
    assert.ok(Number.isNaN(portableLog(-1)) && Number.isNaN(portableLog(NaN)));
    assert.equal(portableLog(Infinity), Infinity);
  });

  test('portableSinCos2Pi is within 1e-12 relative (+2e-15 absolute) of Math.sin/cos', () => {
    const out = new Float64Array(2);
    let worst = 0;
    const ts = [...xs.slice(0, 50000).map((x) => x % 1), 0, 0.125, 0.25, 0.5, 0.75, -0.3, 3.7];
    for (const t of ts) {
      portableSinCos2Pi(t, out);
      const sin = Math.sin(2 * Math.PI * t);
      const cos = Math.cos(2 * Math.PI * t);
      // Math.* sees 2 pi t rounded (error up to ~1e-15 absolute); ours reduces t exactly.
      worst = Math.max(
        worst,
        Math.abs(out[0]! - sin) / (Math.abs(sin) + 2e-3),
        Math.abs(out[1]! - cos) / (Math.abs(cos) + 2e-3),
      );
    }
    assert.ok(worst < 1e-12, `max relative error ${worst}`);
    portableSinCos2Pi(0.25, out);
    assert.deepEqual(Array.from(out), [1, 0]);
  });
});

describe('RngKey', () => {
  test('normal(n, offset) is the same stream without drawing the skipped part', () => {
    const key = RngKey.fromSeed(3).fold(2);
    const whole = key.normal(101);
    for (const [offset, n] of [[0, 101], [1, 10], [2, 9], [37, 64], [100, 1], [5, 0]] as const) {
      assert.deepEqual(Array.from(key.normal(n, offset)), Array.from(whole.subarray(offset, offset + n)),
        `offset ${offset}, n ${n}`);
    }
    // Past 2^32 counter blocks (2^34 words) the block index spills into counter word 1.
    const far = 2 ** 36 + 3;
    const tail = key.normal(4, far);
    assert.deepEqual(Array.from(key.normal(2, far + 1)), Array.from(tail.subarray(1, 3)));
    assert.notDeepEqual(Array.from(key.normal(4, far - 2 ** 35)), Array.from(tail));
    assert.ok(tail.every(Number.isFinite));
    assert.throws(() => key.normal(1, -1), /offset must be a safe integer >= 0, got -1/);
  });

  test('golden draws for seeds 0 and 42 (any change to the stream fails here)', () => {
    const k0 = RngKey.fromSeed(0);
    assert.deepEqual(hex(k0.bits(8)), [
      '6627e8d5', 'e169c58d', 'bc57ac4c', '9b00dbd8',
      'f8e4cca4', '5cb200db', 'b1a574eb', '097eff67',
    ]);
    assert.deepEqual(Array.from(k0.uniform(8)), [
      0.3990464210510254, 0.8805201649665833, 0.7357127666473389, 0.6054818034172058,
      0.9722411632537842, 0.362091064453125, 0.6939308643341064, 0.037094056606292725,
    ]);
    assert.deepEqual(Array.from(k0.normal(8)), [
      0.991137683391571, -0.9246625900268555, -0.6176089644432068, -0.48206859827041626,
      -0.15363822877407074, 0.18082590401172638, 0.8317351341247559, 0.19743971526622772,
    ]);
    assert.deepEqual(Array.from(k0.uniformInt(8, 10)), [3, 8, 7, 6, 9, 3, 6, 0]);
    assert.deepEqual(Array.from(k0.permutation(8)), [0, 2, 1, 5, 7, 4, 6, 3]);
    const k42 = RngKey.fromSeed(42);
    assert.deepEqual(Array.from(k42.uniform(8)), [
      0.6129598617553711, 0.4685865044593811, 0.07323169708251953, 0.3408614993095398,
      0.9877186417579651, 0.32706332206726074, 0.5139061212539673, 0.45431554317474365,
    ]);
    assert.deepEqual(Array.from(k42.normal(8)), [
      -0.9701898097991943, 0.19401895999908447, -1.2356207370758057, 1.9239267110824585,
      -0.07318150997161865, 0.13913749158382416, -1.106665015220642, 0.3266829550266266,
    ]);
    const [a, b] = k42.split(2);
    assert.deepEqual(hex([a!.lo, a!.hi, b!.lo, b!.hi]), [
      '02933769', '2051e913', '20ff9139', 'fdd21d94',
    ]);
    const f = k42.fold(7);
    assert.deepEqual(hex([f.lo, f.hi]), ['544d06b6', 'fb065269']);
  });

  test('normal agrees with Box-Muller written with Math.* to float32 rounding', () => {
    const k = RngKey.fromSeed(3);
    const w = k.bits(2000);
    const z = k.normal(2000);
    for (let i = 0; i < 1000; i++) {
      const r = Math.sqrt(-2 * Math.log((w[2 * i]! + 1) * 2 ** -32));
      const t = 2 * Math.PI * w[2 * i + 1]! * 2 ** -32;
      assert.ok(Math.abs(z[2 * i]! - r * Math.cos(t)) <= 1e-6 * (1 + r), `pair ${i}`);
      assert.ok(Math.abs(z[2 * i + 1]! - r * Math.sin(t)) <= 1e-6 * (1 + r), `pair ${i}`);
    }
  });

  test('draws are a pure function of the key, and shorter draws are prefixes', () => {
    const k = RngKey.fromSeed(9);
    assert.deepEqual(k.normal(8), k.normal(8));
    assert.deepEqual(k.normal(7), k.normal(100).slice(0, 7));
    assert.deepEqual(k.uniform(5), k.uniform(9).slice(0, 5));
    assert.deepEqual(k.bits(6), k.bits(13).slice(0, 6));
    assert.deepEqual(k.uniformInt(5, 7), k.uniformInt(50, 7).slice(0, 5));
    assert.equal(k.normal(0).length, 0);
  });

  test('seeds: number and bigint agree, negative seeds are two\'s complement', () => {
    const words = (k: RngKey): number[] => [k.lo, k.hi];
    assert.deepEqual(words(RngKey.fromSeed(2 ** 40 + 5)), [5, 256]);
    assert.deepEqual(words(RngKey.fromSeed(2n ** 40n + 5n)), [5, 256]);
    assert.deepEqual(words(RngKey.fromSeed(-1)), [0xffffffff, 0xffffffff]);
    assert.deepEqual(words(RngKey.fromSeed(-1n)), [0xffffffff, 0xffffffff]);
    assert.deepEqual(words(RngKey.fromSeed(-(2 ** 32))), [0, 0xffffffff]);
    assert.deepEqual(RngKey.fromWords(5, 256).bits(4), RngKey.fromSeed(2 ** 40 + 5).bits(4));
    assert.throws(() => RngKey.fromSeed(0.5), RangeError);
    assert.throws(() => RngKey.fromSeed(2 ** 53), RangeError);
    assert.throws(() => RngKey.fromWords(2 ** 32, 0), RangeError);
  });

  test('1e5 normals have mean 0 and variance 1 (within 5 sigma)', () => {
    const z = RngKey.fromSeed(1).normal(100000);
    let mean = 0;
    for (const x of z) mean += x;
    mean /= z.length;
    let variance = 0;
    for (const x of z) variance += (x - mean) ** 2;
    variance /= z.length;
    assert.ok(Math.abs(mean) < 5 / Math.sqrt(z.length), `mean ${mean}`);
    assert.ok(Math.abs(variance - 1) < 5 * Math.sqrt(2 / z.length), `variance ${variance}`);
    let tail = 0; // P(|z| > 2) = 0.0455
    for (const x of z) if (Math.abs(x) > 2) tail++;
    assert.ok(Math.abs(tail / z.length - 0.0455) < 0.004, `tail fraction ${tail / z.length}`);
  });

  test('uniform lies in [0, 1) with mean 1/2', () => {
    const u = RngKey.fromSeed(2).uniform(100000);
    let mean = 0;
    for (const x of u) {
      assert.ok(x >= 0 && x < 1, `uniform ${x}`);
      mean += x;
    }
    mean /= u.length;
    assert.ok(Math.abs(mean - 0.5) < 5 * Math.sqrt(1 / 12 / u.length), `mean ${mean}`);
  });

  test('uniformInt is in range and roughly flat; high = 1 and 2^31 work', () => {
    const n = 60000;
    const v = RngKey.fromSeed(4).uniformInt(n, 6);
    const counts = new Array<number>(6).fill(0);
    for (const x of v) counts[x]!++;
    let chi2 = 0;
    for (const c of counts) chi2 += (c - n / 6) ** 2 / (n / 6);
    assert.ok(chi2 < 25, `chi-square ${chi2} with 5 degrees of freedom, counts ${counts}`);
    assert.deepEqual(Array.from(RngKey.fromSeed(4).uniformInt(3, 1)), [0, 0, 0]);
    for (const x of RngKey.fromSeed(4).uniformInt(100, 2 ** 31)) assert.ok(x >= 0);
    assert.throws(() => RngKey.fromSeed(4).uniformInt(3, 0), RangeError);
    assert.throws(() => RngKey.fromSeed(4).uniformInt(3, 2 ** 31 + 1), RangeError);
  });

  test('permutation is a permutation, and differs between keys', () => {
    const p = RngKey.fromSeed(6).permutation(1000);
    const sorted = Array.from(p).sort((a, b) => a - b);
    assert.deepEqual(sorted, Array.from({ length: 1000 }, (_, i) => i));
    assert.notDeepEqual(p, RngKey.fromSeed(7).permutation(1000));
    assert.deepEqual(Array.from(RngKey.fromSeed(6).permutation(1)), [0]);
    assert.equal(RngKey.fromSeed(6).permutation(0).length, 0);
  });

  test('split keys are deterministic and give distinct streams', () => {
    const k = RngKey.fromSeed(11);
    const kids = k.split(4);
    assert.deepEqual(kids, k.split(4));
    assert.deepEqual(k.split(2), kids.slice(0, 2));
    const streams = [k, ...kids].map((c) => hex(c.bits(4)).join(''));
    assert.equal(new Set(streams).size, 5);
  });

  test('fold is deterministic, differs per integer and from split', () => {
    const k = RngKey.fromSeed(11);
    assert.deepEqual(k.fold(3), k.fold(3));
    const streams = [k.fold(0), k.fold(1), k.fold(2 ** 32), k.fold(-1), k.split(1)[0]!].map((c) =>
      hex(c.bits(4)).join(''));
    assert.equal(new Set(streams).size, 5);
    assert.throws(() => k.fold(1.5), RangeError);
  });

  test('counts are validated', () => {
    const k = RngKey.fromSeed(0);
    assert.throws(() => k.normal(-1), /RngKey.normal: n must be an integer/);
    assert.throws(() => k.uniform(2.5), RangeError);
    assert.throws(() => k.split(2 ** 31), RangeError);
  });
});
