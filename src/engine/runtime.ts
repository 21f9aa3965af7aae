/**
 * @file Running traced functions on ONNX Runtime: `compile` turns a function over tensor
 * trees into an async function over host-array trees, with one ORT session per input-shape
 * signature; `exportOnnx` writes the graph as a standalone .onnx file.
 *
 * onnxruntime-node's run() blocks the event loop while it computes. Everything a session
 * needs is the serialised model (`.onnx(...)`), so a worker thread can build its own.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import ort from 'onnxruntime-node';
import type { DType } from './dtype.js';
import { HostArray, isHostArray } from './host.js';
import { nchwcBlockSize, nchwcBlockSizeIfKnown } from './nchwc.js';
import { toOnnx } from './onnx.js';
import { writeFileAtomic } from '../util/atomic.js';
import { ShapeError } from './shape.js';
import { Tensor } from './tensor.js';
import { trace, type Graph, type TensorSpec } from './trace.js';
import { flatten, unflatten, type MapLeaves, type Tree, type TreeDef } from './tree.js';

export type Provider = 'cpu' | 'webgpu' | 'cuda';

export interface RuntimeOptions {
  /** Execution provider (default 'cpu'). */
  provider?: Provider;
  /** Intra-op threads for the CPU provider (default: all cores). */
  threads?: number;
  /** ORT graph optimisation level (default 'all', which adds the NCHWc layout transforms). */
  optimization?: 'disabled' | 'basic' | 'extended' | 'all';
  /** Names of the positional arguments, used in ONNX input names (default x or arg0..). */
  argNames?: readonly string[];
  /** Emit ORT's blocked NCHWc convs for weights that are graph inputs (training graphs) on
   *  the CPU at level 'all' (default true unless DIFFUSE_BLOCKED_CONVS=0; see nchwc.ts). */
  blockedConvs?: boolean;
  /** ORT's memory pattern: one block for all intermediates, planned from the first run
   *  (default true). Training steps turn it off (nn/train.ts): the block held a second copy of
   *  their activations' peak, while the arena's reuse ran as fast (docs/engine.md). */
  memoryPattern?: boolean;
  /** Graph name, shown in errors and exported files. */
  name?: string;
  /** Write ORT's per-op profile (JSON, `diffuse-profile-<name>_<date>.json`) to the working
   *  directory; the file is complete when the session is released (`dispose()`). */
  profile?: boolean;
}

/** Errors from the runtime that are the user's to fix (provider missing, bad arguments). */
export class RuntimeError extends Error {
  override name = 'RuntimeError';
}

function cudaInstalled(): boolean {
  const require = createRequire(import.meta.url);
  const root = dirname(require.resolve('onnxruntime-node/package.json'));
  const dir = join(root, 'bin', 'napi-v6', process.platform, process.arch);
  return existsSync(join(dir, 'libonnxruntime_providers_cuda.so')) ||
    existsSync(join(dir, 'onnxruntime_providers_cuda.dll'));
}

let defaultThreads: number | undefined;

/**
 * The intra-op threads of sessions created from now on in this thread (JavaScript's, so a
 * worker thread sets its own) when RuntimeOptions.threads is not given; undefined: one per
 * core. Job back-ends running several jobs at once give each its share of the cores.
 */
export function setDefaultThreads(threads: number | undefined): void {
  if (threads !== undefined && !(Number.isInteger(threads) && threads >= 1)) {
    throw new RangeError(`threads must be an integer >= 1, got ${threads}`);
  }
  defaultThreads = threads;
}

/** ORT session options for a provider, or a RuntimeError saying how to get it. */
export function sessionOptions(opts: RuntimeOptions): ort.InferenceSession.SessionOptions {
  const provider = opts.provider ?? 'cpu';
  if (provider === 'cuda' && !cudaInstalled()) {
    throw new RuntimeError(
      "provider 'cuda' is not installed: onnxruntime-node downloads its CUDA 12 provider only " +
        'on request. Run `ONNXRUNTIME_NODE_INSTALL=cuda12 npm rebuild onnxruntime-node` ' +
        '(needs CUDA 12 and cuDNN 9 on the machine), or use --provider cpu | webgpu.');
  }
  if (!['cpu', 'webgpu', 'cuda'].includes(provider)) {
    throw new RuntimeError(`unknown provider '${provider}': expected cpu, webgpu or cuda`);
  }
  return {
    executionProviders: provider === 'cpu' ? ['cpu'] : [provider, 'cpu'],
    intraOpNumThreads: opts.threads ?? defaultThreads ?? availableParallelism(),
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: opts.optimization ?? 'all',
    enableCpuMemArena: true,
    enableMemPattern: opts.memoryPattern ?? true,
    enableProfiling: opts.profile ?? false,
    ...(opts.profile ? { profileFilePrefix: `diffuse-profile-${opts.name ?? 'graph'}` } : {}),
    logSeverityLevel: 3,
  };
}

export async function createSession(model: Uint8Array, opts: RuntimeOptions):
  Promise<ort.InferenceSession> {
  const options = sessionOptions(opts);
  try {
    return await ort.InferenceSession.create(model, options);
  } catch (e) {
    const message = (e as Error).message;
    if (opts.provider === 'webgpu' && /No supported adapters/.test(message)) {
      throw new RuntimeError("provider 'webgpu' found no GPU adapter on this machine (WebGPU " +
        'needs a GPU with Vulkan, Metal or D3D12 drivers); use --provider cpu');
    }
    throw new RuntimeError(`ONNX Runtime rejected graph '${opts.name ?? 'diffuse'}' on ` +
      `${opts.provider ?? 'cpu'}: ${message}`);
  }
}

export function toOrtTensor(a: HostArray): ort.Tensor {
  return new ort.Tensor(a.dtype, a.data as never, a.shape as number[]);
}

function fromOrtTensor(t: ort.Tensor): HostArray {
  const dtype = t.type as DType;
  return new HostArray(t.data as never, t.dims, dtype);
}

type HostTree = Tree<HostArray>;
type TensorFn = (...args: never[]) => unknown;

/** The host-side signature of a traced function: tensors in and out become HostArrays. */
export type Compiled<F extends TensorFn> = ((...args: MapLeaves<Parameters<F>, Tensor, HostArray>) =>
  Promise<MapLeaves<ReturnType<F>, Tensor, HostArray>>) & {
  /** The traced graph for these argument shapes. */
  trace(...specs: Tree<TensorSpec>[]): Graph;
  /** The serialised ONNX model for these argument shapes. */
  onnx(...specs: Tree<TensorSpec>[]): Uint8Array;
  /** How many sessions (one per input-shape signature) exist. */
  readonly sessionCount: number;
  /** Time spent inside session.run (ms) and calls so far: what the host adds is the rest. */
  readonly stats: { runMs: number; calls: number };
  /** Calls fn with ORT writing the outputs into `outputs` (a tree like fn's result, of the
   *  same shapes and dtypes), which it returns: no output buffers are made, which matters
   *  for large outputs fed back in (caches). They must not alias an argument. */
  into(outputs: MapLeaves<ReturnType<F>, Tensor, HostArray>,
    ...args: MapLeaves<Parameters<F>, Tensor, HostArray>): Promise<MapLeaves<ReturnType<F>, Tensor, HostArray>>;
  /** Releases the sessions. */
  dispose(): Promise<void>;
};

interface Entry {
  session: ort.InferenceSession;
  inputNames: string[];
  outputNames: string[];
  outputDef: TreeDef;
  /** Static shapes and dtypes of the outputs (they are traced at concrete shapes). */
  outputSpecs: { shape: number[]; dtype: DType }[];
}

type Flat = { def: TreeDef; leaves: HostArray[] };

/** `into`'s arrays as ORT fetches, checked against the graph's outputs. */
function outputTargets(what: string, e: Entry, into: HostTree): { fetches: Record<string, ort.Tensor> } {
  const leaves = flatten(into, (x): x is HostArray => x instanceof HostArray).leaves;
  if (leaves.length !== e.outputNames.length) {
    throw new TypeError(`${what}.into: ${leaves.length} output arrays for ${e.outputNames.length} outputs`);
  }
  const fetches: Record<string, ort.Tensor> = {};
  leaves.forEach((a, i) => {
    const want = e.outputSpecs[i]!;
    if (a.dtype !== want.dtype || a.shape.length !== want.shape.length
      || a.shape.some((d, j) => d !== want.shape[j])) {
      throw new TypeError(`${what}.into: output ${i} must be ${want.dtype} ` +
        `[${want.shape.join(', ')}], got ${a.dtype} [${a.shape.join(', ')}]`);
    }
    fetches[e.outputNames[i]!] = toOrtTensor(a);
  });
  return { fetches };
}

function signature(flats: readonly Flat[]): string {
  return flats.map((f) => `${JSON.stringify(f.def)}:${f.leaves.map((l) =>
    `${l.dtype}[${l.shape.join(',')}]`).join(';')}`).join('|');
}

const onCpu = (opts: RuntimeOptions): boolean => (opts.provider ?? 'cpu') === 'cpu';

/** Blocked convs (nchwc.ts) are ORT-CPU kernels, and part of optimisation level 'all'. */
function usesBlockedConvs(opts: RuntimeOptions): boolean {
  const wanted = opts.blockedConvs ?? process.env.DIFFUSE_BLOCKED_CONVS !== '0';
  return (opts.provider ?? 'cpu') === 'cpu' && (opts.optimization ?? 'all') === 'all' && wanted;
}

async function blockFor(opts: RuntimeOptions): Promise<number> {
  return usesBlockedConvs(opts) ? nchwcBlockSize() : 0;
}

/** How a compiled function names its arguments in messages, as trace names its inputs. */
function argLabel(i: number, count: number, argNames?: readonly string[]): string {
  return `argument ${i + 1} '${argNames?.[i] ?? (count === 1 ? 'x' : `arg${i}`)}'`;
}

/**
 * The arguments of a call flattened, or a RuntimeError naming the first that is wrong: the
 * count (`arity`, when known) and each one's form. Why: a missing argument reaches the traced
 * function as undefined, which it may read as a number (NaN) and run.
 */
function checkArgs(what: string, args: readonly unknown[], arity: number | undefined,
  argNames?: readonly string[]): Flat[] {
  const label = (i: number) => argLabel(i, arity ?? args.length, argNames);
  if (arity !== undefined && args.length !== arity) {
    const names = Array.from({ length: arity }, (_, i) => label(i).replace(/^argument \d+ /, ''));
    const problem = args.length < arity ? `${label(args.length)} is missing`
      : `${args.length - arity} too many`;
    throw new RuntimeError(`${what} takes ${arity} argument${arity === 1 ? '' : 's'} ` +
      `(${names.join(', ')}), got ${args.length}: ${problem}`);
  }
  return args.map((a, i) => {
    if (a === undefined || a === null) {
      throw new RuntimeError(`${what}: ${label(i)} is ${a}, expected a HostArray or a tree of them`);
    }
    try {
      return flatten(a as HostTree, isHostArray);
    } catch (e) {
      const m = /unexpected (\S+) at '([^']*)'/.exec((e as Error).message);
      const got = m ? `got ${m[1]}${m[2] === '<root>' ? '' : ` at '${m[2]}'`}` : (e as Error).message;
      throw new RuntimeError(`${what}: ${label(i)} must be a HostArray or a tree of them, ${got}`);
    }
  });
}

/** `x: float32[2, 3], params: 12 arrays`: what a call passed, for messages. */
function describeCall(flats: readonly Flat[], argNames?: readonly string[]): string {
  return flats.map((f, i) => {
    const name = argLabel(i, flats.length, argNames).replace(/^argument \d+ /, '');
    const only = f.def.kind === 'leaf' ? f.leaves[0] : undefined;
    return `${name}: ${only ? `${only.dtype}[${only.shape.join(', ')}]`
      : `${f.leaves.length} arrays`}`;
  }).join(', ');
}

/**
 * A trace that failed on this call's arguments, with the call appended: the shape rule names
 * the op and the form it expects, this the arguments given. ShapeErrors stay ShapeErrors.
 */
function atCall(e: unknown, what: string, call: string): Error {
  if (!(e instanceof Error)) return new RuntimeError(`${what} (${call}): ${String(e)}`);
  const where = `(${what} called with ${call})`;
  if (e instanceof ShapeError) {
    return Object.assign(new ShapeError(e.op, `${e.message.slice(e.op.length + 2)} ${where}`),
      { cause: e });
  }
  const Same = [TypeError, RangeError, RuntimeError].find((c) => e.constructor === c);
  return new (Same ?? RuntimeError)(`${e.message} ${where}`, { cause: e });
}

/** ONNX Runtime's allocation failures: what its CPU arena and the C++ runtime say. */
const OUT_OF_MEMORY = /Failed to allocate memory|bad_alloc|BFCArena|out of memory/i;

/**
 * A failed session.run as one line: ORT's first line (its messages can carry an allocator
 * dump) and the call. Allocation failures say what to change.
 */
export function runFailure(e: unknown, what: string, call: string): RuntimeError {
  const first = (e instanceof Error ? e.message : String(e)).split('\n')[0]!.trim();
  if (OUT_OF_MEMORY.test(first)) {
    return new RuntimeError(`${what} ran out of memory in ONNX Runtime (called with ${call}): ` +
      `use a smaller batch or memory limit (${first.slice(0, 120)})`, { cause: e });
  }
  return new RuntimeError(`${what} failed in ONNX Runtime (called with ${call}): ${first}`,
    { cause: e });
}

/**
 * Compiles fn (over trees of Tensors) to an async function over trees of HostArrays. A call
 * must pass `opts.argNames.length` arguments when given, else `fn.length` (JS counts the
 * parameters before the first default or rest one; a function of rest parameters alone is not
 * counted): give `argNames` for functions whose `length` does not say.
 */
export function compile<F extends TensorFn>(fn: F, opts: RuntimeOptions = {}): Compiled<F> {
  const sessions = new Map<string, Promise<Entry>>();
  const stats = { runMs: 0, calls: 0 };
  const arity = opts.argNames?.length ?? (fn.length > 0 ? fn.length : undefined);
  const what = `compiled '${opts.name ?? (fn.name || 'function')}'`;
  const traceFor = (specs: Tree<TensorSpec>[]): Graph => trace(fn, specs, { argNames: opts.argNames });
  const build = async (specs: Tree<TensorSpec>[], flats: Flat[]): Promise<Entry> => {
    let graph: Graph;
    try {
      graph = traceFor(specs);
    } catch (e) {
      throw atCall(e, what, describeCall(flats, opts.argNames));
    }
    const session = await createSession(toOnnx(graph, { name: opts.name, nchwcBlock: await blockFor(opts),
      cpuCacheChunks: onCpu(opts) }), opts);
    return { session, inputNames: graph.inputNames, outputNames: graph.outputNames,
      outputDef: graph.outputDef,
      outputSpecs: graph.outputs.map((o) => ({ shape: o.shape.map(Number), dtype: o.dtype })) };
  };
  /** Runs fn; with `into`, ORT writes the outputs into those arrays (no new buffers). */
  const run = async (args: HostTree[], into?: HostTree): Promise<unknown> => {
    const flats = checkArgs(what, args, arity, opts.argNames);
    const key = signature(flats);
    let entry = sessions.get(key);
    if (!entry) {
      entry = build(args, flats);
      sessions.set(key, entry);
      entry.catch(() => sessions.delete(key));
    }
    const e = await entry;
    const feeds: Record<string, ort.Tensor> = {};
    flats.flatMap((f) => f.leaves).forEach((a, i) => (feeds[e.inputNames[i]!] = toOrtTensor(a)));
    const targets = into === undefined ? undefined : outputTargets(what, e, into);
    const t0 = performance.now();
    let results: ort.InferenceSession.OnnxValueMapType;
    try {
      results = targets ? await e.session.run(feeds, targets.fetches) : await e.session.run(feeds);
    } catch (err) {
      throw runFailure(err, what, describeCall(flats, opts.argNames));
    }
    stats.runMs += performance.now() - t0;
    stats.calls++;
    if (targets) return into;
    return unflatten(e.outputDef, e.outputNames.map((n) => fromOrtTensor(results[n] as ort.Tensor)));
  };
  const call = (...args: HostTree[]): Promise<unknown> => run(args);
  const compiled = Object.assign(call, {
    into: (outputs: HostTree, ...args: HostTree[]) => run(args, outputs),
    trace: (...specs: Tree<TensorSpec>[]) => traceFor(specs),
    onnx: (...specs: Tree<TensorSpec>[]) => toOnnx(traceFor(specs),
      { name: opts.name, nchwcBlock: usesBlockedConvs(opts) ? nchwcBlockSizeIfKnown() : 0, cpuCacheChunks: onCpu(opts) }),
    stats,
    dispose: async () => {
      const all = [...sessions.values()];
      sessions.clear();
      await Promise.all(all.map(async (p) => (await p).session.release()));
    },
  });
  Object.defineProperty(compiled, 'sessionCount', { get: () => sessions.size });
  return compiled as unknown as Compiled<F>; // sound: call implements the mapped signature
}

/** Writes fn, traced at these shapes (dims may be named, e.g. 'batch'), as a standalone
 *  .onnx file; the write is atomic (temp file + rename). */
export async function exportOnnx(fn: TensorFn, exampleShapes: readonly Tree<TensorSpec>[], path: string,
  opts: Pick<RuntimeOptions, 'argNames' | 'name'> = {}): Promise<void> {
  await writeFileAtomic(path, toOnnx(trace(fn, exampleShapes, opts), { name: opts.name }));
}
