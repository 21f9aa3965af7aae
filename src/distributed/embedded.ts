/**
 * @file The embedded back-end: no server, `workers` worker threads on this machine pulling jobs
 * from an in-memory FIFO. A run that fails or whose thread dies goes to the back of the FIFO
 * with its attempt number raised, up to `retries` more times. When a job has used every
 * attempt, the other running jobs are aborted (they checkpoint, so a resubmission resumes them)
 * and runAll rejects with a JobFailedError. Nothing outlives the process: completed results are
 * not remembered between runAll calls, so skipping finished work is the handler's business here.
 */
import {
  errorMessage, JobFailedError, validateJobs, workerName,
  type JobBackend, type JobEvents, type JobSpec,
} from './jobs.js';
import { JobRunError, runInThread, threadsPerSlot } from './thread-runner.js';

export interface EmbeddedOptions {
  /** Absolute path (or file: URL) of the compiled ES module exporting `runJob`. */
  handler: string;
  /** Jobs run at once, one thread each (default 1: a training job already uses several cores). */
  workers?: number;
  /** Extra attempts after a failed run (default 2). */
  retries?: number;
  /** How long an aborted handler gets to checkpoint before its thread is terminated. */
  abortGraceMs?: number;
}

function checkCount(name: string, value: number, min: number): number {
  if (!Number.isInteger(value) || value < min) {
    throw new RangeError(`embeddedBackend: ${name} must be an integer >= ${min}, got ${value}`);
  }
  return value;
}

export function embeddedBackend(opts: EmbeddedOptions): JobBackend {
  const workers = checkCount('workers', opts.workers ?? 1, 1);
  const retries = checkCount('retries', opts.retries ?? 2, 0);
  const runs = new Set<{ stop: AbortController; settled: Promise<unknown> }>();
  let closed = false;

  async function runJobs(jobs: readonly JobSpec[], events: JobEvents,
    stop: AbortController): Promise<Map<string, unknown>> {
    const fifo = jobs.map((job) => ({ job, attempt: 1 }));
    const results = new Map<string, unknown>();
    let failed: Error | undefined;

    const slot = async (n: number): Promise<void> => {
      const worker = workerName(n);
      for (let next = fifo.shift(); next && !stop.signal.aborted; next = fifo.shift()) {
        const { job, attempt } = next;
        events.onStart?.(job.id, worker, attempt);
        let result: unknown;
        try {
          result = await runInThread(opts.handler, job, attempt, {
            worker, signal: stop.signal, onProgress: (p) => events.onProgress?.(job.id, p),
            threads: threadsPerSlot(workers),
            ...(opts.abortGraceMs !== undefined ? { abortGraceMs: opts.abortGraceMs } : {}),
          });
        } catch (e) {
          if (stop.signal.aborted) return;
          const reason = e instanceof JobRunError ? e.reason : errorMessage(e);
          if (attempt <= retries) {
            events.onRetry?.(job.id, reason, attempt);
            fifo.push({ job, attempt: attempt + 1 });
          } else {
            failed ??= new JobFailedError(job.id, attempt, reason);
            stop.abort();
          }
          continue;
        }
        results.set(job.id, result);
        events.onDone?.(job.id, result);
      }
    };
    // A slot that stops on an exception (an event callback threw) must not leave the others'
    // threads running unseen: stop them all and report it once they have ended.
    await Promise.all(Array.from({ length: Math.min(workers, jobs.length) }, (_, i) =>
      slot(i + 1).catch((e: unknown) => {
        failed ??= e instanceof Error ? e : new Error(String(e));
        stop.abort();
      })));
    if (failed) throw failed;
    if (stop.signal.aborted) throw new Error('embedded back-end closed before every job completed');
    return new Map(jobs.map((job) => [job.id, results.get(job.id)]));
  }

  return {
    async runAll(jobs, events = {}) {
      if (closed) throw new Error('embedded back-end: runAll after close()');
      validateJobs(jobs);
      const stop = new AbortController();
      const running = runJobs(jobs, events, stop);
      const entry = { stop, settled: running.catch(() => undefined) };
      runs.add(entry);
      try {
        return await running;
      } finally {
        runs.delete(entry);
      }
    },
    async close() {
      closed = true;
      for (const run of runs) run.stop.abort();
      await Promise.all([...runs].map((run) => run.settled));
    },
  };
}
