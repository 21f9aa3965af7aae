/**
 * @file Fixtures of the `diffuse serve` tests: a tiny pipeline folder on disk (the server's
 * workers load a folder, not an object), HTTP helpers over a listening server, and the path of
 * a worker entry that crashes on request (crashing-serve-worker.ts).
 */
import { parseSse, type ParsedEvent } from '../../src/server/sse.js';

/** A tiny class-conditional U-Net pipeline (3 classes, 1 x 8 x 8, eps) in a fresh temporary
 *  folder; `remove` deletes it. */
export { tinyPipelineDir } from './tiny-pipeline.js';

/** The worker entry that exits its thread when asked to run a job with seed CRASH_SEED and
 *  hangs (ignoring cancels) on one with HANG_SEED. */
export const CRASHING_WORKER = new URL('./crashing-serve-worker.js', import.meta.url);
export const CRASH_SEED = 666_666;
export const HANG_SEED = 777_777;

/** Reads an event stream until it ends (or `stopAfter` says to leave), returning its events. */
export async function readEvents(url: string, init: RequestInit = {},
  stopAfter?: (events: ParsedEvent[]) => boolean): Promise<ParsedEvent[]> {
  const controller = new AbortController();
  const res = await fetch(url, { ...init, signal: controller.signal });
  if (res.status !== 200 || !res.body) throw new Error(`GET ${url}: ${res.status} ${await res.text()}`);
  const events: ParsedEvent[] = [];
  const decoder = new TextDecoder();
  let rest = '';
  try {
    for await (const chunk of res.body) {
      const parsed = parseSse(rest + decoder.decode(chunk as Uint8Array, { stream: true }));
      rest = parsed.rest;
      events.push(...parsed.events);
      if (stopAfter?.(events)) {
        controller.abort(); // the client leaves mid-stream
        break;
      }
    }
  } catch (e) {
    if (!controller.signal.aborted) throw e;
  }
  return events;
}

/** Waits until `check` holds, polling; fails after `ms` with `what`. */
export async function until(check: () => boolean | Promise<boolean>, what: string, ms = 15_000):
  Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
