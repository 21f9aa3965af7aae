/** diffuse encode / decode / translate on a tiny random U-Net: exact reconstruction through the
 *  compiled graph, codes that do not depend on the batch size, the code file, translation. */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import { RngKey } from '../engine/random/philox.js';
import { mapTree, type Tree } from '../engine/tree.js';
import { writeSafetensors } from '../io/safetensors.js';
import { withTinyPipeline } from '../../test/support/tiny-pipeline.js';
import {
  checkCodesFit, decodeLatents, encodeImages, img2img, LatentFileError, readLatents,
  reconstructionError, translateImages, writeLatents, type EncodeOptions,
} from './encode.js';

/** n 8x8 images in [-1, 1], smooth enough to look like something. */
function images(n: number): HostArray<'float32'> {
  const z = RngKey.fromSeed(3).normal(n * 64);
  return new HostArray(Float32Array.from(z, (v, j) => Math.tanh(v + Math.sin(j / 5))),
    [n, 1, 8, 8], 'float32');
}

const O: EncodeOptions = { steps: 25, eta: 0.1, seed: 4 };

/** Every weight nudged: a second model on the same noise schedule. */
const nudged = (params: Tree<HostArray>) => mapTree(params,
  (x): x is HostArray => x instanceof HostArray, (a, path) => a.dtype !== 'float32' ? a
    : new HostArray(Float32Array.from(a.data as Float32Array, (v, i) =>
      v + 0.05 * Math.sin(i + path.length)), a.shape, 'float32'));

test('encode -> decode with the same model rebuilds the images; codes ignore the batch size',
  () => withTinyPipeline('unet', 'eps', async (p) => {
    const x = images(5);
    const enc = await encodeImages(p, x, O);
    assert.equal(enc.codes.z.eps.length, 5 * 24 * 64);
    assert.deepEqual(enc.codes.labels, [3, 3, 3, 3, 3]); // the null label of 3 classes
    const small = await encodeImages(p, x, { ...O, batchSize: 2 });
    assert.ok(reconstructionError(new HostArray(small.codes.z.eps, [small.codes.z.eps.length]),
      new HostArray(enc.codes.z.eps, [enc.codes.z.eps.length])).maxAbs < 1e-4);
    const dec = await decodeLatents(p, enc.codes);
    const err = reconstructionError(dec.images, x);
    assert.ok(err.maxAbs < 1e-3, `max abs ${err.maxAbs}`);
    // without the residual, only up to the last x0 estimate
    const plain = await encodeImages(p, x, { ...O, residual: false });
    const off = reconstructionError((await decodeLatents(p, plain.codes)).images, x).maxAbs;
    assert.ok(off > 1e-3, `${off}`);
    // conditional codes: labels reach the model and change the code
    const labelled = await encodeImages(p, x, { ...O, labels: [0, 1] });
    assert.deepEqual(labelled.codes.labels, [0, 1, 0, 1, 0]);
    assert.notDeepEqual(labelled.codes.z.eps, enc.codes.z.eps);
    await assert.rejects(encodeImages(p, x, { ...O, labels: [4] }), /class 4 is out of range/);
    await assert.rejects(encodeImages(p, x, { ...O, steps: 2000 }), /steps must be an integer/);
  }));

test('the code file round-trips, and codes that do not fit a model are refused', () =>
  withTinyPipeline('unet', 'eps', async (p) => {
    const dir = await mkdtemp(join(tmpdir(), 'diffuse-encode-'));
    try {
      const x = images(3);
      const enc = await encodeImages(p, x, { ...O, t0: 599, steps: 12 }, 'test images');
      const file = join(dir, 'z.safetensors');
      await writeLatents(file, enc.codes);
      const back = await readLatents(file);
      assert.deepEqual(back, enc.codes);
      const dec = await decodeLatents(p, back);
      assert.ok(reconstructionError(dec.images, x).maxAbs < 1e-3);
      // DDIM inversion (eta 0): x_T only. How well it inverts is the model's business (a random
      // U-Net barely does; methods/dpm-encoder.test.ts checks an exact denoiser).
      const inv = await encodeImages(p, x, { ...O, eta: 0 });
      await writeLatents(file, inv.codes);
      const invBack = await readLatents(file);
      assert.equal(invBack.z.eps.length, 0);
      assert.equal(invBack.z.residual, null);
      assert.deepEqual((await decodeLatents(p, invBack)).images,
        (await decodeLatents(p, inv.codes)).images);

      assert.throws(() => checkCodesFit({ ...enc.codes, z: { ...enc.codes.z,
        shape: [3, 1, 4, 4] } }, p), /hold \[1, 4, 4\] images; .* makes \[1, 8, 8\]/);
      const other = Float64Array.from(enc.codes.alphaBars, (a, i) => (i === 1 ? a * 1.01 : a));
      assert.throws(() => checkCodesFit({ ...enc.codes, alphaBars: other }, p),
        /another noise schedule: alphas_cumprod at t = \d+/);
      const bad = join(dir, 'bad.safetensors');
      await writeSafetensors(bad, { x_T: { dtype: 'F32', shape: [1, 1, 8, 8],
        data: new Float32Array(64) }, eps: { dtype: 'F32', shape: [1, 3, 1, 8, 8],
        data: new Float32Array(192) } }, { format: 'diffuse-latents-1', steps: '12', t0: '599',
        eta: '0.1', seed: '0', labels: 'null', alpha_bars: JSON.stringify(new Array(13).fill(0.5)),
        model: 'x' });
      await assert.rejects(readLatents(bad), (e: Error) => e instanceof LatentFileError &&
        /tensor eps has shape \[1, 3, 1, 8, 8\]; x_T \[1, 1, 8, 8\] and 12 steps need /
          .test(e.message) && e.message.endsWith('[1, 11, 1, 8, 8]'));
      await writeSafetensors(bad, { x_T: { dtype: 'F32', shape: [1, 1, 8, 8],
        data: new Float32Array(64) } }, { format: 'something else' });
      await assert.rejects(readLatents(bad), /not a code file of diffuse encode/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }));

test('translate decodes the same codes with another model: a different image', () =>
  withTinyPipeline('unet', 'eps', (a) => withTinyPipeline('unet', 'eps', async (b) => {
    const x = images(3);
    const t = await translateImages(a, b, x, O);
    const viaB = await decodeLatents(b, t.codes);
    assert.ok(reconstructionError(t.images, viaB.images).maxAbs < 1e-6);
    const moved = reconstructionError(t.images, x).maxAbs;
    assert.ok(moved > 0.05, `translation moved the images by only ${moved}`);
    const same = await translateImages(a, a, x, O);
    assert.ok(reconstructionError(same.images, x).maxAbs < 1e-3);
    const edit = await img2img(a, x, { steps: 10, seed: 1, strength: 0.3 });
    assert.equal(edit.t0, 299);
    assert.deepEqual(edit.images.shape, x.shape);
    assert.ok(reconstructionError(edit.images, x).maxAbs > 0);
  }, nudged)));
