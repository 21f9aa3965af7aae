/**
 * @file One clip of a clip-parallel video in its own worker thread (started by
 * `sampleLongVideoThreads` in video-infinity.ts): it loads the pipeline, samples its clip over
 * the Collective whose ports it was given, and posts the clip back. The parent's `abort`
 * message (another clip failed) closes the Collective, so no wait here outlives the run.
 */
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { setDefaultThreads } from '../engine/runtime.js';
import { localCollective, type LocalLinks } from '../distributed/collective.js';
import { loadVideoPipeline } from './video.js';
import { sampleClip, type ClipParallelOptions } from './video-infinity.js';

export interface ClipThreadData {
  model: string;
  clip: number;
  links: LocalLinks;
  options: Omit<ClipParallelOptions, 'onCall' | 'runtime'>;
  threads: number;
  timeoutMs: number;
}

const port = parentPort as MessagePort;
const data = workerData as ClipThreadData;
setDefaultThreads(data.threads);
const collective = localCollective(data.links, { timeoutMs: data.timeoutMs });
port.on('message', (m: { type: 'abort'; reason: string }) => {
  if (m.type === 'abort') collective.fail(m.reason);
  collective.close();
});
try {
  const p = await loadVideoPipeline(data.model);
  const clip = await sampleClip(p, data.clip, { ...data.options,
    onCall: (call) => port.postMessage({ type: 'call', call }) }, collective);
  port.postMessage({ type: 'clip', data: clip }, [clip.buffer as ArrayBuffer]);
} catch (e) {
  collective.fail((e as Error).message);
  port.postMessage({ type: 'error', message: (e as Error).message });
} finally {
  collective.close();
  port.close();
}
