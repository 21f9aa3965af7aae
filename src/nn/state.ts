/**
 * @file State dicts: a module's parameter tree to and from flat name -> array maps, the form
 * checkpoints take. Loading checks every name and shape and reports the first problem by key.
 */
import { HostArray } from '../engine/host.js';
import type { Module, ParamsOf } from './module.js';

export class StateDictError extends Error {
  override name = 'StateDictError';
}

export interface LoadOptions {
  /** Maps a checkpoint name to the module's name (e.g. legacy attention names), or null to drop it. */
  rename?: (name: string) => string | null;
  /** Where the state dict came from, for error messages. */
  source?: string;
}

/** The parameter tree of `module` built from a state dict (views, not copies, of the arrays). */
export function loadStateDict<M extends Module>(module: M, dict: ReadonlyMap<string, HostArray>,
  opts: LoadOptions = {}): ParamsOf<M, HostArray> {
  const where = opts.source ? ` in ${opts.source}` : '';
  const expected = module.parameterShapes();
  const byName = new Map<string, HostArray>();
  for (const [name, value] of dict) {
    const target = opts.rename ? opts.rename(name) : name;
    if (target === null) continue;
    if (!expected.has(target)) {
      throw new StateDictError(`unexpected key '${name}'${where}: the model has no such parameter`);
    }
    byName.set(target, value);
  }
  for (const [name, shape] of expected) {
    const v = byName.get(name);
    if (!v) throw new StateDictError(`missing key '${name}'${where} (expected shape [${shape.join(', ')}])`);
    if (v.dtype !== 'float32') {
      throw new StateDictError(`key '${name}'${where} is ${v.dtype}, expected float32 (widen F16/BF16 on read)`);
    }
    if (v.shape.length !== shape.length || v.shape.some((d, i) => d !== shape[i])) {
      throw new StateDictError(`key '${name}'${where} has shape [${v.shape.join(', ')}], the model ` +
        `expects [${shape.join(', ')}]`);
    }
  }
  // Rebuild the tree with the same structure init() would produce.
  const fill = (template: unknown, prefix: string): unknown => {
    if (template instanceof HostArray) return byName.get(prefix)!;
    if (Array.isArray(template)) return template.map((t, i) => fill(t, `${prefix}.${i}`));
    return Object.fromEntries(Object.entries(template as Record<string, unknown>)
      .map(([k, t]) => [k, fill(t, prefix ? `${prefix}.${k}` : k)]));
  };
  return fill(shapeTemplate(module), '') as ParamsOf<M, HostArray>;
}

/** The parameter tree with zero-size placeholders, for structure only (cheap). */
function shapeTemplate(module: Module): unknown {
  const tree: Record<string, unknown> = {};
  for (const name of module.parameterShapes().keys()) {
    const parts = name.split('.');
    let node: Record<string, unknown> | unknown[] = tree;
    parts.forEach((part, i) => {
      const last = i === parts.length - 1;
      const nextIsIndex = !last && /^\d+$/.test(parts[i + 1]!);
      const container = node as Record<string, unknown>;
      if (last) container[part] = HostArray.zeros([0]);
      else container[part] ??= nextIsIndex ? [] : {};
      node = container[part] as Record<string, unknown>;
    });
  }
  return tree;
}
