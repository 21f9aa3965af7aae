/**
 * @file `createServer`: the HTTP face of `diffuse serve` (fastify). It starts the worker pool on
 * one fixed model folder, wires the job store, the metrics and the routes, and returns the
 * fastify instance (not yet listening; tests inject requests into it) with a `close` that
 * stops everything. Besides the job routes (routes.ts):
 *
 *     GET /healthz   200 {ok, queueDepth, workers} (503 when no worker is alive or closing)
 *     GET /metrics   Prometheus text (metrics.ts)
 *     GET /*         files of `staticDir`, when given (the browser playground)
 *
 * With a token, /v1/* needs `Authorization: Bearer TOKEN` (401 otherwise); /healthz, /metrics
 * and the static files stay open, for probes and scrapers. Errors are JSON `{error}` whose
 * message names what was wrong and the form expected.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { statSync } from 'node:fs';
import { resolve } from 'node:path';
import fastifyStatic from '@fastify/static';
import { fastify, type FastifyError, type FastifyInstance } from 'fastify';
import { JobStore } from './jobs.js';
import { Metrics } from './metrics.js';
import { WorkerPool } from './pool.js';
import { RequestError, requestSchema } from './request.js';
import { registerJobRoutes } from './routes.js';
import type { ModelInfo } from './worker.js';

export interface ServerOptions {
  /** The pipeline folder served; fixed for the server's life. */
  model: string;
  /** Worker threads, each sampling one job at a time (default 1). */
  workers?: number;
  /** ONNX Runtime threads per worker (default: cores / workers). */
  threads?: number;
  /** The most jobs waiting for a worker; beyond it, 429 (default 32). */
  queue?: number;
  /** The most images per request (default 64). */
  maxN?: number;
  /** The most sampler steps per request (default 200). */
  maxSteps?: number;
  /** When set, /v1/* requires `Authorization: Bearer <token>`. */
  token?: string;
  /** Finished jobs remembered: the last `keepJobs` (default 256), for `keepSeconds` (3600). */
  keepJobs?: number;
  keepSeconds?: number;
  /** A folder of static files served at / (index.html and what it loads). */
  staticDir?: string;
  /** How long a cancelled job's thread may take to stop before it is terminated (10 s). */
  cancelGraceMs?: number;
  /** The worker thread's module (tests substitute one that crashes). */
  workerEntry?: URL;
  /** Where the server reports what an operator should know (a worker replaced). */
  log?: (line: string) => void;
}

export const SERVER_DEFAULTS = {
  workers: 1, queue: 32, maxN: 64, maxSteps: 200, keepJobs: 256, keepSeconds: 3600,
  cancelGraceMs: 10_000,
  /** Sample requests are a few fields; 16 KiB is ample and keeps bodies cheap to refuse. */
  bodyLimit: 16 * 1024,
} as const;

export interface DiffuseServer {
  /** The fastify instance: `listen` it, or `inject` requests. */
  app: FastifyInstance;
  /** The model served, as the workers loaded it. */
  model: ModelInfo;
  store: JobStore;
  pool: WorkerPool;
  metrics: Metrics;
  /** Takes no new jobs, cancels queued and running ones, stops the workers, closes the app
   *  (fastify's `app.close()` does the same). */
  close(): Promise<void>;
}

function checkInt(name: string, v: number, min: number): number {
  if (!(Number.isSafeInteger(v) && v >= min)) {
    throw new RangeError(`${name}: expected an integer >= ${min}, got ${v}`);
  }
  return v;
}

/** Starts the workers on `o.model` (rejecting with loadPipeline's message if they cannot load
 *  it) and builds the app. */
export async function createServer(o: ServerOptions): Promise<DiffuseServer> {
  const d = SERVER_DEFAULTS;
  const queueLimit = checkInt('queue', o.queue ?? d.queue, 1);
  const limits = { maxN: checkInt('maxN', o.maxN ?? d.maxN, 1),
    maxSteps: checkInt('maxSteps', o.maxSteps ?? d.maxSteps, 1) };
  const keep = { jobs: checkInt('keepJobs', o.keepJobs ?? d.keepJobs, 1),
    seconds: checkInt('keepSeconds', o.keepSeconds ?? d.keepSeconds, 1) };
  if (o.token !== undefined && !/^[\x21-\x7e]+$/.test(o.token)) {
    throw new RangeError('token: expected printable ASCII without spaces (it travels in an ' +
      'HTTP header)');
  }
  const staticRoot = o.staticDir === undefined ? undefined : resolve(o.staticDir);
  if (staticRoot !== undefined && !statSync(staticRoot, { throwIfNoEntry: false })?.isDirectory()) {
    throw new RangeError(`staticDir: expected a folder of files to serve, got ${staticRoot}`);
  }
  const metrics = new Metrics();
  const store = new JobStore({ queueLimit, keepJobs: keep.jobs, keepSeconds: keep.seconds, metrics });
  const pool = await WorkerPool.start({
    modelDir: o.model, workers: checkInt('workers', o.workers ?? d.workers, 1),
    cancelGraceMs: checkInt('cancelGraceMs', o.cancelGraceMs ?? d.cancelGraceMs, 0),
    ...(o.threads !== undefined ? { threads: checkInt('threads', o.threads, 1) } : {}),
    ...(o.workerEntry ? { entry: o.workerEntry } : {}), ...(o.log ? { log: o.log } : {}),
  }, store);

  try {
    return await buildApp(o, { store, pool, metrics, limits, queueLimit, keep, staticRoot });
  } catch (e) {
    await pool.close(0); // no worker threads left behind
    throw e;
  }
}

interface Parts {
  store: JobStore;
  pool: WorkerPool;
  metrics: Metrics;
  limits: { maxN: number; maxSteps: number };
  queueLimit: number;
  keep: { jobs: number; seconds: number };
  staticRoot: string | undefined;
}

async function buildApp(o: ServerOptions, p: Parts): Promise<DiffuseServer> {
  const { store, pool, metrics, queueLimit, staticRoot } = p;
  const app = fastify({ bodyLimit: SERVER_DEFAULTS.bodyLimit, logger: false });
  // Before the server stops listening: no new jobs, running ones cancelled, so open event
  // streams get their last event and end rather than hold the close up.
  app.addHook('preClose', async () => {
    store.close('the server is shutting down');
    await pool.close();
  });
  if (o.token !== undefined) requireToken(app, o.token);
  app.setErrorHandler((error: Error, _req, reply) => {
    if (error instanceof RequestError) {
      return reply.code(400).send({ error: error.message,
        ...(error.field ? { field: error.field } : {}),
        ...(error.expected ? { expected: error.expected } : {}) });
    }
    const err = error as FastifyError;
    const status = err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500
      ? err.statusCode : 500;
    if (status === 500) o.log?.(`internal error: ${err.stack ?? err.message}`);
    return reply.code(status).send({ error: clientMessage(err, status) });
  });
  app.setNotFoundHandler((req, reply) =>
    reply.code(404).send({ error: `no route ${req.method} ${req.url.split('?')[0]}` }));

  app.get('/healthz', async (_req, reply) => {
    const w = pool.stats();
    const ok = w.alive > 0 && !store.isClosed;
    return reply.code(ok ? 200 : 503).send({ ok, queueDepth: store.queueDepth, queueLimit,
      workers: w });
  });
  app.get('/metrics', async (_req, reply) => {
    const w = pool.stats();
    return reply.type('text/plain; version=0.0.4; charset=utf-8')
      .send(metrics.render({ queueDepth: store.queueDepth, workers: w.alive, workersBusy: w.busy }));
  });
  registerJobRoutes(app, { store, pool, schema: requestSchema(p.limits), limits: p.limits,
    queueLimit, keep: p.keep });
  if (staticRoot !== undefined) {
    // Cross-origin isolation lets the playground's ONNX Runtime (WASM) use several threads.
    await app.register(fastifyStatic, { root: staticRoot, prefix: '/', index: ['index.html'],
      setHeaders: (res) => {
        res.header('Cross-Origin-Opener-Policy', 'same-origin');
        res.header('Cross-Origin-Embedder-Policy', 'require-corp');
      } });
  }
  let closing: Promise<void> | undefined;
  return { app, model: pool.info, store, pool, metrics,
    close: () => closing ??= app.close().then(() => pool.close()) };
}

/** Requires `Authorization: Bearer <token>` on /v1/*. Compared as digests, in constant time. */
function requireToken(app: FastifyInstance, token: string): void {
  const digest = (s: string) => createHash('sha256').update(s).digest();
  const want = digest(`Bearer ${token}`);
  app.addHook('onRequest', async (req, reply) => {
    // The route matched as well as the raw URL: no spelling of a /v1/ route slips past.
    if (!req.url.startsWith('/v1/') && !req.routeOptions.url?.startsWith('/v1/')) return;
    const got = req.headers.authorization;
    if (typeof got === 'string' && timingSafeEqual(digest(got), want)) return;
    return reply.code(401).header('www-authenticate', 'Bearer realm="diffuse"').send({
      error: got === undefined ? 'this server needs an Authorization: Bearer <token> header on /v1/'
        : 'Authorization: expected Bearer and the server\'s token, got another',
    });
  });
}

/** fastify's own client errors, worded as this API words its errors. */
function clientMessage(err: FastifyError, status: number): string {
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return `the body: expected at most ${SERVER_DEFAULTS.bodyLimit} bytes of JSON`;
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return 'the body: expected Content-Type: application/json';
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return 'the body: expected a JSON object of sample options, got nothing';
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return 'the body: expected a JSON object of sample options, got text that is not JSON';
    default:
      return status === 500 ? `internal error: ${err.message}` : err.message;
  }
}
