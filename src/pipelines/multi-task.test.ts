/** train-joint / sample-joint end to end on a tiny model: exact resume, the saved joint model,
 *  and the three sampling modes. */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import { RngKey } from '../engine/random/philox.js';
import * as ops from '../engine/ops.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { jointDiTClass, readJointDiTConfig, type JointDiTModel } from '../models/joint-dit.js';
import { stateDict, type ParamsOf } from '../nn/module.js';
import {
  loadJointPipeline, sampleJoint, trainJoint, type JointTrainOptions,
} from './multi-task.js';
import { loadPipeline } from './sample.js';
import { withTempDir } from '../../test/support/temp-dir.js';
import { twoClassImages } from '../../test/support/tiny-images.js';

const tinyData = twoClassImages;

const base = (out: string, over: Partial<JointTrainOptions> = {}): JointTrainOptions => ({
  size: 'tiny', labelScale: 2, labelWeight: 1, batchSize: 8, steps: 5, lr: 1e-3,
  lrSchedule: 'cosine', warmupSteps: 1, gradClip: 1, emaDecay: 0.99, seed: 5, out, logEvery: 1,
  sampleEvery: 0, checkpointEvery: 2, ...over,
});

test('a joint run interrupted and resumed equals an uninterrupted one; its model samples in ' +
  'all three modes', () => withTempDir('multi-task', async (dir) => {
  const data = tinyData();
  // onSample is given: training-loop.ts writes a grid only when someone listens (its
  // `ev.onSample?.(step, await writeGrid...)` skips the write along with the call).
  const grids: string[] = [];
  const full = await trainJoint(base(join(dir, 'a'), { sampleEvery: 5 }), data, false,
    { onSample: (_, path) => grids.push(path) });
  assert.equal(full.losses.length, 5);
  assert.ok(full.losses.every(Number.isFinite));
  assert.deepEqual(grids, [join(dir, 'a', 'samples', 'step-000005.png')]);
  assert.ok(existsSync(grids[0]!), 'an image-given-label grid');
  const stop = new AbortController();
  const first = await trainJoint(base(join(dir, 'b')), data, false,
    { signal: stop.signal, onStep: (s) => s.step === 3 && stop.abort() });
  assert.equal(first.state.step, 3);
  await assert.rejects(trainJoint(base(join(dir, 'b'), { labelScale: 1 }), data, true),
    /labelScale = 2, this run asks for 1/);
  const rest = await trainJoint(base(join(dir, 'b')), data, true);
  assert.deepEqual([...first.losses, ...rest.losses], full.losses);
  assert.deepEqual(stateDict(rest.state.ema!), stateDict(full.state.ema!));

  const configFile = join(dir, 'a', 'model', 'transformer', 'config.json');
  const config = JSON.parse(await readFile(configFile, 'utf8'));
  assert.equal(config._class_name, 'JointDiTModel');
  assert.equal(config.label_dim, 2);
  assert.equal(config.label_scale, 2);
  await assert.rejects(loadPipeline(join(dir, 'a', 'model')), /JointDiTModel/);
  const p = await loadJointPipeline(join(dir, 'a', 'model'));
  assert.deepEqual(stateDict(p.params), stateDict(full.state.ema!), 'model/ holds the EMA weights');

  const joint = await sampleJoint(p, { mode: 'joint', n: 5, steps: 3, seed: 7 });
  assert.deepEqual(joint.images.shape, [5, 1, 8, 8]);
  assert.equal(joint.labelVectors.length, 10);
  assert.ok(joint.images.data.every((v) => v >= -1 && v <= 1));
  const again = await sampleJoint(p, { mode: 'joint', n: 5, steps: 3, seed: 7, batchSize: 2 });
  assert.deepEqual(again.labelVectors, joint.labelVectors,
    'a sample does not depend on the batching');

  const labels = Int32Array.from([1, 0, 1]);
  const images = await sampleJoint(p, { mode: 'image', labels, steps: 3, seed: 7 });
  assert.deepEqual([...images.labels], [...labels], 'the given label is kept');
  const given = new HostArray<'float32'>(data.images.data.subarray(0, 4 * 64), [4, 1, 8, 8],
    'float32');
  const labelled = await sampleJoint(p,
    { mode: 'label', images: given, steps: 3, seed: 7, resample: 2 });
  assert.deepEqual(labelled.images.data, given.data, 'the given image is kept');
  assert.equal(labelled.labels.length, 4);
}));

test('JointDiTModel: the config round-trips; the image prediction reads the label token and ' +
  'the label prediction reads the image', () => withTempDir('joint-dit', async (dir) => {
  const out = join(dir, 'run');
  const r = await trainJoint(base(out, { steps: 3 }), tinyData(), false);
  const c = r.model.config;
  assert.deepEqual(readJointDiTConfig(jointDiTClass.toConfig(c) as Record<string, unknown>), c);
  assert.throws(() => readJointDiTConfig({ ...jointDiTClass.toConfig(c), label_scale: 0 }),
    /'label_scale' must be a number > 0/);
  const p = ops.constantTree(r.state.params) as unknown as ParamsOf<JointDiTModel>;
  const f = compile((x: Tensor, y: Tensor, t: Tensor) => r.model.forward(p, x, y, t));
  const key = RngKey.fromSeed(2);
  const f32 = (d: Float32Array, shape: number[]) => new HostArray<'float32'>(d, shape, 'float32');
  const x = f32(key.fold(0).normal(2 * 64), [2, 1, 8, 8]);
  const [y1, y2] = [1, 2].map((k) => f32(key.fold(k).normal(4), [2, 2]));
  const t = f32(Float32Array.from([300, 700]), [2]);
  const a = await f(x, y1!, t);
  const b = await f(x, y2!, t);
  const x2 = f32(key.fold(3).normal(2 * 64), [2, 1, 8, 8]);
  const d = await f(x2, y1!, t);
  await f.dispose();
  assert.deepEqual(a.image.shape, [2, 1, 8, 8]);
  assert.deepEqual(a.label.shape, [2, 2]);
  assert.notDeepEqual(a.image.data, b.image.data, 'another label changes the image prediction');
  assert.notDeepEqual(a.label.data, d.label.data, 'another image changes the label prediction');
}));
