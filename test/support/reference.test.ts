/**
 * @file Checks of the reference ops themselves on small cases worked out by hand, and on
 * identities (adjointness, grouping) that tie the harder ops to the simpler ones.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HostArray, numel } from '../../src/engine/host.js';
import * as ref from './reference.js';

/** Deterministic uniform values in [-1, 1) (a small LCG, so the tests need no RNG module). */
function rand(shape: number[], seed: number): HostArray {
  let s = seed >>> 0;
  const data = new Float32Array(numel(shape));
  for (let i = 0; i < data.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    data[i] = (s / 2 ** 32) * 2 - 1;
  }
  return new HostArray(data, shape);
}

/** <a, b> in float64 (shapes must match). */
function dot(a: HostArray, b: HostArray): number {
  assert.deepEqual(a.shape, b.shape);
  let s = 0;
  for (let i = 0; i < a.size; i++) s += Number(a.data[i]) * Number(b.data[i]);
  return s;
}

function close(actual: number, expected: number, tol: number, what = ''): void {
  assert.ok(
    Math.abs(actual - expected) <= tol,
    `${what} expected ${expected}, got ${actual} (|diff| ${Math.abs(actual - expected)})`,
  );
}

const nested = (a: HostArray): unknown => a.toNested();
const i64 = (v: number[], shape = [v.length]): HostArray =>
  new HostArray(BigInt64Array.from(v, (k) => BigInt(k)), shape, 'int64');

test('matmul: 2x2 by hand, batch broadcast, rank-1 operands', () => {
  const a = HostArray.fromNested([[1, 2], [3, 4]]);
  const b = HostArray.fromNested([[5, 6], [7, 8]]);
  assert.deepEqual(nested(ref.matmul(a, b)), [[19, 22], [43, 50]]);

  const batch = rand([3, 1, 2, 4], 1);
  const w = rand([5, 4, 3], 2);
  const out = ref.matmul(batch, w);
  assert.deepEqual(out.shape, [3, 5, 2, 3]);
  const piece = ref.matmul(
    ref.reshape(ref.slice(batch, [2, 0, 0, 0], [1, 1, 1, 1], [1, 1, 2, 4]), [2, 4]),
    ref.reshape(ref.slice(w, [4, 0, 0], [1, 1, 1], [1, 4, 3]), [4, 3]),
  );
  const outPiece = ref.reshape(ref.slice(out, [2, 4, 0, 0], [1, 1, 1, 1], [1, 1, 2, 3]), [2, 3]);
  assert.equal(ref.maxAbsDiff(piece, outPiece), 0);

  const v = HostArray.fromNested([1, -1]);
  assert.deepEqual(nested(ref.matmul(a, v)), [-1, -1]);
  assert.deepEqual(nested(ref.matmul(v, a)), [-2, -2]);
  assert.deepEqual(ref.matmul(v, v).shape, []);
});

test('conv2d: 1-channel 3x3, pads 1, stride 2, by hand', () => {
  const x = HostArray.fromNested([[[[1, 2, 3], [4, 5, 6], [7, 8, 9]]]]);
  const w = HostArray.fromNested([[[[1, 0, 10], [0, 100, 0], [0, 0, 2]]]]);
  const bias = HostArray.fromNested([0.5]);
  // out[y][x] = x[2y-1][2x-1] + 10 x[2y-1][2x+1] + 100 x[2y][2x] + 2 x[2y+1][2x+1], zero-padded
  const out = ref.conv2d(x, w, bias, [2, 2], [1, 1, 1, 1], [1, 1], 1);
  assert.deepEqual(nested(out), [[[[110.5, 300.5], [750.5, 905.5]]]]);
  // dilation 2, 2x2 ones on x[r][c] = 5r + c: out[y][x] = x[y][x] + x[y][x+2] + x[y+2][x] + ...
  const x5 = new HostArray(Float32Array.from({ length: 25 }, (_, i) => i), [1, 1, 5, 5]);
  const dil = ref.conv2d(x5, HostArray.ones([1, 1, 2, 2]), undefined, [1, 1], [0, 0, 0, 0],
    [2, 2], 1);
  assert.deepEqual(nested(dil), [[[[24, 28, 32], [44, 48, 52], [64, 68, 72]]]]);
});

test('conv2d: groups=2 equals two separate convs', () => {
  const x = rand([2, 4, 6, 5], 3);
  const w = rand([6, 2, 3, 3], 4);
  const bias = rand([6], 5);
  const args = [[2, 1], [1, 0, 2, 1], [1, 2]] as const;
  const conv = (xx: HostArray, ww: HostArray, bb: HostArray, g: number): HostArray =>
    ref.conv2d(xx, ww, bb, [...args[0]], [...args[1]], [...args[2]], g);
  const grouped = conv(x, w, bias, 2);
  const half = (a: HostArray, axis: number, part: number): HostArray => {
    const n = a.shape[axis]! / 2;
    const starts = a.shape.map((_, i) => (i === axis ? part * n : 0));
    const counts = a.shape.map((d, i) => (i === axis ? n : d));
    return ref.slice(a, starts, a.shape.map(() => 1), counts);
  };
  const separate = ref.concat(
    [0, 1].map((p) => conv(half(x, 1, p), half(w, 0, p), half(bias, 0, p), 1)),
    1,
  );
  assert.deepEqual(grouped.shape, separate.shape);
  assert.ok(ref.maxAbsDiff(grouped, separate) < 1e-6);
});

test('convTranspose2d is the adjoint of conv2d', () => {
  const cases: {
    x: number[];
    w: number[];
    s: [number, number];
    p: [number, number, number, number];
    d: [number, number];
    g: number;
    op: [number, number];
  }[] = [
    // 7 -> 4 -> 7 (no output padding), 8 -> 4 -> 7 + 1
    { x: [2, 3, 7, 8], w: [4, 3, 3, 3], s: [2, 2], p: [1, 1, 1, 1], d: [1, 1], g: 1, op: [0, 1] },
    // dilation 2, groups 2: 9 -> 4 -> 9, 10 -> 4 -> 9 + 1
    { x: [1, 4, 9, 10], w: [6, 2, 3, 3], s: [2, 2], p: [1, 1, 1, 1], d: [2, 2], g: 2, op: [0, 1] },
    // asymmetric pads, stride [2, 3]: H 7 (+1+0) -> 3 -> 4 - 1 + 3 = 6, + 1;
    // W 6 (+0+2) -> 2 -> 3 - 2 + 3 = 4, + 2
    { x: [1, 2, 7, 6], w: [2, 2, 3, 3], s: [2, 3], p: [1, 0, 0, 2], d: [1, 1], g: 1, op: [1, 2] },
  ];
  cases.forEach((c, k) => {
    const x = rand(c.x, 10 + k);
    const w = rand(c.w, 20 + k);
    const y0 = ref.conv2d(x, w, undefined, c.s, c.p, c.d, c.g);
    const y = rand([...y0.shape], 30 + k);
    const xt = ref.convTranspose2d(y, w, undefined, c.s, c.p, c.d, c.g, c.op);
    assert.deepEqual(xt.shape, x.shape, `case ${k}`);
    const lhs = dot(y0, y);
    close(dot(x, xt), lhs, 1e-4 * Math.max(1, Math.abs(lhs)), `case ${k}`);
  });
});

test('convTranspose2d: bias and output size', () => {
  const x = HostArray.fromNested([[[[1, 2], [3, 4]]]]);
  const w = HostArray.fromNested([[[[1, 1], [1, 1]], [[0, 1], [0, 0]]]]); // [C=1, O=2, 2, 2]
  const out = ref.convTranspose2d(x, w, HostArray.fromNested([0, 10]), [2, 2], [0, 0, 0, 0],
    [1, 1], 1, [0, 0]);
  assert.deepEqual(out.shape, [1, 2, 4, 4]);
  assert.deepEqual(nested(out), [
    [
      [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]],
      [[10, 11, 10, 12], [10, 10, 10, 10], [10, 13, 10, 14], [10, 10, 10, 10]],
    ],
  ]);
});

test('gather and scatterAdd are adjoint along axis 0', () => {
  const x = rand([5, 3], 40);
  const idx = i64([0, 4, -1, 2, 2, 0], [2, 3]); // duplicates and a negative index
  const g = ref.gather(x, idx, 0);
  assert.deepEqual(g.shape, [2, 3, 3]);
  const y = rand([2, 3, 3], 41);
  const s = ref.scatterAdd(HostArray.zeros([5, 3]), idx, y);
  close(dot(g, y), dot(x, s), 1e-5);
  // row 4 is hit twice (4 and -1), row 1 never
  assert.deepEqual(Array.from((s.data as Float32Array).subarray(3, 6)), [0, 0, 0]);
});

test('gather: numpy take on a middle axis', () => {
  const x = HostArray.fromNested([[[0, 1, 2], [3, 4, 5]], [[6, 7, 8], [9, 10, 11]]]);
  const out = ref.gather(x, i64([2, -3]), 2);
  assert.deepEqual(nested(out), [[[2, 0], [5, 3]], [[8, 6], [11, 9]]]);
  const rows = ref.gather(x, i64([1], []), 1); // scalar index drops the axis
  assert.deepEqual(nested(rows), [[3, 4, 5], [9, 10, 11]]);
});

test('topk: sorted, ties keep the lower index first', () => {
  const x = HostArray.fromNested([3, 1, 3, 2, 3]);
  const hi = ref.topk(x, 3, 0, true);
  assert.deepEqual(nested(hi.values), [3, 3, 3]);
  assert.deepEqual(nested(hi.indices), [0, 2, 4]);
  const lo = ref.topk(HostArray.fromNested([2, 1, 1, 0]), 3, 0, false);
  assert.deepEqual(nested(lo.values), [0, 1, 1]);
  assert.deepEqual(nested(lo.indices), [3, 1, 2]);
  const m = ref.topk(HostArray.fromNested([[1, 5], [4, 5], [4, 0]]), 2, 0, true);
  assert.deepEqual(nested(m.values), [[4, 5], [4, 5]]);
  assert.deepEqual(nested(m.indices), [[1, 0], [2, 1]]);
});

test('argmax: first maximum', () => {
  const x = HostArray.fromNested([[1, 7, 7], [9, 2, 9]]);
  assert.deepEqual(nested(ref.argmax(x, 1, false)), [1, 0]);
  assert.deepEqual(nested(ref.argmax(x, 0, true)), [[1, 0, 1]]);
});

test('erf at known values', () => {
  const known: [number, number][] = [
    [0, 0],
    [0.5, 0.5204998778130465],
    [1, 0.8427007929497149],
    [2, 0.9953222650189527],
    [-1, -0.8427007929497149],
    [3, 0.9999779095030014],
    [0.01, 0.011283415555849618],
  ];
  for (const [v, e] of known) close(ref.erf(v), e, 1e-7, `erf(${v})`);
  for (const [v, e] of known) close(ref.erf(v), e, 1e-14, `erf(${v}) tight`);
  assert.equal(ref.erf(10), 1);
  assert.equal(ref.erf(-10), -1);
});

test('gelu: exact and tanh', () => {
  const x = HostArray.fromNested([-1, 0, 1, 2]);
  const exact = ref.gelu(x, 'none');
  const want = [-0.15865525393145707, 0, 0.8413447460685429, 1.9544997361036416];
  want.forEach((e, i) => close(exact.data[i] as number, e, 1e-6));
  const tanh = ref.gelu(x, 'tanh');
  want.forEach((e, i) => close(tanh.data[i] as number, e, 1e-3));
});

test('softmax rows sum to 1; logSoftmax is its log', () => {
  const x = rand([3, 5], 50);
  const scaled = ref.unary(x, (v) => 20 * v);
  const sm = ref.softmax(scaled, 1);
  const sums = ref.reduce(sm, [1], false, 'sum');
  for (const s of sums.data as Float32Array) close(s, 1, 1e-6);
  const lsm = ref.logSoftmax(scaled, -1);
  assert.ok(ref.maxAbsDiff(lsm, ref.unary(sm, Math.log)) < 1e-5);
  const cols = ref.reduce(ref.softmax(x, 0), [0], true, 'sum');
  assert.deepEqual(cols.shape, [1, 5]);
  for (const s of cols.data as Float32Array) close(s, 1, 1e-6);
});

test('layerNorm: mean 0, variance 1 without affine; affine applies', () => {
  const x = ref.unary(rand([2, 3, 4], 60), (v) => 3 * v + 1);
  const y = ref.layerNorm(x, 1, 0);
  const mean = ref.reduce(y, [1, 2], false, 'mean');
  const sq = ref.reduce(ref.unary(y, (v) => v * v), [1, 2], false, 'mean');
  for (const m of mean.data as Float32Array) close(m, 0, 1e-6);
  for (const v of sq.data as Float32Array) close(v, 1, 1e-5);
  const scale = rand([3, 4], 61);
  const bias = rand([3, 4], 62);
  const affine = ref.layerNorm(x, 1, 0, scale, bias);
  const manual = ref.binary(ref.binary(y, scale, (a, b) => a * b), bias, (a, b) => a + b);
  assert.ok(ref.maxAbsDiff(affine, manual) < 1e-6);
});

test('groupNorm equals layerNorm over each group', () => {
  const x = rand([2, 6, 3, 2], 70);
  const scale = rand([6], 71);
  const bias = rand([6], 72);
  const gn = ref.groupNorm(x, 3, 1e-5, scale, bias);
  const ln = ref.reshape(ref.layerNorm(ref.reshape(x, [2, 3, 2, 3, 2]), 2, 1e-5), [2, 6, 3, 2]);
  const manual = ref.binary(
    ref.binary(ln, ref.reshape(scale, [6, 1, 1]), (a, b) => a * b),
    ref.reshape(bias, [6, 1, 1]),
    (a, b) => a + b,
  );
  assert.ok(ref.maxAbsDiff(gn, manual) < 1e-6);
});

test('reduce: sum, mean, max over axes', () => {
  const x = HostArray.fromNested([[[1, 2], [3, 4]], [[5, 6], [7, 8]]]);
  assert.deepEqual(nested(ref.reduce(x, [0, 2], false, 'sum')), [14, 22]);
  assert.deepEqual(nested(ref.reduce(x, [1], true, 'mean')), [[[2, 3]], [[6, 7]]]);
  assert.deepEqual(nested(ref.reduce(x, [0, 1, 2], false, 'max')), 8);
  assert.deepEqual(nested(ref.reduce(x, [], false, 'sum')), nested(x));
});

test('binary, where: broadcasting and bool output', () => {
  const a = HostArray.fromNested([[1], [2], [3]]);
  const b = HostArray.fromNested([10, 20]);
  assert.deepEqual(nested(ref.binary(a, b, (p, q) => p + q)), [[11, 21], [12, 22], [13, 23]]);
  const lt = ref.binary(a, HostArray.fromNested([2]), (p, q) => Number(p < q), 'bool');
  assert.equal(lt.dtype, 'bool');
  assert.deepEqual(nested(lt), [[true], [false], [false]]);
  const w = ref.where(lt, HostArray.scalar(-1), b);
  assert.deepEqual(nested(w), [[-1, -1], [10, 20], [10, 20]]);
});

test('data movement: transpose, reshape, slice, concat, pad, expand, upsample', () => {
  const x = HostArray.fromNested([[1, 2, 3], [4, 5, 6]]);
  assert.deepEqual(nested(ref.transpose(x, [1, 0])), [[1, 4], [2, 5], [3, 6]]);
  assert.deepEqual(ref.reshape(x, [3, -1]).shape, [3, 2]);
  assert.deepEqual(nested(ref.slice(x, [1, 2], [-1, -2], [2, 2])), [[6, 4], [3, 1]]);
  assert.deepEqual(nested(ref.concat([x, x], 0)), [[1, 2, 3], [4, 5, 6], [1, 2, 3], [4, 5, 6]]);
  const padded = [[9, 1, 2, 3], [9, 4, 5, 6], [9, 9, 9, 9]];
  assert.deepEqual(nested(ref.pad(x, [0, 1, 1, 0], 9)), padded);
  assert.deepEqual(nested(ref.expand(HostArray.fromNested([[1], [2]]), [2, 2, 3])), [
    [[1, 1, 1], [2, 2, 2]],
    [[1, 1, 1], [2, 2, 2]],
  ]);
  assert.throws(() => ref.expand(x, [3, 3]));
  const t = ref.transpose(rand([2, 3, 4], 80), [2, 0, 1]);
  assert.deepEqual(t.shape, [4, 2, 3]);
  const up = ref.upsampleNearest2x(HostArray.fromNested([[[[1, 2], [3, 4]]]]));
  assert.deepEqual(nested(up), [[[[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]]]);
  const ints = ref.transpose(i64([1, 2, 3, 4], [2, 2]), [1, 0]);
  assert.equal(ints.dtype, 'int64');
  assert.deepEqual(nested(ints), [[1, 3], [2, 4]]);
});

test('cast truncates toward zero; bool is nonzero', () => {
  const x = HostArray.fromNested([-1.7, -0.2, 0, 0.9, 2.5]);
  assert.deepEqual(nested(ref.cast(x, 'int64')), [-1, 0, 0, 0, 2]);
  assert.deepEqual(Array.from(ref.cast(x, 'int32').data as Int32Array), [-1, 0, 0, 0, 2]);
  assert.deepEqual(nested(ref.cast(x, 'bool')), [true, true, false, true, true]);
  assert.deepEqual(nested(ref.cast(i64([3, -4]), 'float32')), [3, -4]);
});

test('maxAbsDiff: shapes must match; NaN handling', () => {
  const a = HostArray.fromNested([1, NaN, Infinity]);
  assert.equal(ref.maxAbsDiff(a, HostArray.fromNested([1.5, NaN, Infinity])), 0.5);
  assert.equal(ref.maxAbsDiff(a, HostArray.fromNested([1, 0, Infinity])), Infinity);
  assert.throws(() => ref.maxAbsDiff(a, HostArray.fromNested([[1, 2, 3]])));
});
