/**
 * @file What a traced graph needs in memory beyond its weights, estimated before ONNX Runtime
 * is asked for it: a request that cannot fit (a 1024x1024 image through attention at full
 * resolution) is refused with one line instead of an allocator dump minutes later.
 */
import { DTYPES } from './dtype.js';
import type { Graph } from './trace.js';

export interface LargestTensor {
  bytes: number;
  shape: readonly number[];
  /** The primitive that makes it (e.g. 'matmul' for attention scores). */
  prim: string;
}

/** The largest intermediate value of a graph (inputs and constants excluded). */
export function largestIntermediate(graph: Pick<Graph, 'nodes'>): LargestTensor {
  let best: LargestTensor = { bytes: 0, shape: [], prim: 'none' };
  for (const node of graph.nodes) {
    if (node.kind !== 'prim') continue;
    for (const t of node.outputs) {
      const n = t.shape.reduce<number>((a, d) => a * (typeof d === 'number' ? d : Number.NaN), 1);
      const bytes = n * DTYPES[t.dtype].bytes;
      if (bytes > best.bytes) {
        best = { bytes, shape: t.shape.map(Number), prim: node.prim };
      }
    }
  }
  return best;
}
