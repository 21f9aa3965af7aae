/**
 * @file How `diffuse train` and `diffuse distill` run their loop in a terminal: a progress bar
 * with the smoothed loss and the rate, a line per sample grid, and Ctrl-C or SIGTERM finishing
 * the step and writing a checkpoint, then exiting as interrupted with the resume command.
 */
import { join } from 'node:path';
import type { TrainEvents, TrainResult } from '../pipelines/training-loop.js';
import { Interrupted } from './errors.js';
import { progress } from './progress.js';

/** An AbortSignal raised by the first SIGINT or SIGTERM (with a note on stderr); `release`
 *  removes the handlers. */
export function stopOnSignal(): { signal: AbortSignal; release: () => void } {
  const stop = new AbortController();
  const onSignal = () => {
    process.stderr.write('\nstopping after this step; writing a checkpoint...\n');
    stop.abort();
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  return {
    signal: stop.signal,
    release: () => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    },
  };
}

/**
 * Runs `loop` (a train or distill call given these events) under a progress bar labelled
 * `label` over `steps` steps, the loss shown by `formatLoss`. An interrupted run throws
 * Interrupted naming the checkpoint and `diffuse <command> --out <out> --resume`.
 */
export async function runInTerminal<R extends TrainResult>(command: string, label: string,
  steps: number, out: string, formatLoss: (loss: number) => string,
  loop: (ev: Omit<TrainEvents, 'beforeCheckpoint'>) => Promise<R>): Promise<R> {
  const stop = stopOnSignal();
  const bar = progress(label, steps, ['loss', 'img/s']);
  try {
    const r = await loop({
      signal: stop.signal,
      onPrepare: (what, done, total) => {
        if (done === total) process.stderr.write(`${what}: ${total} done\n`);
      },
      onStep: (s) => bar.update(s.step, { loss: formatLoss(s.smoothed),
        'img/s': s.imagesPerSecond.toFixed(1) }),
      onSample: (step, path) => process.stderr.write(`\nstep ${step}: samples in ${path}\n`),
    });
    if (r.interrupted) {
      throw new Interrupted(`interrupted at step ${r.state.step}; checkpoint in ` +
        `${join(out, 'checkpoint')}. Continue with: diffuse ${command} --out ${out} --resume ` +
        '(and the same options)');
    }
    return r;
  } finally {
    bar.stop();
    stop.release();
  }
}
