/**
 * @file A server worker entry for fault tests: the real one (src/server/worker.ts), except
 * that a job with seed CRASH_SEED ends the thread at once, as a native crash in ONNX Runtime
 * would, and a job with seed HANG_SEED spins forever without a look at its messages, as a
 * model call that never returns would: the pool's handling of both can be checked.
 */
import { isMainThread, parentPort } from 'node:worker_threads';

// As in serve-fixtures.ts, which is not imported: it would load the pipeline layer here too.
const CRASH_SEED = 666_666;
const HANG_SEED = 777_777;

// `node --test dist/test` runs every file under a test/ folder, this one too, on the main
// thread: there it has nothing to do.
if (!isMainThread) {
  // Registered before the real entry's listener, so it sees the job first.
  parentPort?.on('message', (m: { type: string; request?: { seed?: number } }) => {
    if (m.type === 'run' && m.request?.seed === CRASH_SEED) process.exit(7);
    if (m.type === 'run' && m.request?.seed === HANG_SEED) for (;;);
  });
  await import('../../src/server/worker.js');
}
