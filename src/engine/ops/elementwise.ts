/** @file Elementwise ops: arithmetic with numpy broadcasting, functions, comparisons. */
import { bind, bind1 } from '../bind.js';
import type { DType } from '../dtype.js';
import { Tensor } from '../tensor.js';
import { scalarLike } from './creation.js';

export type TensorLike = Tensor | number;

/** Lifts JS numbers to scalar constants of the other operand's dtype. */
function lift(a: TensorLike, b: TensorLike, op: string): [Tensor, Tensor] {
  // Anything else (undefined from a missing argument) would become a NaN constant.
  [a, b].forEach((v, i) => {
    if (!(v instanceof Tensor) && typeof v !== 'number') {
      throw new TypeError(`${op}: operand ${i + 1} must be a Tensor or a number, got ` +
        `${v === null ? 'null' : typeof v}`);
    }
  });
  if (a instanceof Tensor && b instanceof Tensor) return [a, b];
  if (a instanceof Tensor) return [a, scalarLike(b as number, a.dtype)];
  if (b instanceof Tensor) return [scalarLike(a, b.dtype), b];
  throw new TypeError(`${op}: at least one operand must be a Tensor, got two numbers`);
}

const binary = (prim: 'add' | 'sub' | 'mul' | 'div' | 'pow' | 'maximum' | 'minimum' | 'equal'
  | 'less' | 'greater' | 'lessEqual' | 'greaterEqual') =>
  (a: TensorLike, b: TensorLike): Tensor => bind1(prim, lift(a, b, prim), {});

export const add = binary('add');
export const sub = binary('sub');
export const mul = binary('mul');
export const div = binary('div');
/** a ** b, elementwise; for a constant integer exponent prefer mul chains (exact at a < 0). */
export const pow = binary('pow');
export const maximum = binary('maximum');
export const minimum = binary('minimum');
export const equal = binary('equal');
export const less = binary('less');
export const greater = binary('greater');
export const lessEqual = binary('lessEqual');
export const greaterEqual = binary('greaterEqual');

export const neg = (x: Tensor): Tensor => bind1('neg', [x], {});
export const exp = (x: Tensor): Tensor => bind1('exp', [x], {});
export const log = (x: Tensor): Tensor => bind1('log', [x], {});
export const sqrt = (x: Tensor): Tensor => bind1('sqrt', [x], {});
export const reciprocal = (x: Tensor): Tensor => bind1('reciprocal', [x], {});
export const sin = (x: Tensor): Tensor => bind1('sin', [x], {});
export const cos = (x: Tensor): Tensor => bind1('cos', [x], {});
export const tanh = (x: Tensor): Tensor => bind1('tanh', [x], {});
export const sigmoid = (x: Tensor): Tensor => bind1('sigmoid', [x], {});
export const erf = (x: Tensor): Tensor => bind1('erf', [x], {});
export const abs = (x: Tensor): Tensor => bind1('abs', [x], {});
/** -1, 0 or 1; carries no gradient. */
export const sign = (x: Tensor): Tensor => bind1('sign', [x], {});
export const floor = (x: Tensor): Tensor => bind1('floor', [x], {});
export const logicalAnd = (a: Tensor, b: Tensor): Tensor => bind1('logicalAnd', [a, b], {});
export const logicalOr = (a: Tensor, b: Tensor): Tensor => bind1('logicalOr', [a, b], {});
export const logicalNot = (a: Tensor): Tensor => bind1('logicalNot', [a], {});

/** 1 / sqrt(x). */
export const rsqrt = (x: Tensor): Tensor => reciprocal(sqrt(x));
export const square = (x: Tensor): Tensor => mul(x, x);

/** Picks a where cond is true, else b (broadcasting all three). */
export function where(cond: Tensor, a: TensorLike, b: TensorLike): Tensor {
  const [x, y] = lift(a, b, 'where');
  return bind1('where', [cond, x, y], {});
}

export function cast(x: Tensor, to: DType): Tensor {
  return x.dtype === to ? x : bind1('cast', [x], { to });
}

/** The identity whose VJP is zero: x is treated as a constant by grad. */
export const stopGradient = (x: Tensor): Tensor => bind1('stopGradient', [x], {});

export function clamp(x: Tensor, lo: number, hi: number): Tensor {
  return minimum(maximum(x, lo), hi);
}

export const relu = (x: Tensor): Tensor => maximum(x, 0);
/** x * sigmoid(x), a.k.a. swish. */
export const silu = (x: Tensor): Tensor => bind('silu', [x], {})[0]!;

/** GELU: exact (erf) by default, or the tanh approximation used by DiT ('tanh'). */
export function gelu(x: Tensor, approximate: 'none' | 'tanh' = 'none'): Tensor {
  // 0.5 x (1 + tanh(sqrt(2/pi) x (1 + 0.044715 x^2))): ORT's FastGelu kernel, one pass.
  if (approximate === 'tanh') return bind1('geluTanh', [x], {});
  // Written as ORT's Gelu fusion expects: x * 0.5 * (1 + erf(x / sqrt 2)).
  return mul(mul(x, 0.5), add(erf(div(x, Math.SQRT2)), 1));
}
