/** @file Benchmark harness: timing with warm-up and medians, and the report format. */

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

/** Runs fn until `minMs` has passed and at least `reps` samples exist, after `warmup` runs. */
export async function time(fn: () => Promise<unknown>, opts: { warmup?: number; reps?: number; minMs?: number } = {}):
  Promise<Timing> {
  for (let i = 0; i < (opts.warmup ?? 2); i++) await fn();
  const samples: number[] = [];
  const start = performance.now();
  while (samples.length < (opts.reps ?? 5) || performance.now() - start < (opts.minMs ?? 0)) {
    const t0 = performance.now();
    await fn();
    samples.push(performance.now() - t0);
    if (samples.length >= 200) break;
  }
  samples.sort((a, b) => a - b);
  return { medianMs: samples[Math.floor(samples.length / 2)]!, minMs: samples[0]!,
    totalMs: samples.reduce((a, b) => a + b, 0), samples: samples.length };
}

export class Report {
  readonly rows: Row[] = [];
  constructor(private readonly json: boolean) {}

  add(row: Row): void {
    this.rows.push(row);
    if (this.json) {
      console.log(JSON.stringify(row));
      return;
    }
    const v = row.value >= 100 ? row.value.toFixed(0) : row.value.toPrecision(3);
    const ratio = row.ratio === undefined ? '' : `  ${row.ratio.toFixed(2)}x ${row.ratioTo}`;
    console.log(`${row.name.padEnd(48)} ${v.padStart(9)} ${row.unit.padEnd(8)}${ratio}`);
  }

  section(title: string): void {
    if (!this.json) console.log(`\n## ${title}`);
  }
}
