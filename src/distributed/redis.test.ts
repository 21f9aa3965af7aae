/** The BullMQ back-end against a real Redis (see test/support/queue-redis.ts for where it comes
 *  from; without one these tests are skipped, saying how to enable them): local workers, a
 *  worker SIGKILLed mid-job and taken over, a worker stopped with SIGTERM, resubmission of
 *  completed and failed jobs. URL parsing, id mapping and unreachable servers need no Redis. */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Queue } from 'bullmq';
import { toyPaths, type ToyJobData, type ToyResult } from '../../test/support/queue-handler.js';
import { freePort, spawnQueueWorker, testRedis, type WorkerProcess } from '../../test/support/queue-redis.js';
import { withTempDir } from '../../test/support/temp-dir.js';
import { JobFailedError, type JobSpec } from './jobs.js';
import { parseRedisUrl, queueJobId, redisBackend, startRedisWorker } from './redis.js';

const handler = fileURLToPath(new URL('../../test/support/queue-handler.js', import.meta.url));
const toyJob = (id: string, data: ToyJobData): JobSpec => ({ id, kind: 'toy', data });
const lines = (path: string): string[] => readFileSync(path, 'utf8').trim().split('\n');

const redis = await testRedis();
const url = 'url' in redis ? redis.url : '';
const skip = 'skip' in redis ? redis.skip : false;
const workers: WorkerProcess[] = [];
after(async () => {
  for (const w of workers) if (w.child.exitCode === null && w.child.signalCode === null) w.child.kill('SIGKILL');
  await Promise.all(workers.map((w) => w.exited));
  if ('stop' in redis) await redis.stop();
});

let queues = 0;
/** A queue of its own for one test, emptied from Redis afterwards (the server may be shared). */
async function withQueue(fn: (queue: string) => Promise<void>): Promise<void> {
  const name = `diffuse-test-${process.pid}-${Date.now()}-${queues++}`;
  try {
    await fn(name);
  } finally {
    const { host, port, db } = parseRedisUrl(url);
    const q = new Queue(name, { connection: { host, port, db } });
    await q.obliterate({ force: true });
    await q.close();
  }
}

function redisTest(name: string, fn: () => Promise<void>): void {
  test(`redis: ${name}`, { skip, timeout: 30_000 }, fn);
}

redisTest('runAll with two local workers completes every job, ids with ":" included', async () => {
  await withQueue(async (queue) => withTempDir('redis', async (dir) => {
    const backend = await redisBackend({ url, queue, handler, localWorkers: 2, lockSeconds: 5 });
    const data = { dir, steps: 8, checkpointEvery: 4, stepMs: 5 };
    const ids = ['expert:0', 'expert:1', '7'];
    const started = new Map<string, string>();
    const steps = new Map<string, number[]>();
    try {
      const results = await backend.runAll(ids.map((id) => toyJob(id, data)), {
        onStart: (id, worker) => started.set(id, worker),
        onProgress: (id, p) => steps.set(id, [...(steps.get(id) ?? []), p.step]),
      });
      assert.deepEqual([...results.keys()], ids);
      for (const id of ids) {
        const r = results.get(id) as ToyResult;
        assert.deepEqual([r.id, r.sum, r.attempt, r.resumedFrom], [id, 36, 1, 0]);
        assert.equal(r.worker, started.get(id));
        assert.match(r.worker, new RegExp(`:${process.pid}/thread [12]$`));
        assert.deepEqual(steps.get(id), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert.equal(lines(toyPaths(dir, id).completions).length, 1);
      }
    } finally {
      await backend.close();
    }
  }));
});

redisTest('a SIGKILLed worker\'s job is taken over after its lock expires and resumes from its checkpoint', async () => {
  await withQueue(async (queue) => withTempDir('redis', async (dir) => {
    const pair = [spawnQueueWorker(url, queue, 2), spawnQueueWorker(url, queue, 2)];
    workers.push(...pair);
    await Promise.all(pair.map((w) => w.ready));
    const backend = await redisBackend({ url, queue, handler, localWorkers: 0, lockSeconds: 2, retries: 1 });
    const starts: [string, number][] = [];
    const retries: [string, number][] = [];
    let victim: WorkerProcess | undefined;
    let stepAtKill = 0;
    try {
      const results = await backend.runAll(
        [toyJob('victim', { dir, steps: 40, checkpointEvery: 5, stepMs: 50 })], {
          onStart: (_id, worker, attempt) => {
            starts.push([worker, attempt]);
            victim ??= pair.find((w) => worker.includes(`:${w.pid}/`));
          },
          onProgress: (_id, p) => {
            // Past the checkpoint at step 10, mid-interval: kill the worker running it.
            if (stepAtKill === 0 && p.step >= 12 && victim) {
              stepAtKill = p.step;
              victim.child.kill('SIGKILL');
            }
          },
          onRetry: (_id, error, attempt) => retries.push([error, attempt]),
        });
      assert.ok(victim && stepAtKill > 0, 'the job started and was killed');
      const survivor = pair.find((w) => w !== victim)!;
      const r = results.get('victim') as ToyResult;
      assert.equal(r.sum, 820);
      assert.equal(r.attempt, 2);
      assert.ok(r.worker.includes(`:${survivor.pid}/`), `finished by ${r.worker}`);
      // Resumed from a checkpoint (every 5 steps) no more than one interval behind the last
      // step reported before the kill.
      assert.ok(r.resumedFrom > 0 && r.resumedFrom % 5 === 0 && r.resumedFrom > stepAtKill - 5,
        `resumed from ${r.resumedFrom}, last step seen ${stepAtKill}`);
      assert.deepEqual(starts.map(([w, a]) => [w.includes(`:${victim!.pid}/`), a]), [[true, 1], [false, 2]]);
      assert.deepEqual(retries.map(([, a]) => a), [1]);
      assert.match(retries[0]![0], /stopped renewing the job lock/);
      const completions = lines(toyPaths(dir, 'victim').completions);
      assert.equal(completions.length, 1);
      assert.ok(completions[0]!.includes(`:${survivor.pid}/`));
      assert.equal(await victim.exited, null); // killed by a signal, not exited
    } finally {
      await backend.close();
      for (const w of pair) w.child.kill('SIGTERM');
      await Promise.all(pair.map((w) => w.exited));
    }
  }));
});

redisTest('a worker stopped with SIGTERM hands its job back at once, spending no attempt', async () => {
  await withQueue(async (queue) => withTempDir('redis', async (dir) => {
    const pair = [spawnQueueWorker(url, queue, 10), spawnQueueWorker(url, queue, 10)];
    workers.push(...pair);
    await Promise.all(pair.map((w) => w.ready));
    const backend = await redisBackend({ url, queue, handler, localWorkers: 0, lockSeconds: 10, retries: 0 });
    let stopped: WorkerProcess | undefined;
    let stepAtStop = 0;
    const retries: string[] = [];
    const began = Date.now();
    try {
      const results = await backend.runAll(
        [toyJob('moved', { dir, steps: 30, checkpointEvery: 100, stepMs: 30 })], {
          onProgress: (_id, p) => {
            if (stepAtStop === 0 && p.step >= 6) {
              stepAtStop = p.step;
              const ran = readFileSync(toyPaths(dir, 'moved').starts, 'utf8');
              stopped = pair.find((w) => ran.includes(`:${w.pid}/`));
              stopped?.child.kill('SIGTERM');
            }
          },
          onRetry: (_id, error) => retries.push(error),
        });
      const r = results.get('moved') as ToyResult;
      assert.ok(stopped, 'the worker running the job was found');
      assert.equal(await stopped.exited, 0);
      // The aborted handler checkpointed where it stopped (its interval of 100 never came).
      assert.ok(r.resumedFrom >= stepAtStop, `resumed from ${r.resumedFrom}, stopped after ${stepAtStop}`);
      assert.deepEqual([r.attempt, r.sum], [2, 465]);
      assert.deepEqual(retries, []);
      // Taken over at once, not after the 10 s lock.
      assert.ok(Date.now() - began < 8_000, `took ${Date.now() - began} ms`);
      assert.equal(lines(toyPaths(dir, 'moved').completions).length, 1);
    } finally {
      await backend.close();
      for (const w of pair) w.child.kill('SIGTERM');
      await Promise.all(pair.map((w) => w.exited));
    }
  }));
});

redisTest('resubmitting completed ids returns the stored results without running them', async () => {
  await withQueue(async (queue) => withTempDir('redis', async (dir) => {
    const jobs = ['one', 'two'].map((id) => toyJob(id, { dir, steps: 4, checkpointEvery: 2, stepMs: 2 }));
    const first = await redisBackend({ url, queue, handler, localWorkers: 1, lockSeconds: 5 });
    let results: Map<string, unknown>;
    try {
      results = await first.runAll(jobs);
    } finally {
      await first.close();
    }
    // A new command, as after a restart: no local workers, so nothing could run anyway.
    const again = await redisBackend({ url, queue, handler, localWorkers: 0 });
    const done: string[] = [];
    let startedAny = false;
    try {
      const second = await again.runAll(jobs, {
        onStart: () => { startedAny = true; },
        onDone: (id) => done.push(id),
      });
      assert.deepEqual(second, results);
      assert.deepEqual(done, ['one', 'two']);
      assert.equal(startedAny, false);
      for (const { id } of jobs) {
        assert.equal(lines(toyPaths(dir, id).completions).length, 1);
        assert.equal(lines(toyPaths(dir, id).starts).length, 1);
      }
    } finally {
      await again.close();
    }
  }));
});

redisTest('a job that failed every attempt rejects runAll; resubmitting it runs it again', async () => {
  await withQueue(async (queue) => withTempDir('redis', async (dir) => {
    const job = toyJob('bad:1', { dir, steps: 2, checkpointEvery: 1, stepMs: 1, alwaysFail: true });
    const backend = await redisBackend({ url, queue, handler, localWorkers: 1, retries: 1, lockSeconds: 5 });
    const retried: number[] = [];
    try {
      const failed = (e: unknown): boolean => {
        assert.ok(e instanceof JobFailedError);
        assert.equal(e.jobId, 'bad:1');
        assert.match(e.message, /^job 'bad:1' failed after \d+ attempts: toy job bad:1 always fails$/);
        return true;
      };
      await assert.rejects(backend.runAll([job], { onRetry: (_id, _e, a) => retried.push(a) }), failed);
      assert.deepEqual(retried, [1]);
      assert.equal(lines(toyPaths(dir, 'bad:1').starts).length, 2);
      await assert.rejects(backend.runAll([job]), failed);
      assert.equal(lines(toyPaths(dir, 'bad:1').starts).length, 4); // retried with fresh attempts
    } finally {
      await backend.close();
    }
  }));
});

test('redis: an unreachable server fails fast with a clear message', async () => {
  const port = await freePort();
  const began = Date.now();
  await assert.rejects(redisBackend({ url: `redis://127.0.0.1:${port}`, queue: 'q', handler }),
    new RegExp(`^Error: cannot reach Redis at redis://127\\.0\\.0\\.1:${port}: connect ECONNREFUSED`));
  await assert.rejects(startRedisWorker({ url: `redis://u:secret@127.0.0.1:${port}/2`, queue: 'q', handler }),
    (e: Error) => e.message.startsWith(`cannot reach Redis at redis://u:***@127.0.0.1:${port}/2:`));
  assert.ok(Date.now() - began < 5_000, `took ${Date.now() - began} ms`);
});

test('redis: malformed URLs are refused, naming the expected form', async () => {
  for (const bad of ['localhost:6379', 'http://h:1', 'redis://h:abc', 'redis://h:1/x', 'redis://h:1?db=2']) {
    await assert.rejects(redisBackend({ url: bad, queue: 'q', handler }),
      (e: Error) => e.message.startsWith(`--queue: expected redis://host:port[/db], got '${bad}' (`), bad);
  }
  assert.deepEqual(parseRedisUrl('rediss://me:p%40ss@[::1]:6380/3'), {
    host: '::1', port: 6380, db: 3, tls: true, username: 'me', password: 'p@ss',
    display: 'rediss://me:***@[::1]:6380/3',
  });
  assert.deepEqual(parseRedisUrl('redis://h'),
    { host: 'h', port: 6379, db: 0, tls: false, display: 'redis://h' });
});

test('redis: job ids map one-to-one onto ids BullMQ accepts', () => {
  const ids = ['a', 'a:b', 'a%3Ab', 'a%b', '7', '7%', '-3', 'NaN', '007', 'x:y:z'];
  const mapped = ids.map(queueJobId);
  assert.deepEqual(mapped, ['a', 'a%3Ab', 'a%253Ab', 'a%25b', '7%', '7%25', '-3%', 'NaN%', '007', 'x%3Ay%3Az']);
  assert.equal(new Set(mapped).size, ids.length);
  for (const m of mapped) {
    assert.ok(!m.includes(':') && `${parseInt(m, 10)}` !== m, m);
  }
});
