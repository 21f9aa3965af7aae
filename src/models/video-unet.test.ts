/** The video U-Net: shapes, frames meeting only in temporal attention, and two clips run in
 *  lockstep with each other's layer inputs as keys giving exactly the whole video's output. */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import type { ParamsOf } from '../nn/module.js';
import {
  DiffuseVideoUNet, readVideoUNetConfig, relativeIndex, VIDEO_UNET_PRESETS, type VideoState,
} from './video-unet.js';

const config = VIDEO_UNET_PRESETS.tiny!;
const model = new DiffuseVideoUNet(config);
const params = model.init(RngKey.fromSeed(1));
// A learned relative bias, so that frame distances matter.
model.temporalLayers.forEach(({ params: of }, k) => {
  const table = of(params as never).relative_bias as unknown as HostArray<'float32'>;
  table.data.set(RngKey.fromSeed(10 + k).normal(table.data.length));
});
const consts = () => ops.constantTree(params as never) as ParamsOf<DiffuseVideoUNet>;
const forward = compile((x: Tensor, t: Tensor) => model.forward(consts(), x, t));

/** Two clips of 4 frames in lockstep: at each temporal layer both clips' layer inputs are the
 *  keys of both, each clip's queries placed at its own frames of the 8-frame video. */
const lockstep = compile((x: Tensor, t: Tensor) => {
  const p = consts();
  const clips = ops.split(x, 2, 2); // [B, C, 4, H, W] each
  let states: VideoState[] = clips.map((c) => model.begin(p, c, t));
  const frames = [[0, 1, 2, 3], [4, 5, 6, 7]];
  model.temporalLayers.forEach(({ layer, params: of }, k) => {
    states = states.map((s) => model.segment(p, s, k));
    const inputs = states.map((s) => layer.layerInput(of(p), s.h, 4));
    const keys = ops.concat(inputs, 1);
    states = states.map((s, c) => ({ ...s, h: layer.apply(of(p), s.h, 4, keys,
      ops.constant(relativeIndex(frames[c]!, [...frames[0]!, ...frames[1]!], config.max_relative_distance))) }));
  });
  const outs = states.map((s) => model.end(p, model.segment(p, s, model.temporalLayers.length), 4));
  return ops.concat(outs, 2);
});

after(async () => {
  await Promise.all([forward.dispose(), lockstep.dispose()]);
});

const video = (seed: number, frames: number) =>
  new HostArray(RngKey.fromSeed(seed).normal(2 * frames * 64), [2, 1, frames, 8, 8]);
const t = new HostArray(Float32Array.of(100, 700), [2]);

test('two clips exchanging their temporal layers\' inputs give exactly the whole video\'s output', async () => {
  const x = video(2, 8);
  const whole = (await forward(x, t)) as HostArray;
  const split = (await lockstep(x, t)) as HostArray;
  assert.deepEqual(whole.shape, [2, 1, 8, 8, 8]);
  let worst = 0;
  whole.data.forEach((v, i) => (worst = Math.max(worst, Math.abs(Number(v) - Number(split.data[i])))));
  assert.ok(worst < 1e-4, `largest difference ${worst}`);
});

test('frames meet only in temporal attention', async () => {
  const x = video(3, 4);
  const changed = new HostArray(Float32Array.from(x.data as Float32Array), x.shape);
  (changed.data as Float32Array).fill(2, 0, 64); // video 0, frame 0
  const frame1 = (h: HostArray) => Array.from((h.data as Float32Array).subarray(64, 128));
  const a = frame1((await forward(x, t)) as HostArray);
  const b = frame1((await forward(changed, t)) as HostArray);
  assert.notDeepEqual(a, b); // through temporal attention
  const plain = new DiffuseVideoUNet({ ...config, temporal_levels: [false, false] });
  assert.equal(plain.temporalLayers.length, 0);
  const pp = plain.init(RngKey.fromSeed(1));
  const f = compile((xs: Tensor, ts: Tensor) => plain.forward(ops.constantTree(pp as never) as never, xs, ts));
  try {
    assert.deepEqual(frame1((await f(x, t)) as HostArray), frame1((await f(changed, t)) as HostArray));
  } finally {
    await f.dispose();
  }
});

test('configs are checked, naming the key', () => {
  assert.throws(() => readVideoUNetConfig({ ...config, temporal_levels: [true] }), /temporal_levels/);
  assert.throws(() => readVideoUNetConfig({ ...config, sample_size: 7 }), /sample_size/);
  assert.equal(readVideoUNetConfig({ ...config }).num_frames, 4);
});
