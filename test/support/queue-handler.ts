/**
 * @file A toy job handler for the back-end tests. It "trains" `steps` steps, each blocking its
 * thread for `stepMs` (Atomics.wait, as an ORT step blocks it), checkpoints `<dir>/<id>.json`
 * ({step}, written to a temp file and renamed) every `checkpointEvery` steps, and resumes from
 * that checkpoint. Each run appends "<attempt> <resumedFrom> <worker>" to `<dir>/<id>.starts`;
 * a finished job appends "<attempt> <worker>" to `<dir>/<id>.completions`, so a test can count
 * how often a job was started and completed. Job data can make attempt 1 kill its thread
 * (`crashAtStep`) or every run throw (`alwaysFail`).
 */
import { appendFileSync, existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { JobHandler } from '../../src/distributed/index.js';

export interface ToyJobData {
  dir: string;
  steps: number;
  checkpointEvery: number;
  stepMs: number;
  /** On attempt 1, `process.exit(1)` in the thread on reaching this step (before computing it). */
  crashAtStep?: number;
  alwaysFail?: boolean;
}

export interface ToyResult {
  id: string;
  /** The checkpoint step this run started from (0: from scratch). */
  resumedFrom: number;
  attempt: number;
  worker: string;
  /** A value that depends on every step: the sum 1 + 2 + ... + steps. */
  sum: number;
}

export const toyPaths = (dir: string, id: string) => ({
  checkpoint: join(dir, `${id}.json`),
  starts: join(dir, `${id}.starts`),
  completions: join(dir, `${id}.completions`),
});

export const runJob: JobHandler = async (job, ctx) => {
  const d = job.data as ToyJobData;
  const paths = toyPaths(d.dir, job.id);
  const saved = existsSync(paths.checkpoint)
    ? (JSON.parse(readFileSync(paths.checkpoint, 'utf8')) as { step: number; sum: number })
    : { step: 0, sum: 0 };
  const resumedFrom = saved.step;
  appendFileSync(paths.starts, `${ctx.attempt} ${resumedFrom} ${ctx.worker}\n`);
  if (d.alwaysFail) throw new Error(`toy job ${job.id} always fails`);
  const save = (step: number, sum: number): void => {
    const tmp = `${paths.checkpoint}.tmp-${process.pid}`;
    writeFileSync(tmp, JSON.stringify({ step, sum }));
    renameSync(tmp, paths.checkpoint);
  };
  const clock = new Int32Array(new SharedArrayBuffer(4));
  let sum = saved.sum;
  for (let step = saved.step + 1; step <= d.steps; step++) {
    if (step === d.crashAtStep && ctx.attempt === 1) process.exit(1);
    Atomics.wait(clock, 0, 0, d.stepMs); // the "training step": the thread's loop is blocked
    sum += step;
    if (step % d.checkpointEvery === 0) save(step, sum);
    ctx.progress({ step, steps: d.steps });
    await new Promise((resolve) => setImmediate(resolve)); // between steps, as ORT's awaits
    if (ctx.signal.aborted) {
      save(step, sum);
      ctx.signal.throwIfAborted();
    }
  }
  appendFileSync(paths.completions, `${ctx.attempt} ${ctx.worker}\n`);
  const result: ToyResult = {
    id: job.id, resumedFrom, attempt: ctx.attempt, worker: ctx.worker, sum,
  };
  return result;
};
