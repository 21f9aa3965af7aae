/**
 * @file A reparameterisation of a model's weights for training: the optimiser sees a smaller
 * or differently shaped tree (a subset of the weights, scale factors, low-rank factors), and
 * the model's own weights are a function of it and of the frozen rest. Parameter-efficient
 * fine-tuning (DiffFit, BitFit, Diffscaler) is one; the full tree (`identity`) is its control.
 */
import type { HostArray } from '../engine/host.js';
import type { RngKey } from '../engine/random/philox.js';
import type { Tensor } from '../engine/tensor.js';
import type { Tree } from '../engine/tree.js';

export interface Reparameterisation {
  /** What it is called in logs and run files (`difffit`). */
  readonly name: string;
  /** The tree that is optimised, made from the starting model weights. */
  init(model: Tree<HostArray>, key: RngKey): Tree<HostArray>;
  /** Inside a training graph: the model weights a trained tree stands for (the frozen rest
   *  enters as constants). */
  apply(trained: Tree<Tensor>): Tree<Tensor>;
  /** The same on host arrays: the plain model weights to save, which load like any other. */
  merge(trained: Tree<HostArray>): Tree<HostArray>;
}
