/**
 * @file Video diffusion on moving MNIST: `trainVideo` (what `diffuse train --data
 * moving-mnist` runs: the one training loop, training-loop.ts, with fresh procedural clips at
 * every step) and the video pipeline folder, loaded and sampled one clip at a time
 * (`sampleVideos`). Long videos over several workers are video-infinity.ts.
 *
 * The pipeline folder is diffusers' layout: model_index.json (DiffuseVideoPipeline), unet/
 * (a DiffuseVideoUNet), scheduler/.
 */
import { join } from 'node:path';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import type { Tensor } from '../engine/tensor.js';
import type { Tree } from '../engine/tree.js';
import { parseScheduler, type SchedulerSpec } from '../diffusion/diffusers/spec.js';
import { sample } from '../diffusion/sampling.js';
import { noisySample, trainingPoints, trainingScheduler, trainingTarget } from '../diffusion/training.js';
import { movingMnistBatch, type MovingMnistOptions } from '../data/moving-mnist.js';
import { allFrames } from '../io/video.js';
import {
  DiffusersFolderError, loadModel, readModelIndex, readSchedulerConfig, type ModelClass,
} from '../io/diffusers.js';
import { DiffuseVideoUNet, VIDEO_UNET_PRESETS, videoUNetClass, type VideoUNetConfig } from '../models/video-unet.js';
import type { Module, ParamsOf } from '../nn/module.js';
import { adamw } from '../nn/optim.js';
import { compileTrainStep } from '../nn/train.js';
import type { PipelineFiles, SavedModel } from './checkpoint.js';
import { graphDenoiser } from './graph-denoiser.js';
import { learningRate, type TrainOptions } from './train.js';
import { runTraining, type TrainEvents, type TrainResult } from './training-loop.js';

export const VIDEO_PIPELINE_CLASS = 'DiffuseVideoPipeline';

/** `diffuse train`'s options that a video run shares, with the video model's size and clips. */
export type VideoTrainOptions = Pick<TrainOptions, 'objective' | 'batchSize' | 'steps' | 'lr' | 'lrSchedule' |
  'warmupSteps' | 'gradClip' | 'emaDecay' | 'seed' | 'out' | 'logEvery' | 'sampleEvery' | 'checkpointEvery'> & {
  /** A VIDEO_UNET_PRESETS name. */
  size: string;
  /** The clips: frames, canvas side, digits. */
  clips: Required<Pick<MovingMnistOptions, 'frames' | 'size' | 'digits'>>;
};

/** A saved video model as the training loop writes it. */
export interface VideoModel extends SavedModel {
  readonly config: VideoUNetConfig;
  readonly module: DiffuseVideoUNet;
}

export function videoModel(config: VideoUNetConfig): VideoModel {
  return { cls: videoUNetClass as unknown as ModelClass<Module, unknown>, config, component: 'unet',
    module: new DiffuseVideoUNet(config) };
}

type VideoBatch = { x0: HostArray; eps: HostArray; t: HostArray; a: HostArray; s: HostArray };

/** Trains a video U-Net on fresh moving-MNIST clips (continuing `out/checkpoint` when `resume`). */
export async function trainVideo(o: VideoTrainOptions, resume: boolean, ev: TrainEvents<VideoModel> = {}):
  Promise<TrainResult & { model: VideoModel }> {
  const preset = VIDEO_UNET_PRESETS[o.size];
  if (!preset) throw new Error(`video model size '${o.size}': expected one of ${Object.keys(VIDEO_UNET_PRESETS).join(', ')}`);
  const model = videoModel(videoUNetClass.readConfig(videoUNetClass.toConfig({ ...preset,
    num_frames: o.clips.frames, sample_size: o.clips.size })));
  const net = model.module;
  const spec = trainingScheduler(o.objective);
  const key = RngKey.fromSeed(o.seed);
  const trainer = compileTrainStep<VideoBatch & Tree<HostArray>>((params: Tree<Tensor>, bt: Tree<Tensor>) => {
    const b = bt as unknown as Record<keyof VideoBatch, Tensor>;
    const out = net.forward(params as unknown as ParamsOf<DiffuseVideoUNet>, noisySample(b.x0, b.eps, b.a, b.s), b.t);
    return ops.mean(ops.square(ops.sub(out, trainingTarget(o.objective, b.x0, b.eps, b.a, b.s))));
  }, adamw({ lr: learningRate(o), weightDecay: 0 }),
  { clipGradNorm: o.gradClip, ema: { maxDecay: o.emaDecay }, runtime: { name: 'video_train_step' } });
  const files: PipelineFiles<VideoModel> = { model, scheduler: spec, pipelineClass: VIDEO_PIPELINE_CLASS };
  const r = await runTraining({
    options: o, files, trainer, exported: 'ema',
    run: { size: o.size, objective: o.objective, clips: o.clips, batchSize: o.batchSize, seed: o.seed, lr: o.lr,
      lrSchedule: o.lrSchedule, warmupSteps: o.warmupSteps, gradClip: o.gradClip, emaDecay: o.emaDecay },
    initialWeights: () => net.init(key.fold(2)) as Tree<HostArray>,
    batch: (step) => {
      const { videos } = movingMnistBatch(key.fold(0), step, o.batchSize, o.clips);
      const [kn, kt] = key.fold(1).fold(step).split(2);
      const n = o.batchSize;
      const pts = trainingPoints(spec, kt!.uniform(n));
      return { x0: videos, eps: new HostArray(kn!.normal(videos.size), videos.shape),
        t: new HostArray(pts.t, [n]), a: new HostArray(pts.alpha, [n, 1, 1, 1, 1]),
        s: new HostArray(pts.sigma, [n, 1, 1, 1, 1]) } as VideoBatch & Tree<HostArray>;
    },
    // Four clips, a row each, a column per frame.
    grid: async (ema) => {
      const v = await sampleVideos({ model, params: ema, scheduler: spec }, { n: 4, steps: 20, seed: 1234 });
      return { images: allFrames(v), cols: v.shape[2]! };
    },
  }, resume, ev);
  return { ...r, model };
}

export interface VideoPipeline {
  model: VideoModel;
  params: Tree<HostArray>;
  scheduler: SchedulerSpec;
}

/** Loads a video pipeline folder (model_index.json naming a DiffuseVideoUNet as `unet`). */
export async function loadVideoPipeline(dir: string): Promise<VideoPipeline> {
  const index = await readModelIndex(dir);
  if (index.components.unet?.[1] !== videoUNetClass.className) {
    throw new DiffusersFolderError(index.path, `is not a video pipeline (its unet is ` +
      `${index.components.unet?.[1] ?? 'missing'}, expected ${videoUNetClass.className})`);
  }
  const loaded = await loadModel(join(dir, 'unet'), videoUNetClass);
  const scheduler = parseScheduler((await readSchedulerConfig(dir)).config);
  return { model: videoModel(loaded.config), params: loaded.params as Tree<HostArray>, scheduler };
}

/**
 * n clips of `frames` frames (default: the model's training length) from noise of `seed`:
 * [n, C, F, H, W] in [-1, 1]. One clip at a time through the whole model; a video longer
 * than the model's clips is what clip parallelism (video-infinity.ts) is for.
 */
export async function sampleVideos(p: VideoPipeline, o: { n: number; steps: number; seed: number;
  frames?: number; sampler?: string }): Promise<HostArray<'float32'>> {
  const c = p.model.config;
  const frames = o.frames ?? c.num_frames;
  const shape = [o.n, c.in_channels, frames, c.sample_size, c.sample_size];
  const consts = ops.constantTree(p.params) as unknown as ParamsOf<DiffuseVideoUNet>;
  const denoiser = graphDenoiser((x, t) => p.model.module.forward(consts, x, t), p.scheduler.prediction,
    { name: 'video_denoiser' });
  try {
    const key = RngKey.fromSeed(o.seed);
    const size = shape.reduce((a, b) => a * b, 1);
    const x0 = new HostArray<'float32'>(key.fold(0).normal(size), shape, 'float32');
    const sampler = o.sampler ?? (p.scheduler.family === 'flow' ? 'flow-euler' : 'ddim');
    const x = await sample(denoiser, x0, p.scheduler, { sampler, steps: o.steps,
      noise: (n, step) => key.fold(step + 1).normal(n) });
    return new HostArray(Float32Array.from(x.data, (v) => Math.min(1, Math.max(-1, v))), shape, 'float32');
  } finally {
    await denoiser.dispose();
  }
}
