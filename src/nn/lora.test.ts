/** LoRA: the start equals the base, compiled and host merges agree, the VJP in the factors
 *  against finite differences, and the trainable count r (out + in') per adapted weight. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { checkGrad, randn } from '../../test/support/gradcheck.js';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { flatten, mapTree, type Tree } from '../engine/tree.js';
import { CLASSIFIER_PRESETS, DiffuseClassifier } from '../models/classifier.js';
import {
  applyLora, loraInit, loraParameterCount, loraScale, mergeLoraHost, type LoraTree,
} from './lora.js';

const isHost = (x: unknown): x is HostArray => x instanceof HostArray;
const tiny = new DiffuseClassifier({ ...CLASSIFIER_PRESETS.tiny!, noise_conditioning: false });
const base = tiny.init(RngKey.fromSeed(1)) as unknown as Tree<HostArray>;
const leaves = (t: Tree<HostArray>) => flatten(t, isHost);

/** compile() over tree arguments, typed loosely (as compileTrainStep does: the mapped host
 *  signature of a generic tree is too deep for tsc). */
function compileLoose(fn: (...args: Tree<Tensor>[]) => unknown) {
  const f = compile(fn as (...args: never[]) => unknown);
  return { run: f as unknown as (...a: unknown[]) => Promise<unknown>, dispose: () => f.dispose() };
}

/** The merged tree as the compiled graph computes it, base baked in as constants. */
async function compiledMerge(lora: LoraTree<HostArray>, scale: number): Promise<Tree<HostArray>> {
  const consts = mapTree(base, isHost, (a) => ops.constant(a));
  const f = compileLoose((l) => applyLora(consts, l as unknown as LoraTree<Tensor>, scale));
  try {
    return (await f.run(lora)) as Tree<HostArray>;
  } finally {
    await f.dispose();
  }
}

/** b replaced by normals (scaled), so the update is not zero. */
function withRandomB(lora: LoraTree<HostArray>, seed: number): LoraTree<HostArray> {
  return Object.fromEntries(Object.entries(lora).map(([p, f], i) =>
    [p, { a: f.a, b: randn(f.b.shape, seed + i, 0.5) }]));
}

test('loraInit: factors for each weight of rank >= 2, r (out + in\') trainable values each', () => {
  const lora = loraInit(base, { rank: 4 }, RngKey.fromSeed(2));
  // tiny, without noise conditioning: conv 1->8 (3x3), conv 8->16 (3x3), fc 16->16, head 16->10.
  assert.deepEqual(Object.keys(lora), ['blocks.0.conv.weight', 'blocks.1.conv.weight',
    'fc.weight', 'head.weight']);
  assert.deepEqual(lora['blocks.1.conv.weight']!.a.shape, [4, 72]);
  assert.deepEqual(lora['blocks.1.conv.weight']!.b.shape, [16, 4]);
  assert.equal(loraParameterCount(lora), 4 * ((9 + 8) + (72 + 16) + (16 + 16) + (16 + 10)));
  const heads = loraInit(base, { rank: 2, match: (p) => !p.startsWith('blocks.') },
    RngKey.fromSeed(2));
  assert.equal(loraParameterCount(heads), 2 * ((16 + 16) + (16 + 10)));
  for (const [path, { a, b }] of Object.entries(lora)) {
    const bound = 1 / Math.sqrt(a.shape[1]!);
    const [av, bv] = [a.data as Float32Array, b.data as Float32Array];
    assert.ok(av.every((v) => Math.abs(v) <= bound) && av.some((v) => v !== 0), path);
    assert.ok(bv.every((v) => v === 0), path);
  }
  assert.throws(() => loraInit(base, { rank: 0 }, RngKey.fromSeed(2)), /rank must be an integer/);
});

test('applyLora at init is the base exactly (compiled), and so are the logits', async () => {
  const lora = loraInit(base, { rank: 3 }, RngKey.fromSeed(3));
  const merged = leaves(await compiledMerge(lora, loraScale(3, 6)));
  const want = leaves(base);
  assert.deepEqual(merged.paths, want.paths);
  merged.leaves.forEach((a, i) => assert.deepEqual(a.data, want.leaves[i]!.data, merged.paths[i]));
  const x = randn([2, 1, 16, 16], 4);
  const consts = mapTree(base, isHost, (a) => ops.constant(a));
  const f = compileLoose((l, xs) => ({
    adapted: tiny.logits(applyLora(consts, l as unknown as LoraTree<Tensor>, 2) as never,
      xs as Tensor),
    plain: tiny.logits(consts as never, xs as Tensor) }));
  const out = (await f.run(lora, x)) as { adapted: HostArray; plain: HostArray };
  await f.dispose();
  assert.deepEqual(out.adapted.data, out.plain.data);
});

test('applyLora (compiled) equals mergeLoraHost once b is not zero', async () => {
  const lora = withRandomB(loraInit(base, { rank: 4 }, RngKey.fromSeed(5)), 50);
  const scale = loraScale(4, 8);
  const got = leaves(await compiledMerge(lora, scale));
  const host = leaves(mergeLoraHost(base, lora, scale));
  let changed = 0;
  got.leaves.forEach((a, i) => {
    const w = host.leaves[i]!;
    assert.deepEqual(a.shape, w.shape);
    for (let j = 0; j < a.size; j++) {
      assert.ok(Math.abs((a.data[j] as number) - (w.data[j] as number)) < 1e-5,
        `${got.paths[i]}[${j}]`);
    }
    const before = leaves(base).leaves[i]!.data as Float32Array;
    if ((w.data as Float32Array).some((v, j) => v !== before[j])) changed++;
  });
  assert.equal(changed, 4, 'the four adapted weights change, nothing else');
  // Hand-checked entry: head.weight[1][2] + scale sum_k b[1][k] a[k][2].
  const { a, b } = lora['head.weight']!;
  const want = (base as { head: { weight: HostArray } }).head.weight.get(1, 2) +
    scale * [0, 1, 2, 3].reduce((s, k) => s + b.get(1, k) * a.get(k, 2), 0);
  const merged = mergeLoraHost(base, lora, scale) as { head: { weight: HostArray } };
  assert.ok(Math.abs(merged.head.weight.get(1, 2) - want) < 1e-6);
});

test('the factors\' VJP through a conv and a linear layer matches finite differences', async () => {
  const conv = randn([4, 2, 3, 3], 60, 0.3);
  const fc = randn([3, 4], 61, 0.3);
  const consts = { conv: { weight: ops.constant(conv) }, fc: { weight: ops.constant(fc) } };
  const loss = (a1: Tensor, b1: Tensor, a2: Tensor, b2: Tensor, x: Tensor): Tensor => {
    const p = applyLora(consts, { 'conv.weight': { a: a1, b: b1 }, 'fc.weight': { a: a2, b: b2 } },
      1.5);
    const h = ops.tanh(ops.conv2d(x, p.conv.weight, { padding: 1 })); // [N, 4, 5, 5]
    return ops.linear(ops.mean(h, [2, 3]), p.fc.weight); // [N, 3]
  };
  await checkGrad('applyLora factors', loss, [randn([2, 18], 62, 0.3), randn([4, 2], 63, 0.3),
    randn([2, 4], 64, 0.3), randn([3, 2], 65, 0.3), randn([2, 2, 5, 5], 66)],
  { wrt: [0, 1, 2, 3], eps: 1e-3, rtol: 1e-2, atol: 1e-4 });
});

test('factors that do not fit the base are refused, naming the weight', () => {
  const lora = loraInit(base, { rank: 2 }, RngKey.fromSeed(7));
  assert.throws(() => mergeLoraHost(base, { 'fc.bias': lora['fc.weight']! }, 1),
    /mergeLoraHost: factors of 'fc.bias' \[16\] must be a \[r, 1\]/);
  assert.throws(() => mergeLoraHost(base, { 'nope.weight': lora['fc.weight']! }, 1),
    /factors for 'nope.weight', which the base lacks/);
  assert.throws(() => mergeLoraHost(base, { 'head.weight': lora['fc.weight']! }, 1),
    /factors of 'head.weight' \[10, 16\] must be a \[r, 16\] and b \[10, r\]/);
});
