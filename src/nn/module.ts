/**
 * @file Modules: objects that declare parameters (Param) and sub-modules as fields, and a
 * forward function that takes the parameter tree explicitly. `init` builds that tree of
 * host arrays; its dotted paths are the state-dict names (fields keep diffusers' names, so
 * `down_blocks[0].resnets[1].conv1.weight` is `down_blocks.0.resnets.1.conv1.weight`).
 * Parameters are plain values, never module state, so grad and compile see them as inputs.
 */
import { HostArray } from '../engine/host.js';
import { RngKey } from '../engine/random/philox.js';
import type { Tensor } from '../engine/tensor.js';
import { flatten, type Tree } from '../engine/tree.js';

/** Makes the initial value of a parameter of the given shape from a key. */
export type Initializer = (shape: readonly number[], key: RngKey) => HostArray<'float32'>;

export class Param {
  constructor(
    readonly shape: readonly number[],
    readonly init: Initializer,
  ) {}
}

/** The parameter tree of module M with leaves T (HostArray on the host, Tensor in graphs). */
export type ParamsOf<M, T = Tensor> = {
  [K in keyof M as NonNullable<M[K]> extends Param | Module | readonly Module[] ? K : never]:
  NonNullable<M[K]> extends Param ? T
    : NonNullable<M[K]> extends readonly (infer E)[] ? ParamsOf<E, T>[]
      : ParamsOf<NonNullable<M[K]>, T>;
};

/** A stable 32-bit hash of a parameter path, so a parameter's initial value depends only on
 *  the seed and its name (adding a layer does not reshuffle the others). */
function pathHash(path: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < path.length; i++) h = Math.imul(h ^ path.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

export abstract class Module {
  /** Fresh parameters for this module, as a tree of host arrays. */
  init(key: RngKey): ParamsOf<this, HostArray> {
    const build = (m: Module, prefix: string): Record<string, unknown> => {
      const out: Record<string, unknown> = {};
      for (const [name, v] of Object.entries(m)) {
        const path = prefix ? `${prefix}.${name}` : name;
        if (v instanceof Param) out[name] = v.init(v.shape, key.fold(pathHash(path)));
        else if (v instanceof Module) out[name] = build(v, path);
        else if (Array.isArray(v) && v.length > 0 && v.every((e) => e instanceof Module)) {
          out[name] = v.map((e: Module, i) => build(e, `${path}.${i}`));
        }
      }
      return out;
    };
    return build(this, '') as ParamsOf<this, HostArray>;
  }

  /** Parameter names and shapes, in state-dict order, without allocating values. */
  parameterShapes(): Map<string, readonly number[]> {
    const out = new Map<string, readonly number[]>();
    const walk = (m: Module, prefix: string): void => {
      for (const [name, v] of Object.entries(m)) {
        const path = prefix ? `${prefix}.${name}` : name;
        if (v instanceof Param) out.set(path, v.shape);
        else if (v instanceof Module) walk(v, path);
        else if (Array.isArray(v)) v.forEach((e, i) => e instanceof Module && walk(e, `${path}.${i}`));
      }
    };
    walk(this, '');
    return out;
  }

  numParams(): number {
    let n = 0;
    for (const s of this.parameterShapes().values()) n += s.reduce((a, b) => a * b, 1);
    return n;
  }
}

/** Flat name -> array view of a parameter tree (a state dict). */
export function stateDict(params: Tree<HostArray>): Map<string, HostArray> {
  const flat = flatten(params, (x): x is HostArray => x instanceof HostArray);
  return new Map(flat.paths.map((p, i) => [p, flat.leaves[i]!]));
}
