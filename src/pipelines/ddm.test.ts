/** A decentralized-experts run: an expert job resumes exactly, a finished job is never re-run,
 *  a run refuses other options, and a whole run on worker threads gives an ensemble pipeline
 *  whose prediction is the router-weighted sum of its experts'. */
import assert from 'node:assert/strict';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import type { Tree } from '../engine/tree.js';
import { embeddedBackend } from '../distributed/embedded.js';
import type { JobContext, JobSpec } from '../distributed/jobs.js';
import { DiffuseClassifier } from '../models/classifier.js';
import type { ParamsOf } from '../nn/module.js';
import { flowNoiseLevel, routeWeights } from '../methods/ddm.js';
import { writeFeatureClassifier, writeTwoClassFolder } from '../../test/support/ddm-fixtures.js';
import { withTempDir } from '../../test/support/temp-dir.js';
import {
  ddmJobs, expertRunFolder, prepareDdm, runDdmJob, trainDdm, ROUTER_DEFAULTS, type DdmOptions,
} from './ddm.js';
import { ensembleModel } from './ensemble.js';
import { modelDenoiser } from './graph-denoiser.js';
import { JOB_HANDLER_MODULE } from './jobs.js';
import { loadPipeline, sampleImages } from './sample.js';
import { METHOD_DEFAULTS } from './train.js';

function options(root: string, out: string, steps = 4): DdmOptions {
  return {
    experts: 2, data: join(root, 'images'), out, seed: 5, routing: 'top2', features: join(root, 'features'),
    checkpointEvery: 2,
    expert: { model: 'dit', size: 'tiny', objective: 'flow', weighting: 'uniform', minSnrGamma: 5,
      conditional: true, labelDropout: 0.1, batchSize: 4, steps, lr: 1e-3, lrSchedule: 'constant',
      warmupSteps: 0, gradClip: 1, emaDecay: 0.9, logEvery: 1, sampleEvery: 0, checkpointEvery: 2, ...METHOD_DEFAULTS },
    router: { ...ROUTER_DEFAULTS, preset: 'tiny', steps: 3, batchSize: 4 },
  };
}

function context(signal = new AbortController().signal, onStep?: (step: number) => void): JobContext {
  return { progress: (p) => onStep?.(p.step), signal, attempt: 1, worker: 'test' };
}

const bytes = (path: string) => readFile(path);

async function withRoot(fn: (root: string) => Promise<void>): Promise<void> {
  await withTempDir('ddm', async (root) => {
    await writeTwoClassFolder(join(root, 'images'));
    await writeFeatureClassifier(join(root, 'features'));
    await fn(root);
  });
}

test('an expert job stopped midway resumes to the weights of an uninterrupted one; a finished job is skipped', async () => {
  await withRoot(async (root) => {
    const straight = options(root, join(root, 'a'));
    const stopped = options(root, join(root, 'b'));
    const a = await prepareDdm(straight);
    const b = await prepareDdm(stopped);
    assert.deepEqual(a.clusters.assignments, b.clusters.assignments); // seeded clustering
    assert.equal(a.clusters.sizes.reduce((x, y) => x + y, 0), 24);
    const jobA = ddmJobs(straight.out, a.record)[0]!;
    const jobB = ddmJobs(stopped.out, b.record)[0]!;
    await runDdmJob(jobA, context());
    const stop = new AbortController();
    await assert.rejects(runDdmJob(jobB, context(stop.signal, (s) => s === 2 && stop.abort())), /stopped at step 2/);
    const resumed = await runDdmJob(jobB, context());
    assert.equal(resumed.skipped, false);
    const weights = (run: string) => bytes(join(expertRunFolder(run, 0), 'model', 'transformer',
      'diffusion_pytorch_model.safetensors'));
    assert.ok((await weights(straight.out)).equals(await weights(stopped.out)), 'resumed expert differs');
    const before = (await stat(join(expertRunFolder(straight.out, 0), 'model'))).mtimeMs;
    const again = await runDdmJob(jobA, context());
    assert.equal(again.skipped, true);
    assert.equal((await stat(join(expertRunFolder(straight.out, 0), 'model'))).mtimeMs, before);
    // The run keeps its options: other ones are refused, naming the key.
    await assert.rejects(prepareDdm({ ...straight, experts: 3 }), /started with experts = 2, this run asks for 3/);
    await assert.rejects(prepareDdm({ ...straight, expert: { ...straight.expert, steps: 9 } }),
      /started with expert\.steps = 4, this run asks for 9/);
  });
});

test('a whole run on worker threads assembles an ensemble whose prediction is the router-weighted sum of its experts\'', async () => {
  await withRoot(async (root) => {
    const o = options(root, join(root, 'run'));
    const backend = embeddedBackend({ handler: JOB_HANDLER_MODULE, workers: 2 });
    const done: string[] = [];
    try {
      const r = await trainDdm(o, backend, { onDone: (id) => done.push(id) });
      assert.equal(done.length, 3);
      assert.equal(r.jobs.size, 3);
    } finally {
      await backend.close();
    }
    const p = await loadPipeline(o.out); // the run folder stands for its model/
    assert.ok(p.ensemble);
    assert.equal(p.ensemble.experts.length, 2);
    assert.equal(p.ensemble.routing, 'top2');
    const rows = 3;
    const x = new HostArray<'float32'>(RngKey.fromSeed(1).normal(rows * 64), [rows, 1, 8, 8], 'float32');
    const t = Float64Array.from([100, 500, 900]);
    const labels = [0, 1, 2]; // 2: the null class
    const ens = ensembleModel(p.ensemble, 'full', 'flow');
    const experts = p.ensemble.experts.map((e) => modelDenoiser(e.model, e.params, 'flow'));
    const net = new DiffuseClassifier(p.ensemble.router.config);
    const router = compile((xs: Tensor, level: Tensor, y: Tensor) => ops.softmax(net.logits(
      ops.constantTree(p.ensemble!.router.params as unknown as Tree<HostArray>) as unknown as ParamsOf<DiffuseClassifier>,
      xs, level, y), -1));
    try {
      const got = (await ens.denoiser.predict(x, t, labels)).data;
      const probs = (await router(x, new HostArray(flowNoiseLevel(t, 1000), [rows]),
        new HostArray(BigInt64Array.from([0n, 1n, 2n]), [rows], 'int64'))).data as Float32Array;
      const w = routeWeights(probs, rows, 2, 2);
      const outs = await Promise.all(experts.map((e) => e.predict(x, t, labels)));
      for (let i = 0; i < got.length; i++) {
        const r = Math.floor(i / 64);
        const want = w[r * 2]! * outs[0]!.data[i]! + w[r * 2 + 1]! * outs[1]!.data[i]!;
        assert.ok(Math.abs(got[i]! - want) < 1e-5, `${i}: ${got[i]} vs ${want}`);
      }
      assert.ok(Math.abs(probs[0]! + probs[1]! - 1) < 1e-6 && probs[0]! > 0 && probs[0]! < 1);
    } finally {
      await ens.dispose();
      await Promise.all(experts.map((e) => e.dispose()));
      await router.dispose();
    }
    const rowsOf: Record<string, number> = {};
    for (const ensemble of ['top1', 'top2', 'full'] as const) {
      const s = await sampleImages(p, { sampler: 'flow-euler', steps: 2, n: 4, seed: 0, classes: [0, 1], ensemble });
      assert.deepEqual(s.images.shape, [4, 1, 8, 8]);
      assert.ok(Array.from(s.images.data as Float32Array).every(Number.isFinite));
      rowsOf[ensemble] = s.expertRows!;
    }
    assert.equal(rowsOf.full, 2 * 4 * 2); // every expert on every row at both steps
    assert.ok(rowsOf.top1! <= rowsOf.full! && rowsOf.top1! >= 4 * 2, `top1 ran ${rowsOf.top1} rows`);
    await assert.rejects(sampleImages(p, { sampler: 'flow-euler', steps: 2, n: 2, seed: 0, classes: [0],
      accel: { method: 'ras', ratio: 0.5 } as never }), /works on one model, not on an ensemble/);
  });
});

test('ddm jobs are named by the run, so another run in the same place gets other ids', () => {
  const record = { experts: 2, runId: 'abc' } as Parameters<typeof ddmJobs>[1];
  const jobs: JobSpec[] = ddmJobs('/runs/x', record);
  assert.deepEqual(jobs.map((j) => j.id), ['ddm-abc-expert-0', 'ddm-abc-expert-1', 'ddm-abc-router']);
  assert.deepEqual(jobs[1]!.data, { run: '/runs/x', expert: 1 });
});
