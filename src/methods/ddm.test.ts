/** Decentralized Diffusion Models: k-means, the top-k weights, the ensemble identity on an
 *  analytic mixture (exact experts + exact router = the exact monolith), and the router's loss. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { GaussianMixture } from '../data/analytic/mixture.js';
import type { Denoiser } from '../diffusion/denoiser.js';
import { rectifiedFlow } from '../diffusion/process.js';
import { CLASSIFIER_PRESETS, DiffuseClassifier } from '../models/classifier.js';
import type { ParamsOf } from '../nn/module.js';
import {
  ensembleDenoiser, flowNoiseLevel, kMeans, routeWeights, routerLoss, type Router,
} from './ddm.js';

test('k-means recovers well-separated blobs, is seeded, and keeps every cluster in use', () => {
  const [k, per, dim] = [4, 30, 3];
  const centres = [[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]];
  const z = RngKey.fromSeed(4).normal(k * per * dim);
  const points = Float32Array.from({ length: k * per * dim }, (_, j) => {
    const i = Math.floor(j / dim);
    return centres[i % k]![j % dim]! + 0.5 * z[j]!;
  });
  const a = kMeans(points, k * per, dim, k, RngKey.fromSeed(1));
  assert.deepEqual(a.sizes, [per, per, per, per]);
  // Same blob, same cluster: the assignment is a relabelling of i % k.
  for (let i = k; i < k * per; i++) assert.equal(a.assignments[i], a.assignments[i % k]);
  assert.equal(new Set(Array.from(a.assignments.subarray(0, k))).size, k);
  const b = kMeans(points, k * per, dim, k, RngKey.fromSeed(1));
  assert.deepEqual(b.assignments, a.assignments);
  assert.deepEqual(b.centroids, a.centroids);
  // More clusters than blobs still fills every cluster, and inertia only drops.
  const c = kMeans(points, k * per, dim, 6, RngKey.fromSeed(2));
  assert.ok(c.sizes.every((s) => s > 0), `sizes ${c.sizes}`);
  assert.ok(c.inertia < a.inertia);
  assert.throws(() => kMeans(points, k * per, dim, 200, RngKey.fromSeed(1)), /120 points cannot make 200 clusters/);
});

test('top-k weights keep the k largest probabilities of each row, renormalised', () => {
  const probs = [0.1, 0.6, 0.3, /**/ 0.5, 0.25, 0.25];
  const near = (a: Float32Array, b: number[]) => a.forEach((v, i) => assert.ok(Math.abs(v - b[i]!) < 1e-6, `${a} vs ${b}`));
  near(routeWeights(probs, 2, 3, 1), [0, 1, 0, 1, 0, 0]);
  near(routeWeights(probs, 2, 3, 2), [0, 2 / 3, 1 / 3, 2 / 3, 1 / 3, 0]); // a tie goes to the lower index
  near(routeWeights(probs, 2, 3, 3), probs);
});

test('flow noise levels are the log-SNR of x_t = (1 - s) x0 + s eps, clamped at the ends', () => {
  const l = flowNoiseLevel([250, 500, 0, 1000], 1000);
  assert.ok(Math.abs(l[0]! - 2 * Math.log(3)) < 1e-5 && Math.abs(l[1]!) < 1e-6);
  assert.ok(Number.isFinite(l[2]!) && Number.isFinite(l[3]!) && l[2]! === -l[3]!);
});

/** Four Gaussian clusters in 3-D: the monolith's exact denoiser, each cluster's exact
 *  denoiser (an expert), and the exact posterior over clusters (a perfect router). */
function clusteredMixture() {
  const means = [[2, 0, 0], [-2, 0.5, 0], [0, 2, -1], [0.5, -2, 1]];
  const weights = [0.4, 0.3, 0.2, 0.1];
  const cov = [0.3, 0.05, 0, 0.05, 0.2, 0, 0, 0, 0.1];
  const whole = GaussianMixture.full(weights, means, means.map(() => cov));
  const process = rectifiedFlow({ timeScale: 1000 });
  const experts: Denoiser[] = means.map((m) => GaussianMixture.full([1], [m], [cov]).denoiser(process, 'flow'));
  const router: Router = async (x, t) => {
    const rows = x.shape[0]!;
    const out = new Float32Array(rows * 4);
    for (let r = 0; r < rows; r++) {
      const { alpha, sigma } = process.at(t[r]!);
      out.set(whole.posterior(x.data.subarray(r * 3, r * 3 + 3), alpha, sigma).responsibilities, r * 4);
    }
    return out;
  };
  return { whole, process, experts, router };
}

test('the full ensemble of exact experts under the exact router is the exact monolith', async () => {
  const { whole, process, experts, router } = clusteredMixture();
  const monolith = whole.denoiser(process, 'flow');
  const rows = 10;
  const x = new HostArray<'float32'>(RngKey.fromSeed(8).normal(rows * 3), [rows, 3], 'float32');
  const t = Float64Array.from({ length: rows }, (_, i) => 50 + 90 * i); // s from 0.05 to 0.86
  const full = ensembleDenoiser(experts, router, 'full', { padTo: 4 });
  const want = (await monolith.predict(x, t)).data;
  const got = (await full.predict(x, t)).data;
  got.forEach((v, i) => assert.ok(Math.abs(v - want[i]!) < 1e-4, `row ${Math.floor(i / 3)}: ${v} vs ${want[i]}`));
  // Each expert ran once, on all rows (rounded up to the padding).
  assert.deepEqual(full.stats.expertCalls, [1, 1, 1, 1]);
  assert.deepEqual(full.stats.expertRows, [rows, rows, rows, rows]);
  // Top-1 is each row's most probable expert alone, and runs each row once (plus padding).
  const top1 = ensembleDenoiser(experts, router, 'top1', { padTo: 4 });
  const y = (await top1.predict(x, t)).data;
  const probs = await router(x, t);
  for (let r = 0; r < rows; r++) {
    const best = [0, 1, 2, 3].reduce((b, e) => probs[r * 4 + e]! > probs[r * 4 + b]! ? e : b, 0);
    const alone = (await experts[best]!.predict(new HostArray<'float32'>(x.data.slice(r * 3, r * 3 + 3), [1, 3], 'float32'), t.subarray(r, r + 1))).data;
    for (let j = 0; j < 3; j++) assert.ok(Math.abs(y[r * 3 + j]! - alone[j]!) < 1e-5);
  }
  const used = top1.stats.expertRows.reduce((a, b) => a + b, 0);
  assert.ok(used >= rows && used < rows + 4 * 4, `top-1 evaluated ${used} rows for ${rows}`);
});

test('the ensemble hands each expert its rows\' class labels', async () => {
  const seen: number[][] = [];
  const expert = (e: number): Denoiser => ({ prediction: 'flow', predict: async (x, _t, c) => {
    seen[e] = Array.from(c as number[]);
    return new HostArray<'float32'>(new Float32Array(x.data.length).fill(e + 1), x.shape, 'float32');
  } });
  const router: Router = async (x) => Float32Array.from({ length: x.shape[0]! * 2 }, (_, i) =>
    (Math.floor(i / 2) % 2) === (i % 2) ? 0.9 : 0.1); // even rows -> expert 0, odd -> 1
  const d = ensembleDenoiser([expert(0), expert(1)], router, 'top1', { padTo: 1 });
  const out = await d.predict(new HostArray<'float32'>(new Float32Array(4 * 2), [4, 2], 'float32'), new Float64Array(4), [7, 8, 9, 6]);
  assert.deepEqual(seen, [[7, 9], [8, 6]]);
  assert.deepEqual(Array.from(out.data), [1, 1, 2, 2, 1, 1, 2, 2]);
});

test('the router\'s loss is the cross-entropy of the cluster given the flow-noised image', async () => {
  const config = { ...CLASSIFIER_PRESETS.tiny!, num_classes: 3, sample_size: 8, condition_classes: 2 };
  const net = new DiffuseClassifier(config);
  const params = net.init(RngKey.fromSeed(3)) as ParamsOf<DiffuseClassifier, HostArray>;
  const n = 5;
  const x0 = new HostArray(RngKey.fromSeed(4).normal(n * 64), [n, 1, 8, 8]);
  const eps = new HostArray(RngKey.fromSeed(5).normal(n * 64), [n, 1, 8, 8]);
  const s = [0.1, 0.3, 0.5, 0.7, 0.9];
  const alpha = new HostArray(Float32Array.from(s, (v) => 1 - v), [n, 1, 1, 1]);
  const sigma = new HostArray(Float32Array.from(s), [n, 1, 1, 1]);
  const level = new HostArray(flowNoiseLevel(s.map((v) => 1000 * v), 1000), [n]);
  const cluster = new HostArray(BigInt64Array.from([0n, 2n, 1n, 1n, 0n]), [n], 'int64');
  const labels = new HostArray(BigInt64Array.from([0n, 1n, 2n, 0n, 1n]), [n], 'int64'); // 2: null class
  const f = compile((x0t: Tensor, epst: Tensor, a: Tensor, sg: Tensor, lv: Tensor, k: Tensor, y: Tensor) => {
    const p = ops.constantTree(params as never) as ParamsOf<DiffuseClassifier>;
    const xt = ops.add(ops.mul(x0t, a), ops.mul(epst, sg));
    return [routerLoss(net, p, { x0: x0t, eps: epst, alpha: a, sigma: sg, level: lv, cluster: k, labels: y }),
      net.logits(p, xt, lv, y)];
  });
  try {
    const [loss, logits] = (await f(x0, eps, alpha, sigma, level, cluster, labels)) as HostArray[];
    const l = logits!.data as Float32Array;
    let want = 0;
    for (let i = 0; i < n; i++) {
      const row = Array.from(l.subarray(i * 3, i * 3 + 3));
      const top = Math.max(...row);
      const lse = top + Math.log(row.reduce((acc, v) => acc + Math.exp(v - top), 0));
      want += (lse - row[Number(cluster.data[i])]!) / n;
    }
    assert.ok(Math.abs((loss!.data as Float32Array)[0]! - want) < 1e-5, `${loss!.data[0]} vs ${want}`);
    // The class input matters: another class gives other logits.
    const other = (await f(x0, eps, alpha, sigma, level, cluster,
      new HostArray(BigInt64Array.from([1n, 0n, 0n, 1n, 2n]), [n], 'int64'))) as HostArray[];
    assert.notDeepEqual(Array.from(other[1]!.data as Float32Array), Array.from(l));
  } finally {
    await f.dispose();
  }
});

test('a classifier refuses a class condition it was not built for', () => {
  assert.throws(() => new DiffuseClassifier({ ...CLASSIFIER_PRESETS.tiny!, noise_conditioning: false,
    condition_classes: 0 }).features({} as never, ops.constant(HostArray.zeros([1, 1, 8, 8])), undefined,
  ops.constant(new HostArray(BigInt64Array.from([0n]), [1], 'int64'))), /condition_classes is 0/);
});
