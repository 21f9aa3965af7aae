/**
 * @file `diffuse video-eval`: long videos of a video pipeline made by Video-Infinity, without
 * its dual-scope bias, as independent clips, and in one pass, beside real clips: the jump at
 * clip boundaries against inside clips and the digits' agreement from clip to clip
 * (pipelines/video-eval.ts), as a table and a CSV.
 */
import type { Command } from 'commander';
import { writeFileAtomic } from '../util/atomic.js';
import { featureExtractor, loadMetricClassifier } from '../pipelines/metrics.js';
import { loadVideoPipeline } from '../pipelines/video.js';
import { compareCsv, compareLongVideos, LONG_VIDEO_MODES, type LongVideoMode } from '../pipelines/video-eval.js';
import { UsageError } from './errors.js';
import { DEFAULT_VIDEO_MODEL_DIR } from './video.js';
import { addOptions, commandOptions, custom, int, path } from './options.js';
import { progress, type Progress } from './progress.js';

export const VIDEO_EVAL_OPTIONS = {
  model: path({ arg: '<dir>', help: 'a video pipeline (diffuse train --data moving-mnist)',
    default: DEFAULT_VIDEO_MODEL_DIR }),
  frames: int({ min: 2, max: 100_000, help: 'frames of each video', default: 64 }),
  workers: int({ min: 2, max: 1024, help: 'clips each video is cut into', default: 4 }),
  padding: int({ min: 0, help: 'frames each clip takes from each neighbour (default: half a clip)' }),
  global: int({ min: 0, help: 'frames each clip adds to the global context (default as diffuse video)' }),
  modes: custom((v) => {
    const list = v.split(',').map((s) => s.trim());
    const bad = list.find((m) => !LONG_VIDEO_MODES.includes(m as LongVideoMode));
    if (bad !== undefined || list.length === 0) throw new Error(`unknown mode '${bad}'`);
    return list as LongVideoMode[];
  }, { arg: '<list>', expected: `a comma-separated list of ${LONG_VIDEO_MODES.join(', ')}`,
    help: 'how the videos are made', default: [...LONG_VIDEO_MODES] }),
  videos: int({ min: 1, help: 'videos per mode (seeds 0..videos-1)', default: 8 }),
  steps: int({ min: 1, help: 'sampling steps', default: 30 }),
  csv: path({ arg: '<file>', help: 'results (mode, videos, frames, boundary_jump, inside_jump, jump_ratio, ' +
    'identity_agreement, seconds_per_video)', default: 'video-eval.csv' }),
};

export function registerVideoEval(program: Command): void {
  addOptions(program.command('video-eval')
    .description('how well long videos hold together across clips: Video-Infinity against ' +
      'independent clips, one pass and real moving MNIST (boundary jump, digit agreement)'), VIDEO_EVAL_OPTIONS)
    .action(async (_: unknown, cmd: Command) => {
      const o = commandOptions(VIDEO_EVAL_OPTIONS, cmd).values;
      if (o.frames % o.workers !== 0 || o.frames / o.workers < 2) {
        throw new UsageError(`--frames: expected a multiple of --workers (${o.workers}) with at least 2 frames a clip, got ${o.frames}`);
      }
      const p = await loadVideoPipeline(o.model);
      const extractor = featureExtractor(await loadMetricClassifier());
      let bar: Progress | undefined;
      let current = '';
      try {
        const rows = await compareLongVideos(p, extractor, { clips: o.workers, clipFrames: o.frames / o.workers,
          ...(o.padding === undefined ? {} : { padding: o.padding }),
          ...(o.global === undefined ? {} : { globalPerClip: o.global }),
          steps: o.steps, videos: o.videos, modes: o.modes,
          onVideo: (mode, done) => {
            if (mode !== current) (bar?.stop(), bar = progress(mode, o.videos, []), current = mode);
            bar!.update(done, {});
          } });
        bar?.stop();
        console.log(`${o.videos} videos of ${o.frames} frames, ${o.workers} clips of ${o.frames / o.workers}, ` +
          `${o.steps} steps; jumps are mean absolute pixel changes (pixels in [-1, 1])`);
        console.log(`${'mode'.padEnd(15)} boundary   inside    ratio  digits agree  s/video`);
        for (const r of rows) {
          console.log(`${r.mode.padEnd(15)} ${r.boundary.toFixed(4).padStart(8)} ${r.inside.toFixed(4).padStart(8)} ` +
            `${r.ratio.toFixed(2).padStart(8)} ${(100 * (r.identity ?? NaN)).toFixed(1).padStart(12)}% ` +
            `${r.secondsPerVideo.toFixed(1).padStart(8)}`);
        }
        await writeFileAtomic(o.csv, compareCsv(rows));
        console.log(`wrote ${o.csv}`);
      } finally {
        bar?.stop();
        await extractor.dispose();
      }
    });
}
