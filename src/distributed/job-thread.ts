/**
 * @file The entry of the worker thread that runs one job (started by `thread-runner.ts`). It
 * imports the handler module named in `workerData`, calls its `runJob`, and posts what happens
 * to the parent: `progress` messages, then one `result` or one `error` (after which the thread
 * exits with code 1). A `{type: 'abort'}` message from the parent aborts `ctx.signal`; it is
 * seen between the handler's awaits, since a blocking ORT step holds this thread's loop.
 */
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import { pathToFileURL } from 'node:url';
import { setDefaultThreads } from '../engine/runtime.js';
import {
  HANDLER_EXPORT, type JobContext, type JobHandler, type JobProgress, type JobSpec,
} from './jobs.js';

/** What the parent passes in `workerData`. */
export interface JobThreadData {
  /** Absolute path or file: URL of the compiled ES module exporting `runJob`. */
  handler: string;
  job: JobSpec;
  attempt: number;
  worker: string;
  /** ONNX Runtime threads for this job's sessions (its share of the cores); absent: all. */
  threads?: number;
}

/** Messages from the thread to its parent. */
export type JobThreadMessage =
  | { type: 'progress'; progress: JobProgress }
  | { type: 'result'; result: unknown }
  | { type: 'error'; message: string; stack?: string };

/** Messages from the parent to the thread. */
export type JobParentMessage = { type: 'abort' };

async function main(): Promise<void> {
  if (isMainThread || !parentPort) throw new Error('job-thread.js runs only as a worker thread');
  const port = parentPort;
  const { handler, job, attempt, worker, threads } = workerData as JobThreadData;
  setDefaultThreads(threads);
  const aborter = new AbortController();
  port.on('message', (m: JobParentMessage) => {
    if (m.type === 'abort') {
      aborter.abort(new Error(`job '${job.id}' aborted: its worker is stopping`));
    }
  });
  // The abort listener alone must not keep the thread alive once the handler is done.
  port.unref();
  const post = (m: JobThreadMessage): void => port.postMessage(m);
  try {
    const url = handler.startsWith('file:') ? handler : pathToFileURL(handler).href;
    const mod = (await import(url)) as Record<string, unknown>;
    const runJob = mod[HANDLER_EXPORT];
    if (typeof runJob !== 'function') {
      throw new TypeError(
        `handler module ${handler} does not export a function '${HANDLER_EXPORT}'`);
    }
    const ctx: JobContext = {
      progress: (progress) => post({ type: 'progress', progress }),
      signal: aborter.signal,
      attempt,
      worker,
    };
    const result = await (runJob as JobHandler)(job, ctx);
    post({ type: 'result', result });
  } catch (e) {
    const err = e instanceof Error ? e : new Error(String(e));
    post({ type: 'error', message: err.message, ...(err.stack ? { stack: err.stack } : {}) });
    process.exitCode = 1;
  }
}

await main();
