/**
 * @file Floating-point operation counts of traced graphs (multiply-adds of MatMul and the
 * convolutions, counted as 2 flops each), for reporting throughput against the machine.
 */
import type { Graph } from './trace.js';

const prod = (xs: readonly (number | string)[]): number =>
  xs.reduce<number>((a, d) => a * (typeof d === 'number' ? d : Number.NaN), 1);

/** Flops of the matmuls and convolutions of a graph (elementwise work is not counted). */
export function countFlops(graph: Pick<Graph, 'nodes'>): number {
  let total = 0;
  for (const node of graph.nodes) {
    if (node.kind !== 'prim') continue;
    const [a, b] = node.inputs;
    const out = node.outputs[0]!;
    if (node.prim === 'matmul') {
      total += 2 * prod(out.shape) * (a!.shape[a!.rank - 1] as number);
    } else if (node.prim === 'conv2d') {
      total += 2 * prod(out.shape) * prod(b!.shape.slice(1));
    } else if (node.prim === 'convTranspose2d') {
      // Each input element meets every kernel tap of its group's output channels.
      total += 2 * prod(a!.shape) * prod(b!.shape.slice(1));
    }
  }
  return total;
}
