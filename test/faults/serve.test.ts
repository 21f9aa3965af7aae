/**
 * @file Load and fault probes of `diffuse serve` as a process on a free port, on a tiny
 * pipeline: concurrent clients (bench/loadtest.ts's runLoad, smaller) against a small queue;
 * SIGTERM with a job running and one queued; command-line errors. Under load every accepted
 * job must end exactly once (as its client saw it, as the server says, none started twice), a
 * full queue must answer 429 with Retry-After rather than fail, /healthz must answer while the
 * workers sample, and jobs whose clients leave their event stream or cancel must free their
 * worker for the jobs behind them.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { runLoad, serveCommand, startServe } from '../../bench/loadtest.js';
import { readEvents, tinyPipelineDir, until } from '../support/serve-fixtures.js';

let model: { dir: string; remove: () => Promise<void> };
before(async () => {
  model = await tinyPipelineDir();
});
after(async () => {
  await model?.remove();
});

test('under load: each accepted job ends once; 429s when full; healthz answers while busy; ' +
  'leaving and cancelling clients free their worker', async () => {
  const token = 'load-test-token';
  const server = await startServe(['--model', model.dir, '--port', '0', '--workers', '2',
    '--queue', '4', '--max-steps', '80', '--token', token]);
  try {
    // Job k = i + 1: every 7th is long and cancelled at its first step, every 5th client
    // leaves its event stream after the first step.
    const r = await runLoad({ url: server.url, token, requests: 40, concurrency: 12,
      body: (i) => ({ n: 1 + (i % 2), steps: (i + 1) % 7 === 0 ? 80 : 3 + (i % 5), seed: i,
        class: i % 3 }),
      leaveEvery: 5, cancelEvery: 7, submitForMs: 40_000, drainMs: 30_000, maxRetryWaitMs: 200 });
    const summary = JSON.stringify(r);
    assert.deepEqual(r.problems, [], summary);
    assert.deepEqual(r.errors, [], summary);
    assert.equal(r.accepted, 40, 'every request was accepted in the end');
    assert.ok(r.rejected429 > 0, `a queue of 4 under 12 clients answered 429 (${summary})`);
    assert.equal(r.ended.failed, 0);
    assert.equal(r.ended.done + r.ended.cancelled, 40);
    assert.equal(r.left.count, 7); // k = 5, 10, ..., 40 but 35 (cancelled)
    assert.equal(r.left.done, r.left.count, 'jobs whose clients left their streams still ran');
    assert.equal(r.cancels.count, 5);
    assert.ok(r.cancels.cancelled >= 1, `a cancel landed mid-job (${summary})`);
    assert.equal(r.ended.cancelled, r.cancels.cancelled, 'only the cancelled jobs ended cancelled');
    assert.equal(r.healthz.failures, 0);
    assert.ok(r.healthz.whileBusy > 0, `healthz answered while a worker sampled (${summary})`);
    assert.ok(r.healthz.p99Ms < 1000, `healthz p99 ${r.healthz.p99Ms} ms`);
  } finally {
    const e = await server.stop('SIGTERM');
    assert.equal(e.code, 0, e.stderr);
  }
});

test('SIGTERM: the running and the queued job end cancelled, their streams end, exit 0', async () => {
  const server = await startServe(['--model', model.dir, '--port', '0', '--max-steps', '1000']);
  const post = async (body: unknown) => {
    const r = await fetch(`${server.url}/v1/samples`, { method: 'POST',
      headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    assert.equal(r.status, 202);
    return ((await r.json()) as { id: string }).id;
  };
  try {
    const long = await post({ n: 8, steps: 1000, sampler: 'ddim' });
    const queued = await post({ n: 1, steps: 2 });
    const streams = [long, queued].map((id) => readEvents(`${server.url}/v1/jobs/${id}/events`));
    await until(async () => {
      const s = (await (await fetch(`${server.url}/v1/jobs/${long}`)).json()) as { progress: { step: number } };
      return s.progress.step > 0;
    }, 'the long job to start');
    const t0 = Date.now();
    const exit = await server.stop('SIGTERM');
    assert.ok(Date.now() - t0 < 10_000, `stopping took ${Date.now() - t0} ms`);
    assert.equal(exit.code, 0, exit.stderr);
    assert.match(exit.stderr, /diffuse serve: SIGTERM: stopping \(no new jobs; cancelling queued and running ones\)/);
    assert.match(exit.stdout, /^stopped$/m);
    const [longEvents, queuedEvents] = await Promise.all(streams);
    assert.equal(longEvents!.at(-1)!.event, 'cancelled');
    assert.ok(longEvents!.length > 1 && longEvents!.slice(0, -1).every((e) => e.event === 'progress'));
    const q = queuedEvents!.at(-1)!;
    assert.equal(q.event, 'cancelled');
    assert.equal((q.data as { error: string }).error, 'the server is shutting down');
  } finally {
    server.child.kill('SIGKILL');
  }
});

test('command-line errors: one line each, exit 2 for bad options, 1 for a model or port that fails', async () => {
  const cli = (...args: string[]) => {
    const r = spawnSync(process.execPath, [...serveCommand(), ...args], { encoding: 'utf8', timeout: 60_000 });
    return { code: r.status, line: r.stderr.trim() };
  };
  assert.deepEqual(cli('--workers', '0'), { code: 2, line: "diffuse: --workers: expected an integer >= 1, got '0'" });
  assert.deepEqual(cli('--port', '70000'),
    { code: 2, line: "diffuse: --port: expected an integer from 0 to 65535, got '70000'" });
  assert.deepEqual(cli('--model', model.dir, '--token', 'a b'), { code: 2, line: "diffuse: --token: " +
    "expected printable ASCII without spaces (it travels in an HTTP header), got 'a b'" });
  const none = cli('--model', join(model.dir, 'none'), '--port', '0');
  assert.equal(none.code, 1);
  assert.match(none.line, /^diffuse: .*none: no such folder \(looked for model_index\.json/);
  const first = await startServe(['--model', model.dir, '--port', '0']);
  try {
    const port = new URL(first.url).port;
    assert.deepEqual(cli('--model', model.dir, '--port', port), { code: 1,
      line: `diffuse: cannot listen on 127.0.0.1:${port}: the port is in use; pick another with --port` });
  } finally {
    await first.stop();
  }
});
