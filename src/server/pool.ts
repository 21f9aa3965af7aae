/**
 * @file The pool of worker threads that sample (worker.ts runs in each). Each thread loads the
 * pipeline once and runs one job at a time; the pool hands queued jobs to idle threads, relays
 * their progress and ends to the job store, and sends cancels. The cores are shared: each of
 * N threads gets floor(cores / N) ONNX Runtime threads, so N jobs at once do not fight over
 * N x cores threads.
 *
 * A thread that dies (an uncaught exception, a native crash, a cancel it ignored past the grace
 * period) fails its job with a message, or cancels it if a cancel was asked for, and is
 * replaced; the queued jobs wait for the replacement. A job is never handed out twice: `take`
 * moves it out of the queue, and a job whose thread died is not retried.
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { Job, JobStore } from './jobs.js';
import type { FromWorker, ModelInfo, ToWorker, WorkerData } from './worker.js';

export interface PoolOptions {
  /** The pipeline folder every thread loads. */
  modelDir: string;
  /** Threads, each running one job at a time. */
  workers: number;
  /** ONNX Runtime threads per worker thread (default threadsPerWorker(workers)). */
  threads?: number;
  /** How long a cancelled job's thread may take to stop before it is terminated. */
  cancelGraceMs: number;
  /** The thread's entry module (tests wrap worker.js to make a thread crash). */
  entry?: URL;
  /** Where to say that a thread died and was replaced. */
  log?: (line: string) => void;
}

/** Each of `workers` threads gets an equal share of the cores, at least one. */
export function threadsPerWorker(workers: number): number {
  return Math.max(1, Math.floor(availableParallelism() / workers));
}

/** A replacement that fails to load waits this long, doubling, up to MAX_RETRY_MS. */
const FIRST_RETRY_MS = 1_000;
const MAX_RETRY_MS = 30_000;

const DEFAULT_ENTRY = new URL('./worker.js', import.meta.url);

interface Slot {
  /** 1-based, for messages. */
  readonly number: number;
  thread?: Worker;
  state: 'starting' | 'idle' | 'busy' | 'stopped';
  job?: Job;
  /** Set when a cancelled job's thread is past its grace period. */
  killTimer?: NodeJS.Timeout;
  restartTimer?: NodeJS.Timeout;
  /** How the thread died, when it said (an uncaught error, a failed load). */
  death?: string;
  failedLoads: number;
}

export interface PoolStats {
  /** Threads asked for. */
  configured: number;
  /** Threads with the model loaded (idle or busy). */
  alive: number;
  busy: number;
}

export class WorkerPool {
  private readonly slots: Slot[];
  private readonly entry: URL;
  private readonly threads: number;
  private started = false;
  private closing = false;
  /** The model, as the first thread that loaded it reported it. */
  info!: ModelInfo;

  private constructor(private readonly o: PoolOptions, private readonly store: JobStore) {
    if (!(Number.isInteger(o.workers) && o.workers >= 1)) {
      throw new RangeError(`workers: expected an integer >= 1, got ${o.workers}`);
    }
    this.slots = Array.from({ length: o.workers }, (_, i) => ({ number: i + 1,
      state: 'stopped' as const, failedLoads: 0 }));
    this.entry = o.entry ?? DEFAULT_ENTRY;
    this.threads = o.threads ?? threadsPerWorker(o.workers);
  }

  /** Starts the threads and waits until each has loaded the model; a thread that cannot load
   *  it rejects with loadPipeline's message, and the others are stopped. */
  static async start(o: PoolOptions, store: JobStore): Promise<WorkerPool> {
    const pool = new WorkerPool(o, store);
    try {
      const infos = await Promise.all(pool.slots.map((s) => pool.spawn(s)));
      pool.info = infos[0]!;
    } catch (e) {
      await pool.terminateAll();
      throw e;
    }
    pool.started = true;
    store.onQueued = () => pool.pump();
    pool.pump();
    return pool;
  }

  stats(): PoolStats {
    const alive = this.slots.filter((s) => s.state === 'idle' || s.state === 'busy').length;
    return { configured: this.slots.length, alive,
      busy: this.slots.filter((s) => s.state === 'busy').length };
  }

  /** Asks the thread running `job` to stop it; the job ends cancelled when the thread says so,
   *  or when the thread is terminated after the grace period. False if no thread runs it. */
  abort(job: Job): boolean {
    const slot = this.slots.find((s) => s.job === job);
    if (!slot?.thread) return false;
    job.cancelRequested = true;
    slot.thread.postMessage({ type: 'abort', id: job.id } satisfies ToWorker);
    const thread = slot.thread;
    slot.killTimer ??= setTimeout(() => {
      slot.death = `it did not stop within ${this.o.cancelGraceMs} ms of the cancel`;
      void thread.terminate();
    }, this.o.cancelGraceMs);
    return true;
  }

  /** Stops: no job is handed out any more, running jobs are cancelled and get `graceMs` to
   *  stop, then every thread is terminated. */
  async close(graceMs = this.o.cancelGraceMs): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    for (const slot of this.slots) {
      clearTimeout(slot.restartTimer);
      if (slot.job) this.abort(slot.job);
    }
    const deadline = Date.now() + graceMs;
    while (this.slots.some((s) => s.state === 'busy') && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    await this.terminateAll();
  }

  /** Hands queued jobs to idle threads. */
  private pump(): void {
    if (this.closing || !this.started) return;
    for (const slot of this.slots) {
      if (slot.state !== 'idle' || !slot.thread) continue;
      const job = this.store.take();
      if (!job) return;
      slot.job = job;
      slot.state = 'busy';
      slot.thread.postMessage({ type: 'run', id: job.id, request: job.request } satisfies ToWorker);
    }
  }

  /** A new thread in `slot`; resolves with the model facts once it has loaded the model. */
  private spawn(slot: Slot): Promise<ModelInfo> {
    return new Promise((resolve, reject) => {
      const data: WorkerData = { modelDir: this.o.modelDir, threads: this.threads };
      const thread = new Worker(this.entry, { workerData: data });
      Object.assign(slot, { thread, state: 'starting', death: undefined });
      thread.on('message', (m: FromWorker) => {
        if (m.type === 'ready') {
          slot.state = 'idle';
          slot.failedLoads = 0;
          resolve(m.info);
          this.pump();
        } else if (m.type === 'load-failed') {
          slot.death = m.message;
          reject(new Error(m.message));
        } else {
          this.onJobMessage(slot, m);
        }
      });
      // An exception thrown in the thread outside a job's promise arrives here.
      thread.on('error', (e) => {
        slot.death ??= `uncaught in its thread: ${e.message}`;
      });
      thread.on('exit', (code) => {
        reject(new Error(slot.death ?? `worker thread ${slot.number} exited with code ${code} ` +
          'before it had loaded the model'));
        this.onExit(slot, thread, code);
      });
    });
  }

  private onJobMessage(slot: Slot, m: Exclude<FromWorker, { type: 'ready' | 'load-failed' }>): void {
    const job = slot.job;
    if (!job || job.id !== m.id) return; // a late word about a job that already ended
    if (m.type === 'progress') {
      this.store.progress(job, m.step, m.total);
      return;
    }
    if (m.type === 'done') {
      this.store.finish(job, { state: 'done', result: { grid: m.grid, images: m.images,
        sampleSeconds: m.seconds, modelCalls: m.modelCalls, warnings: m.warnings } });
    } else if (m.type === 'failed') {
      this.store.finish(job, { state: 'failed', error: m.message });
    } else {
      this.store.finish(job, { state: 'cancelled' });
    }
    clearTimeout(slot.killTimer);
    slot.killTimer = undefined;
    slot.job = undefined;
    slot.state = 'idle';
    this.pump();
  }

  /** A thread ended: its job (if any) ends, and unless the pool is closing it is replaced. */
  private onExit(slot: Slot, thread: Worker, code: number): void {
    if (slot.thread !== thread) return;
    clearTimeout(slot.killTimer);
    slot.killTimer = undefined;
    slot.thread = undefined;
    const loading = slot.state === 'starting';
    slot.state = 'stopped';
    const how = slot.death ?? `exit code ${code}`;
    const job = slot.job;
    slot.job = undefined;
    if (job) {
      this.store.finish(job, job.cancelRequested
        ? { state: 'cancelled', ...(slot.death ? { error: `cancelled: ${slot.death}` } : {}) }
        : { state: 'failed', error: `its worker thread stopped while sampling (${how}); the job ` +
          'was not retried' });
    }
    if (this.closing || !this.started) return; // start() reports a failed first load
    const delay = loading ? Math.min(MAX_RETRY_MS, FIRST_RETRY_MS * 2 ** slot.failedLoads++) : 0;
    this.o.log?.(`worker ${slot.number} stopped (${how})${job ? ` while running job ${job.id}` : ''}; ` +
      `starting another${delay ? ` in ${delay / 1000} s` : ''}`);
    slot.restartTimer = setTimeout(() => {
      if (!this.closing) this.spawn(slot).catch(() => {}); // its exit schedules the next try
    }, delay);
  }

  private async terminateAll(): Promise<void> {
    this.closing = true;
    await Promise.all(this.slots.map((s) => s.thread?.terminate()));
  }
}
