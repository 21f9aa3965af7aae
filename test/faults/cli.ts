/**
 * @file Runs the built `diffuse` command as a user would (bin/diffuse.js in a child process)
 * and reports what a fault test asserts on: exit code, output, seconds and peak memory. The
 * child preloads report-rss.js, which writes its peak resident set size when it exits.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { repoRoot } from '../support/paths.js';

const BIN = join(repoRoot, 'bin', 'diffuse.js');
const PRELOAD = fileURLToPath(new URL('./report-rss.js', import.meta.url));

export interface CliResult {
  /** Exit code, or null when a signal ended the child. */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  seconds: number;
  /** Peak resident set size in MiB (native memory included); NaN when the child died before
   *  its exit handlers ran (a SIGKILL, a V8 out-of-memory abort). */
  peakMiB: number;
}

export interface CliOptions {
  cwd?: string;
  env?: Record<string, string>;
  /** Kill the child (SIGKILL) after this many ms; the result then has signal 'SIGKILL'. */
  timeoutMs?: number;
  /** Send SIGINT once stdout or stderr matches this. */
  interruptOn?: RegExp;
  /** Send SIGINT after this many ms. */
  interruptAfterMs?: number;
  /** Called with all output so far (stdout then stderr) and the child's pid each time the
   *  child writes: a test can pause it (SIGSTOP) at a given point, or signal it. */
  onOutput?: (output: string, pid: number) => void;
}

export function runCli(args: readonly string[], o: CliOptions = {}): Promise<CliResult> {
  const scratch = mkdtempSync(join(tmpdir(), 'diffuse-rss-'));
  const rssFile = join(scratch, 'rss');
  const start = performance.now();
  const child = spawn(process.execPath, ['--import', PRELOAD, BIN, ...args], {
    cwd: o.cwd ?? repoRoot,
    env: { ...process.env, ...o.env, DIFFUSE_RSS_FILE: rssFile, NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  let interrupted = false;
  const watch = (): void => {
    o.onOutput?.(stdout + stderr, child.pid!);
    if (o.interruptOn && !interrupted && o.interruptOn.test(stdout + stderr)) {
      interrupted = true;
      child.kill('SIGINT');
    }
  };
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); watch(); });
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); watch(); });
  const timer = o.timeoutMs === undefined ? undefined
    : setTimeout(() => child.kill('SIGKILL'), o.timeoutMs);
  const interrupt = o.interruptAfterMs === undefined ? undefined
    : setTimeout(() => child.kill('SIGINT'), o.interruptAfterMs);
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      if (interrupt) clearTimeout(interrupt);
      const peakMiB = existsSync(rssFile) ? Number(readFileSync(rssFile, 'utf8')) / 1024 : NaN;
      rmSync(scratch, { recursive: true, force: true });
      resolve({ code, signal, stdout, stderr, seconds: (performance.now() - start) / 1000,
        peakMiB });
    });
  });
}

/** The one line a failed command printed for the user (`diffuse: ...`), or the whole stderr
 *  when there is not exactly one such line. */
export function errorLine(r: CliResult): string {
  const lines = r.stderr.split('\n').filter((l) => l.startsWith('diffuse: '));
  return lines.length === 1 ? lines[0]! : r.stderr;
}

/** True when stderr holds something a user should never see: a stack trace or a runtime
 *  dump (V8's fatal errors, ONNX Runtime's allocator messages). */
export function looksLikeACrash(stderr: string): boolean {
  return /^\s+at .+[(:]\d+|FATAL ERROR|Allocation failed|bad_alloc|onnxruntime::|\[E:onnxruntime/m
    .test(stderr);
}

/** Limits of the issue: a failure is reported in seconds, and no run grows past 1.5 GB. */
export const MAX_FAIL_SECONDS = 15;
export const MAX_MIB = 1536;

/** The largest peak RSS of the runs checked so far (a suite prints it at the end). */
export const largestPeak = { MiB: 0 };

/** What every run must satisfy, failed or not: no crash dump, bounded memory. */
export function assertSane(r: CliResult, what: string): void {
  assert.ok(!looksLikeACrash(r.stderr), `${what}: a crash dump on stderr:\n${r.stderr}`);
  if (!Number.isNaN(r.peakMiB)) assert.ok(r.peakMiB < MAX_MIB, `${what}: peak RSS ${r.peakMiB} MiB`);
  largestPeak.MiB = Math.max(largestPeak.MiB, r.peakMiB || 0);
}

export function assertOk(r: CliResult, what: string): void {
  assertSane(r, what);
  assert.equal(r.code, 0, `${what}: exit ${r.code} (${r.signal}):\n${r.stderr}`);
}

/** A failure: exit `code`, one `diffuse: ` line matching `line`, quickly. Returns the line. */
export function assertFails(r: CliResult, code: number, line: RegExp, what: string): string {
  assertSane(r, what);
  assert.equal(r.code, code, `${what}: exit ${r.code} (${r.signal}):\n${r.stderr}`);
  const l = errorLine(r);
  assert.ok(l.startsWith('diffuse: ') && !l.includes('\n'), `${what}: not one line:\n${r.stderr}`);
  assert.match(l, line, what);
  assert.ok(r.seconds < MAX_FAIL_SECONDS, `${what}: took ${r.seconds.toFixed(1)} s`);
  return l;
}

