/**
 * @file Whether a long video holds together across the clips it was made of (Video-Infinity's
 * measurements): the change between consecutive frames at clip boundaries against inside clips
 * (a seam shows as a jump), and whether each clip shows the same digits as the clip before (the
 * MNIST classifier on the frames).
 *
 * On moving MNIST a frame holds two small digits, which the classifier (trained on one centred
 * digit) reads imperfectly; identity is therefore compared as sets: a segment's digits are the
 * top `digits` classes of its frames' mean softmax, and two segments agree by the share of those
 * classes they have in common. The same measure on real clips, whose digits never change, is
 * the ceiling to read a generated video's agreement against.
 */
import { HostArray } from '../engine/host.js';
import { RngKey } from '../engine/random/philox.js';
import { movingMnistSet } from '../data/moving-mnist.js';
import { allFrames } from '../io/video.js';
import { softmaxInPlace } from '../methods/linear-probe.js';
import { clipLayout } from '../methods/video-infinity.js';
import type { FeatureExtractor } from './metrics.js';
import { sampleVideos, type VideoPipeline } from './video.js';
import { sampleLongVideo } from './video-infinity.js';

export interface FrameJumps {
  /** Mean absolute pixel change from the last frame of a segment to the first of the next. */
  boundary: number;
  /** The same between consecutive frames inside segments. */
  inside: number;
  /** boundary / inside: 1 when the boundaries are no seams. */
  ratio: number;
}

function videoShape(videos: HostArray, segment: number, what: string): [number, number, number, number] {
  const [n, c, f, h, w] = videos.shape as [number, number, number, number, number];
  if (videos.shape.length !== 5 || videos.dtype !== 'float32') {
    throw new RangeError(`${what}: expected float32 videos [N, C, F, H, W], got ${videos.dtype} [${videos.shape.join(', ')}]`);
  }
  if (!(Number.isInteger(segment) && segment >= 1 && f % segment === 0 && f / segment >= 2)) {
    throw new RangeError(`${what}: the segment length must divide the ${f} frames into at least two, got ${segment}`);
  }
  return [n, c, f, h * w];
}

/** Frame-to-frame change at the boundaries between segments of `segment` frames and inside them. */
export function frameJumps(videos: HostArray, segment: number): FrameJumps {
  const [n, c, f, hw] = videoShape(videos, segment, 'frameJumps');
  const x = videos.data as Float32Array;
  const sums = { boundary: 0, inside: 0 };
  const counts = { boundary: 0, inside: 0 };
  for (let i = 0; i < n; i++) {
    for (let t = 0; t + 1 < f; t++) {
      let d = 0;
      for (let k = 0; k < c; k++) {
        const a = ((i * c + k) * f + t) * hw;
        for (let p = 0; p < hw; p++) d += Math.abs(x[a + hw + p]! - x[a + p]!);
      }
      const where = (t + 1) % segment === 0 ? 'boundary' : 'inside';
      sums[where] += d / (c * hw);
      counts[where]++;
    }
  }
  const boundary = sums.boundary / counts.boundary;
  const inside = counts.inside ? sums.inside / counts.inside : NaN;
  return { boundary, inside, ratio: boundary / inside };
}

/** The `digits` most likely classes of each segment of each video: [video][segment][class]. */
export async function segmentDigits(extractor: FeatureExtractor, videos: HostArray, segment: number,
  digits = 2): Promise<number[][][]> {
  const [n, , f] = videoShape(videos, segment, 'segmentDigits');
  const out = await extractor.outputs(allFrames(videos));
  const k = out.classes;
  const result: number[][][] = [];
  for (let i = 0; i < n; i++) {
    const segments: number[][] = [];
    for (let s = 0; s < f / segment; s++) {
      const mean = new Float64Array(k);
      const p = new Float64Array(k);
      for (let t = s * segment; t < (s + 1) * segment; t++) {
        p.set(out.logits.subarray((i * f + t) * k, (i * f + t + 1) * k));
        softmaxInPlace(p);
        p.forEach((v, j) => { mean[j]! += v / segment; });
      }
      segments.push([...mean.keys()].sort((a, b) => mean[b]! - mean[a]!).slice(0, digits));
    }
    result.push(segments);
  }
  return result;
}

/** Mean share of classes that consecutive segments have in common, over all videos. */
export function identityAgreement(digits: readonly (readonly (readonly number[])[])[]): number {
  let sum = 0;
  let pairs = 0;
  for (const video of digits) {
    for (let s = 0; s + 1 < video.length; s++) {
      const next = new Set(video[s + 1]);
      sum += video[s]!.filter((d) => next.has(d)).length / video[s]!.length;
      pairs++;
    }
  }
  return pairs ? sum / pairs : NaN;
}

export interface VideoConsistency extends FrameJumps {
  /** identityAgreement of segmentDigits; absent without a classifier. */
  identity?: number;
}

/** frameJumps and, given the classifier, identityAgreement of videos [N, C, F, H, W]. */
export async function videoConsistency(videos: HostArray, segment: number, extractor?: FeatureExtractor,
  digits = 2): Promise<VideoConsistency> {
  const jumps = frameJumps(videos, segment);
  if (!extractor) return jumps;
  return { ...jumps, identity: identityAgreement(await segmentDigits(extractor, videos, segment, digits)) };
}

/** How a long video is made, for comparison: see compareLongVideos. */
export const LONG_VIDEO_MODES = ['video-infinity', 'no-scope', 'independent', 'one-pass', 'real', 'real-unrelated'] as const;
export type LongVideoMode = typeof LONG_VIDEO_MODES[number];

export interface CompareOptions {
  /** The video: `clips` x `clipFrames` frames; the rest of the layout defaults as clipLayout's. */
  clips: number;
  clipFrames: number;
  padding?: number;
  globalPerClip?: number;
  steps: number;
  /** Videos per mode, seeds 0..videos-1. */
  videos: number;
  modes?: readonly LongVideoMode[];
  onVideo?: (mode: LongVideoMode, done: number) => void;
}

export interface CompareRow extends VideoConsistency {
  mode: LongVideoMode;
  videos: number;
  frames: number;
  /** Sampling seconds per video (0 for real clips). */
  secondsPerVideo: number;
}

/**
 * The same long videos made each way: Video-Infinity (clips exchanging context), without its
 * dual-scope bias, independent clips (no exchange), one pass of the model over all frames,
 * and real moving-MNIST clips of the same length (held-out digits; 'real-unrelated' joins
 * unrelated real clips: the floor of identity agreement). Measured at the clip boundaries.
 */
export async function compareLongVideos(p: VideoPipeline, extractor: FeatureExtractor | undefined,
  o: CompareOptions): Promise<CompareRow[]> {
  const c = p.model.config;
  const frames = o.clips * o.clipFrames;
  const rows: CompareRow[] = [];
  for (const mode of o.modes ?? LONG_VIDEO_MODES) {
    const videos = HostArray.zeros([o.videos, c.in_channels, frames, c.sample_size, c.sample_size]);
    const per = videos.size / o.videos;
    const t0 = performance.now();
    for (let seed = 0; seed < o.videos; seed++) {
      videos.data.set(await longVideo(p, mode, seed, o), seed * per);
      o.onVideo?.(mode, seed + 1);
    }
    const seconds = mode.startsWith('real') ? 0 : (performance.now() - t0) / 1000 / o.videos;
    rows.push({ mode, videos: o.videos, frames, secondsPerVideo: seconds,
      ...await videoConsistency(videos, o.clipFrames, extractor) });
  }
  return rows;
}

/** Video `seed` made as `mode`: [C, frames, H, W]. */
async function longVideo(p: VideoPipeline, mode: LongVideoMode, seed: number, o: CompareOptions):
  Promise<Float32Array> {
  const c = p.model.config;
  const frames = o.clips * o.clipFrames;
  const clips = { size: c.sample_size, split: 'heldOut' as const };
  if (mode === 'real') return movingMnistSet(1, REAL_KEY.fold(seed), { ...clips, frames }).videos.data;
  // One channel: clips of one video laid end to end are the video's frames in order.
  if (mode === 'real-unrelated') return movingMnistSet(o.clips, REAL_KEY.fold(seed), { ...clips, frames: o.clipFrames }).videos.data;
  if (mode === 'one-pass') return (await sampleVideos(p, { n: 1, steps: o.steps, seed, frames })).data;
  const layout = clipLayout(frames, o.clips, { independent: mode === 'independent',
    ...(o.padding === undefined ? {} : { padding: o.padding }),
    ...(o.globalPerClip === undefined ? {} : { globalPerClip: o.globalPerClip }) });
  return (await sampleLongVideo(p, { layout, steps: o.steps, seed, ...(mode === 'no-scope' ? { scope: false as const } : {}) })).data;
}

/** Real clips come from a key that training (key.fold(0) of the run's seed) does not use. */
const REAL_KEY = RngKey.fromSeed(0x5eed).fold(17);

/** compareLongVideos' rows as CSV. */
export function compareCsv(rows: readonly CompareRow[]): string {
  const f = (v: number | undefined) => (v === undefined || Number.isNaN(v) ? '' : v.toFixed(4));
  return ['mode,videos,frames,boundary_jump,inside_jump,jump_ratio,identity_agreement,seconds_per_video',
    ...rows.map((r) => [r.mode, r.videos, r.frames, f(r.boundary), f(r.inside), f(r.ratio), f(r.identity),
      r.secondsPerVideo.toFixed(2)].join(','))].join('\n') + '\n';
}
