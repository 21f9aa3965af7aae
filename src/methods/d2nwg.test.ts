/** D2NWG: heads as vectors round-trip exactly and classify as before; the VAE loss is the
 *  header's MSE + beta KL; a tiny run generates heads far better than random ones. */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import type { Tree } from '../engine/tree.js';
import type { ParamsOf } from '../nn/module.js';
import { runD2nwg, type HeadTask } from '../pipelines/d2nwg.js';
import {
  flattenHead, headSpace, rebase, unflattenHead, unitScale, vaeLoss, vaeTerms, WeightVae,
} from './d2nwg.js';
import { probePredict, trainLinearProbe, type LinearProbe } from './linear-probe.js';

/** Gaussian blobs: `classes` centres (from `centres`), n rows of dim features, offset by 3 so
 *  standardisation matters. */
function blobs(n: number, dim: number, classes: number, centres: RngKey, rows: RngKey):
  { features: Float32Array; labels: Int32Array } {
  const c = centres.normal(classes * dim);
  const labels = rows.fold(0).uniformInt(n, classes);
  const z = rows.fold(1).normal(n * dim);
  const features = new Float32Array(n * dim);
  for (let i = 0; i < n; i++) {
    for (let d = 0; d < dim; d++) {
      features[i * dim + d] = 1.5 * c[labels[i]! * dim + d]! + z[i * dim + d]! + 3;
    }
  }
  return { features, labels };
}

/** Logits [n, classes] of a probe, in float64, straight from its definition. */
function logits(p: LinearProbe, x: Float32Array): number[] {
  const out: number[] = [];
  for (let i = 0; i < x.length / p.dim; i++) {
    for (let k = 0; k < p.classes; k++) {
      let s = p.bias[k]!;
      for (let d = 0; d < p.dim; d++) {
        s += (p.weight[k * p.dim + d]! * (x[i * p.dim + d]! - p.mean[d]!)) / p.std[d]!;
      }
      out.push(s);
    }
  }
  return out;
}

test('a head rebased into a shared space, flattened and unflattened classifies as before', () => {
  const [dim, classes] = [5, 4];
  const key = RngKey.fromSeed(3);
  const all = blobs(400, dim, classes, key.fold(0), key.fold(1));
  const space = headSpace(all.features, all.labels, dim, classes);
  // Trained on its first 60 rows: its own standardisation differs from the space's.
  const { probe } = trainLinearProbe(all.features.slice(0, 60 * dim), all.labels.slice(0, 60), dim,
    classes, { epochs: 5, seed: 1 });
  assert.ok(Math.abs(probe.mean[0]! - space.mean[0]!) > 1e-3, 'the subset has its own mean');
  const shared = rebase(probe, space);
  const v = flattenHead(shared);
  assert.equal(v.length, classes * (dim + 1));
  assert.deepEqual([...v.subarray(classes * dim)], [...shared.bias]);
  const back = unflattenHead(v, space);
  assert.deepEqual(back.weight, shared.weight);
  assert.deepEqual(back.bias, shared.bias);
  assert.deepEqual(flattenHead(back), v);

  const test = blobs(300, dim, classes, key.fold(0), key.fold(2)).features;
  const [want, got] = [logits(probe, test), logits(back, test)];
  got.forEach((g, i) => assert.ok(Math.abs(g - want[i]!) < 1e-9 * (1 + Math.abs(want[i]!)),
    `logit ${i}: ${g} vs ${want[i]}`));
  const predictions = probePredict(probe, test);
  assert.deepEqual(probePredict(back, test), predictions);
  assert.deepEqual(probePredict(unflattenHead(unitScale(v), space), test), predictions);
  assert.ok(new Set(predictions).size === classes, 'the probe predicts every class');
  assert.throws(() => unflattenHead(v.subarray(1), space), /expected 24 values/);
});

test('the VAE loss is MSE + beta KL, as a plain computation gives it', async () => {
  const cfg = { in_features: 6, hidden: 5, layers: 2, latent: 3 };
  const vae = new WeightVae(cfg);
  const params = vae.init(RngKey.fromSeed(11));
  const [b, beta] = [4, 0.37];
  const key = RngKey.fromSeed(12);
  const input = key.fold(0).normal(b * cfg.in_features);
  const target = key.fold(1).normal(b * cfg.in_features);
  const eps = key.fold(2).normal(b * cfg.latent);

  const p = ops.constantTree(params as Tree<HostArray>) as ParamsOf<WeightVae>;
  const run = compile((x: Tensor, y: Tensor, e: Tensor) => {
    const batch = { input: x, target: y, eps: e };
    return { loss: vaeLoss(vae, p, batch, beta), ...vaeTerms(vae, p, batch) };
  }, { name: 'vae_loss_test' });
  const out = await run(new HostArray(input, [b, cfg.in_features]),
    new HostArray(target, [b, cfg.in_features]), new HostArray(eps, [b, cfg.latent]));
  await run.dispose();
  const got = (a: HostArray) => a.data[0] as number;

  // The same network on the host: Linear is x W^T + b, SiLU is x sigmoid(x).
  const linear = (l: { weight: HostArray; bias?: HostArray }, x: number[]): number[] => {
    const [outF, inF] = l.weight.shape as [number, number];
    return Array.from({ length: outF }, (_, o) => {
      let s = l.bias!.data[o] as number;
      for (let i = 0; i < inF; i++) s += (l.weight.data[o * inF + i] as number) * x[i]!;
      return s;
    });
  };
  const silu = (x: number[]) => x.map((v) => v / (1 + Math.exp(-v)));
  let [sq, kl] = [0, 0];
  for (let r = 0; r < b; r++) {
    let h = Array.from(input.subarray(r * 6, r * 6 + 6));
    for (const l of params.encoder) h = silu(linear(l, h));
    const mu = linear(params.to_mean, h);
    const logvar = linear(params.to_logvar, h);
    let z = mu.map((m, j) => m + Math.exp(logvar[j]! / 2) * eps[r * 3 + j]!);
    for (const l of params.decoder) z = silu(linear(l, z));
    linear(params.out, z).forEach((v, j) => (sq += (v - target[r * 6 + j]!) ** 2));
    mu.forEach((m, j) => (kl += 0.5 * (m * m + Math.exp(logvar[j]!) - 1 - logvar[j]!)));
  }
  const [mse, klMean] = [sq / (b * 6), kl / b];
  assert.ok(klMean > 0.01, `a KL term large enough to matter: ${klMean}`);
  const close = (a: number, e: number, what: string) =>
    assert.ok(Math.abs(a - e) <= 1e-5 * Math.abs(e), `${what}: ${a} vs ${e}`);
  close(got(out.mse), mse, 'MSE');
  close(got(out.kl), klMean, 'KL');
  close(got(out.loss), mse + beta * klMean, 'loss');
});

test('a tiny D2NWG run: generated heads classify far better than random ones', async () => {
  const [dim, classes] = [8, 3];
  const key = RngKey.fromSeed(7);
  const task: HeadTask = { dim, classes, train: blobs(400, dim, classes, key.fold(0), key.fold(1)),
    test: blobs(300, dim, classes, key.fold(0), key.fold(2)) };
  const dir = await mkdtemp(join(tmpdir(), 'd2nwg-'));
  try {
    const [csv, png] = [join(dir, 'heads.csv'), join(dir, 'heads.png')];
    const r = await runD2nwg(task, { heads: 32, samples: 24, minFraction: 0.05, maxEpochs: 2,
      latent: 4, vaeHidden: 64, vaeSteps: 300, diffusionHidden: 64, diffusionSteps: 400,
      batchSize: 32, samplingSteps: 20, csv, png });
    const mean = (s: string) => r.stats.find((x) => x.source === s)!.mean;
    assert.ok(mean('trained') > 0.85, `trained ${mean('trained')}`);
    assert.ok(mean('random') < 0.6, `random ${mean('random')}`);
    assert.ok(mean('generated') > mean('random') + 0.3,
      `generated ${mean('generated')} vs random ${mean('random')}`);
    // Not one head copied 24 times (a decoder that ignored its latent would give that): the
    // generated heads spread at least a third as far from their own mean as the trained do.
    const spread = (vs: Float64Array[]) => {
      const c = vs[0]!.map((_, i) => vs.reduce((s, v) => s + v[i]!, 0) / vs.length);
      return vs.reduce((s, v) => s + v.reduce((t, x, i) => t + (x - c[i]!) ** 2, 0), 0) / vs.length;
    };
    const ratio = Math.sqrt(spread(r.heads.generated) / spread(r.heads.trained));
    assert.ok(ratio > 0.33 && ratio < 3, `generated spread / trained spread ${ratio}`);
    const lines = (await readFile(csv, 'utf8')).trim().split('\n');
    assert.equal(lines[0], 'source,index,accuracy,nearest_trained_rms');
    assert.equal(lines.length, 1 + 32 + 24 + 24 + 32 + 24);
    assert.ok((await stat(png)).size > 1000);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
