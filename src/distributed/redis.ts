/**
 * @file The BullMQ back-end: jobs wait in a Redis queue and any number of worker processes, on
 * any machines, take them. Each taken job runs in a worker thread (`thread-runner.ts`) so the
 * process's main thread keeps renewing the job's lock while the handler blocks in ORT.
 *
 * Recovery: a worker that dies (SIGKILL, power loss) stops renewing its lock; the lock expires
 * after `lockSeconds`, a live worker's stalled check (every lockSeconds / 2) puts the job back
 * in `wait`, and another worker runs it again with `attempt` raised; the handler resumes from
 * its own checkpoint. A run that throws is retried up to `retries` times; a job that stalls
 * more than `maxStalls` times fails. A worker that is closed (on SIGTERM, say) aborts its
 * handlers and hands their jobs straight back to `wait`, spending none of their attempts.
 *
 * Completed jobs stay in Redis with their results, under their spec ids (`queueJobId` maps the
 * ids BullMQ refuses): `runAll` looks every id up first, uses a completed job's stored result
 * without running it, retries a failed one, waits for one already queued or running, and adds
 * the rest.
 *
 * Progress travels through `job.updateProgress` as a `ProgressMessage` (a worker announces each
 * run with `kind: 'start'`) and reaches `runAll`'s caller through QueueEvents.
 *
 * Over the 400-line budget because URL parsing, the worker and runAll share the queue's private
 * protocol (ProgressMessage, StoredResult, queueJobId): one file keeps it in one place.
 */
import { hostname } from 'node:os';
import { Queue, QueueEvents, WaitingError, Worker, type Job, type RedisOptions } from 'bullmq';
import { Redis } from 'ioredis';
import {
  errorMessage, JobFailedError, SlotPool, validateJobs, workerName,
  type JobBackend, type JobEvents, type JobProgress, type JobSpec,
} from './jobs.js';
import { JobRunError, runInThread, threadsPerSlot } from './thread-runner.js';

// ---- Redis URLs and connections ----

/** Where the queue's Redis lives, parsed from a redis:// or rediss:// URL. */
export interface RedisAddress {
  host: string;
  port: number;
  db: number;
  username?: string;
  password?: string;
  tls: boolean;
  /** The URL without its password, for messages. */
  display: string;
}

/** A URL with its password replaced by '***', so messages never print it. */
function redact(url: string): string {
  return url.replace(/^([a-z]+:\/\/[^:/@]*:)[^@]*@/i, '$1***@');
}

/** Parses `redis://[user:password@]host[:port][/db]` (or rediss:// for TLS); port defaults to
 *  6379, db to 0. */
export function parseRedisUrl(url: string): RedisAddress {
  const bad = (why: string): Error =>
    new Error(`--queue: expected redis://host:port[/db], got '${redact(url)}' (${why})`);
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw bad('not a URL');
  }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') {
    throw bad('the scheme must be redis:// or rediss://');
  }
  if (!u.hostname) throw bad('no host');
  if (u.search || u.hash) throw bad('a ?query or #fragment is not understood');
  const dbText = u.pathname.replace(/^\//, '');
  if (dbText !== '' && !/^\d+$/.test(dbText)) {
    throw bad(`the database must be a number, not '${dbText}'`);
  }
  const address: RedisAddress = {
    host: u.hostname.replace(/^\[(.*)\]$/, '$1'),
    port: u.port === '' ? 6379 : Number(u.port),
    db: dbText === '' ? 0 : Number(dbText),
    tls: u.protocol === 'rediss:',
    display: redact(url),
  };
  if (u.username) address.username = decodeURIComponent(u.username);
  if (u.password) address.password = decodeURIComponent(u.password);
  return address;
}

/** ioredis options for an address (BullMQ creates its own connections from these). */
function connectionOptions(a: RedisAddress): RedisOptions {
  return {
    host: a.host, port: a.port, db: a.db,
    ...(a.username !== undefined ? { username: a.username } : {}),
    ...(a.password !== undefined ? { password: a.password } : {}),
    ...(a.tls ? { tls: {} } : {}),
  };
}

/**
 * Connects a client of our own and pings, giving up after `timeoutMs`: BullMQ's connections
 * retry forever, so an unreachable server would otherwise be a silent hang. The client stays
 * open (and reconnects, once it has been connected) for the caller's own reads.
 */
/** A connected client of the server at `url` (redis://host:port[/db]), or a clear error within
 *  `timeoutMs`: for other users of Redis than the queue (the video Collective). */
export async function connectRedis(url: string, timeoutMs = 5_000): Promise<Redis> {
  return reachRedis(parseRedisUrl(url), timeoutMs);
}

async function reachRedis(a: RedisAddress, timeoutMs: number): Promise<Redis> {
  let connected = false;
  let lastError: Error | undefined;
  const client = new Redis({
    ...connectionOptions(a), lazyConnect: true, connectTimeout: timeoutMs,
    maxRetriesPerRequest: null,
    retryStrategy: (times) => (connected ? Math.min(times * 200, 2_000) : null),
  });
  // ioredis reports the cause (ECONNREFUSED, WRONGPASS) here, and rejects connect() vaguely.
  client.on('error', (e: Error) => { lastError = e; });
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      client.connect().then(() => client.ping()),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
      }),
    ]);
    connected = true;
    return client;
  } catch (e) {
    client.disconnect();
    throw new Error(`cannot reach Redis at ${a.display}: ${(lastError ?? (e as Error)).message}`);
  } finally {
    clearTimeout(timer);
  }
}

/** BullMQ forbids ':' in job ids and ids that read as integers. This maps every spec id to a
 *  distinct allowed one: '%' and ':' are %-escaped, and an integer-like id gets a trailing '%'
 *  (which no escaped id ends with). Ids without '%' or ':' that are not integers map to
 *  themselves. */
export function queueJobId(id: string): string {
  const escaped = id.replace(/%/g, '%25').replace(/:/g, '%3A');
  return `${parseInt(escaped, 10)}` === escaped ? `${escaped}%` : escaped;
}

function checkQueueName(queue: string): void {
  if (!queue || queue.includes(':')) {
    throw new Error(`queue name must be non-empty and without ':', got '${queue}'`);
  }
}

// ---- Workers ----

/** What travels through `job.updateProgress`. */
type ProgressMessage =
  | { kind: 'start'; worker: string; attempt: number }
  | ({ kind: 'progress' } & JobProgress);

/** What a worker stores as a job's return value: an envelope, so `undefined` survives JSON. */
interface StoredResult { result?: unknown }

/** What a worker process reports about its own runs (for its log). */
export type WorkerEvent =
  | { type: 'start'; id: string; worker: string; attempt: number }
  | { type: 'done'; id: string; worker: string }
  | { type: 'failed'; id: string; worker: string; error: string }
  /** Stopped mid-run: the job went back to the queue for another worker. */
  | { type: 'requeued'; id: string; worker: string }
  /** Connection trouble, a lost lock: the worker carries on. */
  | { type: 'error'; error: string };

export interface RedisWorkerOptions {
  /** redis://host:port[/db] */
  url: string;
  queue: string;
  /** Absolute path (or file: URL) of the compiled ES module exporting `runJob`. */
  handler: string;
  /** Jobs this process runs at once, one thread each (default 1). */
  concurrency?: number;
  /** A job whose worker stops renewing its lock for this long is given to another worker
   *  (default 30). */
  lockSeconds?: number;
  /** Times a job may lose its worker before it fails (default 3). */
  maxStalls?: number;
  onEvent?: (e: WorkerEvent) => void;
  /** How long an aborted handler gets to checkpoint before its thread is terminated. */
  abortGraceMs?: number;
  /** How long to wait for Redis at start (default 5000 ms). */
  connectTimeoutMs?: number;
  /** ONNX Runtime threads per job (default: the cores shared by `concurrency`); lower it when
   *  several worker processes share a machine. */
  threads?: number;
}

export interface RedisWorker {
  /** This process's worker name ("host:pid"); its slots are "host:pid/thread N". */
  readonly name: string;
  /** Aborts running handlers, hands their jobs back to the queue and disconnects. */
  close(): Promise<void>;
}

function positiveInteger(name: string, value: number, min = 1): number {
  if (!Number.isInteger(value) || value < min) {
    throw new RangeError(`${name} must be an integer >= ${min}, got ${value}`);
  }
  return value;
}

type WorkerSettings =
  & Required<Pick<RedisWorkerOptions, 'concurrency' | 'lockSeconds' | 'maxStalls'>>
  & Pick<RedisWorkerOptions, 'onEvent' | 'abortGraceMs' | 'handler' | 'queue' | 'threads'>;

/** A BullMQ Worker whose processor runs each job in a thread and relays its progress. */
function startWorker(connection: RedisOptions, s: WorkerSettings): RedisWorker {
  const emit = (e: WorkerEvent): void => s.onEvent?.(e);
  const slots = new SlotPool();
  const stopping = new AbortController();
  const running = new Map<string, AbortController>();

  const processor = async (job: Job, token?: string): Promise<StoredResult> => {
    const spec = job.data as JobSpec;
    const slot = slots.take();
    const worker = workerName(slot);
    const attempt = job.attemptsStarted;
    const abort = new AbortController();
    const onStop = (): void => abort.abort();
    stopping.signal.addEventListener('abort', onStop);
    running.set(job.id!, abort);
    try {
      emit({ type: 'start', id: spec.id, worker, attempt });
      await job.updateProgress({ kind: 'start', worker, attempt } satisfies ProgressMessage);
      const result = await runInThread(s.handler, spec, attempt, {
        worker, signal: abort.signal, threads: s.threads ?? threadsPerSlot(s.concurrency),
        onProgress: (p) => {
          const sent = job.updateProgress({ kind: 'progress', ...p } satisfies ProgressMessage);
          sent.catch((e: unknown) => {
            emit({ type: 'error', error: `${spec.id}: ${errorMessage(e)}` });
          });
        },
        ...(s.abortGraceMs !== undefined ? { abortGraceMs: s.abortGraceMs } : {}),
      });
      emit({ type: 'done', id: spec.id, worker });
      return { result };
    } catch (e) {
      if (stopping.signal.aborted && token) {
        // Stopped mid-run: give the job back now rather than when its lock expires, and
        // without spending one of its attempts (WaitingError tells BullMQ it was moved).
        await job.moveToWait(token);
        emit({ type: 'requeued', id: spec.id, worker });
        throw new WaitingError();
      }
      const reason = e instanceof JobRunError ? e.reason : errorMessage(e);
      emit({ type: 'failed', id: spec.id, worker, error: reason });
      throw new Error(reason);
    } finally {
      running.delete(job.id!);
      stopping.signal.removeEventListener('abort', onStop);
      slots.give(slot);
    }
  };

  const lockMs = s.lockSeconds * 1000;
  const name = `${hostname()}:${process.pid}`;
  const worker = new Worker(s.queue, processor, {
    connection, name, concurrency: s.concurrency,
    lockDuration: lockMs,
    // Detection takes up to lockDuration + 2 stalled intervals after the last renewal.
    stalledInterval: Math.max(250, Math.round(lockMs / 2)),
    maxStalledCount: s.maxStalls,
  });
  worker.on('error', (e) => emit({ type: 'error', error: errorMessage(e) }));
  // A lock this worker could not renew may already belong to another worker: stop our run so
  // two handlers never write the same checkpoint.
  worker.on('lockRenewalFailed', (ids: string[]) => {
    for (const id of ids) {
      emit({ type: 'error', error: `lost the lock of job ${id}; stopping its run` });
      running.get(id)?.abort();
    }
  });
  return {
    name,
    async close() {
      stopping.abort();
      await worker.close();
    },
  };
}

/** Runs a worker process's slots: takes jobs from `queue` until closed. Rejects at once with a
 *  clear message when the URL is malformed or Redis cannot be reached. */
export async function startRedisWorker(opts: RedisWorkerOptions): Promise<RedisWorker> {
  const address = parseRedisUrl(opts.url);
  checkQueueName(opts.queue);
  const settings: WorkerSettings = {
    queue: opts.queue, handler: opts.handler,
    concurrency: positiveInteger('concurrency', opts.concurrency ?? 1),
    lockSeconds: positiveInteger('lockSeconds', opts.lockSeconds ?? 30),
    maxStalls: positiveInteger('maxStalls', opts.maxStalls ?? 3, 0),
    ...(opts.onEvent ? { onEvent: opts.onEvent } : {}),
    ...(opts.abortGraceMs !== undefined ? { abortGraceMs: opts.abortGraceMs } : {}),
    ...(opts.threads !== undefined ? { threads: positiveInteger('threads', opts.threads) } : {}),
  };
  const probe = await reachRedis(address, opts.connectTimeoutMs ?? 5_000);
  probe.disconnect();
  return startWorker(connectionOptions(address), settings);
}

// ---- The back-end ----

export interface RedisBackendOptions {
  /** redis://host:port[/db] */
  url: string;
  queue: string;
  /** Absolute path (or file: URL) of the compiled ES module exporting `runJob`. */
  handler: string;
  /** Worker slots in this process too (default 0: only enqueue and wait for `diffuse worker`s). */
  localWorkers?: number;
  /** See RedisWorkerOptions.lockSeconds (default 30). */
  lockSeconds?: number;
  /** Extra attempts after a failed run (default 2); a lost worker does not count as one. */
  retries?: number;
  abortGraceMs?: number;
  connectTimeoutMs?: number;
}

/** How often runAll re-reads the state of the jobs it waits for, in case an event was missed
 *  (a reconnect of the events connection). */
const POLL_MS = 2_000;

/** Connects to Redis (rejecting within `connectTimeoutMs` if it cannot) and returns a back-end
 *  on `queue`, with `localWorkers` worker slots in this process. */
export async function redisBackend(opts: RedisBackendOptions): Promise<JobBackend> {
  const address = parseRedisUrl(opts.url);
  checkQueueName(opts.queue);
  const retries = positiveInteger('retries', opts.retries ?? 2, 0);
  const localWorkers = positiveInteger('localWorkers', opts.localWorkers ?? 0, 0);
  const lockSeconds = positiveInteger('lockSeconds', opts.lockSeconds ?? 30);
  const control = await reachRedis(address, opts.connectTimeoutMs ?? 5_000);
  const connection = connectionOptions(address);
  const queue = new Queue(opts.queue, { connection });
  queue.on('error', () => undefined); // BullMQ reconnects by itself; runAll's calls report.
  const local = localWorkers > 0
    ? startWorker(connection, {
      queue: opts.queue, handler: opts.handler, concurrency: localWorkers, lockSeconds,
      maxStalls: retries + 1,
      ...(opts.abortGraceMs !== undefined ? { abortGraceMs: opts.abortGraceMs } : {}),
    })
    : undefined;
  const waiting = new Set<(e: Error) => void>();

  async function runAll(jobs: readonly JobSpec[],
    events: JobEvents): Promise<Map<string, unknown>> {
    validateJobs(jobs);
    const specs = new Map(jobs.map((j) => [queueJobId(j.id), j]));
    const pending = new Set(specs.keys());
    const results = new Map<string, unknown>();
    const lastAttempt = new Map<string, number>();
    const seen = new Map<string, { attemptsMade: number; stalls: number }>();
    let settle!: { resolve: () => void; reject: (e: Error) => void };
    const done = new Promise<void>((resolve, reject) => { settle = { resolve, reject }; });
    done.catch(() => undefined); // observed below; never an unhandled rejection meanwhile

    const complete = (qid: string, stored: unknown): void => {
      if (!pending.delete(qid)) return;
      const spec = specs.get(qid)!;
      const result = (stored as StoredResult | null | undefined)?.result;
      results.set(spec.id, result);
      events.onDone?.(spec.id, result);
      if (pending.size === 0) settle.resolve();
    };
    // A failure of a job not yet looked up is left to the lookup (which retries it); a 'failed'
    // event may predate our retry() of the job, so its present state decides.
    const checkFailed = async (qid: string): Promise<void> => {
      if (!seen.has(qid)) return;
      const job = await queue.getJob(qid);
      if (!pending.has(qid) || !job || (await job.getState()) !== 'failed') return;
      pending.delete(qid);
      settle.reject(new JobFailedError(specs.get(qid)!.id, job.attemptsStarted,
        job.failedReason ?? 'no reason recorded'));
    };
    // Back in 'wait' from 'active': a failed run (attemptsMade rose), a lost worker
    // (stalledCounter rose) or a worker that stopped cleanly (neither: not a retry).
    // `failedAttempt` is read when the event arrives: by the time this check runs, the next
    // attempt may have started and announced itself.
    const checkRequeued = async (qid: string, failedAttempt: number | undefined): Promise<void> => {
      const job = await queue.getJob(qid);
      const before = seen.get(qid);
      if (!pending.has(qid) || !job || !before) return;
      const now = { attemptsMade: job.attemptsMade, stalls: job.stalledCounter };
      seen.set(qid, now);
      const attempt = failedAttempt ?? job.attemptsStarted;
      const id = specs.get(qid)!.id;
      if (now.attemptsMade > before.attemptsMade) {
        events.onRetry?.(id, job.failedReason ?? 'no reason recorded', attempt);
      } else if (now.stalls > before.stalls) {
        events.onRetry?.(id, 'its worker stopped renewing the job lock (killed, or hung)', attempt);
      }
    };
    // One check at a time, so two events about one job never race. A check that fails (Redis
    // away for a moment) is dropped: the poll below looks at every pending job again.
    let checks = Promise.resolve();
    const serially = (check: () => Promise<void>): void => {
      checks = checks.then(check).catch(() => undefined);
    };

    // Subscribe from the stream's current end, before any job is added or looked up.
    const [last] = await control.xrevrange(queue.keys['events']!, '+', '-', 'COUNT', 1);
    const queueEvents = new QueueEvents(opts.queue,
      { connection, lastEventId: last?.[0] ?? '0-0' });
    queueEvents.on('error', () => undefined);
    queueEvents.on('completed', ({ jobId, returnvalue }) => complete(jobId, returnvalue));
    queueEvents.on('failed', ({ jobId }) => serially(() => checkFailed(jobId)));
    queueEvents.on('waiting', ({ jobId, prev }) => {
      if (prev === 'active') {
        const failedAttempt = lastAttempt.get(jobId);
        serially(() => checkRequeued(jobId, failedAttempt));
      }
    });
    queueEvents.on('progress', ({ jobId, data }) => {
      const spec = specs.get(jobId);
      if (!spec || !pending.has(jobId)) return;
      const m = data as ProgressMessage | null;
      if (typeof m !== 'object' || m === null) return; // not from our workers
      if (m.kind === 'start') {
        lastAttempt.set(jobId, m.attempt);
        events.onStart?.(spec.id, m.worker, m.attempt);
      } else if (m.kind === 'progress') {
        const { kind: _kind, ...progress } = m;
        events.onProgress?.(spec.id, progress);
      }
    });
    const pollPending = (): void => serially(async () => {
      for (const qid of [...pending]) {
        const job = await queue.getJob(qid);
        if (!job) {
          pending.delete(qid);
          const id = specs.get(qid)!.id;
          settle.reject(new Error(`job '${id}' vanished from queue '${opts.queue}'`));
          return;
        }
        const state = await job.getState();
        if (state === 'completed') complete(qid, job.returnvalue);
        else if (state === 'failed') await checkFailed(qid);
      }
    });
    let poll: NodeJS.Timeout | undefined;
    waiting.add(settle.reject);
    try {
      await queueEvents.waitUntilReady();
      for (const [qid, spec] of specs) {
        const job = await queue.getJob(qid);
        if (!job) {
          seen.set(qid, { attemptsMade: 0, stalls: 0 });
          await queue.add(spec.kind, spec, {
            jobId: qid, attempts: retries + 1, removeOnComplete: false, removeOnFail: false,
          });
          continue;
        }
        const state = await job.getState();
        if (state === 'completed') complete(qid, job.returnvalue);
        else if (state === 'failed') {
          // A fresh set of attempts and stalls for a resubmitted job. 'stc' is BullMQ's
          // stalled counter, which retry() keeps; left alone, the next lost worker would
          // fail the job at once.
          await control.hdel(queue.toKey(qid), 'stc');
          await job.retry('failed', { resetAttemptsMade: true });
          seen.set(qid, { attemptsMade: 0, stalls: 0 });
        } else seen.set(qid, { attemptsMade: job.attemptsMade, stalls: job.stalledCounter });
      }
      if (pending.size === 0) settle.resolve();
      poll = setInterval(pollPending, POLL_MS);
      await done;
      return new Map(jobs.map((j) => [j.id, results.get(j.id)]));
    } finally {
      waiting.delete(settle.reject);
      clearInterval(poll);
      await checks;
      await queueEvents.close();
    }
  }

  let closing: Promise<void> | undefined;
  return {
    runAll: (jobs, events = {}) => {
      if (closing) return Promise.reject(new Error('redis back-end: runAll after close()'));
      return runAll(jobs, events);
    },
    close() {
      closing ??= (async () => {
        const closed = new Error(`redis back-end on '${opts.queue}' closed while jobs were pending`);
        for (const reject of waiting) reject(closed);
        await local?.close();
        await queue.close();
        control.disconnect();
      })();
      return closing;
    },
  };
}
