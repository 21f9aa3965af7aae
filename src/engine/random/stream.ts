/**
 * @file A stateful view of a key for code that draws repeatedly (data generators, samplers'
 * noise): the k-th draw comes from key.fold(k), so the stream is as reproducible as its key.
 */
import type { RngKey } from './philox.js';

export class RngStream {
  private count = 0;
  constructor(private readonly key: RngKey) {}

  private next(): RngKey {
    return this.key.fold(this.count++);
  }
  uniform(n: number): Float64Array {
    return Float64Array.from(this.next().uniform(n));
  }
  normal(n: number): Float64Array {
    return Float64Array.from(this.next().normal(n));
  }
  normal32(n: number): Float32Array {
    return this.next().normal(n);
  }
  uniformInt(n: number, high: number): Int32Array {
    return this.next().uniformInt(n, high);
  }
}
