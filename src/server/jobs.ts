/**
 * @file The server's jobs: their records, the bounded queue of jobs waiting for a worker, and
 * the finished jobs kept for a while. A job moves queued -> running -> done | failed |
 * cancelled (or queued -> cancelled), each move made here once, so a job is handed to at most
 * one worker and ends at most once. Subscribers (event streams) hear its progress and its end.
 *
 * Memory stays bounded: at most `queueLimit` jobs wait, as many run as there are workers, and
 * finished jobs (with their PNGs) are forgotten, oldest first, past `keepJobs` of them, past
 * `keepSeconds`, or past `keepBytes` of PNGs in all (large RGB models make large grids).
 */
import { randomUUID } from 'node:crypto';
import type { Metrics } from './metrics.js';
import type { SampleRequest } from './request.js';

export type JobState = 'queued' | 'running' | 'done' | 'failed' | 'cancelled';

export const isFinal = (s: JobState): boolean => s === 'done' || s === 'failed' || s === 'cancelled';

/** What a done job holds: the grid and each image as PNG bytes. */
export interface JobResult {
  grid: Uint8Array;
  images: Uint8Array[];
  /** Sampling wall time in the worker (graph compilation included). */
  sampleSeconds: number;
  modelCalls: number;
  warnings: string[];
}

export interface Job {
  readonly id: string;
  readonly request: SampleRequest;
  state: JobState;
  /** Sampler steps done of all (steps x batches of images); 0 of 0 until the first step. */
  progress: { step: number; total: number };
  /** Epoch milliseconds. */
  readonly submitted: number;
  started?: number;
  finished?: number;
  error?: string;
  result?: JobResult;
  /** A DELETE reached it while it ran: it ends cancelled unless it finished first. */
  cancelRequested: boolean;
}

/** What a job's subscribers hear: each progress step, then its end (once). */
export type JobEvent =
  | { type: 'progress'; step: number; total: number }
  | { type: 'end'; job: Job };

export interface JobStoreOptions {
  /** The most jobs waiting for a worker; more are refused (429). */
  queueLimit: number;
  /** The most finished jobs remembered. */
  keepJobs: number;
  /** How long a finished job is remembered. */
  keepSeconds: number;
  /** The most PNG bytes finished jobs may hold together (default 256 MiB). */
  keepBytes?: number;
  metrics: Metrics;
  /** Milliseconds since the epoch (tests move time). */
  now?: () => number;
}

const DEFAULT_KEEP_BYTES = 256 * 2 ** 20;

/** Finished runs whose times estimate Retry-After. */
const RECENT_RUNS = 20;

/** A job's end as the pool reports it. */
export type Outcome =
  | { state: 'done'; result: JobResult }
  | { state: 'failed'; error: string }
  | { state: 'cancelled'; error?: string };

export class JobStore {
  private readonly jobs = new Map<string, Job>();
  private readonly queue: Job[] = [];
  /** Ids of finished jobs, oldest first: the order they are forgotten in. */
  private readonly finishedOrder: string[] = [];
  private readonly listeners = new Map<string, Set<(e: JobEvent) => void>>();
  private readonly recentRuns: number[] = [];
  private readonly now: () => number;
  private readonly keepBytes: number;
  /** PNG bytes the remembered jobs hold. */
  private resultBytes = 0;
  private closed = false;
  /** Called after a job is queued: the pool hands it to an idle worker. */
  onQueued: () => void = () => {};

  constructor(private readonly o: JobStoreOptions) {
    this.now = o.now ?? Date.now;
    this.keepBytes = o.keepBytes ?? DEFAULT_KEEP_BYTES;
  }

  get queueDepth(): number {
    return this.queue.length;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** A new queued job, or undefined when the queue is full. */
  submit(request: SampleRequest): Job | undefined {
    if (this.closed) throw new Error('the job store is closed: the server is shutting down');
    this.forgetOld();
    if (this.queue.length >= this.o.queueLimit) {
      this.o.metrics.reject('queue_full');
      return undefined;
    }
    const job: Job = { id: randomUUID(), request, state: 'queued', progress: { step: 0, total: 0 },
      submitted: this.now(), cancelRequested: false };
    this.jobs.set(job.id, job);
    this.queue.push(job);
    this.o.metrics.reached('queued');
    this.onQueued();
    return job;
  }

  get(id: string): Job | undefined {
    this.forgetOld();
    return this.jobs.get(id);
  }

  /** The oldest queued job, now running (the caller hands it to a worker), or undefined. */
  take(): Job | undefined {
    const job = this.queue.shift();
    if (!job) return undefined;
    job.state = 'running';
    job.started = this.now();
    this.o.metrics.reached('running');
    return job;
  }

  progress(job: Job, step: number, total: number): void {
    if (job.state !== 'running') return;
    job.progress = { step, total };
    this.emit(job.id, { type: 'progress', step, total });
  }

  /** Ends a running job. A job that already ended stays as it ended (false). */
  finish(job: Job, outcome: Outcome): boolean {
    if (job.state !== 'running') return false;
    if (outcome.state === 'done') {
      job.result = outcome.result;
      this.resultBytes += resultSize(outcome.result);
      const seconds = (this.now() - job.started!) / 1000;
      this.recentRuns.push(seconds);
      if (this.recentRuns.length > RECENT_RUNS) this.recentRuns.shift();
      this.o.metrics.observeSecondsPerImage(outcome.result.sampleSeconds / job.request.n);
    } else if (outcome.error !== undefined) {
      job.error = outcome.error;
    }
    this.end(job, outcome.state);
    return true;
  }

  /** Cancels a queued job: out of the queue, never run. False if it was not queued. */
  cancelQueued(job: Job, why?: string): boolean {
    const i = this.queue.indexOf(job);
    if (job.state !== 'queued' || i < 0) return false;
    this.queue.splice(i, 1);
    if (why) job.error = why;
    this.end(job, 'cancelled');
    return true;
  }

  /** Hears job `id`'s progress and end; returns the unsubscribe. */
  subscribe(id: string, fn: (e: JobEvent) => void): () => void {
    let set = this.listeners.get(id);
    if (!set) this.listeners.set(id, set = new Set());
    set.add(fn);
    return () => {
      set.delete(fn);
      if (set.size === 0 && this.listeners.get(id) === set) this.listeners.delete(id);
    };
  }

  /** Seconds until a queue slot is likely free: a worker finishes a job about every mean run
   *  time / workers; at least 1. */
  retryAfterSeconds(workers: number): number {
    if (this.recentRuns.length === 0) return 1;
    const mean = this.recentRuns.reduce((a, b) => a + b, 0) / this.recentRuns.length;
    return Math.max(1, Math.ceil(mean / Math.max(1, workers)));
  }

  /** Refuses new jobs and cancels the queued ones; running jobs are the pool's to stop. */
  close(why: string): void {
    this.closed = true;
    for (const job of [...this.queue]) this.cancelQueued(job, why);
  }

  /** The running jobs. */
  running(): Job[] {
    return [...this.jobs.values()].filter((j) => j.state === 'running');
  }

  private end(job: Job, state: 'done' | 'failed' | 'cancelled'): void {
    job.state = state;
    job.finished = this.now();
    this.o.metrics.reached(state);
    this.finishedOrder.push(job.id);
    this.emit(job.id, { type: 'end', job });
    this.listeners.delete(job.id); // an end is heard once
    this.forgetOld();
  }

  private emit(id: string, e: JobEvent): void {
    for (const fn of [...(this.listeners.get(id) ?? [])]) fn(e);
  }

  /** Forgets finished jobs past the count or the age limit. */
  private forgetOld(): void {
    const oldest = this.now() - this.o.keepSeconds * 1000;
    while (this.finishedOrder.length > 0) {
      const job = this.jobs.get(this.finishedOrder[0]!);
      if (job && this.finishedOrder.length <= this.o.keepJobs && job.finished! > oldest &&
        this.resultBytes <= this.keepBytes) break;
      this.finishedOrder.shift();
      if (!job) continue;
      this.jobs.delete(job.id);
      if (job.result) this.resultBytes -= resultSize(job.result);
    }
  }
}

const resultSize = (r: JobResult): number =>
  r.grid.byteLength + r.images.reduce((a, b) => a + b.byteLength, 0);
