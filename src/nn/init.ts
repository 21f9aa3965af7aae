/** @file Parameter initialisers, with torch's defaults for its layers. */
import { HostArray } from '../engine/host.js';
import type { Initializer } from './module.js';

const size = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

export const zeros: Initializer = (shape) => HostArray.zeros(shape);
export const ones: Initializer = (shape) => HostArray.ones(shape);

export function uniform(bound: number): Initializer {
  return (shape, key) => {
    const u = key.uniform(size(shape));
    for (let i = 0; i < u.length; i++) u[i] = (2 * u[i]! - 1) * bound;
    return new HostArray(u, shape);
  };
}

export function normal(std: number): Initializer {
  return (shape, key) => {
    const z = key.normal(size(shape));
    for (let i = 0; i < z.length; i++) z[i]! *= std;
    return new HostArray(z, shape);
  };
}

/** torch's default for Linear/Conv weights: kaiming_uniform(a = sqrt 5), which is
 *  U(-1/sqrt(fan_in), 1/sqrt(fan_in)); their biases use the same bound. */
export function torchDefault(fanIn: number): Initializer {
  return uniform(1 / Math.sqrt(fanIn));
}

export function xavierUniform(fanIn: number, fanOut: number): Initializer {
  return uniform(Math.sqrt(6 / (fanIn + fanOut)));
}
