/**
 * @file The server's routes through fastify's inject, on a tiny pipeline folder and one real
 * worker thread: request validation (400 naming the field), a job's life with its progress
 * events in order and PNGs equal to sampleImages' images, cancelling (queued: never runs;
 * running: its worker takes the next job), 429 with Retry-After, the bearer token, /healthz,
 * /metrics and static files.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import pngjs from 'pngjs';
import { HostArray } from '../engine/host.js';
import { imageGrid } from '../io/png.js';
import { loadPipeline, sampleImages } from '../pipelines/sample.js';
import { tinyPipelineDir, until } from '../../test/support/serve-fixtures.js';
import { createServer, type DiffuseServer } from './app.js';
import { parseSse } from './sse.js';

let model: { dir: string; remove: () => Promise<void> };
let server: DiffuseServer;
before(async () => {
  model = await tinyPipelineDir();
  server = await createServer({ model: model.dir, queue: 2, maxN: 16, maxSteps: 300 });
});
after(async () => {
  await server?.close();
  await model?.remove();
});

const post = (s: DiffuseServer, body: unknown, headers: Record<string, string> = {}) =>
  s.app.inject({ method: 'POST', url: '/v1/samples', payload: body as string, headers });
const get = (url: string) => server.app.inject({ method: 'GET', url });
/** Waits until job `id` has done at least one sampler step. */
const running = (id: string) => until(() => {
  const j = server.store.get(id);
  return j !== undefined && j.progress.step > 0;
}, `job ${id} to run`);

test('a bad request is a 400 that names the field and the form it takes', async () => {
  const cases: [unknown, number, string, string?][] = [
    [{ steps: 301 }, 400, 'steps: expected an integer from 1 to 300, got 301', 'steps'],
    [{ n: 0 }, 400, 'n: expected an integer from 1 to 16, got 0', 'n'],
    [{ n: 17 }, 400, 'n: expected an integer from 1 to 16, got 17', 'n'],
    [{ n: '4' }, 400, 'n: expected an integer from 1 to 16, got "4" (a string, not a number)', 'n'],
    [{ seed: 1.5 }, 400, 'seed: expected an integer >= 0, got 1.5', 'seed'],
    [{ guidance: 2000 }, 400, 'guidance: expected a number in [0, 1000], got 2000', 'guidance'],
    [{ sampler: 'ddin' }, 400, 'sampler: expected one of ddpm, ddim, euler, euler-a, heun, ' +
      'dpm++2m, dpm++3m, unipc, flow-euler, flow-heun, got "ddin" (did you mean ddim?)', 'sampler'],
    [{ sampler: 'flow-euler' }, 400, 'sampler: expected one of ddpm, ddim, euler, euler-a, heun, ' +
      'dpm++2m, dpm++3m, unipc for this model (DDPMScheduler), got flow-euler', 'sampler'],
    [{ class: 3 }, 400, 'class: expected labels from 0 to 2 (the model has 3 classes), got 3', 'class'],
    [{ class: [1, 'x'] }, 400, "class: expected a class number, a comma list such as 1,3,7, or " +
      "'all', got [1,\"x\"] (not a class number: 'x')", 'class'],
    [{ accel: 'deepcache:0' }, 400, 'accel: expected deepcache:N[,nonuniform][,branch=K], ' +
      'faster[:K][,serial][,noinject] or ras:R[,random][,starvation=S][,cache=high|low]' +
      '[,metric=std|l2norm], got "deepcache:0" (N must be >= 1 model calls per full step)', 'accel'],
    [{ stpes: 4 }, 400, 'stpes: not a field of a sample request (expected class, n, steps, ' +
      'sampler, guidance, seed, accel)', 'stpes'],
    [{ constructor: 1 }, 400, 'constructor: not a field of a sample request (expected class, n, ' +
      'steps, sampler, guidance, seed, accel)', 'constructor'],
    [{ model: '/etc' }, 400, 'model: not a field of a sample request (expected class, n, steps, ' +
      'sampler, guidance, seed, accel)', 'model'],
    [[1, 2], 400, 'the body: expected a JSON object of sample options (class, n, steps, sampler, ' +
      'guidance, seed, accel), got an array'],
  ];
  for (const [body, status, error, field] of cases) {
    const r = await post(server, body);
    assert.equal(r.statusCode, status, JSON.stringify(body));
    assert.equal(r.json().error, error);
    assert.equal(r.json().field, field);
  }
  const raw = (payload: string, type = 'application/json') =>
    server.app.inject({ method: 'POST', url: '/v1/samples', payload, headers: { 'content-type': type } });
  let r = await raw(JSON.stringify({ n: 1, pad: 'x'.repeat(17_000) }));
  assert.deepEqual([r.statusCode, r.json().error], [413, 'the body: expected at most 16384 bytes of JSON']);
  r = await raw('{"n": ');
  assert.deepEqual([r.statusCode, r.json().error],
    [400, 'the body: expected a JSON object of sample options, got text that is not JSON']);
  r = await raw('n=4', 'application/x-www-form-urlencoded');
  assert.deepEqual([r.statusCode, r.json().error], [415, 'the body: expected Content-Type: application/json']);
  assert.equal(server.metrics.total('queued'), 0, 'no refused request became a job');
});

test('a job: queued behind another, progress events in order, then done; PNGs equal sampleImages', async () => {
  // A long job holds the one worker, so B is still queued when its stream opens.
  const a = (await post(server, { n: 1, steps: 300 })).json() as { id: string };
  await running(a.id);
  const options = { n: 4, steps: 4, class: [0, 1, 2], seed: 5, guidance: 2, sampler: 'ddim' };
  const r = await post(server, options);
  assert.equal(r.statusCode, 202);
  const b = r.json() as { id: string; state: string };
  assert.equal(b.state, 'queued');
  assert.equal(r.headers.location, `/v1/jobs/${b.id}`);
  const queued = (await get(`/v1/jobs/${b.id}`)).json();
  assert.equal(queued.state, 'queued');
  assert.deepEqual(queued.request, { sampler: 'ddim', steps: 4, n: 4, guidance: 2, seed: 5,
    classes: [0, 1, 2] });
  assert.equal((await get(`/v1/jobs/${b.id}/result`)).statusCode, 409);

  const stream = get(`/v1/jobs/${b.id}/events`); // open until B ends
  const del = await server.app.inject({ method: 'DELETE', url: `/v1/jobs/${a.id}` });
  assert.equal(del.statusCode, 202, 'a running job is being cancelled');
  assert.equal(del.json().cancelling, true);
  const s = await stream;
  assert.equal(s.headers['content-type'], 'text/event-stream; charset=utf-8');
  const { events, rest } = parseSse(s.body);
  assert.equal(rest, '');
  assert.deepEqual(events.slice(0, -1), [1, 2, 3, 4].map((step) =>
    ({ event: 'progress', data: { step, total: 4 } })), 'every step, in order, once');
  const last = events.at(-1)!;
  assert.equal(last.event, 'done');
  assert.equal((last.data as { state: string }).state, 'done');

  const aState = (await get(`/v1/jobs/${a.id}`)).json();
  assert.equal(aState.state, 'cancelled', 'the cancelled job freed its worker for B');
  assert.ok(aState.progress.step < 300, `A stopped early (step ${aState.progress.step})`);
  const done = (await get(`/v1/jobs/${b.id}`)).json();
  assert.equal(done.state, 'done');
  assert.deepEqual(done.progress, { step: 4, total: 4 });
  assert.equal(done.result, `/v1/jobs/${b.id}/result`);
  assert.ok(done.timings.queueSeconds > 0 && done.timings.runSeconds > 0 &&
    done.timings.sampleSeconds > 0, JSON.stringify(done.timings));

  // The same options through the pipeline in this thread: the same pixels.
  const expected = await sampleImages(await loadPipeline(model.dir), { sampler: 'ddim', steps: 4,
    n: 4, guidance: 2, seed: 5, classes: [0, 1, 2] });
  const grid = await get(`/v1/jobs/${b.id}/result`);
  assert.equal(grid.statusCode, 200);
  assert.equal(grid.headers['content-type'], 'image/png');
  const png = pngjs.PNG.sync.read(grid.rawPayload);
  const want = imageGrid(expected.images);
  assert.deepEqual([png.width, png.height], [want.width, want.height]);
  const grey = Uint8Array.from({ length: want.width * want.height }, (_, i) => png.data[4 * i]!);
  assert.deepEqual(grey, want.data);
  const one = pngjs.PNG.sync.read((await get(`/v1/jobs/${b.id}/result?index=2`)).rawPayload);
  assert.deepEqual([one.width, one.height], [8, 8]);
  const third = imageGrid(new HostArray(expected.images.data.subarray(128, 192), [1, 1, 8, 8]),
    { cols: 1, pad: 0 });
  assert.deepEqual(Uint8Array.from({ length: 64 }, (_, i) => one.data[4 * i]!), third.data);
  const bad = await get(`/v1/jobs/${b.id}/result?index=4`);
  assert.deepEqual([bad.statusCode, bad.json().error], [400, "index: expected an integer from 0 to 3, got '4'"]);

  const again = await server.app.inject({ method: 'DELETE', url: `/v1/jobs/${b.id}` });
  assert.deepEqual([again.statusCode, again.json().error],
    [409, `job ${b.id} already ended (done); there is nothing to cancel`]);
  const ended = parseSse((await get(`/v1/jobs/${b.id}/events`)).body).events;
  assert.deepEqual(ended.map((e) => e.event), ['done'], 'a finished job\'s stream is its end');
  assert.equal((await get('/v1/jobs/nope')).statusCode, 404);
});

test('a queued job that is cancelled never runs; a full queue answers 429 with Retry-After', async () => {
  const startedBefore = server.metrics.total('running');
  const a = (await post(server, { n: 1, steps: 300 })).json() as { id: string };
  await running(a.id);
  const b = (await post(server, { n: 1, steps: 2 })).json() as { id: string };
  const c = (await post(server, { n: 1, steps: 2 })).json() as { id: string };
  const full = await post(server, { n: 1, steps: 2 });
  assert.equal(full.statusCode, 429);
  const retry = Number(full.headers['retry-after']);
  assert.ok(Number.isInteger(retry) && retry >= 1, `Retry-After ${full.headers['retry-after']}`);
  assert.equal(full.json().error, `the queue is full (2 jobs waiting); retry after ${retry} s`);
  const health = (await get('/healthz')).json();
  assert.deepEqual(health, { ok: true, queueDepth: 2, queueLimit: 2,
    workers: { configured: 1, alive: 1, busy: 1 } });

  const del = await server.app.inject({ method: 'DELETE', url: `/v1/jobs/${b.id}` });
  assert.deepEqual([del.statusCode, del.json().state], [200, 'cancelled']);
  await server.app.inject({ method: 'DELETE', url: `/v1/jobs/${a.id}` });
  await until(() => server.store.get(c.id)?.state === 'done', 'C to run');
  assert.equal(server.store.get(b.id)!.state, 'cancelled');
  assert.equal(server.store.get(b.id)!.started, undefined, 'B never started');
  assert.equal(server.metrics.total('running') - startedBefore, 2, 'A and C ran, B did not');
  const metrics = await get('/metrics');
  assert.equal(metrics.headers['content-type'], 'text/plain; version=0.0.4; charset=utf-8');
  const lines = metrics.body.split('\n');
  for (const line of ['diffuse_queue_depth 0', 'diffuse_rejected_total{reason="queue_full"} 1',
    'diffuse_workers 1', 'diffuse_workers_busy 0', 'diffuse_jobs_total{state="failed"} 0',
    `diffuse_jobs_total{state="done"} ${server.metrics.total('done')}`]) {
    assert.ok(lines.includes(line), `missing ${line}:\n${metrics.body}`);
  }
  assert.ok(server.metrics.total('done') >= 2 && server.metrics.total('cancelled') >= 3);
  assert.ok(lines.some((l) => /^diffuse_seconds_per_image_count [1-9]\d*$/.test(l)));
});

test('with a token, /v1/ needs the bearer header; /healthz, /metrics and static files do not', async () => {
  const site = await mkdtemp(join(tmpdir(), 'diffuse-serve-static-'));
  await writeFile(join(site, 'index.html'), '<h1>playground</h1>');
  await writeFile(join(site, 'app.js'), 'console.log(1)');
  const s = await createServer({ model: model.dir, token: 'sekret-1', staticDir: site });
  try {
    const none = await post(s, { n: 1, steps: 1 });
    assert.equal(none.statusCode, 401);
    assert.equal(none.headers['www-authenticate'], 'Bearer realm="diffuse"');
    assert.equal(none.json().error, 'this server needs an Authorization: Bearer <token> header on /v1/');
    const wrong = await post(s, { n: 1, steps: 1 }, { authorization: 'Bearer sekret-2' });
    assert.equal(wrong.statusCode, 401);
    assert.equal((await s.app.inject({ method: 'GET', url: '/v1/jobs/x' })).statusCode, 401);
    const ok = await post(s, { n: 1, steps: 1 }, { authorization: 'Bearer sekret-1' });
    assert.equal(ok.statusCode, 202);
    for (const url of ['/healthz', '/metrics']) {
      assert.equal((await s.app.inject({ method: 'GET', url })).statusCode, 200, url);
    }
    const index = await s.app.inject({ method: 'GET', url: '/' });
    assert.deepEqual([index.statusCode, index.body], [200, '<h1>playground</h1>']);
    assert.match(String(index.headers['content-type']), /^text\/html/);
    assert.equal((await s.app.inject({ method: 'GET', url: '/app.js' })).body, 'console.log(1)');
    const missing = await s.app.inject({ method: 'GET', url: '/nope.js' });
    assert.equal(missing.statusCode, 404);
    const outside = await s.app.inject({ method: 'GET', url: '/..%2f..%2fetc%2fpasswd' });
    assert.equal(outside.statusCode, 404, 'nothing outside the folder');
  } finally {
    await s.close();
    await rm(site, { recursive: true, force: true });
  }
  await assert.rejects(createServer({ model: model.dir, staticDir: join(model.dir, 'none') }),
    /^RangeError: staticDir: expected a folder of files to serve, got .*none$/);
  await assert.rejects(createServer({ model: join(model.dir, 'none') }), /none: no such folder/);
});
