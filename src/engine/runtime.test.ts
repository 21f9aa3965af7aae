/** Runtime: session cache by shape signature, providers, graph text, host arrays, trees. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { availableParallelism } from 'node:os';
import onnxProto from 'onnx-proto';
import { HostArray } from './host.js';
import * as ops from './ops.js';
import { grad } from './autodiff.js';
import { compile, runFailure, RuntimeError, sessionOptions, setDefaultThreads } from './runtime.js';
import type { Tensor } from './tensor.js';
import { ShapeError } from './shape.js';
import { printGraph, trace } from './trace.js';
import { flatten, unflatten } from './tree.js';

test('one session per input-shape signature, reused for equal shapes', async () => {
  const f = compile((x: Tensor) => ops.mul(x, 2));
  const a = await f(HostArray.fromNested([1, 2]));
  await f(HostArray.fromNested([3, 4]));
  assert.equal(f.sessionCount, 1);
  const b = await f(HostArray.fromNested([[1], [2], [3]]));
  assert.equal(f.sessionCount, 2);
  assert.deepEqual(Array.from(a.data as Float32Array), [2, 4]);
  assert.deepEqual(b.shape, [3, 1]);
  assert.equal(f.stats.calls, 3);
  await f.dispose();
  assert.equal(f.sessionCount, 0);
});

test('a missing provider is a clear error that says how to get it', () => {
  assert.throws(() => sessionOptions({ provider: 'cuda' }), (e: unknown) =>
    e instanceof RuntimeError && /ONNXRUNTIME_NODE_INSTALL=cuda12/.test((e as Error).message));
  assert.throws(() => sessionOptions({ provider: 'tpu' as never }), /unknown provider 'tpu'/);
  assert.deepEqual(sessionOptions({ threads: 3 }).intraOpNumThreads, 3);
});

test('a thread\'s default session threads apply until reset; a session\'s own setting wins', () => {
  try {
    setDefaultThreads(1);
    assert.equal(sessionOptions({}).intraOpNumThreads, 1);
    assert.equal(sessionOptions({ threads: 2 }).intraOpNumThreads, 2);
    assert.throws(() => setDefaultThreads(0), /threads must be an integer >= 1, got 0/);
  } finally {
    setDefaultThreads(undefined);
  }
  assert.equal(sessionOptions({}).intraOpNumThreads, availableParallelism());
});

test('graphs print in a stable text form', () => {
  const g = trace((x: Tensor, w: Tensor) => ops.sum(ops.matmul(x, w), 1),
    [{ shape: [2, 3] }, { shape: [3, 4] }]);
  assert.equal(printGraph(g), [
    'graph(%0: float32[2, 3] "arg0", %1: float32[3, 4] "arg1") {',
    '  %2 = matmul(%0, %1) : float32[2, 4]',
    '  %3 = reduceSum(%2) {"axes":[1],"keepDims":false} : float32[2]',
    '  return %3',
    '}',
  ].join('\n'));
});

test('int64 and bool values round-trip through a compiled function', async () => {
  const f = compile((i: Tensor, x: Tensor) => ({ picked: ops.gather(x, i, 0), pos: ops.greater(x, 0) }));
  const r = await f(HostArray.fromNested([2, 0], 'int64'), HostArray.fromNested([-1, 0.5, 3]));
  assert.deepEqual(Array.from(r.picked.data as Float32Array), [3, -1]);
  assert.equal(r.pos.dtype, 'bool');
  assert.deepEqual(Array.from(r.pos.data as Uint8Array), [0, 1, 1]);
});

test('host arrays: constructors, indexing, nesting and printing', () => {
  const a = HostArray.fromNested([[1, 2, 3], [4, 5, 6]]);
  assert.deepEqual(a.shape, [2, 3]);
  assert.equal(a.get(1, 2), 6);
  assert.deepEqual(a.toNested(), [[1, 2, 3], [4, 5, 6]]);
  assert.equal(a.toString(), 'float32[2,3] [[1, 2, 3],\n [4, 5, 6]]');
  assert.equal(HostArray.zeros([2], 'int64').toString(), 'int64[2] [0, 0]');
  assert.deepEqual(Array.from(HostArray.ones([2, 2]).data as Float32Array), [1, 1, 1, 1]);
  assert.match(HostArray.zeros([100]).toString(), /\[0, 0, 0, \.\.\., 0, 0\]/);
  assert.throws(() => HostArray.fromNested([[1, 2], [3]]), /ragged/);
  assert.throws(() => new HostArray(new Float32Array(3), [2, 2]), /3 elements but shape \[2, 2\] needs 4/);
  assert.throws(() => a.get(2, 0), /index 2 out of \[0, 2\)/);
});

test('trees flatten with dotted paths and rebuild', () => {
  const tree = { down_blocks: [{ conv: { weight: 1, bias: 2 } }], out: 3, skip: undefined };
  const flat = flatten(tree, (x): x is number => typeof x === 'number');
  assert.deepEqual(flat.paths, ['down_blocks.0.conv.weight', 'down_blocks.0.conv.bias', 'out']);
  assert.deepEqual(unflatten(flat.def, [10, 20, 30]), { down_blocks: [{ conv: { weight: 10, bias: 20 } }], out: 30 });
  assert.throws(() => flatten({ a: 'text' } as never, (x): x is number => typeof x === 'number'), /unexpected string at 'a'/);
});

test('repeated computations are lowered once and outputs are named where they are made', async () => {
  // exp(x) twice (the second a separate trace node), an output that is also read by another
  // node (e, as a training step's new moments are), an input passed through, a repeat.
  const f = compile((x: Tensor) => {
    const e = ops.exp(x);
    return [e, ops.add(ops.exp(x), e), x, e];
  });
  const x = HostArray.fromNested([0, 1]);
  const graph = onnxProto.onnx.ModelProto.decode(f.onnx(x)).graph!;
  const ops_ = graph.node!.map((n) => n.opType);
  assert.equal(ops_.filter((o) => o === 'Exp').length, 1);
  assert.equal(ops_.filter((o) => o === 'Identity').length, 2, 'only the input and the repeat');
  const outNames = graph.output!.map((o) => o.name!);
  assert.ok(graph.node!.some((n) => n.opType === 'Exp' && n.output![0] === outNames[0]));
  const [e, s, xx, e2] = await f(x) as HostArray[];
  const ex = [1, Math.E];
  for (const [got, want] of [[e!, ex], [s!, ex.map((v) => 2 * v)], [xx!, [0, 1]], [e2!, ex]] as const) {
    Array.from(got.data as Float32Array).forEach((v, i) => assert.ok(Math.abs(v - want[i]!) < 1e-5, `${v} vs ${want[i]}`));
  }
});

test("layerNorm's statistics outputs are emitted only where a gradient reads them", async () => {
  const lnOutputs = (bytes: Uint8Array) => onnxProto.onnx.ModelProto.decode(bytes).graph!.node!
    .filter((n) => n.opType === 'LayerNormalization').map((n) => n.output!.length);
  const x = new HostArray(Float32Array.from({ length: 12 }, (_, i) => Math.sin(3 * i) * (i + 1)), [2, 6]);
  const fwd = compile((xs: Tensor) => ops.layerNorm(xs));
  assert.deepEqual(lnOutputs(fwd.onnx(x)), [1]);
  const r = new HostArray(Float32Array.from({ length: 12 }, (_, i) => Math.cos(i)), [2, 6]);
  const dLoss = grad((xs: Tensor) => ops.sum(ops.mul(ops.layerNorm(xs), ops.constant(r)))) as (xs: Tensor) => Tensor;
  const g = compile(dLoss);
  assert.deepEqual(lnOutputs(g.onnx(x)), [3]);
  // the gradient from the kernel's 1/std equals the textbook formula
  const got = Array.from((await g(x) as HostArray).data as Float32Array);
  for (let row = 0; row < 2; row++) {
    const xs = Array.from(x.data as Float32Array).slice(6 * row, 6 * row + 6);
    const rs = Array.from(r.data as Float32Array).slice(6 * row, 6 * row + 6);
    const mean = xs.reduce((a, b) => a + b) / 6;
    const rstd = 1 / Math.sqrt(xs.reduce((a, b) => a + (b - mean) ** 2, 0) / 6 + 1e-5);
    const xh = xs.map((v) => (v - mean) * rstd);
    const mg = rs.reduce((a, b) => a + b) / 6;
    const mgx = rs.reduce((a, b, i) => a + b * xh[i]!, 0) / 6;
    xs.forEach((_, i) => {
      const want = rstd * (rs[i]! - mg - xh[i]! * mgx);
      assert.ok(Math.abs(got[6 * row + i]! - want) < 1e-5, `dx[${row}, ${i}] ${got[6 * row + i]} vs ${want}`);
    });
  }
});

test('a call with the wrong arguments fails naming the argument, never runs on NaNs', async () => {
  // Called with one argument, this used to trace y as undefined, lifted to a NaN constant.
  const add = compile((x: Tensor, y: Tensor) => ops.add(x, y), { name: 'add' });
  const v = HostArray.fromNested([1, 2]);
  await assert.rejects((add as (...a: unknown[]) => Promise<unknown>)(v), {
    name: 'RuntimeError',
    message: "compiled 'add' takes 2 arguments ('arg0', 'arg1'), got 1: argument 2 'arg1' " +
      'is missing' });
  await assert.rejects((add as (...a: unknown[]) => Promise<unknown>)(v, v, v), {
    message: "compiled 'add' takes 2 arguments ('arg0', 'arg1'), got 3: 1 too many" });
  await assert.rejects((add as (...a: unknown[]) => Promise<unknown>)(v, undefined), {
    message: "compiled 'add': argument 2 'arg1' is undefined, expected a HostArray or a tree " +
      'of them' });
  await assert.rejects((add as (...a: unknown[]) => Promise<unknown>)(v, 3), {
    message: "compiled 'add': argument 2 'arg1' must be a HostArray or a tree of them, got number" });
  assert.equal(add.sessionCount, 0);

  // argNames name the arguments and fix the count.
  const scaled = compile((x: Tensor, s: Tensor) => ops.mul(x, s), { argNames: ['x', 'scale'] });
  await assert.rejects((scaled as (...a: unknown[]) => Promise<unknown>)(v), {
    message: "compiled 'function' takes 2 arguments ('x', 'scale'), got 1: argument 2 'scale' " +
      'is missing' });
  // A shape or dtype the graph cannot take: the op's rule, then the call's arguments.
  await assert.rejects(scaled(v, HostArray.fromNested([1, 2, 3])), (e: unknown) => {
    assert.ok(e instanceof ShapeError, String(e));
    assert.match(e.message, /^Mul: .*\[2\].*\[3\]/);
    assert.ok(e.message.endsWith("(compiled 'function' called with 'x': float32[2], " +
      "'scale': float32[3])"), e.message);
    return true;
  });
  await assert.rejects(scaled(v, HostArray.fromNested([1, 2], 'int64')), (e: unknown) => {
    assert.ok(e instanceof TypeError, String(e));
    assert.match(e.message, /float32 and int64.*\(compiled 'function' called with 'x': float32\[2\], 'scale': int64\[2\]\)$/);
    return true;
  });
  assert.deepEqual(Array.from((await scaled(v, v)).data as Float32Array), [1, 4]);
  await add.dispose();
  await scaled.dispose();
});

test('ops refuse an operand that is neither a Tensor nor a number', () => {
  assert.throws(() => trace((x: Tensor) => ops.add(x, undefined as unknown as number),
    [{ shape: [2] }]), { name: 'TypeError',
    message: 'add: operand 2 must be a Tensor or a number, got undefined' });
});

test('host arrays hold only the typed arrays of their dtype', () => {
  const types = 'Float32Array (float32), Uint16Array (float16), BigInt64Array (int64), ' +
    'Int32Array (int32), Uint8Array (bool)';
  // An Int8Array used to be taken for bool, a Float64Array too: bytes misread by ORT.
  for (const data of [new Int8Array(2), new Float64Array(2), new Uint8ClampedArray(2)]) {
    assert.throws(() => new HostArray(data as never, [2]), { name: 'TypeError',
      message: `HostArray: ${data.constructor.name} holds no dtype of Diffuse: expected ${types}` });
  }
  assert.throws(() => new HostArray(new Float32Array(2) as never, [2], 'int64'),
    { message: 'HostArray: dtype int64 needs a BigInt64Array, got Float32Array' });
  assert.throws(() => new HostArray(new Float32Array(2) as never, [2], 'float64' as never),
    { message: `HostArray: unknown dtype 'float64': expected ${types}` });
  assert.equal(new HostArray(new Uint16Array(1), [1], 'float16').dtype, 'float16');
});

test('a failed run is one line: an allocator failure says what to change', () => {
  const dump = 'Failed to allocate memory for requested buffer of size 17179869184\n' +
    'Stacktrace:\n  onnxruntime::BFCArena::AllocateRawInternal ...';
  const oom = runFailure(new Error(dump), "compiled 'sample_denoiser'", "'x': float32[64,1,1024,1024]");
  assert.equal(oom.message, "compiled 'sample_denoiser' ran out of memory in ONNX Runtime (called " +
    "with 'x': float32[64,1,1024,1024]): use a smaller batch or memory limit (Failed to allocate " +
    'memory for requested buffer of size 17179869184)');
  assert.ok(!oom.message.includes('\n'));
  const other = runFailure(new Error('Non-zero status code returned while running Conv node.\nmore'),
    "compiled 'f'", "'x': float32[1]");
  assert.equal(other.message, "compiled 'f' failed in ONNX Runtime (called with 'x': float32[1]): " +
    'Non-zero status code returned while running Conv node.');
});

test('into: ORT writes the outputs into given arrays, checked against the graph', async () => {
  const f = compile((x: Tensor) => ({ double: ops.mul(x, 2), sum: ops.sum(x) }));
  const x = new HostArray(Float32Array.from([1, 2, 3]), [3]);
  const out = { double: new HostArray(new Float32Array(3), [3]), sum: new HostArray(new Float32Array(1), []) };
  const r = await f.into(out, x);
  assert.equal(r, out);
  assert.deepEqual(Array.from(out.double.data as Float32Array), [2, 4, 6]);
  assert.deepEqual(Array.from(out.sum.data as Float32Array), [6]);
  await assert.rejects(f.into({ double: new HostArray(new Float32Array(2), [2]), sum: out.sum }, x),
    /output 0 must be float32 \[3\], got float32 \[2\]/);
  await assert.rejects(f.into({ double: out.double } as never, x), /1 output arrays for 2 outputs/);
  await f.dispose();
});
