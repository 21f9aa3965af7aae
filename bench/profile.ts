/**
 * @file `node dist/bench/profile.js [unet|dit-pixel|dit-latent] [fwd|train] [--batch N]
 * [--reps N] [--profile] [--opt LEVEL] [--no-arena] [--top N]`: times one graph of a model
 * benchmark (median after warm-up) and, with --profile, sums ORT's per-op profile by op type
 * and by phase (forward / backward / optimizer: the nodes the loss depends on, those the
 * gradient norm depends on besides, the rest), counts the NCHWc Reorder nodes and lists the
 * slowest nodes with their shapes.
 *
 * Sessions are built here from the compiled graph's ONNX bytes, so session options that
 * `compile` does not expose (the CPU memory arena) can be compared too.
 *
 * Read single nodes with care: under ORT's profiler the training step's forward attention
 * products (QK^T, [64, 8, 256, 256]) showed 30-100 ms each, while the identical backward
 * products showed 8 ms, and adding five more of them to the graph cost ~80 ms in all
 * (bench/ab.ts, no profiler). Shares by op type and phase hold up; confirm a single slow node
 * with an A/B before acting on it.
 */
import { readdir, readFile, rm } from 'node:fs/promises';
import ort from 'onnxruntime-node';
import onnxProto from 'onnx-proto';
import { HostArray, isHostArray } from '../src/engine/host.js';
import { nchwcBlockSize } from '../src/engine/nchwc.js';
import { sessionOptions, toOrtTensor } from '../src/engine/runtime.js';
import { flatten, type Tree } from '../src/engine/tree.js';
import { ditBenchModel, forwardInputs, inferenceFn, trainStepFor, unetBenchModel } from './models.js';

const args = process.argv.slice(2);
const flag = (name: string) => args.includes(name);
const opt = (name: string, dflt: string) => (args.includes(name) ? args[args.indexOf(name) + 1]! : dflt);
const which = args[0] ?? 'unet';
const mode = args[1] ?? 'fwd';
const batch = Number(opt('--batch', '64'));
const reps = Number(opt('--reps', mode === 'fwd' ? '9' : '7'));
const profile = flag('--profile');
const level = opt('--opt', 'all') as 'all';
const top = Number(opt('--top', '0'));

const m = which === 'unet' ? unetBenchModel() : ditBenchModel(which === 'dit-pixel' ? 'pixel' : 'latent');

await nchwcBlockSize(); // onnx() lowers blocked convs only once the CPU's block size is known

// The graph and its feeds.
let bytes: Uint8Array;
let feedsFor: () => Tree<HostArray>[];
if (mode === 'fwd') {
  const f = inferenceFn(m);
  const inputs = forwardInputs(m, batch);
  bytes = f.onnx(...inputs);
  feedsFor = () => inputs;
} else {
  const { trainer, batch: makeBatch } = trainStepFor(m, batch);
  const state = trainer.init(m.params);
  const t = () => HostArray.scalar(state.step + 1);
  const b0 = makeBatch();
  bytes = trainer.compiled.onnx(state.params, state.opt, [], t(), b0);
  feedsFor = () => [state.params, state.opt, [], t(), makeBatch()];
}

/** A coarse role for a kernel, from its op type and shapes. */
function roleOf(op: string, ins: unknown, outs: unknown): string {
  const shapes = [...((ins ?? []) as Record<string, number[]>[]), ...((outs ?? []) as Record<string, number[]>[])]
    .map((o) => Object.values(o)[0] ?? []);
  const tt = shapes.some((sh) => sh.length === 4 && sh[2] === sh[3] && sh[3]! >= 64 && sh[1]! <= 16);
  if (/^(Conv|FusedConv|ConvTranspose)$/.test(op)) return 'conv';
  if (tt && /MatMul|Softmax|Mul|Sub|ReduceSum|Transpose/.test(op)) return 'attention TxT';
  if (/MatMul|Gemm/.test(op)) return 'matmul (proj, wgrad)';
  if (/^(Slice|Concat|Pad)$/.test(op)) return 'slice/concat/pad';
  if (op === 'LayerNormalization') return 'norm kernel';
  if (/^Reduce/.test(op)) return 'reductions';
  if (/^Reorder/.test(op)) return 'NCHWc reorders';
  if (/^(Transpose|Split|Reshape|Gather|Resize|Expand|Identity)$/.test(op)) return 'layout/copies';
  return 'elementwise';
}

const model = onnxProto.onnx.ModelProto.decode(bytes);
const g = model.graph!;
const inputNames = g.input!.map((i) => i.name!);
const outputNames = g.output!.map((o) => o.name!);

// Phases by dependence: forward = ancestors of the loss; backward = further ancestors of gradNorm.
const producer = new Map<string, number>();
g.node!.forEach((n, i) => n.output!.forEach((o) => producer.set(o, i)));
const ancestors = (out: string): Set<number> => {
  const seen = new Set<number>();
  const stack = [out];
  while (stack.length) {
    const i = producer.get(stack.pop()!);
    if (i === undefined || seen.has(i)) continue;
    seen.add(i);
    stack.push(...g.node![i]!.input!);
  }
  return seen;
};
const phaseOf = new Map<string, string>();
if (mode === 'train') {
  const fwd = ancestors('out.loss');
  const bwd = ancestors('out.gradNorm');
  g.node!.forEach((n, i) => phaseOf.set(n.name!, fwd.has(i) ? 'forward' : bwd.has(i) ? 'backward' : 'optimizer'));
} else {
  g.node!.forEach((n) => phaseOf.set(n.name!, 'forward'));
}
const opCounts = new Map<string, number>();
for (const n of g.node!) opCounts.set(n.opType!, (opCounts.get(n.opType!) ?? 0) + 1);

const so = sessionOptions({ optimization: level, profile, name: `${which}_${mode}` });
if (flag('--no-arena')) so.enableCpuMemArena = false;
if (flag('--no-pattern')) so.enableMemPattern = false;
const session = await ort.InferenceSession.create(bytes, so);
const feeds = (): Record<string, ort.Tensor> => {
  const leaves = feedsFor().flatMap((tr) => flatten(tr, isHostArray).leaves);
  const out: Record<string, ort.Tensor> = {};
  leaves.forEach((a, i) => (out[inputNames[i]!] = toOrtTensor(a)));
  return out;
};
const samples: number[] = [];
const warm = 2;
for (let i = 0; i < warm + reps; i++) {
  const f = feeds();
  const t0 = performance.now();
  await session.run(f, outputNames);
  if (i >= warm) samples.push(performance.now() - t0);
}
samples.sort((a, b) => a - b);
const med = samples[samples.length >> 1]!;
console.log(`${which} ${mode} batch ${batch} opt ${level}${flag('--no-arena') ? ' no-arena' : ''}: ` +
  `median ${med.toFixed(1)} ms (min ${samples[0]!.toFixed(1)}, max ${samples.at(-1)!.toFixed(1)}, n ${reps}); ` +
  `${g.node!.length} ONNX nodes`);
console.log(`ONNX ops: ${[...opCounts].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`).join(', ')}`);
await session.release();

if (profile) {
  const prefix = `diffuse-profile-${which}_${mode}`;
  const file = (await readdir('.')).filter((f) => f.startsWith(prefix)).sort().at(-1)!;
  const events = JSON.parse(await readFile(file, 'utf8')) as {
    cat: string; name: string; dur: number; ts: number;
    args?: { op_name?: string; output_type_shape?: unknown; input_type_shape?: unknown };
  }[];
  await rm(file);
  const runs = warm + reps;
  const nodes = events.filter((e) => e.cat === 'Node' && e.name.endsWith('_kernel_time')).sort((a, b) => a.ts - b.ts);
  const byOp = new Map<string, Map<string, number>>();
  const counts = new Map<string, number>();
  let last = 'forward';
  const perNode = new Map<string, { dur: number; op: string; phase: string; shape: string }>();
  const roles = new Map<string, [number, number]>();
  for (const e of nodes) {
    const name = e.name.slice(0, -'_kernel_time'.length);
    // ORT's fused nodes keep the original name before '/'; NCHWc ones add '_nchwc'; the rest
    // (Reorder*, new names) take their neighbour's phase.
    const base = name.split('/')[0]!.replace(/_nchwc$/, '');
    const phase = phaseOf.get(base) ?? phaseOf.get(name) ?? last;
    const role = roleOf(e.args?.op_name ?? '?', e.args?.input_type_shape, e.args?.output_type_shape);
    const rr = roles.get(`${phase}:${role}`) ?? [0, 0];
    rr[0] += e.dur / 1000 / runs;
    roles.set(`${phase}:${role}`, rr);
    last = phase;
    const op = e.args?.op_name ?? '?';
    const row = byOp.get(phase) ?? new Map<string, number>();
    row.set(op, (row.get(op) ?? 0) + e.dur / 1000 / runs);
    byOp.set(phase, row);
    const key = `${name}`;
    const pn = perNode.get(key) ?? { dur: 0, op, phase,
      shape: `${JSON.stringify(e.args?.input_type_shape)} -> ${JSON.stringify(e.args?.output_type_shape)}` };
    pn.dur += e.dur / 1000 / runs;
    perNode.set(key, pn);
  }
  for (const pn of perNode.values()) counts.set(`${pn.phase}:${pn.op}`, (counts.get(`${pn.phase}:${pn.op}`) ?? 0) + 1);
  for (const [phase, row] of byOp) {
    const total = [...row.values()].reduce((a, b) => a + b, 0);
    console.log(`\n${phase}: ${total.toFixed(1)} ms of kernel time per run`);
    for (const [op, ms] of [...row].sort((a, b) => b[1] - a[1])) {
      console.log(`  ${op.padEnd(28)} ${ms.toFixed(2).padStart(8)} ms ${(100 * ms / total).toFixed(1).padStart(5)}%  ` +
        `x${counts.get(`${phase}:${op}`) ?? 0}`);
    }
  }
  console.log('\nby role (ms per run):');
  for (const phase of ['forward', 'backward', 'optimizer']) {
    const rows = [...roles].filter(([k]) => k.startsWith(`${phase}:`)).sort((a, b) => b[1][0] - a[1][0]);
    if (rows.length) console.log(`  ${phase}: ${rows.map(([k, [ms]]) => `${k.slice(phase.length + 1)} ${ms.toFixed(0)}`).join(', ')}`);
  }
  if (top > 0) {
    console.log(`\nslowest ${top} nodes:`);
    for (const [name, pn] of [...perNode].sort((a, b) => b[1].dur - a[1].dur).slice(0, top)) {
      console.log(`  ${pn.dur.toFixed(2).padStart(7)} ms ${pn.phase.padEnd(9)} ${pn.op.padEnd(20)} ${name.padEnd(28)} ${pn.shape}`);
    }
  }
}
