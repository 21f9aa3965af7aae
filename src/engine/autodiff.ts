/**
 * @file Reverse-mode differentiation on traced graphs: grad, valueAndGrad, vjp.
 *
 * The backward pass walks the nodes created while the differentiated function ran, in
 * reverse, applying each primitive's VJP rule (itself written in ops, so gradients of
 * gradients work). Tensors captured from outside the function are constants, as in JAX.
 * Integer and boolean tensors (argmax, topk indices, comparisons) carry no gradient.
 */
import { isFloat } from './dtype.js';
import { PRIMS } from './prims/index.js';
import { fmtShape, sameShape } from './shape.js';
import { newNodeId, Tensor, type PrimNode } from './tensor.js';
import { toposort } from './trace.js';
import { flatten, unflatten, type Tree } from './tree.js';
import { add, concat, onesLike, zeros, zerosLike } from './ops.js';

const isTensor = (x: unknown): x is Tensor => x instanceof Tensor;

/**
 * Cotangents of `wrt` given cotangents of `outputs`, through the nodes with id >= `since`
 * (null where a wrt tensor does not influence the outputs).
 */
export function backward(outputs: readonly Tensor[], cotangents: readonly Tensor[],
  wrt: readonly Tensor[], since = 0): (Tensor | null)[] {
  const wrtIds = new Set(wrt.map((t) => t.id));
  const order = toposort(outputs).filter((n): n is PrimNode => n.kind === 'prim' && n.id >= since);
  const live = new Set(wrtIds); // tensors that depend on some wrt tensor
  for (const node of order) {
    if (node.inputs.some((t) => live.has(t.id))) for (const o of node.outputs) live.add(o.id);
  }
  // Contributions are kept apart until a tensor's cotangent is read, so that pieces that
  // tile it (the VJPs of a split: one zero-padded slice each) join by one concat.
  const parts = new Map<number, Tensor[]>();
  const ct = { get: (id: number): Tensor | undefined => {
    const ps = parts.get(id);
    if (!ps) return undefined;
    if (ps.length > 1) parts.set(id, [joinContributions(ps)]);
    return parts.get(id)![0];
  } };
  const accumulate = (t: Tensor, g: Tensor): void => {
    const ps = parts.get(t.id);
    if (ps) ps.push(g);
    else parts.set(t.id, [g]);
  };
  outputs.forEach((o, i) => {
    const g = cotangents[i]!;
    if (!sameShape(g.shape, o.shape)) {
      throw new TypeError(`backward: cotangent ${fmtShape(g.shape)} for output ${fmtShape(o.shape)}`);
    }
    if (isFloat(o.dtype)) accumulate(o, g);
  });
  for (let k = order.length - 1; k >= 0; k--) {
    const node = order[k]!;
    // Cotangents of wrt tensors are final: they are independent variables here.
    const cts = node.outputs.map((o) => (wrtIds.has(o.id) ? null : ct.get(o.id) ?? null));
    if (cts.every((g) => g === null)) continue;
    const needs = node.inputs.map((t) => live.has(t.id) && isFloat(t.dtype));
    if (!needs.some(Boolean)) continue;
    const rule = PRIMS[node.prim].vjp as ((...a: unknown[]) => (Tensor | null)[]) | null;
    if (!rule) continue;
    const ins = rule(cts, node, needs);
    node.inputs.forEach((t, i) => {
      const g = ins[i];
      if (!needs[i] || !g) return;
      if (!sameShape(g.shape, t.shape) || g.dtype !== t.dtype) {
        throw new Error(`internal: VJP of ${node.prim} gave ${g.dtype}${fmtShape(g.shape)} for ` +
          `input ${i} of ${t.dtype}${fmtShape(t.shape)}`);
      }
      accumulate(t, g);
    });
  }
  return wrt.map((t) => ct.get(t.id) ?? null);
}

/** The one axis a zero pad widens, and its pads before and after; null for any other tensor. */
function padAlongOneAxis(t: Tensor): { x: Tensor; axis: number; before: number; after: number } | null {
  const nd = t.node;
  if (nd.kind !== 'prim' || nd.prim !== 'pad') return null;
  const { pads, value } = nd.params as { pads: readonly number[]; value: number };
  const rank = t.rank;
  const axes = [...Array(rank).keys()].filter((i) => pads[i] !== 0 || pads[i + rank] !== 0);
  if (value !== 0 || axes.length !== 1) return null;
  const axis = axes[0]!;
  return { x: nd.inputs[0]!, axis, before: pads[axis]!, after: pads[axis + rank]! };
}

/**
 * The sum of several cotangents of one tensor. Zero pads of disjoint ranges along one axis
 * (slices' VJPs) become one concat of the pieces, with zeros for any gap: a split of qkv into
 * q, k and v then costs one copy backward instead of three padded copies and two sums.
 */
function joinContributions(gs: readonly Tensor[]): Tensor {
  const padded = gs.map(padAlongOneAxis);
  const axis = padded[0]?.axis;
  if (padded.every((p) => p !== null && p.axis === axis)) {
    const ps = (padded as NonNullable<(typeof padded)[number]>[]).sort((a, b) => a.before - b.before);
    const size = gs[0]!.shape[axis!] as number;
    const pieces: Tensor[] = [];
    let at = 0;
    let disjoint = true;
    for (const p of ps) {
      if (p.before < at) { disjoint = false; break; }
      if (p.before > at) pieces.push(zeros(p.x.shape.map((d, i) => (i === axis ? p.before - at : d)), p.x.dtype));
      pieces.push(p.x);
      at = size - p.after;
    }
    if (disjoint) {
      if (at < size) {
        const last = ps[ps.length - 1]!.x;
        pieces.push(zeros(last.shape.map((d, i) => (i === axis ? size - at : d)), last.dtype));
      }
      return concat(pieces, axis);
    }
  }
  return gs.slice(1).reduce((a, b) => add(a, b), gs[0]!);
}

type Fn = (...args: never[]) => unknown;

function checkDifferentiable(leaves: readonly Tensor[], paths: readonly string[], what: string): void {
  leaves.forEach((t, i) => {
    if (!isFloat(t.dtype)) {
      throw new TypeError(`${what}: '${paths[i] || '<arg>'}' is ${t.dtype}; only float tensors ` +
        `have gradients (differentiate with respect to another argument)`);
    }
  });
}

/**
 * Runs fn on primals and returns its outputs with a pullback: cotangents shaped like the
 * outputs -> one cotangent tree per primal argument (zeros where there is no dependence).
 */
export function vjp<A extends Tree<Tensor>[], R extends Tree<Tensor>>(
  fn: (...args: A) => R, ...primals: A): [R, (cotangents: R) => A] {
  const since = newNodeId();
  const out = fn(...primals);
  const outFlat = flatten(out, isTensor);
  const inFlats = primals.map((p) => flatten(p, isTensor));
  const wrt = inFlats.flatMap((f) => f.leaves);
  checkDifferentiable(wrt, inFlats.flatMap((f) => f.paths), 'vjp');
  const pullback = (cotangents: R): A => {
    const cts = flatten(cotangents, isTensor).leaves;
    if (cts.length !== outFlat.leaves.length) {
      throw new TypeError(`vjp: ${cts.length} cotangents for ${outFlat.leaves.length} outputs`);
    }
    const gs = backward(outFlat.leaves, cts, wrt, since);
    let i = 0;
    return inFlats.map((f) => unflatten(f.def, f.leaves.map((t) => gs[i++] ?? zerosLike(t)))) as A;
  };
  return [out, pullback];
}

export interface GradOptions {
  /** Which positional argument(s) to differentiate with respect to (default 0). */
  argnums?: number | readonly number[];
  /** fn returns [loss, aux]; aux is passed through undifferentiated. */
  hasAux?: boolean;
}

/** fn's value and its gradient with respect to argnums. fn must return a float scalar. */
export function valueAndGrad<F extends Fn>(fn: F, opts: GradOptions = {}) {
  return (...args: Parameters<F>): [ReturnType<F>, Tree<Tensor>] => {
    const since = newNodeId();
    // Sound: F's parameters are exactly Parameters<F>, which args has.
    const result = (fn as unknown as (...a: unknown[]) => unknown)(...args);
    const loss = (opts.hasAux ? (result as [Tensor, unknown])[0] : result) as Tensor;
    if (!(loss instanceof Tensor) || loss.rank !== 0 || !isFloat(loss.dtype)) {
      throw new TypeError(`grad: the function must return a float scalar (shape []), got ` +
        `${loss instanceof Tensor ? `${loss.dtype}${fmtShape(loss.shape)}` : typeof loss}` +
        (opts.hasAux ? '' : ' (use hasAux to return [loss, aux])'));
    }
    const nums = opts.argnums ?? 0;
    const list = typeof nums === 'number' ? [nums] : nums;
    const flats = list.map((a) => {
      if (a < 0 || a >= args.length) throw new RangeError(`grad: argnum ${a} of ${args.length} arguments`);
      return flatten(args[a] as Tree<Tensor>, isTensor);
    });
    const wrt = flats.flatMap((f) => f.leaves);
    checkDifferentiable(wrt, flats.flatMap((f) => f.paths), 'grad');
    const gs = backward([loss], [onesLike(loss)], wrt, since);
    let i = 0;
    const trees = flats.map((f) => unflatten(f.def, f.leaves.map((t) => gs[i++] ?? zerosLike(t))));
    return [result as ReturnType<F>, typeof nums === 'number' ? trees[0]! : trees];
  };
}

/** The gradient of a float-scalar function with respect to argnums (default: the first). */
export function grad<F extends Fn>(fn: F, opts: GradOptions = {}) {
  const vg = valueAndGrad(fn, opts);
  return (...args: Parameters<F>): Tree<Tensor> => vg(...args)[1];
}
