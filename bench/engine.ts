/**
 * @file Engine benchmarks: the ORT matmul peak, a 3x3 conv forward and backward, and a
 * small CNN training step (time outside session.run, throughput against the peak).
 */
import { grad } from '../src/engine/autodiff.js';
import { countFlops } from '../src/engine/flops.js';
import { HostArray } from '../src/engine/host.js';
import * as ops from '../src/engine/ops.js';
import { RngKey } from '../src/engine/random/philox.js';
import { compile } from '../src/engine/runtime.js';
import type { Tensor } from '../src/engine/tensor.js';
import type { Tree } from '../src/engine/tree.js';
import { Conv2d, Linear } from '../src/nn/layers.js';
import { Module, type ParamsOf } from '../src/nn/module.js';
import { adamw } from '../src/nn/optim.js';
import { compileTrainStep } from '../src/nn/train.js';
import { time, type Report } from './harness.js';

const randn = (shape: number[], seed: number) =>
  new HostArray(RngKey.fromSeed(seed).normal(shape.reduce((a, b) => a * b, 1)), shape);

/** Returns the machine's peak (GFLOP/s of the best matmul), the reference for later rows. */
export async function matmulPeak(report: Report): Promise<number> {
  report.section('ORT matmul peak');
  let peak = 0;
  for (const n of [1024, 2048]) {
    const f = compile((a: Tensor, b: Tensor) => ops.matmul(a, b));
    const a = randn([n, n], 1);
    const b = randn([n, n], 2);
    const t = await time(() => f(a, b), { reps: n === 1024 ? 20 : 7, minMs: 1000 });
    const gflops = (2 * n ** 3) / t.medianMs / 1e6;
    peak = Math.max(peak, gflops);
    report.add({ name: `matmul ${n}x${n}`, value: gflops, unit: 'GFLOP/s' });
    await f.dispose();
  }
  return peak;
}

export async function convBench(report: Report, peak: number): Promise<void> {
  report.section('conv2d 3x3 64->64 on [16, 64, 32, 32]');
  const x = randn([16, 64, 32, 32], 3);
  const w = randn([64, 64, 3, 3], 4);
  const g = randn([16, 64, 32, 32], 5);
  const flops = 2 * 16 * 64 * 64 * 9 * 32 * 32;
  const conv = (a: Tensor, b: Tensor) => ops.conv2d(a, b, { padding: 1 });
  const fwd = compile(conv);
  const dx = compile((gy: Tensor, b: Tensor) => ops.convTranspose2d(gy, b, { padding: 1 }));
  const dw = compile((a: Tensor, gy: Tensor) =>
    ops.conv2dWeightGrad(a, gy, [64, 64, 3, 3], { stride: [1, 1], pads: [1, 1, 1, 1], dilation: [1, 1], groups: 1 }));
  const both = compile((a: Tensor, b: Tensor, gy: Tensor) =>
    grad((u: Tensor, v: Tensor) => ops.sum(ops.mul(conv(u, v), gy)), { argnums: [0, 1] })(a, b) as Tensor[]);
  const tf = await time(() => fwd(x, w), { reps: 10, minMs: 1000 });
  const tdx = await time(() => dx(g, w), { reps: 10, minMs: 1000 });
  const tdw = await time(() => dw(x, g), { reps: 10, minMs: 1000 });
  const tall = await time(() => both(x, w, g), { reps: 5, minMs: 1000 });
  const fwdRate = flops / tf.medianMs / 1e6;
  report.add({ name: 'conv forward', value: fwdRate, unit: 'GFLOP/s', ratio: fwdRate / peak, ratioTo: 'of matmul peak' });
  report.add({ name: 'conv input grad (ConvTranspose)', value: tdx.medianMs, unit: 'ms', ratio: tdx.medianMs / tf.medianMs, ratioTo: 'x forward time' });
  report.add({ name: 'conv weight grad (patches x matmul)', value: tdw.medianMs, unit: 'ms', ratio: tdw.medianMs / tf.medianMs, ratioTo: 'x forward time' });
  const fb = (3 * flops) / tall.medianMs / 1e6;
  report.add({ name: 'conv forward+backward (3x forward flops)', value: fb, unit: 'GFLOP/s', ratio: fb / fwdRate, ratioTo: 'of forward rate' });
  await Promise.all([fwd.dispose(), dx.dispose(), dw.dispose(), both.dispose()]);
}

class BenchCnn extends Module {
  readonly conv1 = new Conv2d(1, 32, 3, { padding: 1 });
  readonly conv2 = new Conv2d(32, 64, 3, { padding: 1, stride: 2 });
  readonly conv3 = new Conv2d(64, 64, 3, { padding: 1, stride: 2 });
  readonly head = new Linear(64, 10);
  forward(p: ParamsOf<BenchCnn>, x: Tensor): Tensor {
    let h = ops.silu(this.conv1.forward(p.conv1, x)); // [B, 32, 32, 32]
    h = ops.silu(this.conv2.forward(p.conv2, h)); // [B, 64, 16, 16]
    h = ops.silu(this.conv3.forward(p.conv3, h)); // [B, 64, 8, 8]
    return this.head.forward(p.head, ops.mean(h, [2, 3])); // [B, 10]
  }
}

export async function trainStepBench(report: Report, peak: number): Promise<void> {
  report.section('small CNN training step, batch 64, 32x32x1 (AdamW)');
  const model = new BenchCnn();
  const key = RngKey.fromSeed(0);
  const loss = (p: Tree<Tensor>, b: Tree<Tensor>) => {
    const { x, y } = b as { x: Tensor; y: Tensor };
    return ops.mean(ops.square(ops.sub(model.forward(p as ParamsOf<BenchCnn>, x), y)));
  };
  const trainer = compileTrainStep(loss, adamw({ lr: 1e-3 }), { clipGradNorm: 1 });
  let state = trainer.init(model.init(key));
  const batch = { x: randn([64, 1, 32, 32], 6), y: randn([64, 10], 7) };
  const stats = trainer.compiled.stats;
  const step = async () => {
    state = (await trainer.step(state, batch)).state;
  };
  for (let i = 0; i < 3; i++) await step();
  const runBefore = stats.runMs;
  const t = await time(step, { warmup: 0, reps: 10, minMs: 2000 });
  const inRun = stats.runMs - runBefore;
  const specs = [state.params, state.opt, state.ema ?? [], HostArray.scalar(1), batch];
  const flops = countFlops(trainer.compiled.trace(...(specs as never[])));
  report.add({ name: 'train step', value: t.medianMs, unit: 'ms' });
  report.add({ name: 'time outside session.run', value: (100 * (t.totalMs - inRun)) / t.totalMs, unit: '%' });
  const rate = flops / t.medianMs / 1e6;
  report.add({ name: 'train step throughput (matmul+conv flops)', value: rate, unit: 'GFLOP/s', ratio: rate / peak, ratioTo: 'of matmul peak' });
  await trainer.dispose();
}
