/**
 * @file `npm run loadtest [-- --model DIR] [-- --requests 200] [-- --concurrency 50] ...`:
 * load on `diffuse serve`. It starts the server as its own process (or uses `--url`), then
 * `concurrency` clients submit `requests` sampling jobs in all; a client that gets 429 waits
 * the Retry-After it was given and submits again, and follows each accepted job on its event
 * stream to the end. Some clients leave the stream mid-job (`--leave-every`) and poll instead,
 * some cancel their job at its first progress event (`--cancel-every`). Meanwhile /healthz is
 * asked every 50 ms. The report: throughput, p50/p99 job latency (202 to the final event), the
 * 429 count, /healthz latency while sampling, and the exactly-once checks: every accepted job
 * ended once, as the server says it ended, each started at most once (the server's counters),
 * and every done job's PNG is there. Exit code 1 if a check fails.
 *
 * The fault test (test/faults/serve.test.ts) runs the same load, smaller, on a tiny model.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { quantile } from '../src/server/metrics.js';
import { parseSse } from '../src/server/sse.js';
import { packageRoot } from '../src/util/package-root.js';

// ---- a server process ----

export interface ServeProcess {
  /** Base URL, `http://127.0.0.1:PORT`. */
  url: string;
  child: ChildProcess;
  /** Everything it printed so far. */
  output(): { stdout: string; stderr: string };
  /** Sends `signal` and waits for the exit. */
  stop(signal?: NodeJS.Signals): Promise<ServeExit>;
  /** Resolves when it exits. */
  exited: Promise<ServeExit>;
}

export interface ServeExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** The command line that runs `diffuse serve`. */
export function serveCommand(): string[] {
  return [join(packageRoot(), 'bin', 'diffuse.js'), 'serve'];
}

/** Runs `diffuse serve ARGS` (add `--port 0` for a free port) and waits for its URL. */
export function startServe(args: readonly string[], timeoutMs = 60_000): Promise<ServeProcess> {
  const child = spawn(process.execPath, [...serveCommand(), ...args],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NO_COLOR: '1' } });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => { stdout += d.toString(); });
  child.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
  const exited = new Promise<ServeExit>((resolve) => {
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`diffuse serve printed no URL within ${timeoutMs} ms:\n${stdout}${stderr}`));
    }, timeoutMs);
    const look = (): void => {
      const m = /listening on (http:\/\/\S+)/.exec(stdout);
      if (!m) return;
      clearTimeout(timer);
      child.stdout!.off('data', look);
      resolve({ url: m[1]!, child, exited, output: () => ({ stdout, stderr }),
        stop: (signal = 'SIGTERM') => {
          child.kill(signal);
          return exited;
        } });
    };
    child.stdout!.on('data', look);
    void exited.then((e) => {
      clearTimeout(timer);
      reject(new Error(`diffuse serve exited (${e.code ?? e.signal}) before listening:\n${e.stdout}${e.stderr}`));
    });
  });
}

// ---- the load ----

export interface LoadOptions {
  /** The server's base URL. */
  url: string;
  requests: number;
  concurrency: number;
  /** The body of request i. */
  body: (i: number) => Record<string, unknown>;
  token?: string;
  /** Every k-th job's client leaves its event stream after the first progress event and
   *  polls GET /v1/jobs/ID instead (0: none). */
  leaveEvery?: number;
  /** Every k-th job's client cancels it at its first progress event (0: none). */
  cancelEvery?: number;
  /** Clients stop submitting after this long; accepted jobs then get `drainMs` to end. */
  submitForMs?: number;
  drainMs?: number;
  /** The longest wait a 429's Retry-After may impose before the next try. */
  maxRetryWaitMs?: number;
}

export interface LoadReport {
  seconds: number;
  accepted: number;
  /** Jobs by the state they ended in, as their clients saw it. */
  ended: { done: number; failed: number; cancelled: number };
  rejected429: number;
  /** Responses other than 202/429 to submissions, or network errors: should be none. */
  errors: string[];
  jobsPerSecond: number;
  imagesPerSecond: number;
  /** Milliseconds from 202 to the done event, over done jobs. */
  latencyMs: { p50: number; p99: number; max: number };
  healthz: { count: number; p50Ms: number; p99Ms: number; maxMs: number; failures: number;
    /** Answers given while a worker was busy. */
    whileBusy: number };
  /** Jobs whose clients left the event stream mid-job, and how they ended. */
  left: { count: number; done: number };
  /** Jobs cancelled at their first progress event, and how many ended cancelled. */
  cancels: { count: number; cancelled: number };
  /** Everything the exactly-once checks found wrong: empty when every job was accepted once,
   *  ended once, as the server says, and ran at most once. */
  problems: string[];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const percentile = (values: readonly number[], q: number): number =>
  quantile([...values].sort((a, b) => a - b), q);

/** The `diffuse_jobs_total` and `diffuse_rejected_total` counters of /metrics. */
async function counters(url: string): Promise<Record<string, number>> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^diffuse_(jobs|rejected)_total\{\w+="(\w+)"\} (\d+)$/gm)) {
    out[`${m[1]}.${m[2]}`] = Number(m[3]);
  }
  return out;
}

type Final = 'done' | 'failed' | 'cancelled';
const FINALS = new Set(['done', 'failed', 'cancelled']);

interface Followed {
  id: string;
  final?: Final;
  /** Final events or final states seen for this job (1 when all is well). */
  ends: number;
  acceptedAt: number;
  endedAt?: number;
  n: number;
  mode: 'stay' | 'leave' | 'cancel';
}

export async function runLoad(o: LoadOptions): Promise<LoadReport> {
  const auth: Record<string, string> = o.token ? { authorization: `Bearer ${o.token}` } : {};
  const json = { ...auth, 'content-type': 'application/json' };
  const before = await counters(o.url);
  const start = performance.now();
  const submitUntil = start + (o.submitForMs ?? Infinity);
  const jobs: Followed[] = [];
  const errors: string[] = [];
  let rejected = 0;
  let next = 0;

  // /healthz every 50 ms until the load ends.
  const health = { lat: [] as number[], failures: 0, whileBusy: 0 };
  let loadDone = false;
  const healthLoop = (async () => {
    while (!loadDone) {
      const t = performance.now();
      try {
        const r = await fetch(`${o.url}/healthz`);
        const h = (await r.json()) as { ok: boolean; workers: { busy: number } };
        health.lat.push(performance.now() - t);
        if (r.status !== 200 || !h.ok) health.failures++;
        else if (h.workers.busy > 0) health.whileBusy++;
      } catch {
        health.failures++;
      }
      await sleep(50);
    }
  })();

  const follow = async (job: Followed): Promise<void> => {
    const seen = (state: Final): void => {
      job.ends++;
      job.final ??= state;
      job.endedAt ??= performance.now();
    };
    const stream = new AbortController();
    let left = false;
    try {
      const res = await fetch(`${o.url}/v1/jobs/${job.id}/events`, { headers: auth, signal: stream.signal });
      if (res.status !== 200 || !res.body) throw new Error(`events: ${res.status}`);
      const decoder = new TextDecoder();
      let rest = '';
      let cancelled = false;
      for await (const chunk of res.body) {
        const parsed = parseSse(rest + decoder.decode(chunk as Uint8Array, { stream: true }));
        rest = parsed.rest;
        for (const e of parsed.events) {
          if (FINALS.has(e.event)) seen(e.event as Final);
          else if (job.mode === 'leave') {
            left = true; // what follows in this chunk is not read: the client is gone
            stream.abort();
            break;
          } else if (job.mode === 'cancel' && !cancelled) {
            cancelled = true;
            const d = await fetch(`${o.url}/v1/jobs/${job.id}`, { method: 'DELETE', headers: auth });
            // 409: it ended first, which the stream will say.
            if (![200, 202, 409].includes(d.status)) errors.push(`DELETE ${job.id}: ${d.status}`);
          }
        }
        if (left) break;
      }
    } catch (e) {
      if (!left) errors.push(`events of ${job.id}: ${(e as Error).message}`);
    }
    if (!left) return;
    // Left the stream: the job runs on; poll for its end.
    for (;;) {
      const r = await fetch(`${o.url}/v1/jobs/${job.id}`, { headers: auth });
      const s = (await r.json()) as { state: string };
      if (FINALS.has(s.state)) {
        seen(s.state as Final);
        return;
      }
      await sleep(100);
    }
  };

  const client = async (): Promise<void> => {
    while (next < o.requests && performance.now() < submitUntil) {
      const i = next++;
      const body = o.body(i);
      for (;;) {
        let r: Response;
        try {
          r = await fetch(`${o.url}/v1/samples`, { method: 'POST', headers: json, body: JSON.stringify(body) });
        } catch (e) {
          errors.push(`POST ${i}: ${(e as Error).message}`);
          break;
        }
        if (r.status === 429) {
          rejected++;
          await r.body?.cancel();
          const after = Number(r.headers.get('retry-after'));
          if (!(after >= 1)) errors.push(`429 without a Retry-After of whole seconds: ${r.headers.get('retry-after')}`);
          await sleep(Math.min(o.maxRetryWaitMs ?? 2000, (after || 1) * 1000));
          if (performance.now() >= submitUntil) break;
          continue;
        }
        if (r.status !== 202) {
          errors.push(`POST ${i}: ${r.status} ${await r.text()}`);
          break;
        }
        const { id } = (await r.json()) as { id: string };
        const k = i + 1;
        const mode = o.cancelEvery && k % o.cancelEvery === 0 ? 'cancel'
          : o.leaveEvery && k % o.leaveEvery === 0 ? 'leave' : 'stay';
        const job: Followed = { id, ends: 0, acceptedAt: performance.now(),
          n: Number(body.n ?? 64), mode };
        jobs.push(job);
        await follow(job);
        break;
      }
    }
  };

  const clients = Promise.all(Array.from({ length: o.concurrency }, client));
  let drainTimer: NodeJS.Timeout | undefined;
  const drain = new Promise<string>((resolve) => {
    drainTimer = setTimeout(() => resolve('timeout'), (o.submitForMs ?? 0) + (o.drainMs ?? 120_000));
  });
  const finished = await Promise.race([clients.then(() => 'done'), drain]);
  clearTimeout(drainTimer);
  const seconds = (performance.now() - start) / 1000;
  loadDone = true;
  await healthLoop;

  // ---- the exactly-once checks ----
  const problems: string[] = [];
  if (finished === 'timeout') problems.push('the clients did not finish within the time given');
  const ids = new Set(jobs.map((j) => j.id));
  if (ids.size !== jobs.length) problems.push(`${jobs.length - ids.size} job ids were handed out twice`);
  let started = 0;
  for (const j of jobs) {
    if (j.ends !== 1) problems.push(`job ${j.id} ended ${j.ends} times`);
    const r = await fetch(`${o.url}/v1/jobs/${j.id}`, { headers: auth });
    const s = (await r.json()) as { state: string; startedAt?: string; error?: string };
    if (s.state !== j.final) problems.push(`job ${j.id}: its client saw ${j.final}, the server says ${s.state}`);
    if (s.startedAt) started++;
    if (s.state === 'failed') problems.push(`job ${j.id} failed: ${s.error}`);
    if (s.state === 'done') {
      const png = await fetch(`${o.url}/v1/jobs/${j.id}/result`, { headers: auth });
      const bytes = new Uint8Array(await png.arrayBuffer());
      if (png.status !== 200 || bytes[1] !== 0x50 || bytes[2] !== 0x4e || bytes[3] !== 0x47) {
        problems.push(`job ${j.id}: its result is ${png.status}, not a PNG`);
      }
    }
  }
  const after = await counters(o.url);
  const delta = (k: string) => (after[k] ?? 0) - (before[k] ?? 0);
  const ended = { done: 0, failed: 0, cancelled: 0 };
  for (const j of jobs) if (j.final) ended[j.final]++;
  const expect: [string, number][] = [['jobs.queued', jobs.length], ['jobs.running', started],
    ['jobs.done', ended.done], ['jobs.failed', ended.failed], ['jobs.cancelled', ended.cancelled],
    ['rejected.queue_full', rejected]];
  for (const [k, want] of expect) {
    if (delta(k) !== want) problems.push(`the server counted ${delta(k)} ${k}, the clients ${want}`);
  }
  const done = jobs.filter((j) => j.final === 'done');
  const latency = done.map((j) => j.endedAt! - j.acceptedAt);
  const images = done.reduce((a, j) => a + j.n, 0);
  const leftJobs = jobs.filter((j) => j.mode === 'leave');
  const cancelJobs = jobs.filter((j) => j.mode === 'cancel');
  return {
    seconds, accepted: jobs.length, ended, rejected429: rejected, errors,
    jobsPerSecond: done.length / seconds, imagesPerSecond: images / seconds,
    latencyMs: { p50: percentile(latency, 0.5), p99: percentile(latency, 0.99),
      max: Math.max(0, ...latency) },
    healthz: { count: health.lat.length, p50Ms: percentile(health.lat, 0.5),
      p99Ms: percentile(health.lat, 0.99), maxMs: Math.max(0, ...health.lat),
      failures: health.failures, whileBusy: health.whileBusy },
    left: { count: leftJobs.length, done: leftJobs.filter((j) => j.final === 'done').length },
    cancels: { count: cancelJobs.length,
      cancelled: cancelJobs.filter((j) => j.final === 'cancelled').length },
    problems,
  };
}

// ---- the command ----

async function main(): Promise<void> {
  const { values: a } = parseArgs({ options: {
    model: { type: 'string', default: join(packageRoot(), 'models', 'mnist-unet') },
    url: { type: 'string' },
    requests: { type: 'string', default: '200' },
    concurrency: { type: 'string', default: '50' },
    n: { type: 'string', default: '2' },
    steps: { type: 'string', default: '4' },
    workers: { type: 'string', default: '1' },
    queue: { type: 'string', default: '32' },
    'leave-every': { type: 'string', default: '10' },
    'cancel-every': { type: 'string', default: '0' },
    token: { type: 'string' },
  } });
  const num = (k: keyof typeof a): number => {
    const v = Number(a[k]);
    if (!Number.isInteger(v) || v < 0) throw new RangeError(`--${k}: expected a whole number, got '${a[k]}'`);
    return v;
  };
  const [n, steps] = [num('n'), num('steps')];
  const server = a.url ? undefined : await startServe(['--model', a.model!, '--port', '0',
    '--workers', String(num('workers')), '--queue', String(num('queue')),
    ...(a.token ? ['--token', a.token] : [])]);
  const url = a.url ?? server!.url;
  console.log(`load: ${num('requests')} jobs (n ${n}, ${steps} steps), ${num('concurrency')} in ` +
    `flight, against ${url}${server ? ` (diffuse serve --model ${a.model}, ${num('workers')} ` +
    `worker(s), queue ${num('queue')})` : ''}`);
  try {
    const r = await runLoad({ url, requests: num('requests'), concurrency: num('concurrency'),
      body: (i) => ({ n, steps, seed: i }), leaveEvery: num('leave-every'),
      cancelEvery: num('cancel-every'), drainMs: 600_000,
      ...(a.token ? { token: a.token } : {}) });
    const f = (x: number, d = 0) => x.toFixed(d);
    console.log(`${r.accepted} accepted in ${f(r.seconds, 1)} s: ${r.ended.done} done, ` +
      `${r.ended.cancelled} cancelled, ${r.ended.failed} failed; ${r.rejected429} answers 429`);
    console.log(`throughput ${f(r.jobsPerSecond, 2)} jobs/s, ${f(r.imagesPerSecond, 2)} images/s`);
    console.log(`job latency (202 to done) p50 ${f(r.latencyMs.p50)} ms, p99 ${f(r.latencyMs.p99)} ms, ` +
      `max ${f(r.latencyMs.max)} ms`);
    console.log(`/healthz while sampling: ${r.healthz.count} answers (${r.healthz.whileBusy} with a ` +
      `worker busy), p50 ${f(r.healthz.p50Ms, 1)} ms, p99 ${f(r.healthz.p99Ms, 1)} ms, max ` +
      `${f(r.healthz.maxMs, 1)} ms, ${r.healthz.failures} failures`);
    console.log(`clients that left the event stream mid-job: ${r.left.count} (${r.left.done} of ` +
      `their jobs done)`);
    for (const e of r.errors.slice(0, 10)) console.log(`error: ${e}`);
    for (const p of r.problems.slice(0, 20)) console.log(`problem: ${p}`);
    const ok = r.problems.length === 0 && r.errors.length === 0;
    console.log(ok ? 'every accepted job ended exactly once, as the server says; none ran twice'
      : `FAILED: ${r.problems.length} problems, ${r.errors.length} errors`);
    process.exitCode = ok ? 0 : 1;
  } finally {
    if (server) {
      const e = await server.stop('SIGTERM');
      if (e.code !== 0) console.log(`the server exited with ${e.code ?? e.signal}:\n${e.stderr}`);
    }
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await main();
