/**
 * @file A worker process for the Redis back-end tests:
 * `node dist/test/support/queue-worker.js <redis-url> <queue> <lockSeconds>` runs
 * startRedisWorker with the toy handler (queue-handler.ts), one slot, until SIGTERM. It prints
 * one JSON line per event to stdout, the first being {"type":"ready","pid":...}.
 */
import { fileURLToPath } from 'node:url';
import { startRedisWorker } from '../../src/distributed/index.js';

const [url, queue, lockSeconds] = process.argv.slice(2);
// `node --test dist/test` runs every file under a test/ folder, this one too, without
// arguments: that is not a usage error.
if (!url && process.env['NODE_TEST_CONTEXT']) process.exit(0);
if (!url || !queue || !lockSeconds) {
  console.error('usage: node queue-worker.js <redis-url> <queue> <lockSeconds>');
  process.exit(2);
}
const say = (line: object): void => void process.stdout.write(`${JSON.stringify(line)}\n`);
const worker = await startRedisWorker({
  url, queue, concurrency: 1, lockSeconds: Number(lockSeconds),
  handler: fileURLToPath(new URL('./queue-handler.js', import.meta.url)),
  onEvent: say,
});
process.once('SIGTERM', () => {
  void worker.close().then(() => process.exit(0));
});
say({ type: 'ready', pid: process.pid, name: worker.name });
