/**
 * @file The server's counters and their Prometheus text exposition (format 0.0.4, written by
 * hand: a few lines). Counters are cumulative over the server's life, unlike the job store,
 * which forgets old jobs; gauges (queue depth, workers) are read at scrape time from the
 * store and the pool.
 *
 *     diffuse_queue_depth                   gauge    jobs waiting for a worker
 *     diffuse_jobs_total{state="..."}       counter  jobs that reached each state
 *     diffuse_rejected_total{reason="..."}  counter  sample requests refused (queue_full)
 *     diffuse_seconds_per_image             summary  sampling seconds / images, one per done job
 *     diffuse_workers, diffuse_workers_busy gauge    worker threads alive, and running a job
 */
import type { JobState } from './jobs.js';

/** The states a job can reach, in the order the exposition lists them. */
export const JOB_STATES: readonly JobState[] = ['queued', 'running', 'done', 'failed', 'cancelled'];

/** The summary's quantiles, over the last WINDOW done jobs. */
const QUANTILES = [0.5, 0.9, 0.99] as const;
const WINDOW = 256;

/** What the pool and the store say at scrape time. */
export interface Gauges {
  queueDepth: number;
  workers: number;
  workersBusy: number;
}

export class Metrics {
  private readonly jobs = new Map<JobState, number>(JOB_STATES.map((s) => [s, 0]));
  private readonly rejected = new Map<string, number>([['queue_full', 0]]);
  private readonly recent: number[] = [];
  private sum = 0;
  private count = 0;

  /** A job reached `state` (queued: accepted; running: handed to a worker). */
  reached(state: JobState): void {
    this.jobs.set(state, (this.jobs.get(state) ?? 0) + 1);
  }

  /** A sample request was refused before it became a job. */
  reject(reason: 'queue_full'): void {
    this.rejected.set(reason, (this.rejected.get(reason) ?? 0) + 1);
  }

  /** A done job's sampling time per image. */
  observeSecondsPerImage(seconds: number): void {
    this.recent.push(seconds);
    if (this.recent.length > WINDOW) this.recent.shift();
    this.sum += seconds;
    this.count++;
  }

  /** How many jobs reached `state` so far. */
  total(state: JobState): number {
    return this.jobs.get(state) ?? 0;
  }

  /** The Prometheus text exposition of everything. */
  render(g: Gauges): string {
    const lines: string[] = [];
    const head = (name: string, type: string, help: string) =>
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    head('diffuse_queue_depth', 'gauge', 'Sample jobs waiting for a worker.');
    lines.push(`diffuse_queue_depth ${g.queueDepth}`);
    head('diffuse_jobs_total', 'counter', 'Sample jobs that reached each state ' +
      '(queued: accepted, running: started).');
    for (const [state, n] of this.jobs) lines.push(`diffuse_jobs_total{state="${state}"} ${n}`);
    head('diffuse_rejected_total', 'counter', 'Sample requests refused before becoming a job.');
    for (const [reason, n] of this.rejected) {
      lines.push(`diffuse_rejected_total{reason="${reason}"} ${n}`);
    }
    head('diffuse_seconds_per_image', 'summary', 'Sampling wall time per image of done jobs ' +
      `(one observation per job; quantiles over the last ${WINDOW}).`);
    const sorted = [...this.recent].sort((a, b) => a - b);
    for (const q of QUANTILES) {
      lines.push(`diffuse_seconds_per_image{quantile="${q}"} ${number(quantile(sorted, q))}`);
    }
    lines.push(`diffuse_seconds_per_image_sum ${number(this.sum)}`,
      `diffuse_seconds_per_image_count ${this.count}`);
    head('diffuse_workers', 'gauge', 'Worker threads with the model loaded.');
    lines.push(`diffuse_workers ${g.workers}`);
    head('diffuse_workers_busy', 'gauge', 'Worker threads running a job.');
    lines.push(`diffuse_workers_busy ${g.workersBusy}`);
    return `${lines.join('\n')}\n`;
  }
}

/** The q-quantile of sorted values (nearest rank); NaN when there are none, as Prometheus
 *  clients write an empty summary. */
export function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

/** Prometheus spells the special values NaN, +Inf, -Inf. */
function number(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (!Number.isFinite(v)) return v > 0 ? '+Inf' : '-Inf';
  return String(v);
}
