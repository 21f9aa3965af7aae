/** @file The job store: queue bound, state moves made once, retention, Retry-After, and the
 *  metrics' exposition text. No threads: a fake clock and a fake worker. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { JobStore, type JobEvent, type JobResult } from './jobs.js';
import { Metrics, quantile } from './metrics.js';
import type { SampleRequest } from './request.js';
import { parseSse, sseEvent } from './sse.js';

const REQUEST: SampleRequest = { sampler: 'ddim', steps: 2, n: 4, guidance: 1, seed: 0 };
const result = (sampleSeconds: number): JobResult =>
  ({ grid: new Uint8Array(1), images: [], sampleSeconds, modelCalls: 2, warnings: [] });

function store(o: { queueLimit?: number; keepJobs?: number; keepSeconds?: number } = {}) {
  const clock = { ms: 1_000_000 };
  const metrics = new Metrics();
  const s = new JobStore({ queueLimit: o.queueLimit ?? 2, keepJobs: o.keepJobs ?? 10,
    keepSeconds: o.keepSeconds ?? 60, metrics, now: () => clock.ms });
  return { s, clock, metrics };
}

test('the queue holds at most queueLimit jobs; jobs are taken oldest first, once', () => {
  const { s, metrics } = store({ queueLimit: 2 });
  const a = s.submit(REQUEST)!;
  const b = s.submit(REQUEST)!;
  assert.equal(s.submit(REQUEST), undefined, 'a third queued job is refused');
  assert.equal(s.queueDepth, 2);
  assert.equal(s.take(), a);
  assert.equal(a.state, 'running');
  assert.ok(s.submit(REQUEST), 'a slot freed by take is usable');
  assert.equal(s.take(), b);
  assert.notEqual(a.id, b.id);
  assert.match(metrics.render({ queueDepth: s.queueDepth, workers: 1, workersBusy: 1 }),
    /^diffuse_rejected_total\{reason="queue_full"\} 1$/m);
});

test('a job ends once; its subscribers hear progress in order and one end', () => {
  const { s, clock, metrics } = store();
  const job = s.submit(REQUEST)!;
  const heard: JobEvent[] = [];
  s.subscribe(job.id, (e) => heard.push(e));
  const leaving = s.subscribe(job.id, () => assert.fail('an unsubscribed listener heard'));
  leaving();
  s.progress(job, 1, 2); // not running yet: ignored
  s.take();
  clock.ms += 500;
  s.progress(job, 1, 2);
  s.progress(job, 2, 2);
  clock.ms += 1500;
  assert.equal(s.finish(job, { state: 'done', result: result(1.2) }), true);
  assert.equal(s.finish(job, { state: 'failed', error: 'late' }), false, 'a second end is refused');
  assert.equal(job.state, 'done');
  assert.equal(job.error, undefined);
  assert.deepEqual(heard.map((e) => e.type === 'progress' ? `${e.step}/${e.total}` : e.type),
    ['1/2', '2/2', 'end']);
  assert.equal(job.finished! - job.started!, 2000);
  assert.equal(metrics.total('done'), 1);
  assert.equal(metrics.total('failed'), 0);
  // 1.2 s for 4 images
  assert.match(metrics.render({ queueDepth: 0, workers: 1, workersBusy: 0 }),
    /^diffuse_seconds_per_image_sum 0\.3$/m);
});

test('cancelling a queued job removes it from the queue; a running one is not cancelQueued', () => {
  const { s, metrics } = store();
  const a = s.submit(REQUEST)!;
  const b = s.submit(REQUEST)!;
  assert.equal(s.cancelQueued(b, 'asked'), true);
  assert.equal(b.state, 'cancelled');
  assert.equal(b.error, 'asked');
  assert.equal(s.queueDepth, 1);
  s.take();
  assert.equal(s.cancelQueued(a), false);
  assert.equal(s.take(), undefined, 'the cancelled job is never handed out');
  assert.equal(metrics.total('running'), 1);
  assert.equal(metrics.total('cancelled'), 1);
});

test('finished jobs are forgotten past keepJobs and keepSeconds; running ones are kept', () => {
  const { s, clock } = store({ keepJobs: 2, keepSeconds: 60, queueLimit: 10 });
  const jobs = [0, 1, 2, 3].map(() => s.submit(REQUEST)!);
  for (const j of jobs.slice(0, 3)) {
    s.take();
    s.finish(j, { state: 'failed', error: 'x' });
  }
  assert.equal(s.get(jobs[0]!.id), undefined, 'the oldest of three finished is gone');
  assert.ok(s.get(jobs[1]!.id) && s.get(jobs[2]!.id));
  s.take();
  clock.ms += 61_000;
  assert.equal(s.get(jobs[1]!.id), undefined, 'older than keepSeconds');
  assert.equal(s.get(jobs[2]!.id), undefined);
  assert.equal(s.get(jobs[3]!.id)?.state, 'running', 'a running job is never forgotten');
});

test('finished jobs are forgotten, oldest first, when their PNGs pass keepBytes', () => {
  const clock = { ms: 0 };
  const s = new JobStore({ queueLimit: 10, keepJobs: 10, keepSeconds: 60, keepBytes: 2500,
    metrics: new Metrics(), now: () => clock.ms });
  const big = (): JobResult => ({ ...result(1), grid: new Uint8Array(1000), images: [new Uint8Array(100)] });
  const jobs = [0, 1, 2].map(() => s.submit(REQUEST)!);
  for (const j of jobs) {
    s.take();
    s.finish(j, { state: 'done', result: big() });
  }
  // 3 x 1100 bytes > 2500: the oldest goes, the two newest (2200 bytes) stay.
  assert.deepEqual(jobs.map((j) => s.get(j.id) !== undefined), [false, true, true]);
});

test('Retry-After: the mean of recent run times over the workers, rounded up, at least 1 s', () => {
  const { s, clock } = store({ queueLimit: 10 });
  assert.equal(s.retryAfterSeconds(1), 1, 'no history yet');
  for (const ms of [4000, 5000]) {
    const j = s.submit(REQUEST)!;
    s.take();
    clock.ms += ms;
    s.finish(j, { state: 'done', result: result(1) });
  }
  assert.equal(s.retryAfterSeconds(1), 5); // mean 4.5 s
  assert.equal(s.retryAfterSeconds(2), 3); // 2.25 s
  assert.equal(s.retryAfterSeconds(8), 1);
});

test('close refuses new jobs and cancels the queued ones with the reason', () => {
  const { s } = store();
  const a = s.submit(REQUEST)!;
  s.close('shutting down');
  assert.equal(a.state, 'cancelled');
  assert.equal(a.error, 'shutting down');
  assert.throws(() => s.submit(REQUEST), /the job store is closed/);
});

test('metrics: the exposition text, line by line', () => {
  const m = new Metrics();
  for (const st of ['queued', 'queued', 'running', 'done'] as const) m.reached(st);
  m.observeSecondsPerImage(0.25);
  m.observeSecondsPerImage(0.75);
  const text = m.render({ queueDepth: 3, workers: 2, workersBusy: 1 });
  for (const line of [
    '# TYPE diffuse_queue_depth gauge', 'diffuse_queue_depth 3',
    '# TYPE diffuse_jobs_total counter', 'diffuse_jobs_total{state="queued"} 2',
    'diffuse_jobs_total{state="running"} 1', 'diffuse_jobs_total{state="done"} 1',
    'diffuse_jobs_total{state="failed"} 0', 'diffuse_jobs_total{state="cancelled"} 0',
    '# TYPE diffuse_seconds_per_image summary', 'diffuse_seconds_per_image{quantile="0.5"} 0.25',
    'diffuse_seconds_per_image{quantile="0.99"} 0.75', 'diffuse_seconds_per_image_sum 1',
    'diffuse_seconds_per_image_count 2', 'diffuse_workers 2', 'diffuse_workers_busy 1',
  ]) assert.ok(text.split('\n').includes(line), `missing line: ${line}\n${text}`);
  assert.ok(text.endsWith('\n'));
  assert.match(new Metrics().render({ queueDepth: 0, workers: 0, workersBusy: 0 }),
    /^diffuse_seconds_per_image\{quantile="0\.5"\} NaN$/m, 'an empty summary');
  assert.deepEqual([0.5, 0.9, 1].map((q) => quantile([1, 2, 3, 4], q)), [2, 4, 4]);
});

test('server-sent events: one data line per event, parsed back across chunk boundaries', () => {
  const text = sseEvent('progress', { step: 1, total: 2 }) + ': ping\n\n' +
    sseEvent('done', { id: 'a\nb' });
  assert.equal(sseEvent('progress', { step: 1 }), 'event: progress\ndata: {"step":1}\n\n');
  const cut = text.length - 5;
  const first = parseSse(text.slice(0, cut));
  assert.deepEqual(first.events, [{ event: 'progress', data: { step: 1, total: 2 } }]);
  assert.deepEqual(parseSse(first.rest + text.slice(cut)).events, [{ event: 'done', data: { id: 'a\nb' } }]);
  assert.throws(() => sseEvent('two words', {}), /SSE event name: expected a word/);
});
