/** DiffuseClassifier: parameter budget, shapes, determinism, training on a synthetic
 *  10-class task, the noise-level path and its input gradients, config checks. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { mapTree, type Tree } from '../engine/tree.js';
import type { ParamsOf } from '../nn/module.js';
import { adamw } from '../nn/optim.js';
import { compileTrainStep } from '../nn/train.js';
import { checkGrad, randn } from '../../test/support/gradcheck.js';
import {
  CLASSIFIER_PRESETS, classifierClass, crossEntropy, DiffuseClassifier, readClassifierConfig,
} from './classifier.js';
import { ConfigError } from './config.js';

type P = ParamsOf<DiffuseClassifier>;
const isHost = (x: unknown): x is HostArray => x instanceof HostArray;
const constants = (p: Tree<HostArray>): P => mapTree(p, isHost, (a) => ops.constant(a)) as P;

/**
 * Class k is a sinusoidal grating (5 orientations x 2 periods) with a random phase per image,
 * at amplitude 0.5 plus N(0, 0.5^2) pixel noise: separable, but only by local texture, which
 * is what a CNN with global pooling sees. Returns x [n, 1, 32, 32] and int64 labels [n].
 */
function gratings(key: RngKey, n: number): { x: HostArray; y: HostArray } {
  const [kl, kp, kn] = key.split(3);
  const labels = kl!.uniformInt(n, 10);
  const phase = kp!.uniform(n);
  const x = kn!.normal(n * 1024);
  for (let b = 0; b < n; b++) {
    const k = labels[b]!;
    const theta = (Math.PI * (k % 5)) / 5;
    const freq = (2 * Math.PI) / (k < 5 ? 4 : 8);
    const [cx, cy] = [Math.cos(theta) * freq, Math.sin(theta) * freq];
    for (let i = 0; i < 32; i++) {
      for (let j = 0; j < 32; j++) {
        const o = b * 1024 + i * 32 + j;
        x[o] = 0.5 * x[o]! + 0.5 * Math.sin(cx * j + cy * i + 2 * Math.PI * phase[b]!);
      }
    }
  }
  const y = new HostArray(BigInt64Array.from(labels, BigInt), [n], 'int64');
  return { x: new HostArray(x, [n, 1, 32, 32]), y };
}

describe('DiffuseClassifier', () => {
  test('parameter counts: presets within a few hundred thousand', () => {
    const counts = Object.fromEntries(Object.entries(CLASSIFIER_PRESETS)
      .map(([k, c]) => [k, new DiffuseClassifier(c).numParams()]));
    // mnist by hand: convs 160 + 4,640 + 18,496 + 73,856, norms 480, noise MLP 8,320,
    // noise shifts 1,040 + 2,080 + 4,160 + 8,320, fc 16,512, head 1,290.
    assert.deepEqual(counts, { mnist: 139_354, 'mnist-deep': 342_570, tiny: 2_098 });
    const clean = new DiffuseClassifier({ ...CLASSIFIER_PRESETS['mnist']!,
      noise_conditioning: false });
    assert.equal(clean.numParams(), 115_434);
    for (const n of Object.values(counts)) assert.ok(n <= 400_000);
  });

  test('shapes of logits, features, logProb and loss; determinism', async () => {
    const model = new DiffuseClassifier(CLASSIFIER_PRESETS['mnist']!);
    const a = model.init(RngKey.fromSeed(5));
    const b = model.init(RngKey.fromSeed(5));
    assert.deepEqual(a.blocks[1]!.conv.weight.data, b.blocks[1]!.conv.weight.data);
    const p = constants(a as Tree<HostArray>);
    const run = compile((x: Tensor, y: Tensor, lvl: Tensor) => ({
      logits: model.logits(p, x), features: model.features(p, x),
      noisy: model.logits(p, x, lvl), logProb: model.logProb(p, x, y), loss: model.loss(p, x, y),
    }));
    const { x, y } = gratings(RngKey.fromSeed(1), 3);
    const lvl = HostArray.fromNested([-5, 0, 5]);
    const o1 = await run(x, y, lvl);
    const o2 = await run(x, y, lvl);
    await run.dispose();
    assert.deepEqual(o1.logits.shape, [3, 10]);
    assert.deepEqual(o1.features.shape, [3, 128]);
    assert.deepEqual(o1.noisy.shape, [3, 10]);
    assert.deepEqual(o1.logProb.shape, [3]);
    assert.deepEqual(o1.loss.shape, []);
    assert.deepEqual(o1.logits.data, o2.logits.data, 'same inputs, same outputs');
    assert.deepEqual(o1.noisy.data, o2.noisy.data);
    // The noise level changes the output (the shifts are live), and loss = -mean logProb.
    assert.ok(Math.max(...Array.from(o1.logits.data as Float32Array, (v, i) =>
      Math.abs(v - (o1.noisy.data[i] as number)))) > 1e-3);
    const meanLogProb = (o1.logProb.data as Float32Array).reduce((s, v) => s + v, 0) / 3;
    assert.ok(Math.abs(o1.loss.get() + meanLogProb) < 1e-5);
    // Features are non-negative-ish SiLU outputs (>= -0.2785, SiLU's minimum).
    assert.ok(Array.from(o1.features.data as Float32Array).every((v) => v >= -0.2785));
  });

  test('100 AdamW steps reach > 90% held-out accuracy on synthetic gratings', async () => {
    const model = new DiffuseClassifier(CLASSIFIER_PRESETS['mnist']!);
    const key = RngKey.fromSeed(21);
    const loss = (p: Tree<Tensor>, batch: Tree<Tensor>) => {
      const { x, y } = batch as { x: Tensor; y: Tensor };
      return model.loss(p as P, x, y);
    };
    const trainer = compileTrainStep(loss, adamw({ lr: 3e-3 }), { clipGradNorm: 1 });
    let state = trainer.init(model.init(key.fold(0)) as Tree<HostArray>);
    const losses: number[] = [];
    for (let i = 0; i < 100; i++) {
      const r = await trainer.step(state, gratings(key.fold(100 + i), 32));
      state = r.state;
      losses.push(r.metrics.loss);
    }
    await trainer.dispose();
    const held = gratings(RngKey.fromSeed(999), 200);
    const p = constants(state.params);
    const predict = compile((x: Tensor) => ops.argmax(model.logits(p, x), -1));
    const pred = await predict(held.x);
    await predict.dispose();
    let correct = 0;
    for (let i = 0; i < 200; i++) if (pred.data[i] === held.y.data[i]) correct++;
    console.log(`classifier: loss ${losses[0]!.toFixed(3)} -> ${losses.at(-1)!.toFixed(3)}, ` +
      `held-out accuracy ${correct / 200}`);
    assert.ok(losses[0]! > 1.5, `initial loss ${losses[0]} should be near ln 10`);
    assert.ok(correct / 200 > 0.9, `held-out accuracy ${correct / 200}`);
  });

  test('with a noise level, gradients with respect to x (and the level) match finite differences',
    async () => {
      const model = new DiffuseClassifier(CLASSIFIER_PRESETS['tiny']!);
      const p = constants(model.init(RngKey.fromSeed(8)) as Tree<HostArray>);
      const labels = ops.constant(HostArray.fromNested([3n, 7n], 'int64'));
      const small = randn([2, 1, 8, 8], 2);
      const lvl = HostArray.fromNested([-2, 1.5]);
      const res = await checkGrad('classifier logProb',
        (xs: Tensor, l: Tensor) => model.logProb(p, xs, labels, l), [small, lvl]);
      assert.ok(Math.abs(res.analytic) > 1e-3, `gradient is not trivially zero: ${res.analytic}`);
      await checkGrad('classifier features (clean)', (xs: Tensor) => model.features(p, xs),
        [small]);
    });

  test('crossEntropy by hand; config errors name the key; toConfig round trip', async () => {
    const ce = compile((l: Tensor, y: Tensor) => crossEntropy(l, y));
    const out = await ce(HostArray.fromNested([[0, Math.log(3)], [2, 2]]),
      HostArray.fromNested([1n, 0n], 'int64'));
    await ce.dispose();
    // Row 0: -log(3/4); row 1: -log(1/2).
    assert.ok(Math.abs(out.get() - (-Math.log(0.75) + Math.log(2)) / 2) < 1e-6);

    const bad: [Record<string, unknown>, RegExp][] = [
      [{ block_out_channels: [30] }, /'block_out_channels' must be/],
      [{ hidden_dim: '128' }, /'hidden_dim' must be a number/],
      [{ num_classes: 1 }, /'num_classes' must be at least 2/],
      [{ act_fn: 'tanh' }, /'act_fn' must be one of/],
      [{ noise_embed_dim: 7 }, /'noise_embed_dim' must be a positive even integer/],
    ];
    for (const [raw, re] of bad) {
      assert.throws(() => readClassifierConfig(raw), (e: unknown) =>
        e instanceof ConfigError && re.test(e.message), JSON.stringify(raw));
    }
    const saved = classifierClass.toConfig(CLASSIFIER_PRESETS['mnist-deep']!);
    assert.equal(saved._class_name, 'DiffuseClassifier');
    assert.deepEqual(classifierClass.readConfig(saved as Record<string, unknown>),
      CLASSIFIER_PRESETS['mnist-deep']);
    const clean = new DiffuseClassifier({ ...CLASSIFIER_PRESETS['tiny']!,
      noise_conditioning: false });
    const cp = constants(clean.init(RngKey.fromSeed(1)) as Tree<HostArray>);
    assert.throws(() => clean.logits(cp, ops.zeros([1, 1, 8, 8]), ops.zeros([1])),
      /noise_conditioning: false/);
  });
});
