/** Classifier guidance through the sampling pipeline: the spec's spelling, guided samples
 *  raising the guide's log-probability of their targets, guidance 0 as the unconditional
 *  model in one call per step, and targets for an unconditional model. */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { mapTree, type Tree } from '../engine/tree.js';
import { saveModel } from '../io/diffusers.js';
import {
  CLASSIFIER_PRESETS, classifierClass, DiffuseClassifier, type ClassifierConfig,
} from '../models/classifier.js';
import type { ParamsOf } from '../nn/module.js';
import { withTinyPipeline } from '../../test/support/tiny-pipeline.js';
import { loadGuide, parseGuide } from './guide.js';
import { sampleImages } from './sample.js';
import { withTempDir } from '../../test/support/temp-dir.js';

test('parseGuide: classifier:DIR[:SCALE]', () => {
  assert.deepEqual(parseGuide('classifier:models/c'), { dir: 'models/c', scale: 1 });
  assert.deepEqual(parseGuide('classifier:runs/x:7.5'), { dir: 'runs/x', scale: 7.5 });
  assert.throws(() => parseGuide('clf:models/c'), /is not classifier:DIR/);
  assert.throws(() => parseGuide('classifier:models/c:-2'), /scale '-2' is not a number in \(0, 1000\]/);
});

/** A tiny 3-class classifier of 8x8 images saved to a folder; its params for checking. */
async function tinyClassifier(dir: string, noiseAware: boolean) {
  const config: ClassifierConfig = { ...CLASSIFIER_PRESETS.tiny!, num_classes: 3, sample_size: 8,
    noise_conditioning: noiseAware };
  const model = new DiffuseClassifier(config);
  const params = model.init(RngKey.fromSeed(11)) as ParamsOf<DiffuseClassifier, HostArray>;
  // A confident classifier: an untrained head gives near-uniform logits and tiny gradients.
  const w = params.head.weight.data as Float32Array;
  w.forEach((v, i) => (w[i] = 30 * v));
  await saveModel(dir, classifierClass, config, params);
  return { model, params };
}

/** Mean log p(target | image) of clean images under the classifier (no noise level). */
async function meanLogProb(c: { model: DiffuseClassifier; params: ParamsOf<DiffuseClassifier, HostArray> },
  images: HostArray, targets: number[]): Promise<number> {
  const consts = mapTree(c.params as unknown as Tree<HostArray>, (x): x is HostArray => x instanceof HostArray,
    (a) => ops.constant(a)) as unknown as ParamsOf<DiffuseClassifier>;
  const f = compile((x: Tensor, y: Tensor) => c.model.logProb(consts, x, y));
  try {
    const y = new HostArray(BigInt64Array.from(targets, BigInt), [targets.length], 'int64');
    const out = (await f(images, y)).data as Float32Array;
    return out.reduce((a, b) => a + b, 0) / out.length;
  } finally {
    await f.dispose();
  }
}

const withDir = (fn: (dir: string) => Promise<void>): Promise<void> => withTempDir('guide', fn);

for (const noiseAware of [false, true]) {
  test(`guided samples score higher under the ${noiseAware ? 'noise-aware' : 'clean'} guide`, () =>
    withDir((dir) => withTinyPipeline('unet', 'eps', async (p) => {
      const c = await tinyClassifier(join(dir, 'c'), noiseAware);
      const o = { sampler: 'ddim', steps: 8, n: 12, seed: 2, guidance: 0, classes: [0, 1, 2] };
      const targets = Array.from({ length: 12 }, (_, i) => i % 3);
      const plain = await sampleImages(p, o);
      const guide = await loadGuide(parseGuide(`classifier:${join(dir, 'c')}:30`));
      assert.equal(guide.kind, noiseAware ? 'noise-aware' : 'clean');
      assert.equal(guide.classes, 3);
      const guided = await sampleImages(p, { ...o, guide });
      // Guidance 0: the null label alone, one model call per step (no doubled CFG batch).
      assert.equal(plain.modelCalls, 8);
      const [before, after] = [await meanLogProb(c, plain.images, targets),
        await meanLogProb(c, guided.images, targets)];
      assert.ok(after > before + 0.5, `log p(target): ${before} unguided, ${after} guided`);
    })));
}

test('an unconditional model takes the guide\'s classes as targets', () =>
  withDir((dir) => withTinyPipeline('unet', 'eps', async (uncond) => {
    await tinyClassifier(join(dir, 'c'), true);
    const guide = await loadGuide(parseGuide(`classifier:${join(dir, 'c')}:5`));
    const o = { sampler: 'ddim', steps: 3, n: 4, seed: 1 };
    await assert.rejects(sampleImages(uncond, { ...o, classes: [1] }), /the model is unconditional/);
    const r = await sampleImages(uncond, { ...o, classes: [1], guide });
    assert.equal(r.images.shape[0], 4);
    await assert.rejects(sampleImages(uncond, { ...o, classes: [3], guide }), /class 3 is out of range: the model has 3 classes/);
  }, undefined, 0)));
