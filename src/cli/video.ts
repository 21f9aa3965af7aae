/**
 * @file `diffuse video`: a video from a video pipeline (diffuse train --data moving-mnist),
 * longer than its training clips by Video-Infinity's clip parallelism (pipelines/video-infinity.ts).
 */
import { join } from 'node:path';
import type { Command } from 'commander';
import { writePng } from '../io/png.js';
import { frameStrip, videoFrames, writeVideo } from '../io/video.js';
import { loadVideoPipeline, sampleVideos } from '../pipelines/video.js';
import { frameJumps } from '../pipelines/video-eval.js';
import { sampleLongVideoRank, sampleLongVideoThreads } from '../pipelines/video-infinity.js';
import { clipLayout } from '../methods/video-infinity.js';
import { packageRoot } from '../util/package-root.js';
import { UsageError } from './errors.js';
import { addOptions, commandOptions, flag, int, num, path, text } from './options.js';
import { progress } from './progress.js';

/** The shipped moving-MNIST video model. */
export const DEFAULT_VIDEO_MODEL_DIR = join(packageRoot(), 'models', 'mnist-video');

export const VIDEO_OPTIONS = {
  model: path({ arg: '<dir>', help: 'a video pipeline (diffuse train --data moving-mnist)',
    default: DEFAULT_VIDEO_MODEL_DIR }),
  frames: int({ min: 1, max: 100_000, help: 'frames of the video (default: the model\'s clip length)' }),
  workers: int({ min: 1, max: 1024, help: 'clips the video is cut into, one per worker thread, ' +
    'sampled side by side exchanging frames at every temporal layer (Video-Infinity)', default: 1 }),
  padding: int({ min: 0, help: 'frames each clip takes from each neighbour (default: half a clip)' }),
  global: int({ min: 0, help: 'frames each clip adds to the global context (default: 16 in all as ' +
    'in the paper, at most a quarter of a clip, at least 1)' }),
  independent: flag({ help: 'no exchange at all: independent clips side by side (the baseline)' }),
  noScope: flag({ help: 'no dual-scope bias (the paper\'s: global keys favoured until t = 0.8 T, local after)' }),
  collective: text({ arg: '<url>', help: 'redis://host:port: run one clip here, as rank --rank of ' +
    '--workers processes (on any machines) that meet on this Redis under --run; every rank writes the video' }),
  run: text({ arg: '<name>', help: 'with --collective: the name all ranks of one video share', default: 'video' }),
  rank: int({ min: 0, help: 'with --collective: this process\'s clip, 0..workers-1' }),
  steps: int({ min: 1, help: 'sampling steps', default: 30 }),
  seed: int({ min: 0, help: 'seed of the whole video\'s noise', default: 0 }),
  out: path({ arg: '<file>', help: 'the video: .gif (animated) or .png (a frame strip)', default: 'video.gif' }),
  strip: path({ arg: '<file.png>', help: 'also a frame strip PNG' }),
  fps: num({ range: '(0, 50]', help: 'GIF frames per second', default: 8 }),
  scale: int({ min: 1, max: 16, help: 'pixel upscaling of the output', default: 2 }),
};

export function registerVideo(program: Command): void {
  addOptions(program.command('video')
    .description('sample a video from a video pipeline; with --workers N the video is cut into N ' +
      'clips sampled side by side, each attending to its neighbours\' boundary frames and to global ' +
      'frames of all clips (Video-Infinity, Tan et al. 2024)'), VIDEO_OPTIONS)
    .action(async (_: unknown, cmd: Command) => {
      const o = commandOptions(VIDEO_OPTIONS, cmd).values;
      const p = await loadVideoPipeline(o.model);
      const frames = o.frames ?? p.model.config.num_frames;
      if (frames % o.workers !== 0) {
        throw new UsageError(`--frames: expected a multiple of --workers (${o.workers}), got ${frames}`);
      }
      const layout = clipLayout(frames, o.workers, { independent: o.independent,
        ...(o.padding === undefined ? {} : { padding: o.padding }),
        ...(o.global === undefined ? {} : { globalPerClip: o.global }) });
      const { clipFrames, padding, globalPerClip } = layout;
      const t0 = performance.now();
      const bar = progress('sampling', o.steps);
      let video;
      try {
        const options = { layout, steps: o.steps,
          seed: o.seed, ...(o.noScope ? { scope: false as const } : {}), onCall: (call: number) => bar.update(call + 1) };
        if (o.collective !== undefined) {
          if (o.rank === undefined || o.rank >= o.workers) {
            throw new UsageError(`--rank: expected this process's clip, 0..${o.workers - 1}, with --collective`);
          }
          // ioredis loads only when a video is sampled over Redis.
          const { redisCollective } = await import('../distributed/redis-collective.js');
          const collective = await redisCollective({ url: o.collective, run: o.run, rank: o.rank, size: o.workers });
          try {
            video = await sampleLongVideoRank(p, { ...options, onCall: (call: number) => bar.update(call + 1) }, collective);
          } finally {
            collective.close();
          }
        } else {
          video = o.workers === 1 ? await sampleVideos(p, { n: 1, steps: o.steps, seed: o.seed, frames })
            : await sampleLongVideoThreads(o.model, p, options);
        }
      } finally {
        bar.stop();
      }
      const clip = videoFrames(video, 0);
      await writeVideo(o.out, clip, { fps: o.fps, scale: o.scale });
      if (o.strip) await writePng(o.strip, frameStrip(clip, { cols: Math.min(frames, 16) }));
      const seconds = (performance.now() - t0) / 1000;
      console.log(`${frames} frames (${o.workers} clip${o.workers === 1 ? '' : 's'} of ${clipFrames}` +
        `${o.workers > 1 ? `, padding ${padding}, ${globalPerClip} global per clip` : ''}) in ${seconds.toFixed(1)} s; ` +
        `wrote ${o.out}${o.strip ? ` and ${o.strip}` : ''}`);
      // Where the clips meet (or, in one pass, where they would): a seam shows as a jump.
      const segment = o.workers > 1 ? clipFrames : p.model.config.num_frames;
      if (frames % segment === 0 && frames / segment >= 2) {
        const j = frameJumps(video, segment);
        console.log(`frame change at ${o.workers > 1 ? 'clip boundaries' : `every ${segment} frames`} ` +
          `${j.boundary.toFixed(4)} vs ${j.inside.toFixed(4)} inside (ratio ${j.ratio.toFixed(2)}; 1 = no seams)`);
      }
    });
}
