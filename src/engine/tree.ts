/**
 * @file Trees of values: nested arrays and plain objects whose leaves are tensors (or host
 * arrays). Flattening gives leaves in a stable order with dotted paths, which become ONNX
 * input names and, for parameters, diffusers' state-dict keys (`down_blocks.0.conv1.weight`).
 */

export type Tree<L> = L | readonly Tree<L>[] | { readonly [key: string]: Tree<L> };

export type TreeDef =
  | { kind: 'leaf' }
  | { kind: 'array'; items: TreeDef[] }
  | { kind: 'object'; keys: string[]; items: TreeDef[] };

export interface Flat<L> {
  leaves: L[];
  paths: string[];
  def: TreeDef;
}

/** Leaves in depth-first order (object keys in insertion order). `undefined` entries of
 *  objects are skipped, so optional parameters simply do not appear. */
export function flatten<L>(tree: Tree<L>, isLeaf: (x: unknown) => x is L): Flat<L> {
  const leaves: L[] = [];
  const paths: string[] = [];
  const walk = (t: unknown, path: string): TreeDef => {
    if (isLeaf(t)) {
      leaves.push(t);
      paths.push(path);
      return { kind: 'leaf' };
    }
    const join = (k: string | number): string => (path ? `${path}.${k}` : String(k));
    if (Array.isArray(t)) return { kind: 'array', items: t.map((x, i) => walk(x, join(i))) };
    if (t !== null && typeof t === 'object' && Object.getPrototypeOf(t) === Object.prototype) {
      const keys = Object.keys(t).filter((k) => (t as Record<string, unknown>)[k] !== undefined);
      return { kind: 'object', keys, items: keys.map((k) => walk((t as Record<string, unknown>)[k], join(k))) };
    }
    throw new TypeError(`tree: unexpected ${t === null ? 'null' : typeof t} at '${path || '<root>'}' ` +
      `(expected a leaf, an array or a plain object)`);
  };
  const def = walk(tree, '');
  return { leaves, paths, def };
}

export function unflatten<L>(def: TreeDef, leaves: readonly L[]): Tree<L> {
  let i = 0;
  const build = (d: TreeDef): Tree<L> => {
    if (d.kind === 'leaf') {
      if (i >= leaves.length) throw new Error('tree: too few leaves to unflatten');
      return leaves[i++]!;
    }
    if (d.kind === 'array') return d.items.map(build);
    const out: Record<string, Tree<L>> = {};
    d.keys.forEach((k, j) => (out[k] = build(d.items[j]!)));
    return out;
  };
  const tree = build(def);
  if (i !== leaves.length) throw new Error(`tree: ${leaves.length - i} leaves left over`);
  return tree;
}

/** Maps every leaf (with its path), keeping the structure. */
export function mapTree<A, B>(tree: Tree<A>, isLeaf: (x: unknown) => x is A,
  fn: (leaf: A, path: string) => B): Tree<B> {
  const { leaves, paths, def } = flatten(tree, isLeaf);
  return unflatten(def, leaves.map((l, i) => fn(l, paths[i]!)));
}

/** A tree with leaves of type L replaced by R (for typing compiled functions). */
export type MapLeaves<T, L, R> = T extends L ? R
  : T extends readonly unknown[] ? { [K in keyof T]: MapLeaves<T[K], L, R> }
  : T extends object ? { [K in keyof T]: MapLeaves<T[K], L, R> }
  : T;
