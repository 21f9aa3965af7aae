/** @file Terminal progress for long work: a bar on a TTY, periodic plain lines elsewhere. */
import cliProgress from 'cli-progress';

export interface Progress {
  update(done: number, fields?: Record<string, string | number>): void;
  stop(): void;
}

/** A progress display for `total` units; `format` names the fields shown after the bar. */
export function progress(label: string, total: number, fields: string[] = []): Progress {
  const extra = fields.map((f) => `${f} {${f}}`).join(' | ');
  if (process.stderr.isTTY) {
    const bar = new cliProgress.SingleBar({
      format: `${label} [{bar}] {value}/{total} | {eta_formatted} left${extra ? ` | ${extra}` : ''}`,
      stream: process.stderr, hideCursor: true, clearOnComplete: false, etaBuffer: 50,
    }, cliProgress.Presets.shades_classic);
    bar.start(total, 0, Object.fromEntries(fields.map((f) => [f, ''])));
    return { update: (d, f) => bar.update(d, f), stop: () => bar.stop() };
  }
  // Not a terminal (CI, a log file): a line every 10% keeps logs readable, and one at least
  // every 30 s shows a long run is alive.
  let next = 0;
  let due = 0;
  return {
    update(done, f) {
      const now = performance.now();
      if (done < next && done < total && now < due) return;
      next = done + Math.max(1, Math.floor(total / 10));
      due = now + 30_000;
      const shown = f ? Object.entries(f).map(([k, v]) => `${k} ${v}`).join(', ') : '';
      process.stderr.write(`${label} ${done}/${total}${shown ? ` (${shown})` : ''}\n`);
    },
    stop() {},
  };
}
