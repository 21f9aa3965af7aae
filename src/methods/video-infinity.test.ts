/** Video-Infinity's clip attention: exact against attention over the whole video when the
 *  local context spans it, empty slots masked (their contents cannot matter), the dual-scope
 *  schedule, and which frames each clip takes as context. */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { MultiHeadAttention } from '../nn/attention.js';
import type { ParamsOf } from '../nn/module.js';
import {
  clipAttention, contextBias, contextPlan, dualScopeBias, EMPTY, gatherFrames, type ClipLayout,
} from './video-infinity.js';

const [L, C] = [3, 8];
const attn = new MultiHeadAttention(C, { heads: 2 });
const params = attn.init(RngKey.fromSeed(1)) as ParamsOf<MultiHeadAttention, HostArray>;
const consts = () => ops.constantTree(params as never) as ParamsOf<MultiHeadAttention>;
const full = compile((x: Tensor) => attn.forward(consts(), x, x));
const clip = compile((x: Tensor, left: Tensor, right: Tensor, global: Tensor, bias: Tensor) =>
  clipAttention(attn, consts(), x, { left, right, global }, bias));
after(async () => {
  await Promise.all([full.dispose(), clip.dispose()]);
});

async function clipOutput(video: HostArray<'float32'>, c: number, l: ClipLayout, t: number,
  fill?: HostArray<'float32'>): Promise<Float32Array> {
  const plan = contextPlan(c, l);
  const take = (frames: number[]) => {
    const g = gatherFrames(video, frames);
    if (!fill) return g;
    // Put garbage in the empty slots: a mask must make it irrelevant.
    const data = Float32Array.from(g.data);
    frames.forEach((f, j) => {
      if (f !== EMPTY) return;
      for (let i = 0; i < L; i++) data.set(fill.data.subarray(0, C), (i * frames.length + j) * C);
    });
    return new HostArray(data, g.shape);
  };
  const out = await clip(take(plan.own), take(plan.left), take(plan.right), take(plan.global),
    contextBias(plan, dualScopeBias(t)));
  return (out as HostArray).data as Float32Array;
}

test('with local context spanning the video, each clip\'s attention is the whole video\'s', async () => {
  const l: ClipLayout = { clips: 2, clipFrames: 4, padding: 4, globalPerClip: 0 };
  const video = new HostArray<'float32'>(RngKey.fromSeed(2).normal(L * 8 * C), [L, 8, C], 'float32');
  const whole = ((await full(video)) as HostArray).data as Float32Array;
  for (let c = 0; c < 2; c++) {
    const got = await clipOutput(video, c, l, 500);
    for (let i = 0; i < L; i++) {
      for (let f = 0; f < 4; f++) {
        for (let k = 0; k < C; k++) {
          const want = whole[(i * 8 + c * 4 + f) * C + k]!;
          const v = got[(i * 4 + f) * C + k]!;
          assert.ok(Math.abs(v - want) < 1e-5, `clip ${c} position ${i} frame ${f}: ${v} vs ${want}`);
        }
      }
    }
  }
});

test('empty context slots are masked: what they hold does not change the output', async () => {
  const l: ClipLayout = { clips: 2, clipFrames: 4, padding: 2, globalPerClip: 2 };
  const video = new HostArray<'float32'>(RngKey.fromSeed(3).normal(L * 8 * C), [L, 8, C], 'float32');
  const garbage = new HostArray<'float32'>(RngKey.fromSeed(4).normal(C).map((v) => 5 * v), [C], 'float32');
  for (const c of [0, 1]) {
    const zeros = await clipOutput(video, c, l, 900);
    const junk = await clipOutput(video, c, l, 900, garbage);
    assert.deepEqual(Array.from(junk), Array.from(zeros));
  }
  // Unmasked zero padding (the official code's) does take softmax mass: the output moves.
  const plan = contextPlan(0, l);
  const unmasked = await clip(gatherFrames(video, plan.own), gatherFrames(video, plan.left),
    gatherFrames(video, plan.right), gatherFrames(video, plan.global),
    new HostArray(new Float32Array(2 + 4 + 2 + 4), [12]));
  const masked = await clipOutput(video, 0, l, 500);
  const moved = Math.max(...Array.from((unmasked as HostArray).data as Float32Array, (v, i) => Math.abs(v - masked[i]!)));
  assert.ok(moved > 1e-3, `unmasked padding changed the output by only ${moved}`);
});

test('the dual-scope schedule favours global keys early and local keys late', () => {
  assert.deepEqual(dualScopeBias(999), { local: 0, global: 10 });
  assert.deepEqual(dualScopeBias(800), { local: 0, global: 10 });
  assert.deepEqual(dualScopeBias(799), { local: 10, global: 0 });
  const plan = contextPlan(0, { clips: 2, clipFrames: 3, padding: 1, globalPerClip: 1 });
  assert.deepEqual(Array.from(contextBias(plan, dualScopeBias(900)).data), [-1e9, 0, 0, 0, 0, 10, 10]);
  assert.deepEqual(Array.from(contextBias(plan, dualScopeBias(100)).data), [-1e9, 10, 10, 10, 10, 0, 0]);
});

test('each clip takes its neighbours\' boundary frames and the same evenly spaced global frames', () => {
  const l: ClipLayout = { clips: 3, clipFrames: 8, padding: 2, globalPerClip: 2 };
  assert.deepEqual(contextPlan(0, l), { left: [EMPTY, EMPTY], own: [0, 1, 2, 3, 4, 5, 6, 7], right: [8, 9],
    global: [2, 6, 10, 14, 18, 22] });
  assert.deepEqual(contextPlan(1, l).left, [6, 7]);
  assert.deepEqual(contextPlan(2, l).right, [EMPTY, EMPTY]);
  assert.throws(() => contextPlan(3, l), /clip 3 is not in 0..2/);
  assert.throws(() => contextPlan(0, { ...l, globalPerClip: 9 }), /globalPerClip \(9\) cannot exceed clipFrames \(8\)/);
  assert.throws(() => contextPlan(0, { ...l, padding: 9 }), /padding \(9\) cannot exceed clipFrames \(8\)/);
});
