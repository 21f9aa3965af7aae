/**
 * @file The entry of a server worker thread (started by pool.ts). ONNX Runtime's session.run
 * blocks the loop of the thread that calls it, so sampling happens here and the server's main
 * thread stays free to answer requests. The thread loads the pipeline once, reports what the
 * server needs to check requests (`ready`), then runs one job at a time: `progress` after each
 * sampler step, then `done` with the PNGs (encoded here, off the main thread), `failed` or
 * `cancelled`. An `abort` message aborts the job's AbortController, which sampleImages checks
 * between steps; the message is seen between model calls, since onnxruntime-node starts each
 * run from setImmediate.
 */
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import { samplersFor } from '../diffusion/sampling.js';
import { HostArray } from '../engine/host.js';
import { setDefaultThreads } from '../engine/runtime.js';
import { encodePng, imageGrid } from '../io/png.js';
import { classCount, loadPipeline, pipelineImageShape, sampleImages, type Pipeline } from '../pipelines/sample.js';
import type { StudentRecord } from '../pipelines/student.js';
import type { SampleRequest } from './request.js';

/** What the pool passes in `workerData`. */
export interface WorkerData {
  /** The pipeline folder, fixed when the server starts. */
  modelDir: string;
  /** ONNX Runtime intra-op threads of this thread's sessions: its share of the cores. */
  threads: number;
}

/** The facts about the loaded model that requests are checked against. */
export interface ModelInfo {
  className: string;
  modelFolder: string;
  /** Class labels a request may ask for; 0: unconditional. */
  classes: number;
  /** A flow-matching model (its default sampler is flow-euler). */
  flow: boolean;
  schedulerClass: string;
  /** The samplers that fit the model's process. */
  samplers: string[];
  /** [C, H, W] of one image. */
  sampleShape: number[];
  student?: StudentRecord;
  /** What loading noted (a default scheduler, ignored config keys). */
  notes: string[];
}

/** Messages from the pool to the thread. */
export type ToWorker =
  | { type: 'run'; id: string; request: SampleRequest }
  | { type: 'abort'; id: string };

/** Messages from the thread to the pool. */
export type FromWorker =
  | { type: 'ready'; info: ModelInfo }
  | { type: 'load-failed'; message: string }
  | { type: 'progress'; id: string; step: number; total: number }
  | { type: 'done'; id: string; grid: Uint8Array; images: Uint8Array[]; seconds: number;
      modelCalls: number; warnings: string[] }
  | { type: 'failed'; id: string; message: string }
  | { type: 'cancelled'; id: string };

/** The model facts of a loaded pipeline. */
function modelInfo(p: Pipeline): ModelInfo {
  const samplers = samplersFor(p.scheduler);
  return {
    className: p.model.cls.className, modelFolder: p.modelFolder, classes: classCount(p.model),
    flow: p.scheduler.family === 'flow', schedulerClass: p.scheduler.className, samplers,
    sampleShape: pipelineImageShape(p), notes: p.notes,
    ...(p.student ? { student: p.student } : {}),
  };
}

/** Images [N, C, H, W] in [-1, 1] as one PNG grid and one PNG each (as writeSamples draws
 *  them), copied into plain arrays for the message. */
function encodeImages(images: HostArray<'float32'>): { grid: Uint8Array; images: Uint8Array[] } {
  const [n, c, h, w] = images.shape as [number, number, number, number];
  const per = c * h * w;
  const one = (i: number) => new Uint8Array(encodePng(imageGrid(
    new HostArray(images.data.subarray(i * per, (i + 1) * per), [1, c, h, w]), { cols: 1, pad: 0 })));
  return { grid: new Uint8Array(encodePng(imageGrid(images))),
    images: Array.from({ length: n }, (_, i) => one(i)) };
}

async function main(): Promise<void> {
  if (isMainThread || !parentPort) throw new Error('server/worker.js runs only as a worker thread');
  const port = parentPort;
  const post = (m: FromWorker): void => port.postMessage(m);
  const { modelDir, threads } = workerData as WorkerData;
  let pipeline: Pipeline;
  try {
    setDefaultThreads(threads);
    pipeline = await loadPipeline(modelDir);
    const [c] = pipelineImageShape(pipeline);
    if (c !== 1 && c !== 3) {
      throw new RangeError(`${pipeline.vae ? 'the VAE' : pipeline.model.cls.className} in ${modelDir} makes ${c}-channel ` +
        'images; the server returns PNGs of 1 (gray) or 3 (RGB) channels');
    }
  } catch (e) {
    post({ type: 'load-failed', message: (e as Error).message });
    process.exitCode = 1;
    port.close();
    return;
  }
  let current: { id: string; aborter: AbortController } | undefined;

  const run = async (id: string, request: SampleRequest): Promise<void> => {
    const aborter = new AbortController();
    current = { id, aborter };
    try {
      const r = await sampleImages(pipeline, {
        ...request, generator: 'philox', signal: aborter.signal,
        onStep: (step, total) => post({ type: 'progress', id, step: step + 1, total }),
      });
      const png = encodeImages(r.images);
      post({ type: 'done', id, ...png, seconds: r.seconds, modelCalls: r.modelCalls,
        warnings: r.warnings });
    } catch (e) {
      if (aborter.signal.aborted) post({ type: 'cancelled', id });
      else post({ type: 'failed', id, message: (e as Error).message });
    } finally {
      current = undefined;
    }
  };

  port.on('message', (m: ToWorker) => {
    if (m.type === 'abort') {
      if (current?.id === m.id) current.aborter.abort(new Error(`job ${m.id} cancelled`));
    } else if (current) {
      // The pool hands a thread one job at a time; refusing keeps a job from running twice.
      post({ type: 'failed', id: m.id, message: `its worker thread was still running job ${current.id}` });
    } else {
      void run(m.id, m.request);
    }
  });
  post({ type: 'ready', info: modelInfo(pipeline) });
}

await main();
