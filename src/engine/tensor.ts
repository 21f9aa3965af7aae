/**
 * @file Symbolic tensors and the graph nodes that produce them. Calling an op on
 * tensors appends a node; a traced program is the set of nodes its outputs reach.
 * There is no global trace state: graphs are plain data, so grad can transform them.
 */
import type { DType } from './dtype.js';
import type { HostArray } from './host.js';
import type { Prim, PrimParams } from './prims/types.js';
import { fmtShape, type Dim, type Shape } from './shape.js';
import * as ops from './ops.js';

let nextId = 0;

/** What produces a tensor: a graph input, a constant, or a primitive applied to tensors. */
export type Node =
  | { readonly kind: 'input'; readonly id: number; readonly name: string; outputs: Tensor[] }
  | { readonly kind: 'constant'; readonly id: number; readonly value: HostArray; outputs: Tensor[] }
  | PrimNode;

export interface PrimNode<P extends Prim = Prim> {
  readonly kind: 'prim';
  readonly id: number;
  readonly prim: P;
  readonly params: PrimParams[P];
  readonly inputs: readonly Tensor[];
  outputs: Tensor[];
}

export function newNodeId(): number {
  return nextId++;
}

export class Tensor {
  readonly id = nextId++;
  constructor(
    readonly shape: Shape,
    readonly dtype: DType,
    readonly node: Node,
    readonly outputIndex = 0,
  ) {}

  get rank(): number {
    return this.shape.length;
  }

  toString(): string {
    const src = this.node.kind === 'prim' ? this.node.prim : this.node.kind;
    return `Tensor<${this.dtype}${fmtShape(this.shape)}> from ${src}`;
  }

  // Method forms of the common ops, for readable model code; see ops.ts for documentation.
  add(y: Tensor | number): Tensor { return ops.add(this, y); }
  sub(y: Tensor | number): Tensor { return ops.sub(this, y); }
  mul(y: Tensor | number): Tensor { return ops.mul(this, y); }
  div(y: Tensor | number): Tensor { return ops.div(this, y); }
  pow(y: Tensor | number): Tensor { return ops.pow(this, y); }
  neg(): Tensor { return ops.neg(this); }
  exp(): Tensor { return ops.exp(this); }
  log(): Tensor { return ops.log(this); }
  sqrt(): Tensor { return ops.sqrt(this); }
  square(): Tensor { return ops.mul(this, this); }
  matmul(y: Tensor): Tensor { return ops.matmul(this, y); }
  reshape(shape: readonly Dim[]): Tensor { return ops.reshape(this, shape); }
  transpose(perm?: readonly number[]): Tensor { return ops.transpose(this, perm); }
  sum(axes?: number | readonly number[], keepDims = false): Tensor {
    return ops.sum(this, axes, keepDims);
  }
  mean(axes?: number | readonly number[], keepDims = false): Tensor {
    return ops.mean(this, axes, keepDims);
  }
  max(axes?: number | readonly number[], keepDims = false): Tensor {
    return ops.max(this, axes, keepDims);
  }
  cast(dtype: DType): Tensor { return ops.cast(this, dtype); }
  broadcastTo(shape: readonly Dim[]): Tensor { return ops.broadcastTo(this, shape); }
}

export function isTensor(x: unknown): x is Tensor {
  return x instanceof Tensor;
}
