/** @file Benchmark harness: timing with warm-up and medians, and the report format. */
import { readFileSync } from 'node:fs';

export interface Row {
  name: string;
  value: number;
  unit: string;
  /** value divided by a reference figure, and what that reference is. */
  ratio?: number;
  ratioTo?: string;
}

export interface Timing {
  medianMs: number;
  totalMs: number;
  minMs: number;
  samples: number;
}

/** Busy CPU time of the whole machine so far (ms, all cores; Linux /proc/stat, else 0). */
function machineBusyMs(): number {
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    return (f.reduce((a, b) => a + b, 0) - f[3]! - f[4]!) * 10;
  } catch {
    return 0;
  }
}

/** Other processes' CPU use while this one ran: totals over all time() samples. */
export const load = { foreignMs: 0, wallMs: 0, dropped: 0, quiet: false };

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function waitQuiet(maxMs: number): Promise<void> {
  const end = performance.now() + maxMs;
  while (performance.now() < end) {
    const b0 = machineBusyMs();
    await sleep(300);
    if (machineBusyMs() - b0 < 60) return;
  }
}

/** Runs fn until `minMs` has passed and at least `reps` samples exist, after `warmup` runs.
 *  Each sample records how much CPU other processes used meanwhile (`load`); with
 *  `load.quiet` set (`--quiet`), it waits for an idle machine first and drops samples during
 *  which others used more than 15% of a core (at most 3 tries per sample). */
export async function time(fn: () => Promise<unknown>, opts: { warmup?: number; reps?: number; minMs?: number } = {}):
  Promise<Timing> {
  for (let i = 0; i < (opts.warmup ?? 2); i++) await fn();
  const samples: number[] = [];
  const start = performance.now();
  while (samples.length < (opts.reps ?? 5) || performance.now() - start < (opts.minMs ?? 0)) {
    for (let tries = 0; ; tries++) {
      if (load.quiet) await waitQuiet(30_000);
      const c0 = process.cpuUsage();
      const b0 = machineBusyMs();
      const t0 = performance.now();
      await fn();
      const wall = performance.now() - t0;
      const c = process.cpuUsage(c0);
      const foreign = Math.max(0, machineBusyMs() - b0 - (c.user + c.system) / 1000);
      if (load.quiet && foreign > 0.15 * wall + 20 && tries < 2) {
        load.dropped++;
        continue;
      }
      load.foreignMs += foreign;
      load.wallMs += wall;
      samples.push(wall);
      break;
    }
    if (samples.length >= 200) break;
  }
  samples.sort((a, b) => a - b);
  return { medianMs: samples[Math.floor(samples.length / 2)]!, minMs: samples[0]!,
    totalMs: samples.reduce((a, b) => a + b, 0), samples: samples.length };
}

export class Report {
  readonly rows: Row[] = [];
  /** `silent`: collect rows without printing them (a round of a repeated comparison). */
  constructor(private readonly json: boolean, private readonly opts: { silent?: boolean } = {}) {}

  add(row: Row): void {
    this.rows.push(row);
    if (this.opts.silent) return;
    if (this.json) {
      console.log(JSON.stringify(row));
      return;
    }
    const v = row.value >= 100 ? row.value.toFixed(0)
      : row.value !== 0 && Math.abs(row.value) < 1e-3 ? row.value.toExponential(2) : row.value.toPrecision(3);
    const ratio = row.ratio === undefined ? '' : `  ${row.ratio.toFixed(2)}x ${row.ratioTo}`;
    console.log(`${row.name.padEnd(48)} ${v.padStart(9)} ${row.unit.padEnd(8)}${ratio}`);
  }

  section(title: string): void {
    if (!this.json && !this.opts.silent) console.log(`\n## ${title}`);
  }
}
