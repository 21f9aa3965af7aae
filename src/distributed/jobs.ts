/**
 * @file Job back-ends: the contract between whoever submits training jobs and whatever runs
 * them. A job is JSON (`JobSpec`); a handler module exports `runJob: JobHandler`; a back-end
 * (`embedded.ts`: worker threads here, `redis.ts`: BullMQ workers anywhere) runs each job to
 * completion, retrying a job whose run failed or whose worker died. Every run happens in a
 * `worker_threads` Worker (`thread-runner.ts`), because onnxruntime-node's `session.run()`
 * blocks its event loop for a whole training step and the thread that relays progress or
 * renews a queue lock must not be blocked.
 */
import { hostname } from 'node:os';

/** A unit of work: JSON-serialisable; `id` is stable, so resubmitting it never re-runs a
 *  completed job. */
export interface JobSpec { id: string; kind: string; data: unknown }

export interface JobProgress { step: number; steps: number; note?: string }

export interface JobContext {
  progress(p: JobProgress): void;
  /** Aborted when the worker shuts down: the handler should checkpoint and throw/return soon.
   *  Throwing (e.g. `signal.throwIfAborted()`) leaves the job to run again later; returning a
   *  value means the job is complete, so a handler that stops early must throw. */
  signal: AbortSignal;
  /** 1 on the first run; > 1 after a failure or a dead worker (the handler resumes). */
  attempt: number;
  /** Which worker runs it, for logs (e.g. "host:pid/thread 2"). */
  worker: string;
}

/** What a handler module exports (by this name): runs one job to completion and returns a
 *  JSON result. */
export type JobHandler = (job: JobSpec, ctx: JobContext) => Promise<unknown>;

export interface JobEvents {
  onStart?(id: string, worker: string, attempt: number): void;
  onProgress?(id: string, p: JobProgress): void;
  /** Also called for a job found already completed (its stored result, nothing re-run). */
  onDone?(id: string, result: unknown): void;
  /** `attempt` is the attempt that failed; the job goes back to the queue. */
  onRetry?(id: string, error: string, attempt: number): void;
}

export interface JobBackend {
  /** Runs every job to completion (each at most once to completion); resolves with each id's
   *  result; rejects when a job has failed all its attempts. */
  runAll(jobs: readonly JobSpec[], events?: JobEvents): Promise<Map<string, unknown>>;
  close(): Promise<void>;
}

/** The name of the export a handler module must provide. */
export const HANDLER_EXPORT = 'runJob';

/** A job that failed every attempt it was allowed. */
export class JobFailedError extends Error {
  constructor(readonly jobId: string, readonly attempts: number, readonly lastError: string) {
    const plural = attempts === 1 ? '' : 's';
    super(`job '${jobId}' failed after ${attempts} attempt${plural}: ${lastError}`);
    this.name = 'JobFailedError';
  }
}

/** Checks what every back-end relies on: ids are non-empty and unique, kinds are strings. */
export function validateJobs(jobs: readonly JobSpec[]): void {
  const seen = new Set<string>();
  for (const job of jobs) {
    if (typeof job.id !== 'string' || job.id === '') {
      throw new TypeError(`job ids must be non-empty strings, got ${JSON.stringify(job.id)}`);
    }
    if (typeof job.kind !== 'string') {
      throw new TypeError(
        `job '${job.id}': kind must be a string, got ${JSON.stringify(job.kind)}`);
    }
    if (seen.has(job.id)) throw new TypeError(`job ids must be unique: '${job.id}' appears twice`);
    seen.add(job.id);
  }
}

/** The name a worker slot reports in `JobContext.worker` and `onStart`: host, process, slot. */
export function workerName(slot: number): string {
  return `${hostname()}:${process.pid}/thread ${slot}`;
}

/** The message of anything thrown. */
export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Hands out the lowest free slot number (1-based), so concurrent runs get stable names. */
export class SlotPool {
  private readonly busy = new Set<number>();

  take(): number {
    let slot = 1;
    while (this.busy.has(slot)) slot++;
    this.busy.add(slot);
    return slot;
  }

  give(slot: number): void {
    this.busy.delete(slot);
  }
}
