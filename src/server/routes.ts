/**
 * @file The job routes under /v1: submit a sampling job, read its state, follow its progress
 * as server-sent events, fetch its PNGs, cancel it.
 *
 *     POST   /v1/samples            JSON options -> 202 {id, state} (400 bad field, 429 full)
 *     GET    /v1/jobs/:id           state, progress, timings, error
 *     GET    /v1/jobs/:id/events    event: progress {step, total} ..., then done|failed|cancelled
 *     GET    /v1/jobs/:id/result    image/png grid; ?index=i one image (409 until done)
 *     DELETE /v1/jobs/:id           cancel: queued -> removed; running -> aborted between steps
 */
import type { FastifyInstance, FastifyReply } from 'fastify';
import { isFinal, type Job, type JobStore } from './jobs.js';
import type { WorkerPool } from './pool.js';
import { parseSampleRequest, type RequestLimits, type RequestSchema } from './request.js';
import { SSE_HEADERS, SSE_PING, sseEvent } from './sse.js';

export interface RouteContext {
  store: JobStore;
  pool: WorkerPool;
  schema: RequestSchema;
  limits: RequestLimits;
  queueLimit: number;
  /** How long finished jobs are kept, for the 404 of one that is gone. */
  keep: { jobs: number; seconds: number };
}

/** Idle event streams get a comment this often, so proxies keep them open. */
const PING_MS = 15_000;

const seconds = (ms: number): number => Math.round(ms) / 1000;

/** A job's state as the API shows it. */
export function jobJson(job: Job, now = Date.now()): Record<string, unknown> {
  const r = job.result;
  const ended = job.finished ?? now;
  return {
    id: job.id,
    state: job.state,
    progress: job.progress,
    request: job.request,
    submittedAt: new Date(job.submitted).toISOString(),
    ...(job.started ? { startedAt: new Date(job.started).toISOString() } : {}),
    ...(job.finished ? { finishedAt: new Date(job.finished).toISOString() } : {}),
    timings: {
      queueSeconds: seconds((job.started ?? ended) - job.submitted),
      ...(job.started ? { runSeconds: seconds(ended - job.started) } : {}),
      ...(r ? { sampleSeconds: r.sampleSeconds, secondsPerImage: r.sampleSeconds / job.request.n } : {}),
    },
    ...(job.error ? { error: job.error } : {}),
    ...(r ? { warnings: r.warnings, modelCalls: r.modelCalls, result: `/v1/jobs/${job.id}/result` } : {}),
  };
}

export function registerJobRoutes(app: FastifyInstance, ctx: RouteContext): void {
  const { store, pool } = ctx;

  /** The job, or a 404 sent (undefined). */
  const find = (id: string, reply: FastifyReply): Job | undefined => {
    const job = store.get(id);
    if (!job) {
      void reply.code(404).send({ error: `no job '${id}' (finished jobs are kept for the last ` +
        `${ctx.keep.jobs} jobs and at most ${ctx.keep.seconds} s)` });
    }
    return job;
  };

  app.post('/v1/samples', async (req, reply) => {
    if (store.isClosed) {
      return reply.code(503).send({ error: 'the server is shutting down; it takes no new jobs' });
    }
    const request = parseSampleRequest(ctx.schema, ctx.limits, req.body, pool.info);
    const job = store.submit(request);
    if (!job) {
      const after = store.retryAfterSeconds(pool.stats().alive);
      return reply.code(429).header('retry-after', String(after)).send({
        error: `the queue is full (${ctx.queueLimit} jobs waiting); retry after ${after} s`,
        retryAfter: after,
      });
    }
    return reply.code(202).header('location', `/v1/jobs/${job.id}`)
      .send({ id: job.id, state: job.state });
  });

  app.get<{ Params: { id: string } }>('/v1/jobs/:id', async (req, reply) => {
    const job = find(req.params.id, reply);
    return job ? reply.send(jobJson(job)) : reply;
  });

  app.delete<{ Params: { id: string } }>('/v1/jobs/:id', async (req, reply) => {
    const job = find(req.params.id, reply);
    if (!job) return reply;
    if (job.state === 'queued') store.cancelQueued(job, 'cancelled before it started');
    else if (job.state === 'running') {
      pool.abort(job);
      // It stops between sampler steps; the events stream and GET say when.
      return reply.code(202).send({ ...jobJson(job), cancelling: true });
    } else if (job.state !== 'cancelled') {
      return reply.code(409).send({ error: `job ${job.id} already ended (${job.state}); ` +
        'there is nothing to cancel', state: job.state });
    }
    return reply.send(jobJson(job));
  });

  app.get<{ Params: { id: string }; Querystring: { index?: string } }>('/v1/jobs/:id/result',
    async (req, reply) => {
      const job = find(req.params.id, reply);
      if (!job) return reply;
      if (job.state !== 'done' || !job.result) {
        return reply.code(409).send({ error: `job ${job.id} is ${job.state}: its images exist ` +
          `once it is done${job.error ? ` (${job.error})` : ''}`, state: job.state });
      }
      const { index } = req.query;
      if (index === undefined) return reply.type('image/png').send(Buffer.from(job.result.grid));
      const n = job.result.images.length;
      const i = /^\d+$/.test(index) ? Number(index) : NaN;
      if (!(i < n)) {
        return reply.code(400).send({ error: `index: expected an integer from 0 to ${n - 1}, ` +
          `got '${index}'`, field: 'index', expected: `an integer from 0 to ${n - 1}` });
      }
      return reply.type('image/png').send(Buffer.from(job.result.images[i]!));
    });

  app.get<{ Params: { id: string } }>('/v1/jobs/:id/events', async (req, reply) => {
    const job = find(req.params.id, reply);
    if (!job) return reply;
    // The stream is written by hand; fastify leaves this response alone from here.
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, SSE_HEADERS);
    const final = (j: Job) => sseEvent(j.state, jobJson(j));
    if (isFinal(job.state)) {
      res.end(final(job));
      return reply;
    }
    if (job.progress.step > 0) res.write(sseEvent('progress', job.progress));
    const ping = setInterval(() => res.write(SSE_PING), PING_MS);
    ping.unref();
    // Only this stream's listener goes when the client leaves; the job runs on.
    const stop = (): void => {
      clearInterval(ping);
      unsubscribe();
    };
    const unsubscribe = store.subscribe(job.id, (e) => {
      if (e.type === 'progress') {
        res.write(sseEvent('progress', { step: e.step, total: e.total }));
      } else {
        stop();
        res.end(final(e.job));
      }
    });
    res.on('close', stop);
    return reply;
  });
}
