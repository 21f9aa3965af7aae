/**
 * @file Finite-difference checks of VJPs, compiled into one graph per check: the central
 * difference of <f(x ± eps v), r> along a random direction v against <grad, v>, with a
 * random output cotangent r, so a transposed or misplaced gradient cannot cancel out.
 */
import { compile } from '../../src/engine/runtime.js';
import { HostArray } from '../../src/engine/host.js';
import { RngKey } from '../../src/engine/random/philox.js';
import { isFloat } from '../../src/engine/dtype.js';
import * as ops from '../../src/engine/ops.js';
import { vjp } from '../../src/engine/autodiff.js';
import { trace } from '../../src/engine/trace.js';
import type { Tensor } from '../../src/engine/tensor.js';

export function randn(shape: readonly number[], seed: number, scale = 1): HostArray<'float32'> {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = RngKey.fromSeed(seed).normal(n);
  if (scale !== 1) for (let i = 0; i < n; i++) data[i]! *= scale;
  return new HostArray(data, shape, 'float32');
}

export function randint(shape: readonly number[], high: number, seed: number): HostArray<'int64'> {
  const n = shape.reduce((a, b) => a * b, 1);
  const ints = RngKey.fromSeed(seed).uniformInt(n, high);
  return new HostArray(BigInt64Array.from(ints, (v) => BigInt(v)), shape, 'int64');
}

export interface GradCheckResult {
  numeric: number;
  analytic: number;
  error: number;
}

export interface GradCheckOptions {
  /** Indices of the inputs to differentiate (default: every float input). */
  wrt?: readonly number[];
  eps?: number;
  rtol?: number;
  atol?: number;
  seed?: number;
}

/** Checks the VJP of fn at inputs; throws with the numbers when they disagree. */
export async function checkGrad(name: string, fn: (...xs: Tensor[]) => Tensor,
  inputs: readonly HostArray[], opts: GradCheckOptions = {}): Promise<GradCheckResult> {
  const eps = opts.eps ?? 3e-3;
  const wrt = opts.wrt ?? inputs.flatMap((x, i) => (isFloat(x.dtype) ? [i] : []));
  const seed = opts.seed ?? 1234;
  const out = trace(fn, inputs).outputs[0]!;
  const r = randn(out.shape as number[], seed + 1);
  const dirs = wrt.map((i, k) => randn(inputs[i]!.shape, seed + 10 + k));

  const check = compile((xs: Tensor[], cot: Tensor, vs: Tensor[]) => {
    const shifted = (sign: number): Tensor[] => xs.map((x, i) => {
      const k = wrt.indexOf(i);
      return k < 0 ? x : ops.add(x, ops.mul(vs[k]!, sign * eps));
    });
    // Subtract before summing, so the difference is not lost in a large sum.
    const diff = ops.sub(fn(...shifted(1)), fn(...shifted(-1)));
    const numeric = ops.div(ops.sum(ops.mul(diff, cot)), 2 * eps);
    const [, pullback] = vjp((...ws: Tensor[]) => fn(...xs.map((x, i) => {
      const k = wrt.indexOf(i);
      return k < 0 ? x : ws[k]!;
    })), ...wrt.map((i) => xs[i]!));
    const grads = pullback(cot) as Tensor[];
    const analytic = grads.map((g, k) => ops.sum(ops.mul(g, vs[k]!))).reduce((a, b) => ops.add(a, b));
    return { numeric, analytic };
  });
  const res = await check([...inputs], r, dirs);
  await check.dispose();
  const numeric = res.numeric.data[0] as number;
  const analytic = res.analytic.data[0] as number;
  const error = Math.abs(numeric - analytic);
  const tol = (opts.atol ?? 1e-4) + (opts.rtol ?? 3e-3) * Math.max(Math.abs(numeric), Math.abs(analytic));
  if (process.env.GRADCHECK_VERBOSE) {
    console.log(`${name}: rel error ${(error / Math.max(Math.abs(numeric), 1e-12)).toExponential(2)}`);
  }
  if (!(error <= tol)) {
    throw new Error(`${name}: VJP disagrees with finite differences: analytic ${analytic}, ` +
      `numeric ${numeric} (error ${error.toExponential(2)} > tol ${tol.toExponential(2)})`);
  }
  return { numeric, analytic, error };
}
