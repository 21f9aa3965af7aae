/**
 * @file The `video` suite: Video-Infinity's wall time on the shipped video model
 * (models/mnist-video, flow Euler 30 steps), against frame count and worker count: 1 worker is
 * one pass of the model over all frames; 2 and 4 are clips in worker threads exchanging
 * context (diffuse video --workers N). On a machine with fewer cores than workers the threads
 * share them, so the speed-up is bounded by the cores. Plus what a worker sends per model call
 * (counted on the collective), from which the cost of spreading clips over machines follows.
 * Consistency across clips (quality) is `diffuse video-eval`; this suite times only.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { localCollective, localCollectives, type Collective } from '../src/distributed/collective.js';
import { clipLayout } from '../src/methods/video-infinity.js';
import { loadVideoPipeline, sampleVideos } from '../src/pipelines/video.js';
import { sampleClip, sampleLongVideoThreads } from '../src/pipelines/video-infinity.js';
import { packageRoot } from '../src/util/package-root.js';
import { time, type Report } from './harness.js';

const STEPS = 30;

/** A collective that counts the floats this rank sends (an all-gather: to every other rank). */
function counting(c: Collective, sent: { floats: number }): Collective {
  return {
    rank: c.rank, size: c.size,
    allGather: (tag, data) => {
      sent.floats += data.length * (c.size - 1);
      return c.allGather(tag, data);
    },
    neighbourExchange: (tag, toLeft, toRight) => {
      if (c.rank > 0) sent.floats += toLeft?.length ?? 0;
      if (c.rank < c.size - 1) sent.floats += toRight?.length ?? 0;
      return c.neighbourExchange(tag, toLeft, toRight);
    },
    fail: (reason) => c.fail(reason),
    close: () => c.close(),
  };
}

export async function videoSuite(report: Report, opts: { frames?: number[]; workers?: number[] } = {}): Promise<void> {
  const folder = join(packageRoot(), 'models', 'mnist-video');
  if (!existsSync(folder)) return;
  const p = await loadVideoPipeline(folder);
  report.section(`Video-Infinity: models/mnist-video, flow Euler ${STEPS} steps, one video`);
  for (const frames of opts.frames ?? [64, 128, 256]) {
    let one = NaN;
    for (const workers of opts.workers ?? [1, 2, 4]) {
      const layout = clipLayout(frames, workers);
      const run = () => (workers === 1 ? sampleVideos(p, { n: 1, steps: STEPS, seed: 0, frames })
        : sampleLongVideoThreads(folder, p, { layout, steps: STEPS, seed: 0 }));
      const t = await time(run, { warmup: 0, reps: 1 });
      const s = t.medianMs / 1000;
      if (workers === 1) one = s;
      report.add({ name: `${frames} frames, ${workers} worker${workers > 1 ? 's' : ''}`, value: s, unit: 's',
        ...(workers > 1 ? { ratio: one / s, ratioTo: 'speed-up vs 1 worker (one pass)' } : {}) });
    }
  }
  // One step of a 4-clip video, each clip's sends counted: the per-step exchange.
  const layout = clipLayout(256, 4);
  const sent = { floats: 0 };
  const links = localCollectives(layout.clips).map((l) => counting(localCollective(l), sent));
  try {
    await Promise.all(links.map((c, clip) => sampleClip(p, clip, { layout, steps: 1, seed: 0 }, c)));
  } finally {
    links.forEach((c) => c.close());
  }
  report.add({ name: `exchange per worker per step (256 frames, 4 clips)`, value: (4 * sent.floats) / layout.clips / 1e6,
    unit: 'MB' });
}
