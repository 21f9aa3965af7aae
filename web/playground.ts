/**
 * @file The playground page: loads an exported denoiser (model.onnx + model.json beside the
 * page, written by `diffuse export`), runs it on onnxruntime-web (WASM; WebGPU when the
 * browser has it and the box is ticked), and samples one image at a time with Diffuse's own
 * samplers (sampling.ts over src/diffusion), drawing the x0 prediction or the current state
 * after every step. `body[data-state]` is loading | ready | sampling | done | error, for
 * people and for the browser test.
 */
import * as ort from 'onnxruntime-web';
import type { StepRecord } from '../src/diffusion/denoiser.js';
import { readMeta, sampleDigit, sessionDenoiser, type CallStats, type LoadedMeta } from './sampling.js';

type State = 'loading' | 'ready' | 'sampling' | 'done' | 'error';

const $ = <T extends HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`index.html has no #${id}: playground.js and index.html are from different builds`);
  return el as T;
};
const ui = {
  info: $('model-info'), form: $<HTMLFormElement>('controls'), cls: $<HTMLSelectElement>('class'),
  sampler: $<HTMLSelectElement>('sampler'), steps: $<HTMLInputElement>('steps'),
  guidance: $<HTMLInputElement>('guidance'), seed: $<HTMLInputElement>('seed'),
  show: $<HTMLSelectElement>('show'), webgpu: $<HTMLInputElement>('webgpu'),
  webgpuNote: $('webgpu-note'), random: $<HTMLButtonElement>('random'),
  stop: $<HTMLButtonElement>('stop'), sample: $<HTMLButtonElement>('sample'),
  canvas: $<HTMLCanvasElement>('canvas'), progress: $<HTMLProgressElement>('progress'),
  status: $('status'), timing: $('timing'), error: $('error'), history: $('history'),
};

function setState(s: State, status = ''): void {
  document.body.dataset['state'] = s;
  ui.status.textContent = status;
  ui.sample.disabled = s === 'loading' || s === 'sampling';
  ui.stop.disabled = s !== 'sampling';
}

function fail(e: unknown): void {
  const message = e instanceof Error ? e.message : String(e);
  ui.error.textContent = message;
  setState('error', 'failed');
  console.error(e);
}

/** Draws image 0 of a batch [N, C, H, W] in [-1, 1] (gray for one channel, RGB for three). */
function draw(canvas: HTMLCanvasElement, data: ArrayLike<number>, [c, h, w]: readonly number[]): void {
  canvas.width = w!;
  canvas.height = h!;
  const ctx = canvas.getContext('2d');
  if (!ctx) throw new Error('this browser gives no 2-D canvas context');
  const img = ctx.createImageData(w!, h!);
  const plane = h! * w!;
  const byte = (v: number) => Math.round((Math.min(1, Math.max(-1, v)) + 1) * 127.5);
  for (let i = 0; i < plane; i++) {
    for (let k = 0; k < 3; k++) img.data[4 * i + k] = byte(data[(c === 3 ? k : 0) * plane + i]!);
    img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

/** Lets the page paint between model calls (each call blocks the main thread in WASM). */
const yieldToPage = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 0));

let meta: LoadedMeta;
let modelBytes: Uint8Array;
let session: { s: ort.InferenceSession; gpu: boolean; threads: number } | undefined;

async function fetchOk(name: string): Promise<Response> {
  const res = await fetch(new URL(name, document.baseURI));
  if (!res.ok) {
    throw new Error(`${name}: HTTP ${res.status}. The page expects model.onnx and model.json ` +
      'beside it (diffuse export --model DIR --out FOLDER/model.onnx)');
  }
  return res;
}

/** The session for the ticked provider, made once per choice. */
async function sessionFor(gpu: boolean): Promise<ort.InferenceSession> {
  if (session?.gpu === gpu) return session.s;
  await session?.s.release();
  session = undefined;
  const t0 = performance.now();
  setState('loading', `creating the ${gpu ? 'WebGPU' : 'WASM'} session ...`);
  const s = await ort.InferenceSession.create(modelBytes, {
    executionProviders: gpu ? ['webgpu', 'wasm'] : ['wasm'],
    graphOptimizationLevel: 'all',
  });
  // Threads need a cross-origin isolated page (COOP/COEP headers); otherwise ORT uses one.
  const threads = crossOriginIsolated ? (ort.env.wasm.numThreads ?? 1) : 1;
  session = { s, gpu, threads };
  ui.timing.textContent = `session ready in ${((performance.now() - t0) / 1000).toFixed(2)} s`;
  return s;
}

async function load(): Promise<void> {
  // ?threads=N: ORT's own choice is half the cores (one on a 2-core machine); it must be set
  // before the first session starts the WASM runtime.
  const threads = new URLSearchParams(location.search).get('threads');
  if (threads !== null) {
    if (!/^[1-9]\d*$/.test(threads)) throw new Error(`?threads: expected an integer >= 1, got '${threads}'`);
    ort.env.wasm.numThreads = Number(threads);
  }
  meta = readMeta(await (await fetchOk('model.json')).json());
  modelBytes = new Uint8Array(await (await fetchOk('model.onnx')).arrayBuffer());
  const [c, h, w] = meta.sampleShape;
  ui.info.textContent = `${meta.modelClass}, ${c}x${h}x${w}, ${meta.numClasses
    ? `${meta.numClasses} classes` : 'unconditional'}, ${meta.prediction} prediction, ` +
    `${meta.spec.className} (${(modelBytes.length / 2 ** 20).toFixed(1)} MiB)`;
  ui.cls.replaceChildren(...[...Array.from({ length: meta.numClasses }, (_, k) => String(k)), 'unconditional']
    .map((v) => new Option(v, v === 'unconditional' ? 'null' : v)));
  ui.sampler.replaceChildren(...meta.samplers.map((n) => new Option(n, n)));
  ui.guidance.disabled = meta.numClasses === 0;
  // A browser can expose WebGPU without a usable GPU (headless, blocklisted drivers): ORT
  // would then quietly run on WASM under a WebGPU label, so the box needs an adapter.
  const gpu = (navigator as Navigator & { gpu?: { requestAdapter(): Promise<unknown> } }).gpu;
  const adapter = gpu ? await gpu.requestAdapter().catch(() => null) : null;
  ui.webgpu.disabled = !adapter;
  ui.webgpuNote.textContent = adapter ? '' : gpu ? 'no GPU adapter' : 'not in this browser';
  ui.cls.addEventListener('change', () => {
    ui.guidance.disabled = meta.numClasses === 0 || ui.cls.value === 'null';
  });
  await sessionFor(false);
  setState('ready', 'ready');
}

let stopper: AbortController | undefined;

async function run(): Promise<void> {
  ui.error.textContent = '';
  const gpu = ui.webgpu.checked && !ui.webgpu.disabled;
  const s = await sessionFor(gpu);
  const stats: CallStats = { calls: 0, rows: 0, ms: 0 };
  const base = sessionDenoiser(s, (type, data, dims) => new ort.Tensor(type, data, dims), meta, stats);
  const denoiser = { prediction: base.prediction,
    predict: async (...a: Parameters<typeof base.predict>) => (await yieldToPage(), base.predict(...a)) };
  const steps = Number(ui.steps.value);
  const label = ui.cls.value === 'null' ? null : Number(ui.cls.value);
  const guidance = Number(ui.guidance.value);
  const request = { sampler: ui.sampler.value, steps, label, guidance, seed: Number(ui.seed.value) };
  stopper = new AbortController();
  ui.progress.max = steps;
  ui.progress.value = 0;
  setState('sampling', `step 0 / ${steps}`);
  const t0 = performance.now();
  const onStep = (r: StepRecord) => {
    draw(ui.canvas, (ui.show.value === 'x' ? r.x : r.denoised).data, meta.sampleShape);
    ui.progress.value = r.index + 1;
    ui.status.textContent = `step ${r.index + 1} / ${r.total} (t = ${r.t.toFixed(1)})`;
  };
  const image = await sampleDigit(denoiser, meta, { ...request, onStep, signal: stopper.signal });
  const ms = performance.now() - t0;
  draw(ui.canvas, image, meta.sampleShape);
  const thumb = document.createElement('canvas');
  draw(thumb, image, meta.sampleShape);
  thumb.title = `${label === null ? 'unconditional' : `class ${label}`}, ${request.sampler} ` +
    `${steps} steps, guidance ${label === null ? '-' : guidance}, seed ${request.seed}`;
  ui.history.prepend(thumb);
  while (ui.history.children.length > 20) ui.history.lastChild!.remove();
  ui.timing.dataset['ms'] = String(ms);
  ui.timing.textContent = `${(ms / 1000).toFixed(2)} s per image on ${gpu ? 'WebGPU'
    : `WASM (${session!.threads} thread${session!.threads === 1 ? '' : 's'})`}: ${stats.calls} ` +
    `model calls of ${stats.rows / stats.calls} row${stats.rows === stats.calls ? '' : 's'}, ` +
    `${(stats.ms / stats.calls).toFixed(1)} ms each`;
  setState('done', `done: ${thumb.title}`);
}

ui.form.addEventListener('submit', (e) => {
  e.preventDefault();
  run().catch((err: unknown) => {
    if (stopper?.signal.aborted) setState('ready', 'stopped');
    else fail(err);
  });
});
ui.stop.addEventListener('click', () => stopper?.abort(new Error('stopped')));
ui.random.addEventListener('click', () => {
  ui.seed.value = String(Math.floor(Math.random() * 2 ** 31));
});
window.addEventListener('unhandledrejection', (e) => fail(e.reason));

load().catch(fail);
