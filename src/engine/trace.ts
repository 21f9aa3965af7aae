/**
 * @file Tracing: run a function on symbolic inputs and collect the graph its outputs
 * reach, in topological order, with a stable text form for tests and debugging.
 */
import { inputTensor } from './bind.js';
import type { DType } from './dtype.js';
import { fmtShape, type Shape } from './shape.js';
import { Tensor, type Node } from './tensor.js';
import { flatten, type Tree, type TreeDef } from './tree.js';

/** The shape (and dtype, default float32) of a traced input. A HostArray also serves. */
export interface TensorSpec {
  readonly shape: Shape;
  readonly dtype?: DType;
}

function isSpec(x: unknown): x is TensorSpec {
  return typeof x === 'object' && x !== null && Array.isArray((x as TensorSpec).shape);
}

export interface Graph {
  inputs: Tensor[];
  inputNames: string[];
  inputDefs: TreeDef[];
  outputs: Tensor[];
  outputNames: string[];
  outputDef: TreeDef;
  /** Every node the outputs reach, inputs and constants included, producers first. */
  nodes: Node[];
}

/** Producers-first order of the nodes that `outputs` reach (iterative: graphs are deep). */
export function toposort(outputs: readonly Tensor[]): Node[] {
  const order: Node[] = [];
  const state = new Map<number, 1 | 2>(); // 1: on the stack, 2: emitted
  const stack: [Node, number][] = [];
  for (const out of outputs) {
    if (state.has(out.node.id)) continue;
    stack.push([out.node, 0]);
    state.set(out.node.id, 1);
    while (stack.length) {
      const top = stack[stack.length - 1]!;
      const [node, i] = top;
      const ins = node.kind === 'prim' ? node.inputs : [];
      if (i < ins.length) {
        top[1]++;
        const child = ins[i]!.node;
        if (!state.has(child.id)) {
          state.set(child.id, 1);
          stack.push([child, 0]);
        }
      } else {
        stack.pop();
        state.set(node.id, 2);
        order.push(node);
      }
    }
  }
  return order;
}

export interface TraceOptions {
  /** Names of the positional arguments, used as ONNX input name prefixes. */
  argNames?: readonly string[];
}

/** Traces fn on symbolic inputs shaped like `specs` (one tree per positional argument). */
export function trace(fn: (...args: never[]) => unknown, specs: readonly Tree<TensorSpec>[],
  opts: TraceOptions = {}): Graph {
  const inputs: Tensor[] = [];
  const inputNames: string[] = [];
  const inputDefs: TreeDef[] = [];
  const args = specs.map((spec, a) => {
    const argName = opts.argNames?.[a] ?? (specs.length === 1 ? 'x' : `arg${a}`);
    const flat = flatten(spec, isSpec);
    inputDefs.push(flat.def);
    const tensors = flat.leaves.map((s, i) => {
      const name = flat.paths[i] ? `${argName}.${flat.paths[i]}` : argName;
      const t = inputTensor(name, s.shape, s.dtype ?? 'float32');
      inputs.push(t);
      inputNames.push(name);
      return t;
    });
    return rebuild(flat.def, tensors);
  });
  const result = (fn as (...a: unknown[]) => unknown)(...args);
  const out = flatten(result as Tree<Tensor>, (x): x is Tensor => x instanceof Tensor);
  if (out.leaves.length === 0) throw new TypeError('trace: the function returned no tensors');
  const outputNames = out.paths.map((p) => (p ? `out.${p}` : 'out'));
  return {
    inputs, inputNames, inputDefs, outputs: out.leaves, outputNames, outputDef: out.def,
    nodes: toposort(out.leaves),
  };
}

function rebuild(def: TreeDef, leaves: Tensor[]): unknown {
  let i = 0;
  const build = (d: TreeDef): unknown => {
    if (d.kind === 'leaf') return leaves[i++];
    if (d.kind === 'array') return d.items.map(build);
    return Object.fromEntries(d.keys.map((k, j) => [k, build(d.items[j]!)]));
  };
  return build(def);
}

/** A stable text form: `%3 = mul(%1, %2) : float32[2, 3]`, numbered in order. */
export function printGraph(g: Pick<Graph, 'outputs' | 'nodes'>): string {
  const names = new Map<number, string>();
  let k = 0;
  const name = (t: Tensor): string => names.get(t.id) ?? '?';
  const lines: string[] = [];
  const ins: string[] = [];
  for (const node of g.nodes) {
    for (const o of node.outputs) names.set(o.id, `%${k++}`);
    const outs = node.outputs.map(name).join(', ');
    const types = node.outputs.map((o) => `${o.dtype}${fmtShape(o.shape)}`).join(', ');
    if (node.kind === 'input') ins.push(`${outs}: ${types} "${node.name}"`);
    else if (node.kind === 'constant') {
      const v = node.value.size === 1 ? ` ${Number(node.value.data[0])}` : '';
      lines.push(`  ${outs} = constant${v} : ${types}`);
    } else {
      const params = Object.keys(node.params).length ? ` ${JSON.stringify(node.params)}` : '';
      lines.push(`  ${outs} = ${node.prim}(${node.inputs.map(name).join(', ')})${params} : ${types}`);
    }
  }
  return `graph(${ins.join(', ')}) {\n${lines.join('\n')}\n  return ${g.outputs.map(name).join(', ')}\n}`;
}
