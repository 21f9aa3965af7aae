/**
 * @file Runs one job in a fresh worker thread (`job-thread.ts`) and settles with its result.
 * Both back-ends use it, so their main threads stay free to relay progress and renew queue
 * locks while a handler blocks its own thread in ORT. A thread that exits without a result
 * (an exception, `process.exit`, a crash) rejects with an Error that says how it ended.
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { JobParentMessage, JobThreadData, JobThreadMessage } from './job-thread.js';
import { workerName, type JobProgress, type JobSpec } from './jobs.js';

export interface ThreadRunOptions {
  onProgress?: (p: JobProgress) => void;
  /** Aborting asks the handler to stop (its ctx.signal); after `abortGraceMs` the thread is
   *  terminated. */
  signal?: AbortSignal;
  /** How long an aborted handler gets to checkpoint and throw (default 30 s: a slow step and a
   *  checkpoint write). */
  abortGraceMs?: number;
  /** `ctx.worker` in the thread; defaults to this process's slot 1. */
  worker?: string;
  /** ONNX Runtime threads of the job's sessions (default: one per core). */
  threads?: number;
}

/** Each of `slots` jobs running at once gets this many ONNX Runtime threads: an equal share
 *  of the cores, so two jobs on two cores do not fight over four threads. */
export function threadsPerSlot(slots: number): number {
  return Math.max(1, Math.floor(availableParallelism() / slots));
}

/** After a result, how long the thread may take to exit before it is terminated (a handler
 *  that left a timer or socket open must not hold a worker slot). */
const EXIT_GRACE_MS = 5_000;

const DEFAULT_ABORT_GRACE_MS = 30_000;

const threadEntry = new URL('./job-thread.js', import.meta.url);

/** A run that ended without a result. `reason` says how (the handler's message, an exit code);
 *  the handler's stack, when there was one, is the `cause`. */
export class JobRunError extends Error {
  constructor(readonly jobId: string, readonly attempt: number, readonly reason: string,
    threadStack?: string) {
    super(`job '${jobId}' (attempt ${attempt}): ${reason}`,
      threadStack ? { cause: Object.assign(new Error(reason), { stack: threadStack }) } : {});
    this.name = 'JobRunError';
  }
}

/** Runs `job` (attempt number `attempt`) with the handler module at `handlerModule` in a new
 *  worker thread; resolves with what the handler returned. */
export function runInThread(handlerModule: string, job: JobSpec, attempt: number,
  opts: ThreadRunOptions = {}): Promise<unknown> {
  const data: JobThreadData = {
    handler: handlerModule, job, attempt, worker: opts.worker ?? workerName(1),
    ...(opts.threads ? { threads: opts.threads } : {}),
  };
  const abortGraceMs = opts.abortGraceMs ?? DEFAULT_ABORT_GRACE_MS;
  return new Promise((resolve, reject) => {
    if (opts.signal?.aborted) {
      reject(new JobRunError(job.id, attempt, 'aborted before it started'));
      return;
    }
    const thread = new Worker(threadEntry, { workerData: data });
    let outcome: { result: unknown } | undefined;
    let failure: { reason: string; stack?: string } | undefined;
    let killTimer: NodeJS.Timeout | undefined;
    const terminateAfter = (ms: number, why?: string): void => {
      clearTimeout(killTimer);
      killTimer = setTimeout(() => {
        if (why) failure ??= { reason: why };
        void thread.terminate();
      }, ms);
    };

    const onAbort = (): void => {
      thread.postMessage({ type: 'abort' } satisfies JobParentMessage);
      if (!outcome && !failure) {
        terminateAfter(abortGraceMs, `did not stop within ${abortGraceMs} ms of its abort`);
      }
    };
    opts.signal?.addEventListener('abort', onAbort, { once: true });

    thread.on('message', (m: JobThreadMessage) => {
      if (m.type === 'progress') {
        opts.onProgress?.(m.progress);
        return;
      }
      if (m.type === 'result') outcome = { result: m.result };
      else failure ??= { reason: m.message, ...(m.stack ? { stack: m.stack } : {}) };
      terminateAfter(EXIT_GRACE_MS);
    });
    // An exception thrown in the thread outside the handler's promise arrives here.
    thread.on('error', (e) => {
      failure ??= {
        reason: `uncaught in its thread: ${e.message}`, ...(e.stack ? { stack: e.stack } : {}),
      };
    });
    thread.on('exit', (code) => {
      clearTimeout(killTimer);
      opts.signal?.removeEventListener('abort', onAbort);
      if (outcome) {
        resolve(outcome.result);
        return;
      }
      const { reason, stack } = failure ??
        { reason: `its thread exited with code ${code} before returning a result` };
      reject(new JobRunError(job.id, attempt, reason, stack));
    });
  });
}
