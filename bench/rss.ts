/**
 * @file Peak resident memory of one phase, in a fresh process (peak RSS only grows, so each
 * phase needs its own): `node dist/bench/rss.js --model unet|dit-pixel|dit-latent --phase
 * train|sample` runs three training steps at batch 64, or one DDIM-50 x 64, of the model
 * models.ts benchmarks, and prints one JSON line, {model, phase, peak_rss_mb}, as the peer's
 * `diffusers_peer.py --phase train|sample` does. `peakRss` runs it from the bench.
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { cpuRowsPerCall, ditBenchModel, ddimTime, inferenceFn, trainStepFor, unetBenchModel, type BenchModel } from './models.js';

export type RssPhase = 'train' | 'sample';
export const BENCH_MODEL_KEYS = ['unet', 'dit-pixel', 'dit-latent'] as const;
export type BenchModelKey = (typeof BENCH_MODEL_KEYS)[number];

export function benchModel(key: BenchModelKey): BenchModel {
  if (key === 'unet') return unetBenchModel();
  return ditBenchModel(key === 'dit-pixel' ? 'pixel' : 'latent');
}

/** Peak RSS in MiB of `phase` for `model`, measured in a child process. */
export async function peakRss(model: BenchModelKey, phase: RssPhase): Promise<number> {
  const { stdout } = await promisify(execFile)(process.execPath,
    [fileURLToPath(import.meta.url), '--model', model, '--phase', phase], { maxBuffer: 1 << 20 });
  const line = JSON.parse(stdout.trim().split('\n').at(-1)!) as { peak_rss_mb: number };
  return line.peak_rss_mb;
}

async function main(argv: string[]): Promise<void> {
  const arg = (name: string) => argv[argv.indexOf(name) + 1];
  const key = arg('--model') as BenchModelKey;
  const phase = arg('--phase') as RssPhase;
  if (!BENCH_MODEL_KEYS.includes(key) || !['train', 'sample'].includes(phase)) {
    throw new Error('usage: rss.js --model unet|dit-pixel|dit-latent --phase train|sample');
  }
  const m = benchModel(key);
  if (phase === 'train') {
    const { trainer, batch } = trainStepFor(m, 64);
    let state = trainer.init(m.params);
    for (let i = 0; i < 3; i++) state = (await trainer.step(state, batch())).state;
    await trainer.dispose();
  } else {
    const fwd = inferenceFn(m);
    await ddimTime(m, fwd, 50, 64, { rowsPerCall: cpuRowsPerCall(m, fwd) });
    await fwd.dispose();
  }
  // maxRSS is in KiB, as the peer's ru_maxrss on Linux.
  console.log(JSON.stringify({ model: key, phase, peak_rss_mb: process.resourceUsage().maxRSS / 1024 }));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main(process.argv.slice(2));
