/**
 * @file `npm run bench -- --provider NAME`: is an execution provider ready to run Diffuse?
 * For the U-Net (mnist-s) and the pixel DiT, the provider's results are checked against the
 * default CPU graph on the same inputs (forward at batch 16, one training step at batch 64
 * from the same params and batch, DDIM-10 at batch 16 from the same noise), then the same
 * workloads are timed on both (forward bs1 / bs64, train step bs64, DDIM-50 x64).
 *
 * Why: a GPU provider runs the portable graph (no NCHWc rewrites, which are CPU-only) on other
 * kernels, so a wrong lowering or kernel shows up as disagreement here before it shows up as
 * a bad training run. With `--provider cpu` the target is that portable graph on the CPU
 * (level 'basic', no blocked convs), so the check also runs on a machine without a GPU.
 *
 * A missing provider throws runtime.ts's RuntimeError (it says how to install it) before
 * any work is done; the caller prints it.
 */
import { HostArray } from '../src/engine/host.js';
import { RngKey } from '../src/engine/random/philox.js';
import { sessionOptions, type Provider, type RuntimeOptions } from '../src/engine/runtime.js';
import { flatten, mapTree, type Tree } from '../src/engine/tree.js';
import { time, type Report } from './harness.js';
import {
  ddimRun, ddimTime, ditBenchModel, forwardInputs, inferenceFn, trainStepFor, unetBenchModel,
  type BenchModel,
} from './models.js';

/**
 * Relative-error tolerances. fp32 CPU against CPU (other kernels and summation order) differs
 * by ~1e-7 to 1e-5. A GPU provider may use TF32 (ORT CUDA does by default: matmul and conv
 * operands rounded to a 10-bit mantissa). Rounding only the weights to TF32 on the CPU gave,
 * U-Net / DiT: forward 6e-4 / 2e-4, loss 7e-5 / 9e-6, grad norm 1.2e-4 / 5e-5, params after
 * one step 8e-4 / 2e-4, DDIM-10 2.3e-2 / 6e-4; real TF32 rounds the activations too, so
 * expect up to ~2x that. A real bug (wrong op semantics, layout, broadcasting) gives errors
 * of order 0.1 to 1. Hence:
 * - params: the first AdamW step moves each param by ~lr * sign(grad), so they differ only
 *   where a gradient's sign flips, relative to params ~30x the step; 5e-3 still catches a
 *   sign error in ~3% of the params. The grad norm checks the gradients' size;
 * - DDIM: its x0 estimate divides by sqrt(alpha_bar_t) (~1/60 at t = 900), so eps errors
 *   reach the random-init U-Net's images ~35x amplified.
 */
const TOLERANCE = { forward: 1e-2, loss: 1e-3, gradNorm: 1e-3, params: 5e-3, ddim: 1e-1 };

const VS_CPU = "faster than this machine's CPU";
const isHost = (x: unknown): x is HostArray => x instanceof HostArray;

/** ||a - b|| / ||b|| (L2) over all leaves of two trees of the same form; 0 when both are 0. */
function relError(a: Tree<HostArray>, b: Tree<HostArray>): number {
  const as = flatten(a, isHost).leaves;
  const bs = flatten(b, isHost).leaves;
  if (as.length !== bs.length) throw new Error(`relError: ${as.length} leaves vs ${bs.length}`);
  let diff = 0;
  let norm = 0;
  as.forEach((x, i) => {
    const y = bs[i]!;
    if (x.size !== y.size) throw new Error(`relError: leaf ${i} has ${x.size} vs ${y.size} elements`);
    for (let j = 0; j < x.size; j++) {
      const yj = Number(y.data[j]);
      diff += (Number(x.data[j]) - yj) ** 2;
      norm += yj ** 2;
    }
  });
  return norm > 0 ? Math.sqrt(diff / norm) : diff === 0 ? 0 : Infinity;
}

/**
 * m with each all-zero float parameter drawn from N(0, 0.02) instead. Why: the DiT's
 * adaLN-Zero init makes its output exactly 0 and its blocks identities, which would make the
 * forward and DDIM checks vacuous; timings do not depend on the values.
 */
function exercised(m: BenchModel): BenchModel {
  let k = 0;
  const key = RngKey.fromSeed(31);
  const params = mapTree(m.params, isHost, (a) =>
    a.dtype === 'float32' && (a.data as Float32Array).every((v) => v === 0)
      ? new HostArray(key.fold(k++).normal(a.size).map((v) => 0.02 * v), a.shape) : a);
  return { ...m, params };
}

/** Agreement and timings of one model on `target` against `reference`; false if a check failed. */
async function modelCheck(report: Report, model: BenchModel, target: RuntimeOptions,
  reference: RuntimeOptions, reps: number): Promise<boolean> {
  let ok = true;
  const check = (what: string, err: number, tolerance: number) => {
    const tol = tolerance === 0 ? '0' : tolerance.toExponential(0);
    report.add({ name: `${what} rel. error (tol ${tol})`, value: err, unit: '' });
    if (!(err <= tolerance)) { // NaN fails too
      // stderr: keeps --json's stdout one JSON object per line.
      console.error(`FAIL: ${model.key} ${what} relative error ${err.toPrecision(3)} > tolerance ${tolerance}`);
      ok = false;
    }
  };
  const m = exercised(model);
  const fwdT = inferenceFn(m, target);
  const fwdR = inferenceFn(m, reference);
  const trainT = trainStepFor(m, 64, target);
  const trainR = trainStepFor(m, 64, reference);
  try {
    // Agreement. The target runs first, so a provider that fails to load fails fast.
    const x16 = forwardInputs(m, 16);
    check('forward bs16', relError(await fwdT(...x16), await fwdR(...x16)), TOLERANCE.forward);

    // Each instance draws its batches from the same seeds: checked, not assumed (tol 0).
    const batchT = trainT.batch();
    const batchR = trainR.batch();
    check('train batches (2 instances)', relError(batchT, batchR), 0);
    const stepT = await trainT.trainer.step(trainT.trainer.init(m.params), batchT);
    const stepR = await trainR.trainer.step(trainR.trainer.init(m.params), batchR);
    const scalarError = (a: number, b: number) => Math.abs(a - b) / Math.abs(b);
    check('train bs64 loss', scalarError(stepT.metrics.loss, stepR.metrics.loss), TOLERANCE.loss);
    check('train bs64 grad norm', scalarError(stepT.metrics.gradNorm, stepR.metrics.gradNorm),
      TOLERANCE.gradNorm);
    check('params after 1 step', relError(stepT.state.params, stepR.state.params), TOLERANCE.params);

    check('DDIM-10 bs16 images', relError(await ddimRun(m, fwdT, 10, 16)(),
      await ddimRun(m, fwdR, 10, 16)()), TOLERANCE.ddim);

    // Timings: value = the target's time, ratio = the CPU's time / the target's.
    const compare = (name: string, targetMs: number, cpuMs: number, unit: 'ms' | 's' = 'ms') => {
      const scale = unit === 's' ? 1000 : 1;
      const cpu = cpuMs / scale >= 100 ? (cpuMs / scale).toFixed(0) : (cpuMs / scale).toPrecision(3);
      report.add({ name: `${name} (cpu ${cpu} ${unit})`,
        value: targetMs / scale, unit, ratio: cpuMs / targetMs, ratioTo: VS_CPU });
    };
    const timing = { warmup: 1, reps };
    for (const n of [1, 64]) {
      const x = forwardInputs(m, n);
      const targetMs = (await time(() => fwdT(...x), timing)).medianMs;
      compare(`forward bs${n}`, targetMs, (await time(() => fwdR(...x), timing)).medianMs);
    }
    let stateT = stepT.state;
    let stateR = stepR.state;
    const targetMs = (await time(async () => {
      stateT = (await trainT.trainer.step(stateT, trainT.batch())).state;
    }, timing)).medianMs;
    const cpuMs = (await time(async () => {
      stateR = (await trainR.trainer.step(stateR, trainR.batch())).state;
    }, timing)).medianMs;
    compare('train step bs64', targetMs, cpuMs);
    compare('DDIM-50 x64', await ddimTime(m, fwdT, 50, 64), await ddimTime(m, fwdR, 50, 64), 's');
  } finally {
    // allSettled: a failed release must not hide the error that brought us here.
    await Promise.allSettled([fwdT.dispose(), fwdR.dispose(), trainT.trainer.dispose(),
      trainR.trainer.dispose()]);
  }
  return ok;
}

/**
 * The provider check for the U-Net and the pixel DiT: agreement with the default CPU graph,
 * then timings against it. Returns false if any agreement check failed.
 */
export async function providerSuite(report: Report, provider: Provider,
  opts: { reps?: number } = {}): Promise<boolean> {
  const reference: RuntimeOptions = { provider: 'cpu' };
  const target: RuntimeOptions = provider === 'cpu'
    ? { provider: 'cpu', optimization: 'basic', blockedConvs: false }
    : { provider };
  sessionOptions(target); // throws the RuntimeError saying how to install a missing provider
  const label = provider === 'cpu'
    ? "portable graph on CPU (level 'basic', no blocked convs)"
    : `provider '${provider}'`;
  let ok = true;
  for (const m of [unetBenchModel(), ditBenchModel('pixel')]) {
    report.section(`${m.title}: ${label} against the default CPU graph`);
    ok = (await modelCheck(report, m, target, reference, opts.reps ?? 3)) && ok;
  }
  return ok;
}
