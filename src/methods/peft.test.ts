/** Parameter-efficient fine-tuning (peft.ts): what each method trains, counted by hand for the
 *  tiny DiT; the identity at the start; DiffFit's in-graph gammas against the merged plain
 *  model; and one real training step that leaves the frozen weights bit for bit. */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { flatten, mapTree, type Tree } from '../engine/tree.js';
import { subset } from '../data/dataset.js';
import { mnistSplits } from '../data/mnist.js';
import { trainingScheduler } from '../diffusion/training.js';
import { exportPipeline } from '../pipelines/checkpoint.js';
import { createImageModel, type ImageModel } from '../pipelines/image-models.js';
import { loadPipeline } from '../pipelines/sample.js';
import { METHOD_DEFAULTS, train, type TrainOptions } from '../pipelines/train.js';
import { randint, randn } from '../../test/support/gradcheck.js';
import { maxAbsDiff } from '../../test/support/reference.js';
import { withTempDir } from '../../test/support/temp-dir.js';
import {
  PEFT_METHODS, peft, trainableCount, trainableShare, type PeftMethod, type PeftTree,
} from './peft.js';

const isHost = (x: unknown): x is HostArray => x instanceof HostArray;
/** The tiny DiT: width D = 16, 2 blocks, MLP 64, patch 2 on 1 x 32 x 32, 10 classes (+ null). */
const dit = createImageModel('dit', 'tiny', 10);
const ditWeights = dit.module.init(RngKey.fromSeed(1)) as Tree<HostArray>;
const unet = createImageModel('unet', 'tiny', 10);
const unetWeights = unet.module.init(RngKey.fromSeed(2)) as Tree<HostArray>;
const flat = (t: Tree<HostArray>) => flatten(t, isHost);
const asPeft = (t: Tree<HostArray>) => t as unknown as PeftTree<HostArray>;

test('what each method trains on the tiny DiT, counted by hand', () => {
  const counts = Object.fromEntries(PEFT_METHODS.map((m) => {
    const t = peft(m).init(ditWeights, RngKey.fromSeed(3));
    return [m, trainableCount(t)];
  })) as Record<PeftMethod, number>;
  // Biases: pos_embed 16; per block timestep MLP 16 + 16, norm1.linear 6 x 16, q k v out
  // 4 x 16, ff 64 + 16 (272 per block); proj_out_1 32, proj_out_2 2 x 2 x 1.
  const biases = 16 + 2 * 272 + 32 + 4;
  assert.equal(counts.bitfit, biases);
  // DiffFit: the biases, two class tables 11 x 16, gamma_msa and gamma_mlp [16] in block 0
  // (the first half of 2); the DiT has no norm scales (norm_elementwise_affine false).
  assert.equal(counts.difffit, biases + 2 * 11 * 16 + 2 * 16);
  // Diffscaler (rank 1): the biases (shift), a scale per row of every other weight but the
  // tables (as many rows as biases), and r (out + in') per weight of rank 2 or more:
  // pos_embed 16 + 4; per block 16 + 256, 16 + 16, 96 + 16, 4 x (16 + 16), 64 + 16, 16 + 64;
  // proj_out_1 32 + 16, proj_out_2 4 + 16.
  const lowRank = 20 + 2 * (272 + 32 + 112 + 128 + 80 + 80) + 48 + 20;
  assert.equal(counts.diffscaler, 2 * biases + lowRank);
  const total = flat(ditWeights).leaves.reduce((n, a) => n + a.size, 0);
  assert.equal(counts.full, total);
  const s = trainableShare(peft('difffit').init(ditWeights, RngKey.fromSeed(3)), ditWeights);
  assert.deepEqual(s, { trainable: counts.difffit, total, share: counts.difffit / total });

  // BitFit trains exactly the bias leaves, DiffFit those, the tables and the gammas.
  const paths = flat(ditWeights).paths;
  const bit = asPeft(peft('bitfit').init(ditWeights, RngKey.fromSeed(3)));
  assert.deepEqual(Object.keys(bit.free), paths.filter((p) => p.endsWith('.bias')));
  const fit = asPeft(peft('difffit').init(ditWeights, RngKey.fromSeed(3)));
  assert.deepEqual(Object.keys(fit.free), paths.filter((p) =>
    p.endsWith('.bias') || p.endsWith('class_embedder.embedding_table.weight')));
  assert.deepEqual(Object.keys(fit.scale),
    ['transformer_blocks.0.gamma_msa', 'transformer_blocks.0.gamma_mlp']);
  assert.ok(Object.values(fit.scale).every((g) => g.size === 16 &&
    (g.data as Float32Array).every((v) => v === 1)), 'gammas start at 1');
  assert.equal(Object.keys(asPeft(peft('difffit', { gammaBlocks: 2 })
    .init(ditWeights, RngKey.fromSeed(3))).scale).length, 4);
});

test('alsoTrain adds matching weights to a method\'s set, and a pattern matching none is refused',
  () => {
    const extra = /pos_embed\.proj\.weight|proj_out_2\.weight/;
    const fit = asPeft(peft('difffit', { alsoTrain: extra }).init(ditWeights, RngKey.fromSeed(3)));
    const plain = asPeft(peft('difffit').init(ditWeights, RngKey.fromSeed(3)));
    assert.deepEqual(Object.keys(fit.free).filter((p) => !(p in plain.free)),
      ['pos_embed.proj.weight', 'proj_out_2.weight']);
    // 16 x 1 x 2 x 2 and 4 x 16 more values than DiffFit's own; the gammas are kept.
    assert.equal(trainableCount(fit as unknown as Tree<HostArray>),
      trainableCount(plain as unknown as Tree<HostArray>) + 64 + 64);
    assert.deepEqual(Object.keys(fit.scale), Object.keys(plain.scale));
    // Diffscaler's scale and low-rank terms step aside for a weight trained in place.
    const ds = asPeft(peft('diffscaler', { alsoTrain: /proj_out_2\.weight/ })
      .init(ditWeights, RngKey.fromSeed(3)));
    const dsPlain = asPeft(peft('diffscaler').init(ditWeights, RngKey.fromSeed(3)));
    assert.ok('proj_out_2.weight' in dsPlain.lowRank && 'proj_out_2.weight' in dsPlain.scale);
    assert.ok('proj_out_2.weight' in ds.free);
    assert.ok(!('proj_out_2.weight' in ds.scale) && !('proj_out_2.weight' in ds.lowRank));
    assert.throws(() => peft('bitfit', { alsoTrain: /no_such_layer/ })
      .init(ditWeights, RngKey.fromSeed(3)), /alsoTrain \/no_such_layer\/ matches no parameter/);
  });

test('on the U-Net: DiffFit trains biases, GroupNorm scales and the class table, no gammas', () => {
  const fit = asPeft(peft('difffit').init(unetWeights, RngKey.fromSeed(3)));
  const f = flat(unetWeights);
  assert.deepEqual(Object.keys(fit.free), f.paths.filter((p, i) =>
    f.leaves[i]!.shape.length === 1 || p === 'class_embedding.weight'));
  assert.ok(Object.keys(fit.free).includes('conv_norm_out.weight'));
  assert.deepEqual(fit.scale, {});
});

test('merge(init(w)) is w exactly, for every method, on the DiT and the U-Net', () => {
  for (const [name, w] of [['dit', ditWeights], ['unet', unetWeights]] as const) {
    for (const m of PEFT_METHODS) {
      const r = peft(m);
      const merged = flat(r.merge(r.init(w, RngKey.fromSeed(4))));
      const want = flat(w);
      assert.deepEqual(merged.paths, want.paths, `${name} ${m}: the same keys, no more`);
      merged.leaves.forEach((a, i) =>
        assert.deepEqual(a.data, want.leaves[i]!.data, `${name} ${m} ${merged.paths[i]}`));
    }
  }
});

test('apply and merge refuse a tree of another method, and run only after init', () => {
  const fit = peft('difffit');
  assert.throws(() => fit.merge({}), /difffit: merge before init/);
  fit.init(ditWeights, RngKey.fromSeed(3));
  assert.throws(() => fit.merge(peft('bitfit').init(ditWeights, RngKey.fromSeed(3))),
    /difffit: the trained tree lacks free transformer_blocks\.0\.norm1\.emb\.class_embedder/);
  assert.throws(() => peft('diffscaler', { rank: -1 }), /rank must be an integer >= 0/);
});

/** A trained tree moved away from the start: gammas and biases perturbed, factors random. */
function perturbed(t: Tree<HostArray>, seed: number): Tree<HostArray> {
  let k = seed;
  return mapTree(t, isHost, (a, path) => {
    const noise = randn(a.shape, k++, 0.2).data as Float32Array;
    const base = a.data as Float32Array;
    // gammas and low-rank `a` factors around their values, `b` factors from zero
    const out = Float32Array.from(base, (v, i) => (path.endsWith('.b') ? 0 : v) + noise[i]!);
    return new HostArray(out, a.shape);
  });
}

/** The model's output for one batch with the weights a compiled graph builds from `trained`
 *  (through `apply`), and with `weights` passed in as they are. */
async function outputs(model: ImageModel, apply: (t: Tree<Tensor>) => Tree<Tensor>,
  trained: Tree<HostArray>, weights: Tree<HostArray>) {
  const [x, t, y] = [randn([2, 1, 32, 32], 7), randn([2], 8), randint([2], 10, 9)];
  const run = compile(((tr: Tree<Tensor>, w: Tree<Tensor>, xs: Tensor, ts: Tensor, ys: Tensor) => ({
    weights: apply(tr),
    adapted: model.apply(apply(tr), xs, ts, ys).out,
    plain: model.apply(w, xs, ts, ys).out,
  })) as (...args: never[]) => unknown) as unknown as (...a: unknown[]) =>
    Promise<{ weights: Tree<HostArray>; adapted: HostArray; plain: HostArray }>;
  try {
    return await run(trained, weights, x, t, y);
  } finally {
    await (run as unknown as { dispose(): Promise<void> }).dispose();
  }
}

test('DiffFit: gammas != 1 in the graph give the merged plain model, bit for bit', async () => {
  const r = peft('difffit');
  const trained = perturbed(r.init(ditWeights, RngKey.fromSeed(5)), 100);
  const merged = r.merge(trained);
  const got = await outputs(dit, (t) => r.apply(t), trained, merged);
  const [g, m] = [flat(got.weights), flat(merged)];
  assert.deepEqual(g.paths, m.paths);
  g.leaves.forEach((a, i) => assert.deepEqual(a.data, m.leaves[i]!.data, g.paths[i]));
  const worst = maxAbsDiff(got.adapted, got.plain);
  assert.ok(worst < 1e-5, `adapted and merged outputs differ by ${worst}`);
  // By hand: the gate rows of block 0's norm1.linear are scaled by the gammas, rows and
  // bias alike; the shift/scale rows and block 1 are the base's.
  const D = 16;
  const w0 = 'transformer_blocks.0.norm1.linear';
  const gm = asPeft(trained).scale['transformer_blocks.0.gamma_mlp']!.data as Float32Array;
  const base = (p: string) => flat(ditWeights).leaves[flat(ditWeights).paths.indexOf(p)]!;
  const at = (p: string) => m.leaves[m.paths.indexOf(p)]!;
  const [row, col] = [5 * D + 3, 7];
  assert.equal(at(`${w0}.weight`).get(row, col),
    Math.fround(base(`${w0}.weight`).get(row, col) * gm[3]!));
  assert.equal(at(`${w0}.weight`).get(D + 3, col), base(`${w0}.weight`).get(D + 3, col));
  const b = asPeft(trained).free[`${w0}.bias`]!.data as Float32Array;
  assert.equal(at(`${w0}.bias`).data[row], Math.fround(b[row]! * gm[3]!));
  assert.deepEqual(at('transformer_blocks.1.norm1.linear.weight').data,
    base('transformer_blocks.1.norm1.linear.weight').data);
  // and the gammas matter: the plain base model gives another output
  const plainBase = await outputs(dit, (t) => r.apply(t), r.init(ditWeights, RngKey.fromSeed(5)),
    ditWeights);
  assert.ok(maxAbsDiff(plainBase.plain, got.plain) > 1e-3);
});

test('Diffscaler: the graph\'s weights match the host merge (low-rank sums round apart)',
  async () => {
  const r = peft('diffscaler', { rank: 2 });
  const trained = perturbed(r.init(ditWeights, RngKey.fromSeed(6)), 200);
  const merged = r.merge(trained);
  const got = await outputs(dit, (t) => r.apply(t), trained, merged);
  const [g, m] = [flat(got.weights), flat(merged)];
  g.leaves.forEach((a, i) => a.data.forEach((v, j) =>
    assert.ok(Math.abs(Number(v) - Number(m.leaves[i]!.data[j])) < 1e-5, `${g.paths[i]}[${j}]`)));
  const worst = maxAbsDiff(got.adapted, got.plain);
  assert.ok(worst < 1e-4, `adapted and merged outputs differ by ${worst}`);
});

/** Eight training digits (32 x 32, labels 0-9). */
const digits = () => subset(mnistSplits().train, Array.from({ length: 8 }, (_, i) => 900 * i));

const runOptions = (init: string, out: string, adapt: TrainOptions['adapt']): TrainOptions => ({
  ...METHOD_DEFAULTS, model: 'dit', size: 'init', objective: 'flow', weighting: 'uniform',
  minSnrGamma: 5, conditional: true, labelDropout: 0.1, batchSize: 8, steps: 1, lr: 1e-2,
  lrSchedule: 'constant', warmupSteps: 0, gradClip: 1, emaDecay: 0.999, seed: 0, out,
  logEvery: 1, sampleEvery: 0, checkpointEvery: 0, init, ...(adapt ? { adapt } : {}),
});

test('one training step: the export\'s frozen weights are the start\'s, trained ones move', () =>
  withTempDir('peft', async (dir) => {
    const init = join(dir, 'base');
    await exportPipeline(init, { model: dit, scheduler: trainingScheduler('flow') }, ditWeights);
    const start = flat((await loadPipeline(init)).params);
    for (const m of ['bitfit', 'difffit'] as const) {
      const out = join(dir, m);
      await train(runOptions(init, out, peft(m)), digits(), false);
      const end = flat((await loadPipeline(join(out, 'model'))).params);
      assert.deepEqual(end.paths, start.paths);
      // The keys' bias has a zero gradient (softmax drops a shift shared by all keys), so
      // nothing moves it; the model leaves it out of the graph (dit-blocks.ts).
      const trainedHere = (p: string) => (p.endsWith('.bias') && !p.endsWith('attn1.to_k.bias')) ||
        (m === 'difffit' && (p.endsWith('embedding_table.weight') ||
          p === 'transformer_blocks.0.norm1.linear.weight'));
      end.leaves.forEach((a, i) => {
        const [p, s] = [end.paths[i]!, start.leaves[i]!];
        if (trainedHere(p)) {
          assert.ok(a.data.some((v, j) => v !== s.data[j]), `${m}: ${p} was trained`);
        } else {
          assert.deepEqual(a.data, s.data, `${m}: ${p} is frozen`);
        }
      });
      if (m === 'difffit') { // block 0's norm1.linear: only the gate rows move
        const i = end.paths.indexOf('transformer_blocks.0.norm1.linear.weight');
        const [a, s] = [end.leaves[i]!.data, start.leaves[i]!.data];
        const D = 16;
        for (let r = 0; r < 6 * D; r++) {
          const gate = (r >= 2 * D && r < 3 * D) || r >= 5 * D;
          const same = a.slice(r * D, (r + 1) * D).every((v, j) => v === s[r * D + j]);
          assert.equal(same, !gate, `row ${r}`);
        }
      }
    }
  }));
