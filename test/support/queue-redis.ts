/**
 * @file A Redis server for the Redis back-end tests, and worker processes to point at it.
 * DIFFUSE_TEST_REDIS (a redis:// URL) names a server to use; otherwise a `redis-server` on PATH
 * is started on a free loopback port, without persistence, in a temp folder, and stopped
 * afterwards; otherwise the tests are skipped with REDIS_SKIP_REASON.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

export const REDIS_SKIP_REASON = 'no Redis: set DIFFUSE_TEST_REDIS=redis://127.0.0.1:6379 (a '
  + 'scratch server; each test uses its own queue) or put redis-server on PATH '
  + '(apt-get install redis-server) to run the Redis back-end tests';

export interface TestRedis { url: string; stop(): Promise<void> }

/** A loopback port nothing listens on (at the moment of asking). */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

async function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => { socket.destroy(); resolve(true); });
    socket.once('error', () => resolve(false));
  });
}

/** The server to test against, or why there is none. */
export async function testRedis(): Promise<TestRedis | { skip: string }> {
  const given = process.env['DIFFUSE_TEST_REDIS'];
  if (given) return { url: given, stop: async () => undefined };
  if (spawnSync('redis-server', ['--version']).error) return { skip: REDIS_SKIP_REASON };
  const dir = await mkdtemp(join(tmpdir(), 'diffuse-redis-'));
  const port = await freePort();
  const server = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1',
    '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: 'ignore' });
  const exited = new Promise((resolve) => server.once('exit', resolve));
  const stop = async (): Promise<void> => {
    if (server.exitCode === null && server.signalCode === null) server.kill('SIGTERM');
    await exited;
    await rm(dir, { recursive: true, force: true });
  };
  for (const started = Date.now(); !(await listening(port));) {
    if (server.exitCode !== null || Date.now() - started > 10_000) {
      await stop();
      throw new Error(`redis-server did not start on port ${port}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return { url: `redis://127.0.0.1:${port}`, stop };
}

/** A `queue-worker.js` child process and the JSON lines it has printed. */
export interface WorkerProcess {
  child: ChildProcess;
  pid: number;
  lines: Record<string, unknown>[];
  /** Resolves once the worker is connected and taking jobs. */
  ready: Promise<void>;
  exited: Promise<number | null>;
}

const workerScript = fileURLToPath(new URL('./queue-worker.js', import.meta.url));

export function spawnQueueWorker(url: string, queue: string, lockSeconds: number): WorkerProcess {
  const child = spawn(process.execPath, [workerScript, url, queue, String(lockSeconds)],
    { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines: Record<string, unknown>[] = [];
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  const ready = new Promise<void>((resolve, reject) => {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      const event = JSON.parse(line) as Record<string, unknown>;
      lines.push(event);
      if (event['type'] === 'ready') resolve();
    });
    void exited.then((code) => reject(new Error(`queue worker exited (${code}) before ready`)));
  });
  ready.catch(() => undefined);
  return { child, pid: child.pid!, lines, ready, exited };
}
