/** The embedded back-end runs the toy handler (test/support/queue-handler.ts) in threads:
 *  results, concurrency, a thread crash resumed from its checkpoint, exhausted retries,
 *  progress, and close() mid-run; and runInThread's errors, which both back-ends report. */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { toyPaths, type ToyJobData, type ToyResult } from '../../test/support/queue-handler.js';
import { withTempDir } from '../../test/support/temp-dir.js';
import { embeddedBackend } from './embedded.js';
import { JobFailedError, type JobProgress, type JobSpec } from './jobs.js';
import { JobRunError, runInThread } from './thread-runner.js';

const handler = fileURLToPath(new URL('../../test/support/queue-handler.js', import.meta.url));

const toyJob = (id: string, data: ToyJobData): JobSpec => ({ id, kind: 'toy', data });
const lines = (path: string): string[] => readFileSync(path, 'utf8').trim().split('\n');

test('embedded: four jobs on two threads all complete with their results', async () => {
  await withTempDir('embedded', async (dir) => {
    const backend = embeddedBackend({ handler, workers: 2 });
    const data = { dir, steps: 10, checkpointEvery: 5, stepMs: 5 };
    const jobs = ['a', 'b', 'c', 'd'].map((id) => toyJob(id, data));
    let running = 0;
    let mostRunning = 0;
    const workers = new Set<string>();
    try {
      const results = await backend.runAll(jobs, {
        onStart: (_id, worker) => {
          workers.add(worker);
          mostRunning = Math.max(mostRunning, ++running);
        },
        onDone: () => { running--; },
      });
      assert.deepEqual([...results.keys()], ['a', 'b', 'c', 'd']);
      for (const [id, r] of results as Map<string, ToyResult>) {
        assert.deepEqual({ id: r.id, sum: r.sum, resumedFrom: r.resumedFrom, attempt: r.attempt },
          { id, sum: 55, resumedFrom: 0, attempt: 1 });
        assert.equal(lines(toyPaths(dir, id).completions).length, 1);
      }
      assert.equal(mostRunning, 2);
      assert.equal(workers.size, 2);
      for (const w of workers) assert.match(w, new RegExp(`:${process.pid}/thread [12]$`));
    } finally {
      await backend.close();
    }
  });
});

test('embedded: a thread that dies on attempt 1 is retried and resumes from its checkpoint', async () => {
  await withTempDir('embedded', async (dir) => {
    const backend = embeddedBackend({ handler, workers: 1, retries: 1 });
    const retries: [string, string, number][] = [];
    try {
      const results = await backend.runAll(
        [toyJob('crashy', { dir, steps: 20, checkpointEvery: 5, stepMs: 2, crashAtStep: 12 })],
        { onRetry: (id, error, attempt) => retries.push([id, error, attempt]) });
      const r = results.get('crashy') as ToyResult;
      // Checkpoints at 5 and 10; the crash came before step 12, so the rerun starts at 10.
      assert.deepEqual([r.attempt, r.resumedFrom, r.sum], [2, 10, 210]);
      assert.deepEqual(retries.map(([id, , attempt]) => [id, attempt]), [['crashy', 1]]);
      assert.match(retries[0]![1], /exited with code 1 before returning a result/);
      const starts = lines(toyPaths(dir, 'crashy').starts).map((l) => l.split(' ').slice(0, 2));
      assert.deepEqual(starts, [['1', '0'], ['2', '10']]);
      assert.equal(lines(toyPaths(dir, 'crashy').completions).length, 1);
    } finally {
      await backend.close();
    }
  });
});

test('embedded: a job that fails every attempt rejects runAll, naming it', async () => {
  await withTempDir('embedded', async (dir) => {
    const backend = embeddedBackend({ handler, workers: 2, retries: 2 });
    const retried: number[] = [];
    try {
      const run = backend.runAll([
        toyJob('fine', { dir, steps: 3, checkpointEvery: 1, stepMs: 1 }),
        toyJob('doomed', { dir, steps: 3, checkpointEvery: 1, stepMs: 1, alwaysFail: true }),
      ], { onRetry: (_id, _error, attempt) => retried.push(attempt) });
      await assert.rejects(run, (e: unknown) => {
        assert.ok(e instanceof JobFailedError);
        assert.equal(e.jobId, 'doomed');
        assert.equal(e.attempts, 3);
        assert.match(e.message, /^job 'doomed' failed after 3 attempts: toy job doomed always fails$/);
        return true;
      });
      assert.deepEqual(retried, [1, 2]);
      assert.equal(lines(toyPaths(dir, 'doomed').starts).length, 3);
    } finally {
      await backend.close();
    }
  });
});

test('embedded: progress events arrive in order, one per step', async () => {
  await withTempDir('embedded', async (dir) => {
    const backend = embeddedBackend({ handler });
    const seen: [string, JobProgress][] = [];
    try {
      await backend.runAll([toyJob('p', { dir, steps: 6, checkpointEvery: 3, stepMs: 1 })],
        { onProgress: (id, p) => seen.push([id, p]) });
      assert.deepEqual(seen, [1, 2, 3, 4, 5, 6].map((step) => ['p', { step, steps: 6 }]));
    } finally {
      await backend.close();
    }
  });
});

test('embedded: close() mid-run aborts the handler, which checkpoints; runAll rejects', async () => {
  await withTempDir('embedded', async (dir) => {
    const backend = embeddedBackend({ handler });
    let reached = 0;
    const run = backend.runAll([toyJob('long', { dir, steps: 1000, checkpointEvery: 100, stepMs: 5 })],
      { onProgress: (_id, p) => { reached = p.step; } });
    const rejected = assert.rejects(run, /closed before every job completed/);
    while (reached < 7) await new Promise((resolve) => setTimeout(resolve, 10));
    await backend.close();
    await rejected;
    const { step } = JSON.parse(readFileSync(toyPaths(dir, 'long').checkpoint, 'utf8')) as { step: number };
    assert.ok(step >= 7 && step < 100, `checkpoint at step ${step}`);
    await assert.rejects(backend.runAll([]), /after close/);
  });
});

test('embedded: duplicate ids are refused before anything runs', async () => {
  const backend = embeddedBackend({ handler });
  const job: JobSpec = { id: 'x', kind: 'toy', data: null };
  await assert.rejects(backend.runAll([job, job]), /'x' appears twice/);
  await backend.close();
});

test('runInThread: a handler\'s error keeps its stack; a module without runJob is named', async () => {
  await withTempDir('thread', async (dir) => {
    const failing = toyJob('f', { dir, steps: 1, checkpointEvery: 1, stepMs: 1, alwaysFail: true });
    await assert.rejects(runInThread(handler, failing, 3), (e: unknown) => {
      assert.ok(e instanceof JobRunError);
      assert.equal(e.message, "job 'f' (attempt 3): toy job f always fails");
      assert.match(String((e.cause as Error).stack), /queue-handler\.js:\d+/);
      return true;
    });
    const notAHandler = fileURLToPath(new URL('./jobs.js', import.meta.url));
    await assert.rejects(runInThread(notAHandler, failing, 1),
      /^JobRunError: job 'f' \(attempt 1\): handler module .*jobs\.js does not export a function 'runJob'$/);
  });
});
