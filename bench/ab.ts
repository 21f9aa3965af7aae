/**
 * @file A/B timing on a noisy machine: `node dist/bench/ab.js MODEL fwd|train [--batch N]
 * [--rounds R] [--quiet] [--dump FILE] VARIANT...`. MODEL is unet, dit-pixel, dit-latent or
 * a U-Net block at its batch-64 shape (attn16, attn8, attn32, res32, res96, res64, res128,
 * conv32, conv96, conv64, conv128, gn32, gn64, gn128, stackN = N attn16 blocks in sequence;
 * train = gradients of sum(out * r) with
 * respect to the input and the parameters). Builds one ORT session per variant, then runs
 * them round-robin (A B C A B C ...), 100 ms apart so that one session's spinning intra-op
 * threads do not slow the next (without the gap the first variant ran up to 2x faster on an
 * idle machine), and prints median and min per variant and the ratio of medians to the first.
 *
 * A variant is a comma-separated list of flags: `so:nopattern`, `so:noarena`, `so:opt=LEVEL`,
 * `so:daz` (denormals as zero), `so:nospin` (intra-op threads do not spin) and `so:profile`
 * (ORT's profile, summarised by op) change the session; `onnx=FILE` runs a
 * graph written by another build with `--dump FILE` (same model and inputs: before/after a
 * code change); any other flag is put in the global `__diffuseVariant` set while the graph is
 * traced, for temporary experimental switches in the code under test. `base` is no flag.
 * --quiet waits for idle moments and drops runs during which other processes were busy.
 */
import { readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import ort from 'onnxruntime-node';
import { HostArray, isHostArray } from '../src/engine/host.js';
import { sessionOptions, toOrtTensor } from '../src/engine/runtime.js';
import { flatten, mapTree, type Tree } from '../src/engine/tree.js';
import { grad } from '../src/engine/autodiff.js';
import * as ops from '../src/engine/ops.js';
import { RngKey } from '../src/engine/random/philox.js';
import { compile } from '../src/engine/runtime.js';
import { nchwcBlockSize } from '../src/engine/nchwc.js';
import type { Tensor } from '../src/engine/tensor.js';
import { Conv2d, GroupNorm } from '../src/nn/layers.js';
import { Module } from '../src/nn/module.js';
import { ResnetBlock2D, SpatialAttention, type BlockCtx } from '../src/models/unet2d-blocks.js';
import { ditBenchModel, forwardInputs, inferenceFn, trainStepFor, unetBenchModel } from './models.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(name);
  if (i < 0) return dflt;
  const v = args[i + 1]!;
  args.splice(i, 2);
  return v;
};
const batch = Number(opt('--batch', '64'));
const rounds = Number(opt('--rounds', '5'));
const threads = Number(opt('--threads', '0'));
/** --dump FILE: write the first variant's ONNX graph to FILE and exit (for `onnx=FILE`). */
const dump = opt('--dump', '');
/** --quiet: wait for idle moments and drop runs during which other processes were busy. */
const filter = args.includes('--quiet') ? (args.splice(args.indexOf('--quiet'), 1), true) : false;
const [which = 'unet', mode = 'fwd', ...variants] = args;
if (variants.length === 0) variants.push('base');

const g = globalThis as { __diffuseVariant?: Set<string> };
const m = which === 'unet' ? unetBenchModel() : which.startsWith('dit') ? ditBenchModel(which === 'dit-pixel' ? 'pixel' : 'latent') : null;

interface Built { name: string; session: ort.InferenceSession; feeds: () => Record<string, ort.Tensor>;
  leavesFn: () => HostArray[];
  outs: string[]; times: number[]; cpu: number[]; faults: number[]; nodes: number }

/** Micro graphs: one block of the U-Net at its batch-64 shape (fwd: output; train: the
 *  gradient of sum(out * r) with respect to the input and all parameters). */
function micro(name: string): { mod: Module; x: number[]; run: (p: Tree<Tensor>, x: Tensor, e: Tensor) => Tensor } | null {
  const ctx: BlockCtx = { act: 'silu', groups: 8, eps: 1e-5, tembChannels: 128, timeScaleShift: 'default', headDim: 8 };
  const mk = (mod: Module, x: number[], run: (p: Tree<Tensor>, x: Tensor, e: Tensor) => Tensor) => ({ mod, x, run });
  if (name.startsWith('stack')) { // stackN: N attention blocks at 16x16, 64 channels, in sequence
    const blocks = Array.from({ length: Number(name.slice(5)) }, () => new SpatialAttention(64, ctx, { groups: 8 }));
    const mod = new (class extends Module { readonly b = blocks; })();
    return mk(mod, [batch, 64, 16, 16], (p, x) => blocks.reduce((h, blk, i) => blk.forward((p as never as { b: never[] }).b[i]!, h), x));
  }
  if (name.startsWith('attn')) {
    const c = name === 'attn8' ? 128 : name === 'attn32' ? 32 : 64;
    const hw = name === 'attn8' ? 8 : name === 'attn32' ? 32 : 16;
    const a = new SpatialAttention(c, ctx, { groups: 8 });
    return mk(a, [batch, c, hw, hw], (p, x) => a.forward(p as never, x));
  }
  if (name.startsWith('res')) {
    const [cin, cout, hw] = name === 'res32' ? [32, 32, 32] : name === 'res96' ? [96, 32, 32] : name === 'res64' ? [64, 64, 16] : [128, 128, 8];
    const r = new ResnetBlock2D(cin!, cout!, ctx);
    return mk(r, [batch, cin!, hw!, hw!], (p, x, e) => r.forward(p as never, x, e));
  }
  if (name.startsWith('conv')) {
    const [cin, cout, hw] = name === 'conv32' ? [32, 32, 32] : name === 'conv96' ? [96, 32, 32] : name === 'conv64' ? [64, 64, 16] : [128, 128, 8];
    const cv = new Conv2d(cin!, cout!, 3, { padding: 1 });
    return mk(cv, [batch, cin!, hw!, hw!], (p, x) => cv.forward(p as never, x));
  }
  if (name.startsWith('gn')) {
    const [cc, hw] = name === 'gn32' ? [32, 32] : name === 'gn64' ? [64, 16] : [128, 8];
    const gn = new GroupNorm(8, cc!);
    return mk(gn, [batch, cc!, hw!, hw!], (p, x) => ops.silu(gn.forward(p as never, x)));
  }
  return null;
}

/** The graph of `which` in `mode` as this build traces it (with `__diffuseVariant` set by the
 *  caller) and its inputs. */
function graphFor(): { bytes: Uint8Array; leaves: () => HostArray[] } {
  let bytes: Uint8Array;
  let leaves: () => HostArray[];
  const mc = micro(which);
  if (mc) {
    const params = mc.mod.init(RngKey.fromSeed(1)) as Tree<HostArray>;
    const x = new HostArray(RngKey.fromSeed(2).normal(mc.x.reduce((a, b) => a * b, 1)), mc.x);
    const e = new HostArray(RngKey.fromSeed(3).normal(batch * 128), [batch, 128]);
    if (mode === 'fwd') {
      const consts = mapTree(params, isHostArray, (a) => ops.constant(a));
      const f = compile((xs: Tensor, es: Tensor) => mc.run(consts, xs, es));
      bytes = f.onnx(x, e);
      leaves = () => [x, e];
    } else {
      const rn = mc.x.reduce((a, b) => a * b, 1) * 4;
      const r = new HostArray(RngKey.fromSeed(4).normal(rn), [rn]);
      const f = compile((p: Tree<Tensor>, xs: Tensor, es: Tensor) => grad((q: Tree<Tensor>, xx: Tensor) => {
        const out = mc.run(q, xx, es);
        const rr = ops.reshape(ops.slice(ops.constant(r), [[0, out.shape.reduce<number>((a, d) => a * (d as number), 1)]]), out.shape);
        return ops.sum(ops.mul(out, rr));
      }, { argnums: [0, 1] })(p, xs));
      bytes = f.onnx(params as never, x, e);
      leaves = () => [...flatten(params, isHostArray).leaves, x, e];
    }
  } else if (mode === 'fwd') {
    const f = inferenceFn(m!);
    const inputs = forwardInputs(m!, batch);
    bytes = f.onnx(...inputs);
    leaves = () => inputs.flatMap((t) => flatten(t as Tree<HostArray>, isHostArray).leaves);
  } else {
    const { trainer, batch: makeBatch } = trainStepFor(m!, batch);
    const state = trainer.init(m!.params);
    const specs = () => [state.params, state.opt, [], HostArray.scalar(1), makeBatch()] as Tree<HostArray>[];
    bytes = trainer.compiled.onnx(...(specs() as never[]));
    leaves = () => specs().flatMap((t) => flatten(t, isHostArray).leaves);
  }
  return { bytes, leaves };
}

async function build(name: string): Promise<Built> {
  const flags = name === 'base' ? [] : name.split(',');
  g.__diffuseVariant = new Set(flags.filter((f) => !f.startsWith('so:')));
  const fromFile = flags.find((f) => f.startsWith('onnx='));
  // A graph written by another build (`--dump`): same model and inputs, other code.
  // `plainconv`: this build without blocked convs for input weights (src/engine/nchwc.ts).
  if (flags.includes('plainconv')) process.env.DIFFUSE_BLOCKED_CONVS = '0';
  let { bytes, leaves } = graphFor();
  delete process.env.DIFFUSE_BLOCKED_CONVS;
  if (fromFile) bytes = readFileSync(fromFile.slice(5));
  g.__diffuseVariant = new Set();
  if (dump) {
    writeFileSync(dump, bytes);
    console.log(`wrote ${dump} (${bytes.length} bytes)`);
    process.exit(0);
  }
  const so = sessionOptions({ optimization: 'all', ...(threads ? { threads } : {}) });
  for (const f of flags) {
    if (f === 'so:nopattern') so.enableMemPattern = false;
    if (f === 'so:noarena') so.enableCpuMemArena = false;
    if (f === 'so:daz') so.extra = { session: { set_denormal_as_zero: '1' } };
    if (f === 'so:nospin') so.extra = { session: { intra_op: { allow_spinning: '0' } } };
    if (f.startsWith('so:opt=')) so.graphOptimizationLevel = f.slice(7) as 'all';
    if (f === 'so:profile') {
      so.enableProfiling = true;
      so.profileFilePrefix = `ab-profile-${process.pid}-${built.length}`;
    }
  }
  const session = await ort.InferenceSession.create(bytes, so);
  const { onnx } = (await import('onnx-proto')).default;
  const graph = onnx.ModelProto.decode(bytes).graph!;
  const inNames = graph.input!.map((i) => i.name!);
  const feeds = () => {
    const out: Record<string, ort.Tensor> = {};
    leaves().forEach((a, i) => (out[inNames[i]!] = toOrtTensor(a)));
    return out;
  };
  return { name, session, feeds, leavesFn: leaves, outs: graph.output!.map((o) => o.name!), times: [], cpu: [], faults: [], nodes: graph.node!.length };
}

await nchwcBlockSize(); // onnx() lowers blocked convs only once the CPU's block size is known
const built: Built[] = [];
for (const v of variants) built.push(await build(v));
/** Busy CPU time of the whole machine (ms, all cores), from /proc/stat. */
const busyMs = (): number => {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const idle = f[3]! + f[4]!;
  return (f.reduce((a, b) => a + b, 0) - idle) * 10;
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Waits (up to maxMs) until the other processes use under 10% of a core. */
async function waitQuiet(maxMs = 60_000): Promise<void> {
  const start = performance.now();
  while (performance.now() - start < maxMs) {
    const b0 = busyMs();
    await sleep(300);
    if (busyMs() - b0 < 60) return;
  }
}
/** One run: wall ms, or null when other processes took more than `foreign` of a core meanwhile. */
const runOnce = async (b: Built): Promise<number | null> => {
  const f = b.feeds();
  // Each session has its own intra-op threads, which spin for a while after a run: let the
  // previous session's go quiet first (without this the first variant ran up to 2x faster).
  await sleep(Number(process.env.AB_GAP_MS ?? 100));
  const c0 = process.cpuUsage();
  const b0 = busyMs();
  const pf0 = process.resourceUsage().minorPageFault;
  const t0 = performance.now();
  await b.session.run(f, b.outs);
  const wall = performance.now() - t0;
  b.faults.push(process.resourceUsage().minorPageFault - pf0);
  const c = process.cpuUsage(c0);
  const ours = (c.user + c.system) / 1000;
  const others = busyMs() - b0 - ours;
  if (filter && others > 0.15 * wall + 20) return null;
  b.cpu.push(ours);
  return wall;
};
for (const b of built) { await runOnce(b); await runOnce(b); b.cpu.length = 0; b.faults.length = 0; } // warm-up
let dropped = 0;
const deadline = performance.now() + Number(process.env.AB_MAX_S ?? 900) * 1000;
for (let r = 0; r < rounds && performance.now() < deadline; r++) {
  if (filter) await waitQuiet();
  for (const b of built) {
    let t: number | null = null;
    for (let tries = 0; tries < 6 && t === null; tries++) {
      t = await runOnce(b);
      if (t === null) { dropped++; await waitQuiet(); }
    }
    if (t !== null) b.times.push(t);
  }
}
console.log(`(${dropped} runs dropped: other processes were busy)`);
const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
const base = med(built[0]!.times);
/** Median over rounds of (first variant's time / this one's) in the same round: slow drifts of
 *  the machine (which move both) cancel. */
const pairedRatio = (b: Built): number => {
  const a = built[0]!.times;
  const n = Math.min(a.length, b.times.length);
  return med(Array.from({ length: n }, (_, i) => a[i]! / b.times[i]!));
};
console.log(`${which} ${mode} batch ${batch}, ${rounds} rounds round-robin, load ${(await import('node:os')).loadavg()[0]!.toFixed(2)}`);
for (const b of built) {
  const md = med(b.times);
  console.log(`  ${b.name.padEnd(40)} median ${md.toFixed(1).padStart(8)} ms  min ${Math.min(...b.times).toFixed(1).padStart(8)} ms  ` +
    `${(base / md).toFixed(3)}x  paired ${pairedRatio(b).toFixed(3)}x  cpu med ${med(b.cpu).toFixed(0)} min ${Math.min(...b.cpu).toFixed(0)} ms  faults/run ${med(b.faults)}  (${b.nodes} nodes)  [${b.times.map((t) => t.toFixed(0)).join(' ')}]`);
}
for (const b of built) await b.session.release();
const top = Number(process.env.AB_TOP ?? 25);
for (const [i, b] of built.entries()) {
  if (!b.name.includes('so:profile')) continue;
  const prefix = `ab-profile-${process.pid}-${i}`;
  const file = readdirSync('.').find((f) => f.startsWith(prefix))!;
  const events = JSON.parse(readFileSync(file, 'utf8')) as { cat: string; name: string; dur: number;
    args?: { op_name?: string; output_type_shape?: unknown; input_type_shape?: unknown } }[];
  rmSync(file);
  const runs = b.times.length + 2;
  const byOp = new Map<string, [number, number]>();
  const byNode = new Map<string, { ms: number; op: string; shape: string }>();
  for (const e of events) {
    if (e.cat !== 'Node' || !e.name.endsWith('_kernel_time')) continue;
    const op = e.args?.op_name ?? '?';
    const name = e.name.slice(0, -12);
    const r = byOp.get(op) ?? [0, 0];
    r[0] += e.dur / 1000 / runs;
    byOp.set(op, r);
    const nd = byNode.get(name) ?? { ms: 0, op, shape: `${JSON.stringify(e.args?.input_type_shape)} -> ${JSON.stringify(e.args?.output_type_shape)}` };
    if (nd.ms === 0) r[1]++;
    nd.ms += e.dur / 1000 / runs;
    byNode.set(name, nd);
  }
  const total = [...byOp.values()].reduce((a, v) => a + v[0], 0);
  console.log(`\nprofile of ${b.name}: ${total.toFixed(1)} ms kernel time per run`);
  for (const [op, [ms, cnt]] of [...byOp].sort((x, y) => y[1][0] - x[1][0])) {
    console.log(`  ${op.padEnd(24)} ${ms.toFixed(2).padStart(9)} ms ${(100 * ms / total).toFixed(1).padStart(5)}%  x${cnt}`);
  }
  for (const [name, nd] of [...byNode].sort((x, y) => y[1].ms - x[1].ms).slice(0, top)) {
    console.log(`  ${nd.ms.toFixed(2).padStart(8)} ms ${nd.op.padEnd(18)} ${name.slice(0, 40).padEnd(40)} ${nd.shape.slice(0, 160)}`);
  }
}
