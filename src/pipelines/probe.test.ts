/** diffuse probe's pipeline: features independent of the batch size, a probe row per block x
 *  timestep, and refusals named before any model call. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import { RngKey } from '../engine/random/philox.js';
import type { ImageDataset } from '../data/dataset.js';
import { withTinyPipeline } from '../../test/support/tiny-pipeline.js';
import { attentionProbe, probeCsv, probeHeatMap, probeSweep } from './probe.js';

/** Labelled 8x8 images whose class sets their mean brightness. */
function tinySplit(n: number, seed: number): ImageDataset {
  const z = RngKey.fromSeed(seed).normal(n * 64);
  const labels = Int32Array.from({ length: n }, (_, i) => i % 3);
  const x = Float32Array.from(z, (v, j) => Math.tanh(0.3 * v + (labels[Math.floor(j / 64)]! - 1)));
  return { images: new HostArray<'float32'>(x, [n, 1, 8, 8], 'float32'), labels };
}

test('probe: a row per block x timestep, the same whatever the batch size', () =>
  withTinyPipeline('unet', 'eps', async (p) => {
    const data = { train: tinySplit(30, 1), heldOut: tinySplit(12, 2) };
    const o = { blocks: ['down.1', 'mid', 'up.0'], timesteps: [0, 50], draws: 2, probe: { epochs: 3 } };
    const seen: number[] = [];
    const a = await probeSweep(p, data, { ...o, batchSize: 100 }, { onImages: (d) => seen.push(d) });
    const b = await probeSweep(p, data, { ...o, batchSize: 7 });
    assert.deepEqual(a.map((r) => [r.block, r.t]), [['down.1', 0], ['mid', 0], ['up.0', 0],
      ['down.1', 50], ['mid', 50], ['up.0', 50]]);
    assert.deepEqual(a, b);
    assert.equal(seen.at(-1), 2 * (2 * 30 + 12));
    assert.deepEqual(a.map((r) => r.dim), [16, 16, 16, 16, 16, 16]);
    const pooled = await probeSweep(p, data, { ...o, timesteps: [0], blocks: ['mid'], pool: 2 });
    assert.equal(pooled[0]!.dim, 16 * 4);
    // Brightness separates the classes: some block reads it.
    assert.ok(Math.max(...a.map((r) => r.accuracy)) > 0.6);
    const csv = probeCsv(a).trim().split('\n');
    assert.equal(csv[0], 'block,t,dim,accuracy,train_accuracy');
    assert.equal(csv.length, 7);
    const img = probeHeatMap(a, 'probe');
    assert.equal(img.channels, 3);
    assert.ok(img.width > 100 && img.height > 60);
  }));

test('probe: refuses unknown blocks, timesteps out of range and non-U-Net models', async () => {
  const data = { train: tinySplit(6, 1), heldOut: tinySplit(3, 2) };
  await withTinyPipeline('unet', 'eps', async (p) => {
    await assert.rejects(probeSweep(p, data, { blocks: ['up.5'] }), /'up.5' is not one of this U-Net's/);
    await assert.rejects(probeSweep(p, data, { timesteps: [1000] }), /timestep 1000 is not an integer in \[0, 1000\)/);
    const wrong = { train: { ...data.train, images: new HostArray<'float32'>(new Float32Array(6 * 256), [6, 1, 16, 16], 'float32') },
      heldOut: data.heldOut };
    await assert.rejects(probeSweep(p, wrong), /train images: expected \[N, 1, 8, 8\]/);
  });
  await withTinyPipeline('dit', 'flow', async (p) => {
    await assert.rejects(probeSweep(p, data), /DDAE probes read U-Net blocks: .* \(expected UNet2DModel\)/);
  });
});

test('attention probe: trains on a block\'s feature map and scores the held-out maps', () =>
  withTinyPipeline('unet', 'eps', async (p) => {
    const data = { train: tinySplit(48, 1), heldOut: tinySplit(24, 2) };
    const rows: unknown[] = [];
    const r = await attentionProbe(p, data, { block: 'mid', t: 0, epochs: 30, lr: 3e-3, batchSize: 16 },
      { onRow: (row) => rows.push(row) });
    // The tiny U-Net's mid block: 16 channels at 4x4 (8x8 input, one downsampling).
    assert.equal(r.dim, 16 * 4 * 4);
    assert.deepEqual(rows, [r]);
    // Brightness separates the three classes; a head that learned nothing scores about 1/3.
    assert.ok(r.trainAccuracy > 0.6, `train accuracy ${r.trainAccuracy}`);
    await assert.rejects(attentionProbe(p, data, { block: 'up.7' }), /'up.7' is not one of this U-Net's/);
  }));
