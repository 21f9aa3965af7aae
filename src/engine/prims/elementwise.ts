/**
 * @file Elementwise primitives: unary float functions, broadcasting binary arithmetic,
 * comparisons, logic, where, cast. Rule factories keep each entry to a line or three.
 */
import { DTYPES, isFloat, type DType } from '../dtype.js';
import * as ops from '../ops.js';
import { broadcastShapes } from '../shape.js';
import type { PrimNode, Tensor } from '../tensor.js';
import type { Aval, PrimDef, PrimTable } from './types.js';

type UnaryPrim = 'neg' | 'exp' | 'log' | 'sqrt' | 'reciprocal' | 'sin' | 'cos' | 'tanh'
  | 'sigmoid' | 'erf' | 'abs' | 'sign' | 'floor';
type BinaryPrim = 'add' | 'sub' | 'mul' | 'div' | 'pow' | 'maximum' | 'minimum';
type ComparePrim = 'equal' | 'less' | 'greater' | 'lessEqual' | 'greaterEqual';

function requireFloat(op: string, a: Aval, what = 'input'): void {
  if (!isFloat(a.dtype)) throw new TypeError(`${op}: ${what} must be a float tensor, got ${a.dtype}`);
}

function sameDtype(op: string, ins: readonly Aval[]): DType {
  const d = ins[0]!.dtype;
  for (const a of ins) {
    if (a.dtype !== d) {
      throw new TypeError(
        `${op}: operands must share a dtype, got ${ins.map((x) => x.dtype).join(' and ')}` +
          ` (cast one of them first)`,
      );
    }
  }
  return d;
}

/** A float unary op; `d(x, y)` is dy/dx written in ops, or null if piecewise constant. */
function unary<P extends UnaryPrim>(
  onnx: string,
  d: ((x: Tensor, y: Tensor) => Tensor) | null,
  floatOnly = true,
): PrimDef<P> {
  return {
    arity: 1,
    infer: ([a]) => {
      if (floatOnly) requireFloat(onnx, a!);
      return [{ shape: a!.shape, dtype: a!.dtype }];
    },
    lower: (cx, ins, outs) => cx.emit(onnx, ins, outs),
    vjp: d && (([g], n) => [ops.mul(g!, d(n.inputs[0]!, n.outputs[0]!))]),
  };
}

/** A broadcasting binary op; `rule` gives the two cotangents before unbroadcasting. */
function binary<P extends BinaryPrim>(
  onnx: string,
  rule: (g: Tensor, a: Tensor, b: Tensor, y: Tensor, needs: readonly boolean[]) =>
    [Tensor | null, Tensor | null],
): PrimDef<P> {
  return {
    arity: 2,
    infer: (ins) => [{ shape: broadcastShapes(onnx, ins[0]!.shape, ins[1]!.shape),
      dtype: sameDtype(onnx, ins) }],
    lower: (cx, ins, outs) => cx.emit(onnx, ins, outs),
    vjp: ([g], n: PrimNode, needs) => {
      const [a, b] = n.inputs as [Tensor, Tensor];
      const [ga, gb] = rule(g!, a, b, n.outputs[0]!, needs);
      return [ga && ops.unbroadcast(ga, a.shape), gb && ops.unbroadcast(gb, b.shape)];
    },
  };
}

function compare<P extends ComparePrim>(onnx: string): PrimDef<P> {
  return {
    arity: 2,
    infer: (ins) => {
      sameDtype(onnx, ins);
      return [{ shape: broadcastShapes(onnx, ins[0]!.shape, ins[1]!.shape), dtype: 'bool' }];
    },
    lower: (cx, ins, outs) => cx.emit(onnx, ins, outs),
    vjp: null,
  };
}

function logical<P extends 'logicalAnd' | 'logicalOr' | 'logicalNot'>(onnx: string): PrimDef<P> {
  return {
    arity: onnx === 'Not' ? 1 : 2,
    infer: (ins) => {
      for (const a of ins) {
        if (a.dtype !== 'bool') throw new TypeError(`${onnx}: operands must be bool, got ${a.dtype}`);
      }
      return [{ shape: broadcastShapes(onnx, ...ins.map((a) => a.shape)), dtype: 'bool' }];
    },
    lower: (cx, ins, outs) => cx.emit(onnx, ins, outs),
    vjp: null,
  };
}

/** Cotangent split between the operands of max/min where they tie, as torch does. */
function pickMask(chosen: Tensor, tie: Tensor): Tensor {
  return ops.add(ops.cast(chosen, 'float32'), ops.mul(ops.cast(tie, 'float32'), 0.5));
}

export const elementwisePrims: Pick<PrimTable, UnaryPrim | BinaryPrim | ComparePrim
  | 'logicalAnd' | 'logicalOr' | 'logicalNot' | 'where' | 'cast' | 'stopGradient' | 'silu'
  | 'geluTanh'> = {
  neg: { ...unary<'neg'>('Neg', null, false), vjp: ([g]) => [ops.neg(g!)] },
  exp: unary('Exp', (_x, y) => y),
  log: unary('Log', (x) => ops.reciprocal(x)),
  sqrt: unary('Sqrt', (_x, y) => ops.div(0.5, y)),
  reciprocal: unary('Reciprocal', (_x, y) => ops.neg(ops.mul(y, y))),
  sin: unary('Sin', (x) => ops.cos(x)),
  cos: unary('Cos', (x) => ops.neg(ops.sin(x))),
  tanh: unary('Tanh', (_x, y) => ops.sub(1, ops.mul(y, y))),
  sigmoid: unary('Sigmoid', (_x, y) => ops.mul(y, ops.sub(1, y))),
  // d erf(x)/dx = 2/sqrt(pi) exp(-x^2)
  erf: unary('Erf', (x) => ops.mul(ops.exp(ops.neg(ops.mul(x, x))), 2 / Math.sqrt(Math.PI))),
  // y = x s with s = sigmoid(x), kept as a second output: dy/dx = s + y (1 - s), four passes
  // over x's shape backward where the product of two primitives took six.
  silu: {
    arity: 1,
    infer: ([a]) => (requireFloat('silu', a!), [{ shape: a!.shape, dtype: a!.dtype }, { shape: a!.shape, dtype: a!.dtype }]),
    lower: (cx, ins, outs) => {
      cx.emit('Sigmoid', ins, [outs[1]!]);
      cx.emit('Mul', [ins[0]!, outs[1]!], [outs[0]!]);
    },
    vjp: ([g, gs], n) => {
      if (gs) throw new Error('silu: its sigmoid output is not differentiable');
      const [y, s] = n.outputs as [Tensor, Tensor];
      return [ops.mul(g!, ops.add(s, ops.mul(y, ops.sub(1, s))))];
    },
  },
  // y = x s with s = sigmoid(z), z = x (2k + 2kc x^2) (0.5 (1 + tanh(u)) = sigmoid(2u)), so
  // dy/dx = s + y (1 - s) (2k + 6kc x^2). The backward recomputes s from x in twelve passes;
  // the composite's autodiff took seventeen, after nine forward passes whose four saved
  // intermediates held 4x the activation until the backward read them.
  geluTanh: {
    arity: 1,
    infer: ([a]) => (requireFloat('geluTanh', a!), [{ shape: a!.shape, dtype: a!.dtype }]),
    lower: (cx, ins, outs) => cx.emit('FastGelu', ins, outs, {}, 'com.microsoft'),
    vjp: ([g], n) => {
      const x = n.inputs[0]!;
      const y = n.outputs[0]!;
      const [k, c] = [Math.sqrt(2 / Math.PI), 0.044715];
      const x2 = ops.mul(x, x);
      const s = ops.sigmoid(ops.mul(x, ops.add(ops.mul(x2, 2 * k * c), 2 * k)));
      const slope = ops.add(ops.mul(x2, 6 * k * c), 2 * k);
      return [ops.mul(g!, ops.add(ops.mul(ops.mul(y, ops.sub(1, s)), slope), s))];
    },
  },
  abs: unary('Abs', (x) => ops.sign(x), false),
  sign: unary('Sign', null, false),
  floor: unary('Floor', null),

  add: binary('Add', (g) => [g, g]),
  sub: binary('Sub', (g, _a, _b, _y, needs) => [g, needs[1] ? ops.neg(g) : null]),
  mul: binary('Mul', (g, a, b, _y, needs) =>
    [needs[0] ? ops.mul(g, b) : null, needs[1] ? ops.mul(g, a) : null]),
  // d(a/b) = da/b - y db/b
  div: binary('Div', (g, _a, b, y, needs) => {
    const gb = needs[0] || needs[1] ? ops.div(g, b) : null;
    return [gb, needs[1] ? ops.neg(ops.mul(gb!, y)) : null];
  }),
  // d(a^b) = b a^(b-1) da + y log(a) db
  pow: binary('Pow', (g, a, b, y, needs) => [
    needs[0] ? ops.mul(g, ops.mul(b, ops.pow(a, ops.sub(b, 1)))) : null,
    needs[1] ? ops.mul(g, ops.mul(y, ops.log(a))) : null,
  ]),
  maximum: binary('Max', (g, a, b, _y, needs) => [
    needs[0] ? ops.mul(g, pickMask(ops.greater(a, b), ops.equal(a, b))) : null,
    needs[1] ? ops.mul(g, pickMask(ops.less(a, b), ops.equal(a, b))) : null,
  ]),
  minimum: binary('Min', (g, a, b, _y, needs) => [
    needs[0] ? ops.mul(g, pickMask(ops.less(a, b), ops.equal(a, b))) : null,
    needs[1] ? ops.mul(g, pickMask(ops.greater(a, b), ops.equal(a, b))) : null,
  ]),

  equal: compare('Equal'),
  less: compare('Less'),
  greater: compare('Greater'),
  lessEqual: compare('LessOrEqual'),
  greaterEqual: compare('GreaterOrEqual'),
  logicalAnd: logical('And'),
  logicalOr: logical('Or'),
  logicalNot: logical('Not'),

  where: {
    arity: 3,
    infer: ([c, a, b]) => {
      if (c!.dtype !== 'bool') throw new TypeError(`Where: condition must be bool, got ${c!.dtype}`);
      return [{ shape: broadcastShapes('Where', c!.shape, a!.shape, b!.shape),
        dtype: sameDtype('Where', [a!, b!]) }];
    },
    lower: (cx, ins, outs) => cx.emit('Where', ins, outs),
    vjp: ([g], n, needs) => {
      const [c, a, b] = n.inputs as [Tensor, Tensor, Tensor];
      const zero = ops.scalarLike(0, g!.dtype);
      return [
        null,
        needs[1] ? ops.unbroadcast(ops.where(c, g!, zero), a.shape) : null,
        needs[2] ? ops.unbroadcast(ops.where(c, zero, g!), b.shape) : null,
      ];
    },
  },

  cast: {
    arity: 1,
    infer: ([a], p) => [{ shape: a!.shape, dtype: p.to }],
    lower: (cx, ins, outs, p) => cx.emit('Cast', ins, outs, { to: DTYPES[p.to].onnx }),
    vjp: ([g], n) => {
      const src = n.inputs[0]!;
      return [isFloat(src.dtype) && isFloat(n.params.to) ? ops.cast(g!, src.dtype) : null];
    },
  },

  stopGradient: {
    arity: 1,
    infer: ([a]) => [{ shape: a!.shape, dtype: a!.dtype }],
    lower: (cx, ins, outs) => cx.emit('Identity', ins, outs),
    vjp: () => [null],
  },
};

