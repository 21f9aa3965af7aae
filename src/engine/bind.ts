/**
 * @file Applying a primitive to tensors (running its shape rule and making the node),
 * and the leaf nodes: graph inputs and constants.
 */
import type { DType } from './dtype.js';
import { HostArray } from './host.js';
import { PRIMS } from './prims/index.js';
import type { Prim, PrimParams } from './prims/types.js';
import { ShapeError, type Shape } from './shape.js';
import { newNodeId, Tensor, type Node, type PrimNode } from './tensor.js';

export function bind<P extends Prim>(prim: P, inputs: readonly Tensor[], params: PrimParams[P]): Tensor[] {
  const def = PRIMS[prim];
  const { arity } = def;
  const ok = arity === 'any' || (typeof arity === 'number' ? inputs.length === arity
    : inputs.length >= arity[0] && inputs.length <= arity[1]);
  if (!ok) throw new ShapeError(prim, `takes ${JSON.stringify(arity)} inputs, got ${inputs.length}`);
  inputs.forEach((t, i) => {
    if (!(t instanceof Tensor)) {
      throw new TypeError(`${prim}: input ${i} is not a traced Tensor (got ${describe(t)}); ` +
        `wrap host values with constant()`);
    }
  });
  const avals = def.infer(inputs, params);
  const node: PrimNode<P> = { kind: 'prim', id: newNodeId(), prim, params, inputs, outputs: [] };
  node.outputs = avals.map((a, i) => new Tensor(a.shape, a.dtype, node as PrimNode, i));
  return node.outputs;
}

export function bind1<P extends Prim>(prim: P, inputs: readonly Tensor[], params: PrimParams[P]): Tensor {
  return bind(prim, inputs, params)[0]!;
}

export function inputTensor(name: string, shape: Shape, dtype: DType): Tensor {
  const node: Node = { kind: 'input', id: newNodeId(), name, outputs: [] };
  const t = new Tensor(shape, dtype, node);
  node.outputs.push(t);
  return t;
}

export function constantTensor(value: HostArray): Tensor {
  const node: Node = { kind: 'constant', id: newNodeId(), value, outputs: [] };
  const t = new Tensor(value.shape, value.dtype, node);
  node.outputs.push(t);
  return t;
}

function describe(x: unknown): string {
  if (x instanceof HostArray) return `HostArray ${x.dtype}[${x.shape.join(',')}]`;
  return x === null ? 'null' : typeof x;
}
