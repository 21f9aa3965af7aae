/**
 * @file The worker pool under faults, with a worker entry that crashes or hangs on request
 * (test/support/crashing-serve-worker.ts): a crashed thread fails its job once, with a message,
 * and is replaced so the next job runs; a thread that ignores a cancel is terminated after the
 * grace period and its job ends cancelled; closing the server cancels queued and running jobs
 * and ends their event streams. Also the pool's share of the cores.
 */
import assert from 'node:assert/strict';
import { availableParallelism } from 'node:os';
import { after, before, test } from 'node:test';
import {
  CRASH_SEED, CRASHING_WORKER, HANG_SEED, tinyPipelineDir, until,
} from '../../test/support/serve-fixtures.js';
import { createServer, type DiffuseServer } from './app.js';
import { threadsPerWorker } from './pool.js';
import { parseSse } from './sse.js';

let model: { dir: string; remove: () => Promise<void> };
before(async () => {
  model = await tinyPipelineDir();
});
after(async () => {
  await model?.remove();
});

async function submit(s: DiffuseServer, body: unknown): Promise<string> {
  const r = await s.app.inject({ method: 'POST', url: '/v1/samples', payload: body as string });
  assert.equal(r.statusCode, 202, r.body);
  return (r.json() as { id: string }).id;
}
const ended = (s: DiffuseServer, id: string) =>
  until(() => ['done', 'failed', 'cancelled'].includes(s.store.get(id)?.state ?? ''), `job ${id} to end`);

test('a crashed worker thread fails its job once and is replaced; the queued job runs', async () => {
  const log: string[] = [];
  const s = await createServer({ model: model.dir, workerEntry: CRASHING_WORKER,
    log: (l) => log.push(l) });
  try {
    const crash = await submit(s, { n: 1, steps: 2, seed: CRASH_SEED });
    const next = await submit(s, { n: 2, steps: 2, seed: 1 });
    await ended(s, next);
    const c = s.store.get(crash)!;
    assert.equal(c.state, 'failed');
    assert.equal(c.error, 'its worker thread stopped while sampling (exit code 7); the job was not retried');
    assert.equal(s.store.get(next)!.state, 'done');
    assert.equal(s.metrics.total('running'), 2, 'each job was handed out once');
    assert.equal(s.metrics.total('failed'), 1);
    assert.deepEqual(log, [`worker 1 stopped (exit code 7) while running job ${crash}; starting another`]);
    const health = await s.app.inject({ method: 'GET', url: '/healthz' });
    assert.deepEqual(health.json().workers, { configured: 1, alive: 1, busy: 0 });
  } finally {
    await s.close();
  }
});

test('a worker that ignores a cancel is terminated after the grace period; the next job runs', async () => {
  const s = await createServer({ model: model.dir, workerEntry: CRASHING_WORKER, cancelGraceMs: 300,
    log: () => {} });
  try {
    const hung = await submit(s, { n: 1, steps: 2, seed: HANG_SEED });
    const next = await submit(s, { n: 1, steps: 2, seed: 2 });
    const t0 = Date.now();
    const del = await s.app.inject({ method: 'DELETE', url: `/v1/jobs/${hung}` });
    assert.equal(del.statusCode, 202);
    await ended(s, next);
    assert.ok(Date.now() - t0 >= 300, 'not terminated before the grace period');
    const h = s.store.get(hung)!;
    assert.equal(h.state, 'cancelled');
    assert.equal(h.error, 'cancelled: it did not stop within 300 ms of the cancel');
    assert.equal(s.store.get(next)!.state, 'done');
  } finally {
    await s.close();
  }
});

test('closing cancels the running and the queued jobs and ends their event streams', async () => {
  const s = await createServer({ model: model.dir });
  const long = await submit(s, { n: 1, steps: 200 });
  const queued = await submit(s, { n: 1, steps: 2 });
  await until(() => (s.store.get(long)?.progress.step ?? 0) > 0, 'the long job to run');
  const stream = s.app.inject({ method: 'GET', url: `/v1/jobs/${long}/events` });
  const t0 = Date.now();
  await s.close();
  assert.ok(Date.now() - t0 < 5000, `close took ${Date.now() - t0} ms`);
  const events = parseSse((await stream).body).events;
  assert.equal(events.at(-1)!.event, 'cancelled');
  assert.ok(events.slice(0, -1).every((e) => e.event === 'progress'));
  assert.equal(s.store.get(long)!.state, 'cancelled');
  const q = s.store.get(queued)!;
  assert.deepEqual([q.state, q.error, q.started], ['cancelled', 'the server is shutting down', undefined]);
  assert.deepEqual(s.pool.stats(), { configured: 1, alive: 0, busy: 0 });
  await s.close(); // a second close is harmless
});

test('each worker gets an equal share of the cores, at least one', () => {
  const cores = availableParallelism();
  assert.equal(threadsPerWorker(1), cores);
  assert.equal(threadsPerWorker(cores), 1);
  assert.equal(threadsPerWorker(cores * 4), 1);
});
