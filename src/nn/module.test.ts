/** Modules: dotted parameter names, shapes, counts, deterministic init; attention values. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { MultiHeadAttention } from './attention.js';
import { Conv2d, GroupNorm, Linear } from './layers.js';
import { Module, stateDict, type ParamsOf } from './module.js';
import * as ref from '../../test/support/reference.js';

class Resnet extends Module {
  readonly norm1 = new GroupNorm(2, 4);
  readonly conv1 = new Conv2d(4, 8, 3, { padding: 1 });
  readonly conv_shortcut?: Conv2d;
  constructor(shortcut: boolean) {
    super();
    if (shortcut) this.conv_shortcut = new Conv2d(4, 8, 1);
  }
}
class Block extends Module {
  readonly resnets = [new Resnet(true), new Resnet(false)];
  readonly attentions = [new MultiHeadAttention(8, { heads: 2 })];
}

test('parameter trees flatten to diffusers-style dotted names', () => {
  const names = [...new Block().parameterShapes().keys()];
  assert.deepEqual(names.slice(0, 7), [
    'resnets.0.norm1.weight', 'resnets.0.norm1.bias', 'resnets.0.conv1.weight', 'resnets.0.conv1.bias',
    'resnets.0.conv_shortcut.weight', 'resnets.0.conv_shortcut.bias', 'resnets.1.norm1.weight',
  ]);
  assert.ok(names.includes('attentions.0.to_out.0.weight'));
  assert.ok(!names.includes('resnets.1.conv_shortcut.weight'));
  const dict = stateDict(new Block().init(RngKey.fromSeed(0)));
  assert.deepEqual([...dict.keys()], names);
  assert.deepEqual(dict.get('resnets.0.conv1.weight')!.shape, [8, 4, 3, 3]);
});

test('parameter counts and deterministic, name-keyed initialisation', () => {
  // Linear(3, 5): 15 + 5; Conv2d(4, 8, 3): 288 + 8
  assert.equal(new Linear(3, 5).numParams(), 20);
  assert.equal(new Conv2d(4, 8, 3).numParams(), 296);
  const a = stateDict(new Block().init(RngKey.fromSeed(1)));
  const b = stateDict(new Block().init(RngKey.fromSeed(1)));
  const c = stateDict(new Block().init(RngKey.fromSeed(2)));
  const w = (d: Map<string, HostArray>) => Array.from(d.get('resnets.1.conv1.weight')!.data as Float32Array);
  assert.deepEqual(w(a), w(b));
  assert.notDeepEqual(w(a), w(c));
  // torch's default bound for a 3x3 conv over 4 channels: 1/sqrt(36)
  assert.ok(w(a).every((v) => Math.abs(v) <= 1 / 6));
  assert.deepEqual(Array.from(a.get('resnets.0.norm1.weight')!.data as Float32Array), [1, 1, 1, 1]);
});

test('multi-head attention equals a direct computation', async () => {
  const attn = new MultiHeadAttention(4, { heads: 2 });
  const p = attn.init(RngKey.fromSeed(3));
  const x = new HostArray(RngKey.fromSeed(4).normal(2 * 3 * 4), [2, 3, 4]);
  const f = compile((pp: ParamsOf<MultiHeadAttention>, xx: Tensor) => attn.forward(pp, xx));
  const got = await f(p, x);
  // Reference: per batch and head, softmax(q k^T / sqrt(2)) v with torch-layout Linear weights.
  const lin = (h: HostArray, l: { weight: HostArray; bias?: HostArray }) =>
    ref.binary(ref.matmul(h, ref.transpose(l.weight, [1, 0])), l.bias!, (u, v) => u + v);
  const q = lin(x, p.to_q), k = lin(x, p.to_k), v = lin(x, p.to_v);
  const heads = (t: HostArray) => ref.transpose(ref.reshape(t, [2, 3, 2, 2]), [0, 2, 1, 3]);
  const s = ref.unary(ref.matmul(heads(q), ref.transpose(heads(k), [0, 1, 3, 2])), (u) => u / Math.SQRT2);
  const o = ref.matmul(ref.softmax(s, 3), heads(v));
  const want = lin(ref.reshape(ref.transpose(o, [0, 2, 1, 3]), [2, 3, 4]), p.to_out[0]!);
  assert.ok(ref.maxAbsDiff(got, want) < 1e-5);
});

test('loadStateDict rebuilds the tree and names the first bad key with both shapes', async () => {
  const { loadStateDict } = await import('./state.js');
  const block = new Block();
  const dict = stateDict(block.init(RngKey.fromSeed(5)));
  const params = loadStateDict(block, dict);
  assert.equal(params.resnets[0]!.conv1.weight, dict.get('resnets.0.conv1.weight'));
  assert.deepEqual([...stateDict(params).keys()], [...dict.keys()]);

  const missing = new Map(dict);
  missing.delete('resnets.1.conv1.bias');
  assert.throws(() => loadStateDict(block, missing), /missing key 'resnets.1.conv1.bias' \(expected shape \[8\]\)/);
  const extra = new Map(dict).set('resnets.0.extra.weight', HostArray.zeros([1]));
  assert.throws(() => loadStateDict(block, extra, { source: 'x.safetensors' }),
    /unexpected key 'resnets.0.extra.weight' in x.safetensors/);
  const misshaped = new Map(dict).set('resnets.0.conv1.weight', HostArray.zeros([8, 4, 1, 1]));
  assert.throws(() => loadStateDict(block, misshaped),
    /'resnets.0.conv1.weight' has shape \[8, 4, 1, 1\], the model expects \[8, 4, 3, 3\]/);
  const renamed = new Map([...dict].map(([k, v]) => [k.replace('to_q', 'query'), v]));
  const back = loadStateDict(block, renamed, { rename: (n) => n.replace('query', 'to_q') });
  assert.equal(back.attentions[0]!.to_q.weight, dict.get('attentions.0.to_q.weight'));
});
