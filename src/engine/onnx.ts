/**
 * @file Lowering a traced graph to an ONNX ModelProto at a pinned opset. Every primitive
 * lowers itself through a small context (prims/types.ts LowerCtx); constants become
 * initializers, shared when equal scalars or shape vectors repeat.
 */
import onnxProto from 'onnx-proto';
import { DTYPES, type DType } from './dtype.js';
import { HostArray } from './host.js';
import { PRIMS } from './prims/index.js';
import type { AttrValue, LowerCtx } from './prims/types.js';
import type { Shape } from './shape.js';
import type { Tensor } from './tensor.js';
import type { Graph } from './trace.js';

const { onnx } = onnxProto;

/** The ONNX opset every graph is emitted at (ReduceMean/ReduceMax take axes as inputs). */
export const OPSET = 18;
const IR_VERSION = 8;

function attribute(name: string, v: AttrValue): onnxProto.onnx.IAttributeProto {
  const T = onnx.AttributeProto.AttributeType;
  if (typeof v === 'number') {
    if (!Number.isInteger(v)) throw new Error(`internal: attribute ${name}=${v} must be {float}`);
    return { name, type: T.INT, i: v };
  }
  if (typeof v === 'string') return { name, type: T.STRING, s: new TextEncoder().encode(v) };
  if (Array.isArray(v)) return { name, type: T.INTS, ints: v as number[] };
  return { name, type: T.FLOAT, f: (v as { float: number }).float };
}

function tensorProto(name: string, a: HostArray): onnxProto.onnx.ITensorProto {
  const d = a.data;
  return {
    name, dims: a.shape as number[], dataType: DTYPES[a.dtype].onnx,
    rawData: new Uint8Array(d.buffer, d.byteOffset, d.byteLength),
  };
}

function valueInfo(name: string, shape: Shape, dtype: DType): onnxProto.onnx.IValueInfoProto {
  return {
    name,
    type: { tensorType: { elemType: DTYPES[dtype].onnx,
      shape: { dim: shape.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) } } },
  };
}

class Lowering implements LowerCtx {
  readonly nodes: onnxProto.onnx.INodeProto[] = [];
  /** Non-standard op domains used (each needs an opset import). */
  readonly domains = new Set<string>();
  /** Ids of the tensors computed from graph inputs. */
  readonly dynamic = new Set<number>();
  constructor(readonly nchwcBlock: number, readonly cpuCacheChunks: boolean) {}

  dependsOnInput(t: Tensor): boolean {
    return this.dynamic.has(t.id);
  }

  readonly initializers: onnxProto.onnx.ITensorProto[] = [];
  private readonly shared = new Map<string, string>();
  private counter = 0;
  /** Where each dynamic dimension can be read at run time: an input name and axis. */
  readonly dimSources = new Map<string, [string, number]>();

  emit(op: string, inputs: readonly string[], outputs: readonly string[],
    attrs: Record<string, AttrValue> = {}, domain = ''): void {
    if (domain) this.domains.add(domain);
    this.nodes.push({
      opType: op, domain, input: [...inputs], output: [...outputs], name: `${op}_${this.nodes.length}`,
      attribute: Object.entries(attrs).map(([k, v]) => attribute(k, v)),
    });
  }

  fresh(hint: string): string {
    return `${hint}_${this.counter++}`;
  }

  initializer(a: HostArray, hint: string, key?: string): string {
    const cached = key && this.shared.get(key);
    if (cached) return cached;
    const name = this.fresh(hint);
    this.initializers.push(tensorProto(name, a));
    if (key) this.shared.set(key, name);
    return name;
  }

  int64s(values: readonly number[]): string {
    const a = new HostArray(BigInt64Array.from(values, (v) => BigInt(v)), [values.length], 'int64');
    return this.initializer(a, 'i64', `i64:${values.join(',')}`);
  }

  float32s(values: readonly number[]): string {
    return this.initializer(new HostArray(Float32Array.from(values), [values.length]), 'f32',
      `f32:${values.join(',')}`);
  }

  scalar(value: number, dtype: DType): string {
    const data = DTYPES[dtype].make(1);
    if (data instanceof BigInt64Array) data[0] = BigInt(value);
    else data[0] = value;
    return this.initializer(new HostArray(data, [], dtype), 'scalar', `s:${dtype}:${value}`);
  }

  shapeTensor(shape: Shape): string {
    if (shape.every((d) => typeof d === 'number')) return this.int64s(shape as number[]);
    const parts = shape.map((d) => {
      if (typeof d === 'number') return this.int64s([d]);
      const key = `dim:${d}`;
      const cached = this.shared.get(key);
      if (cached) return cached;
      const src = this.dimSources.get(d);
      if (!src) throw new Error(`lowering: dynamic dimension '${d}' appears in no graph input`);
      const out = this.fresh(`dim_${d}`);
      this.emit('Shape', [src[0]], [out], { start: src[1], end: src[1] + 1 });
      this.shared.set(key, out);
      return out;
    });
    const out = this.fresh('shape');
    this.emit('Concat', parts, [out], { axis: 0 });
    return out;
  }
}

export interface LowerOptions {
  name?: string;
  docString?: string;
  /** ORT's NCHWc block size (nchwc.ts) to emit blocked convs for non-constant weights; 0 or
   *  absent: standard ops only, as in exported files that other runtimes must read. */
  nchwcBlock?: number;
  /** Split large ops along the batch into chunks that fit a CPU's cache (the attention
   *  primitive's forward); absent: one chunk, the portable form for GPUs and exported files. */
  cpuCacheChunks?: boolean;
}

/**
 * Gives graph outputs their public names. An output computed by a node is renamed where it is
 * produced: an Identity to a graph output stays in ORT's graph, a copy per run, whenever
 * another node also reads its input (a training step's new optimiser moments). Outputs that
 * are graph inputs, initializers or repeats of an earlier output go through `identity`.
 */
function nameOutputs(nodes: onnxProto.onnx.INodeProto[], inner: readonly string[],
  publicNames: readonly string[], identity: (inner: string, pub: string) => void): void {
  const produced = new Set(nodes.flatMap((n) => n.output ?? []));
  const rename = new Map<string, string>();
  inner.forEach((name, i) => {
    const pub = publicNames[i]!;
    if (name === pub) return;
    if (produced.has(name) && !rename.has(name)) rename.set(name, pub);
    else identity(rename.get(name) ?? name, pub);
  });
  if (rename.size === 0) return;
  const to = (name: string) => rename.get(name) ?? name;
  for (const n of nodes) {
    n.input = n.input?.map(to);
    n.output = n.output?.map(to);
  }
}

/** Ops whose trailing outputs are optional statistics that cost extra where requested. */
const OPTIONAL_TRAILING_OUTPUTS = new Set(['LayerNormalization']);

/** Drops the trailing outputs of OPTIONAL_TRAILING_OUTPUTS ops that nothing reads (the
 *  layerNorm primitive's mean and 1/std outside training graphs). */
function dropUnreadStatistics(nodes: onnxProto.onnx.INodeProto[], graphOutputs: readonly string[]): void {
  const read = new Set([...graphOutputs, ...nodes.flatMap((n) => n.input ?? [])]);
  for (const n of nodes) {
    if (!OPTIONAL_TRAILING_OUTPUTS.has(n.opType!) || !n.output) continue;
    const outs = n.output.map((o, i) => (i === 0 || read.has(o) ? o : '')); // '': not computed
    while (outs.length > 1 && outs[outs.length - 1] === '') outs.pop();
    n.output = outs;
  }
}

/** The ONNX model of a traced graph, serialised. */
export function toOnnx(graph: Graph, opts: LowerOptions = {}): Uint8Array {
  const cx = new Lowering(opts.nchwcBlock ?? 0, opts.cpuCacheChunks ?? false);
  const names = new Map<number, string>();
  graph.inputs.forEach((t, i) => {
    names.set(t.id, graph.inputNames[i]!);
    cx.dynamic.add(t.id);
    t.shape.forEach((d, axis) => {
      if (typeof d === 'string' && !cx.dimSources.has(d)) cx.dimSources.set(d, [graph.inputNames[i]!, axis]);
    });
  });
  const nameOf = (t: Tensor): string => {
    const n = names.get(t.id);
    if (n === undefined) throw new Error(`internal: tensor ${t} used before it was lowered`);
    return n;
  };
  const lowered = new Map<string, string[]>();
  for (const node of graph.nodes) {
    if (node.kind === 'input') {
      if (!names.has(node.outputs[0]!.id)) {
        throw new Error(`compile: the traced function uses a tensor '${node.name}' from another trace`);
      }
      continue;
    }
    if (node.kind === 'constant') {
      const v = node.value;
      const key = v.size === 1 ? `c:${v.dtype}:${v.shape.join('x')}:${v.data[0]}` : undefined;
      names.set(node.outputs[0]!.id, cx.initializer(v, 'const', key));
      continue;
    }
    if (node.inputs.some((t) => cx.dynamic.has(t.id))) node.outputs.forEach((o) => cx.dynamic.add(o.id));
    // Every primitive is a pure function of its inputs and parameters, so a node that repeats
    // an earlier one reuses its outputs: VJPs rebuild forward products (attention's O in the
    // softmax rule) that ORT's own elimination does not merge once it has fused the forward's.
    const inputNames = node.inputs.map(nameOf);
    const key = `${node.prim}(${inputNames.join(',')})${JSON.stringify(node.params)}`;
    const seen = lowered.get(key);
    if (seen) {
      node.outputs.forEach((o, i) => names.set(o.id, seen[i]!));
      continue;
    }
    const outs = node.outputs.map((o) => {
      const n = `${node.prim}_${o.id}`;
      names.set(o.id, n);
      return n;
    });
    lowered.set(key, outs);
    const def = PRIMS[node.prim] as { lower: (...a: unknown[]) => void };
    def.lower(cx, inputNames, outs, node.params, node);
  }
  nameOutputs(cx.nodes, graph.outputs.map(nameOf), graph.outputNames, (inner, pub) =>
    cx.emit('Identity', [inner], [pub]));
  dropUnreadStatistics(cx.nodes, graph.outputNames);
  const model = onnx.ModelProto.create({
    irVersion: IR_VERSION,
    opsetImport: [{ domain: '', version: OPSET }, ...[...cx.domains].map((domain) => ({ domain, version: 1 }))],
    producerName: 'diffuse',
    docString: opts.docString ?? '',
    graph: {
      name: opts.name ?? 'diffuse',
      node: cx.nodes,
      initializer: cx.initializers,
      input: graph.inputs.map((t, i) => valueInfo(graph.inputNames[i]!, t.shape, t.dtype)),
      output: graph.outputs.map((t, i) => valueInfo(graph.outputNames[i]!, t.shape, t.dtype)),
    },
  });
  return onnx.ModelProto.encode(model).finish();
}
