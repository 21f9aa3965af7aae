/**
 * `diffuse ddm train --queue` with `diffuse worker`s on a real Redis: SIGKILL of the worker
 * running an expert mid-job costs at most the steps since its last checkpoint, the other worker
 * finishes the job from there, and the run ends with a sampling-ready ensemble.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { loadPipeline, sampleImages } from '../../src/pipelines/sample.js';
import { writeFeatureClassifier, writeTwoClassFolder } from '../support/ddm-fixtures.js';
import { repoRoot } from '../support/paths.js';
import { testRedis, type TestRedis } from '../support/queue-redis.js';
import { withTempDir } from '../support/temp-dir.js';
import { runCli } from './cli.js';

let redis: TestRedis | { skip: string };
before(async () => { redis = await testRedis(); });
after(async () => { if ('stop' in redis) await redis.stop(); });

interface Worker { child: ChildProcess; output: string; exited: Promise<void> }

function startWorker(url: string, queue: string): Worker {
  const child = spawn(process.execPath, [join(repoRoot, 'bin', 'diffuse.js'), 'worker', '--queue', url,
    '--queue-name', queue, '--lock-seconds', '2'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const w: Worker = { child, output: '', exited: new Promise((resolve) => child.once('exit', () => resolve())) };
  child.stdout!.on('data', (d: Buffer) => (w.output += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (w.output += d.toString()));
  return w;
}

const checkpointStep = (dir: string): number => {
  try {
    return (JSON.parse(readFileSync(join(dir, 'checkpoint', 'trainer_state.json'), 'utf8')) as { step: number }).step;
  } catch {
    return 0;
  }
};

test('a worker killed mid-expert loses at most one checkpoint interval and the run completes', async (t) => {
  if (!('stop' in redis)) return t.skip(redis.skip);
  const { url } = redis;
  await withTempDir('ddm-queue', async (root) => {
    await writeTwoClassFolder(join(root, 'images'));
    await writeFeatureClassifier(join(root, 'features'));
    const queue = `ddm-fault-${process.pid}`;
    const run = join(root, 'run');
    const workers = [startWorker(url, queue), startWorker(url, queue)];
    const interval = 10;
    let killedAt = -1;
    let victim: Worker | undefined;
    try {
      const expert0 = join(run, 'experts', 'expert-0');
      const watch = setInterval(() => {
        if (victim) return;
        const step = checkpointStep(expert0);
        if (step < interval) return;
        // The worker that took expert-0: its log names the job when it starts it.
        victim = workers.find((w) => /expert-0: start/.test(w.output));
        if (!victim) return;
        killedAt = checkpointStep(expert0);
        victim.child.kill('SIGKILL');
      }, 20);
      const r = await runCli(['ddm', 'train', '--queue', url, '--queue-name', queue, '--workers', '0',
        '--experts', '2', '--model', 'dit', '--size', 'tiny', '--steps', '300', '--checkpoint-every', String(interval),
        '--batch-size', '4', '--router-steps', '5', '--router-batch-size', '4', '--router-preset', 'tiny',
        '--data', join(root, 'images'), '--features', join(root, 'features'), '--out', run],
      { timeoutMs: 240_000 });
      clearInterval(watch);
      assert.equal(r.code, 0, r.stderr);
      assert.ok(victim, `no worker was killed:\n${r.stderr}`);
      assert.ok(killedAt >= interval);
      const resumed = /expert-0: done in \d+ s \(resumed from step (\d+)\)/.exec(r.stderr);
      assert.ok(resumed, r.stderr);
      // From the checkpoint on disk when the worker died, or a later one it wrote before dying.
      assert.ok(Number(resumed[1]) >= killedAt && Number(resumed[1]) % interval === 0, `resumed from ${resumed[1]}, killed at ${killedAt}`);
      const survivor = workers.find((w) => w !== victim)!;
      assert.match(survivor.output, /expert-0: start \(attempt 2\)/);
      assert.equal(checkpointStep(expert0), 300);
      assert.ok(existsSync(join(run, 'model', 'model_index.json')));
      const p = await loadPipeline(run);
      assert.equal(p.ensemble?.experts.length, 2);
      const s = await sampleImages(p, { sampler: 'flow-euler', steps: 2, n: 2, seed: 0, classes: [0, 1] });
      assert.ok(Array.from(s.images.data as Float32Array).every(Number.isFinite));
    } finally {
      for (const w of workers) w.child.kill('SIGTERM');
      await Promise.all(workers.map((w) => w.exited));
    }
  });
});
