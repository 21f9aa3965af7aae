/** diffuse classify's pipeline: batching does not change a verdict, predictions of other
 *  parameterisations are scored in eps, and bad input is refused before any model call. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import { RngKey } from '../engine/random/philox.js';
import { pointsAt } from '../diffusion/training.js';
import { toEps } from '../diffusion/predictions.js';
import { int64Labels } from '../diffusion/denoiser.js';
import { timestepGrid } from '../methods/diffusion-classifier.js';
import { withTinyPipeline } from '../../test/support/tiny-pipeline.js';
import { classifyCsv, classifyImages, readClassifyCsv } from './classify.js';
import { modelDenoiser } from './graph-denoiser.js';

const images = (n: number) => new HostArray<'float32'>(
  RngKey.fromSeed(2).uniform(n * 64).map((v) => 2 * v - 1), [n, 1, 8, 8], 'float32');

test('classify: the same verdicts whatever the batching (noise depends on the image index)', () =>
  withTinyPipeline('unet', 'eps', async (p) => {
    const x = images(5);
    const labels = [0, 1, 2, 0, 1];
    const o = { samples: [4, 8], keep: [2, 1], seed: 1 };
    const big = await classifyImages(p, x, labels, { ...o, imagesPerBatch: 5, rowsPerCall: 1000 });
    const small = await classifyImages(p, x, labels, { ...o, imagesPerBatch: 2, rowsPerCall: 7 });
    assert.deepEqual([...small.predictions], [...big.predictions]);
    big.meanErrors.forEach((e, i) => e.forEach((v, c) =>
      assert.ok(Math.abs(v - small.meanErrors[i]![c]!) <= 1e-5 * v, `image ${i} class ${c}`)));
    assert.equal(big.accuracy, labels.filter((l, i) => l === big.predictions[i]).length / 5);
    assert.equal(big.rowsPerImage, 3 * 4 + 2 * 4);
    const csv = classifyCsv(big, labels).trim().split('\n');
    assert.equal(csv[0], 'image,label,prediction,error_0,error_1,error_2');
    assert.equal(csv.length, 6);
    assert.equal(csv[3]!.split(',')[2], String(big.predictions[2]));
  }));

test('classify: a flow model is scored by its eps error, x_t as the training process makes it', () =>
  withTinyPipeline('dit', 'flow', async (p) => {
    const x = images(1);
    const r = await classifyImages(p, x, undefined, { samples: [1], keep: [1], seed: 4 });
    // The one grid point is t = 500: rebuild its three rows by hand.
    const [t] = timestepGrid(1000, 1);
    const pt = pointsAt(p.scheduler, [t!]);
    const [a, s] = [pt.alpha[0]!, pt.sigma[0]!];
    const eps = RngKey.fromSeed(4).fold(0).fold(0).normal(64);
    const xt = Float32Array.from(x.data, (v, i) => a * v + s * eps[i]!);
    const g = modelDenoiser(p.model, p.params, 'flow');
    try {
      for (let c = 0; c < 3; c++) {
        const v = (await g.predict(new HostArray<'float32'>(xt, [1, 1, 8, 8], 'float32'), Float64Array.of(t!), int64Labels([c]))).data;
        const e = toEps('flow', xt, v as Float32Array, a, s);
        let err = 0;
        for (let i = 0; i < 64; i++) err += (e[i]! - eps[i]!) ** 2;
        assert.ok(Math.abs(r.meanErrors[0]![c]! - err / 64) < 1e-5 * err, `class ${c}`);
      }
    } finally {
      await g.dispose();
    }
  }));

test('classify: refuses unconditional models, wrong image shapes and miscounted labels', () =>
  withTinyPipeline('unet', 'eps', async (p) => {
    await assert.rejects(classifyImages(p, new HostArray<'float32'>(new Float32Array(2 * 256), [2, 1, 16, 16], 'float32'),
      undefined), /images: expected \[N, 1, 8, 8\] .* got \[2, 1, 16, 16\]/);
    await assert.rejects(classifyImages(p, images(2), [1]), /labels: expected one per image \(2\), got 1/);
    await assert.rejects(classifyImages({ ...p, model: { ...p.model, numClasses: 0 } }, images(1),
      undefined), /needs a class-conditional model/);
    await assert.rejects(classifyImages(p, images(1), undefined, { samples: [4], keep: [2] }),
      /last round must keep 1/);
  }));

test('classify CSV: file names (quoted where they hold commas) and a round trip for --resume', () => {
  const r = { predictions: Int32Array.of(3, 7), meanErrors: [Float64Array.of(0.5, 0.25), Float64Array.of(0.125, 1)] };
  const csv = classifyCsv(r, [3, 1], ['3/a.png', '7/b, "x".png']);
  assert.equal(csv, 'image,file,label,prediction,error_0,error_1\n0,3/a.png,3,3,0.500000,0.250000\n' +
    '1,"7/b, ""x"".png",1,7,0.125000,1.00000\n');
  const back = readClassifyCsv(csv, 'p.csv');
  assert.deepEqual([...back.predictions], [3, 7]);
  assert.deepEqual(back.meanErrors.map((e) => [...e]), [[0.5, 0.25], [0.125, 1]]);
  assert.throws(() => readClassifyCsv('image,prediction\n0,1\n', 'p.csv'), /p.csv: not a diffuse classify CSV/);
  assert.throws(() => readClassifyCsv(csv.replace('\n1,', '\n5,'), 'p.csv'), /p.csv, line 3: expected image 1/);
});
