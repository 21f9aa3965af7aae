/** @file Constants and filled tensors. Host values enter graphs only through here. */
import { constantTensor } from '../bind.js';
import { DTYPES, type DType } from '../dtype.js';
import { HostArray, type Nested } from '../host.js';
import type { Dim } from '../shape.js';
import type { Tensor } from '../tensor.js';
import { mapTree, type Tree } from '../tree.js';
import { broadcastTo } from './movement.js';

/** A constant (an initializer in the ONNX graph) from a host array or nested numbers. */
export function constant(value: HostArray | Nested, dtype: DType = 'float32'): Tensor {
  return constantTensor(value instanceof HostArray ? value : HostArray.fromNested(value, dtype));
}

/** A rank-0 constant of the given dtype. */
export function scalarLike(value: number, dtype: DType): Tensor {
  const data = DTYPES[dtype].make(1);
  if (data instanceof BigInt64Array) data[0] = BigInt(value);
  else data[0] = value;
  return constantTensor(new HostArray(data, [], dtype));
}

/** A tensor of one value: a scalar constant broadcast at run time, not a full initializer. */
export function full(shape: readonly Dim[], value: number, dtype: DType = 'float32'): Tensor {
  return broadcastTo(scalarLike(value, dtype), shape);
}

export function zeros(shape: readonly Dim[], dtype: DType = 'float32'): Tensor {
  return full(shape, 0, dtype);
}

export function ones(shape: readonly Dim[], dtype: DType = 'float32'): Tensor {
  return full(shape, 1, dtype);
}

export function zerosLike(t: Tensor): Tensor {
  return zeros(t.shape, t.dtype);
}

export function onesLike(t: Tensor): Tensor {
  return ones(t.shape, t.dtype);
}

/** [0, 1, ..., n-1] as a constant. */
export function arange(n: number, dtype: DType = 'int64'): Tensor {
  const data = DTYPES[dtype].make(n);
  for (let i = 0; i < n; i++) {
    if (data instanceof BigInt64Array) data[i] = BigInt(i);
    else data[i] = i;
  }
  return constantTensor(new HostArray(data, [n], dtype));
}

/** Every host array of a tree (a model's weights) as a constant, other leaves as they are:
 *  weights baked into an inference graph, where ORT prepacks them. */
export function constantTree(tree: Tree<HostArray>): Tree<Tensor> {
  return mapTree(tree, (x): x is HostArray => x instanceof HostArray, (a) => constant(a));
}
