/** Switch-DiT: config, names and counts; the prior table against a plain re-implementation of
 *  the official create_mask_tasks; the in-graph assignment against an exact subset search; the
 *  router (gate from t alone, top-k weights, the mask) against a hand computation; zero experts
 *  give the plain DiT; the prior loss against a plain computation; save and load. */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { mapTree, type Tree } from '../engine/tree.js';
import { loadModel, saveModel } from '../io/diffusers.js';
import { stateDict, type ParamsOf } from '../nn/module.js';
import { checkGrad, randint, randn } from '../../test/support/gradcheck.js';
import { maxAbsDiff } from '../../test/support/reference.js';
import { withTempDir } from '../../test/support/temp-dir.js';
import { DiTTransformer2DModel, ditInitialize, type DiTConfig } from './dit.js';
import {
  diffusionPriorLoss, linearAssignment, SWITCH_DIT_DEFAULTS, switchDiTClass, switchDiTPreset,
  switchPriorTable, TaskMoE, type SwitchDiTConfig, type SwitchDiTTransformer2DModel,
} from './switch-dit.js';

const TINY: Partial<SwitchDiTConfig> = {
  sample_size: 8, in_channels: 2, patch_size: 2, num_layers: 2, num_attention_heads: 2,
  attention_head_dim: 8, num_embeds_ada_norm: 4,
};
const tiny = (over: Partial<SwitchDiTConfig> = {}): SwitchDiTConfig =>
  ({ ...SWITCH_DIT_DEFAULTS, ...TINY, ...over });
type P = ParamsOf<SwitchDiTTransformer2DModel>;
type HostP = ParamsOf<SwitchDiTTransformer2DModel, HostArray>;
const isHost = (x: unknown): x is HostArray => x instanceof HostArray;
const f32 = (a: HostArray): number[] => Array.from(a.data as Float32Array);

// ---- plain references ----

/** The official create_mask_tasks(units, tasks, beta = k / E, alpha), read as numpy runs it:
 *  the first unit of each task's window, and the window's width. */
function officialWindows(units: number, tasks: number, k: number, experts: number, alpha: number):
  { starts: number[]; width: number } {
  const width = Math.trunc(units * (k / experts)); // int(unit_count * beta)
  const lastIndex = units - width;
  const delta = 1 / (tasks - 1); // np.linspace(0, 1, n): i * delta, the end set to 1
  const lin = Array.from({ length: tasks }, (_, i) => (i === tasks - 1 ? 1 : i * delta));
  const npRound = (x: number) => { // half to even
    const fl = Math.floor(x);
    const diff = x - fl;
    return diff > 0.5 || (diff === 0.5 && fl % 2 === 1) ? fl + 1 : fl;
  };
  return { starts: lin.map((v) => npRound(Math.pow(v, alpha) * lastIndex)), width };
}

/** The least total cost of a one-to-one assignment (exact search over column subsets). */
function minAssignmentCost(cost: number[][]): number {
  const n = cost.length;
  const best = new Float64Array(1 << n).fill(Infinity);
  best[0] = 0;
  for (let mask = 0; mask < 1 << n; mask++) {
    if (best[mask] === Infinity) continue;
    let row = 0;
    for (let b = mask; b; b &= b - 1) row++; // rows 0..row-1 are placed
    if (row === n) continue;
    for (let c = 0; c < n; c++) {
      if (mask & (1 << c)) continue;
      const next = mask | (1 << c);
      best[next] = Math.min(best[next]!, best[mask]! + cost[row]![c]!);
    }
  }
  return best[(1 << n) - 1]!;
}

/** The column each row of a permutation matrix [n, n] takes; throws unless it is one. */
function permutationOf(x: HostArray): number[] {
  const n = x.shape[0]!;
  const v = f32(x);
  const cols = Array.from({ length: n }, (_, r) => {
    const row = v.slice(r * n, (r + 1) * n);
    assert.equal(row.filter((e) => e === 1).length, 1, `row ${r}: ${row}`);
    assert.equal(row.filter((e) => e !== 0 && e !== 1).length, 0);
    return row.indexOf(1);
  });
  assert.equal(new Set(cols).size, n, `not a permutation: ${cols}`);
  return cols;
}

const rows2d = (a: HostArray): number[][] => {
  const [r, c] = a.shape as [number, number];
  const v = f32(a);
  return Array.from({ length: r }, (_, i) => v.slice(i * c, (i + 1) * c));
};

/** The official compute_JSD_loss (eps 1e-6, mean over rows). */
function jsd(p: number[][], q: number[][], eps = 1e-6): number {
  let total = 0;
  p.forEach((pr, n) => {
    let s = 0;
    pr.forEach((a, j) => {
      const b = q[n]![j]!;
      const m = (a + b) / 2;
      const lm = Math.log(m + eps);
      s += a * (Math.log(a + eps) - lm) + b * (Math.log(b + eps) - lm);
    });
    total += s / 2;
  });
  return total / p.length;
}

// ---- tests ----

test('config, parameter names (a router in each of diffusers\' blocks) and counts', () => {
  const c = switchDiTPreset('Switch-DiT-S/2-mnist');
  assert.deepEqual(switchDiTClass.readConfig(switchDiTClass.toConfig(c)), c);
  const raw = switchDiTClass.toConfig(c) as Record<string, unknown>;
  assert.equal(raw._class_name, 'SwitchDiTTransformer2DModel');
  assert.ok(!('dtr_alpha' in raw));
  const model = switchDiTClass.create(c);
  const shapes = model.parameterShapes();
  assert.deepEqual(shapes.get('transformer_blocks.5.router.experts.weight'), [3, 128, 128]);
  assert.deepEqual(shapes.get('transformer_blocks.5.router.experts.bias'), [3, 128]);
  assert.deepEqual(shapes.get('transformer_blocks.0.router.f_gate.weight'), [3, 128]);
  assert.deepEqual(shapes.get('transformer_blocks.0.router.f_gate.bias'), [3]);
  assert.ok(shapes.has('transformer_blocks.0.ff.net.0.proj.weight'));
  // Dense DiT-S/2-mnist (2,880,388) plus per block 3 D^2 + 3 D (experts) and 3 D + 3 (gate).
  const d = 128;
  assert.equal(model.numParams(), 2_880_388 + 6 * (3 * d * d + 6 * d + 3));
  assert.deepEqual(model.prior.shape, [1000, 18]);

  const bad: [Record<string, unknown>, RegExp][] = [
    [{ num_experts_per_tok: 4 },
      /'num_experts_per_tok' must be an integer in \[1, num_experts = 3\]/],
    [{ num_experts: 0 }, /'num_experts' must be an integer >= 1/],
    [{ prior_weight: -1 }, /'prior_weight' must be a number >= 0/],
    [{ dtr_alpha: 4 }, /'dtr_alpha' must be null/],
  ];
  for (const [over, msg] of bad) {
    assert.throws(() => switchDiTClass.readConfig({ ...raw, ...over }), msg);
  }
});

test('the prior table is the official create_mask_tasks (L E units, beta = k / E, alpha 4)', () => {
  // (L, E, k): the tiny test model, the xs preset, DiT-S/B (12 blocks), DiT-XL (28).
  for (const [blocks, experts, k] of [[2, 3, 2], [4, 3, 2], [12, 3, 2], [28, 3, 2], [4, 4, 1]]) {
    const table = switchPriorTable(blocks!, experts!, k!);
    const units = blocks! * experts!;
    assert.deepEqual(table.shape, [1000, units]);
    const { starts, width } = officialWindows(units, 1000, k!, experts!, 4);
    assert.equal(width, blocks! * k!);
    const v = f32(table);
    for (let i = 0; i < 1000; i++) {
      const row = v.slice(i * units, (i + 1) * units);
      const want = row.map((_, j) => (j >= starts[i]! && j < starts[i]! + width ? 1 : 0));
      assert.deepEqual(row, want, `L ${blocks}, task ${i}`);
    }
    assert.equal(starts[0], 0);
    assert.equal(starts[999], units - width);
  }
  // By hand for L = 4 (12 units, windows of 8, start round(4 u^4)): the window first moves at
  // u^4 > 1 / 8, u > 0.5946, i.e. between tasks 594 (u^4 * 4 = 0.49998) and 595 (0.50337).
  const t = rows2d(switchPriorTable(4, 3, 2));
  assert.equal(t[594]!.indexOf(1), 0);
  assert.equal(t[595]!.indexOf(1), 1);
  assert.equal(t[999]!.indexOf(1), 4);
});

test('the in-graph assignment is a least-cost permutation (exact search, ties)', async () => {
  const key = RngKey.fromSeed(3);
  for (const n of [1, 2, 3, 5, 8, 12]) {
    const f = compile((c: Tensor) => linearAssignment(c));
    for (const [trial, high] of [4, 4, 4, 4, 2, 2, 3, 1000, 1000, 1000].entries()) {
      const ints = key.fold(n).fold(trial).uniformInt(n * n, high);
      const cost = new HostArray(Float32Array.from(ints), [n, n]);
      const perm = permutationOf(await f(cost));
      const c = rows2d(cost);
      const got = perm.reduce((s, col, r) => s + c[r]![col]!, 0);
      assert.equal(got, minAssignmentCost(c), `n ${n}, trial ${trial}: ${perm}`);
    }
    await f.dispose();
  }
});

test('router: the gate reads t alone; top-k weights; mask 1 + sum g_e (x W_e + b_e)', async () => {
  const [d, e, n, tok] = [8, 3, 3, 4];
  const moe = new TaskMoE(d, e, 2);
  const p0 = moe.init(RngKey.fromSeed(4));
  // Non-zero experts (they start at zero) and a sharper gate, so the top 2 differ by sample.
  const p = { f_gate: { weight: randn([e, d], 5, 2), bias: randn([e], 6) },
    experts: { weight: randn([e, d, d], 7, 0.3), bias: randn([e, d], 8, 0.3) } };
  assert.ok([p0.experts.weight, p0.experts.bias].every((a) => f32(a).every((v) => v === 0)));
  const temb = randn([n, d], 9);
  const x = randn([n, tok, d], 10);
  const f = compile((q: ParamsOf<TaskMoE>, te: Tensor, xx: Tensor) => moe.forward(q, xx, te));
  const r = await f(p, temb, x);
  await f.dispose();
  const pv = f32(r.probs);
  const mv = f32(r.mask);
  const w = f32(p.f_gate.weight);
  const ew = f32(p.experts.weight);
  const eb = f32(p.experts.bias);
  const picked = new Set<string>();
  for (let s = 0; s < n; s++) {
    const h = Array.from({ length: d }, (_, j) => temb.data[s * d + j] as number)
      .map((v) => v / (1 + Math.exp(-v))); // SiLU
    const logits = Array.from({ length: e }, (_, i) =>
      h.reduce((a, v, j) => a + v * w[i * d + j]!, p.f_gate.bias.data[i] as number));
    const mx = Math.max(...logits);
    const z = logits.reduce((a, l) => a + Math.exp(l - mx), 0);
    const probs = logits.map((l) => Math.exp(l - mx) / z);
    probs.forEach((v, i) => assert.ok(Math.abs(v - pv[s * e + i]!) < 1e-6));
    const top = [...probs.keys()].sort((a, b) => probs[b]! - probs[a]!).slice(0, 2);
    picked.add(top.slice().sort().join());
    for (let t = 0; t < tok; t++) {
      for (let o = 0; o < d; o++) {
        let m = 1; // 1 + sum over the top 2 of g (x W + b), g the unrenormalised probability
        for (const i of top) {
          let y = eb[i * d + o]!;
          for (let j = 0; j < d; j++) {
            y += (x.data[(s * tok + t) * d + j] as number) * ew[(i * d + j) * d + o]!;
          }
          m += probs[i]! * y;
        }
        const got = mv[(s * tok + t) * d + o]!;
        assert.ok(Math.abs(got - m) < 1e-5, `sample ${s} token ${t} unit ${o}: ${got} vs ${m}`);
      }
    }
  }
  assert.ok(picked.size > 1, 'the case exercises more than one top-2 set');

  // In the model: the same t with other inputs and labels gives the same gates; another t not.
  const model = switchDiTClass.create(tiny());
  const mp = model.init(RngKey.fromSeed(11));
  const g = compile((q: P, xx: Tensor, tt: Tensor, y: Tensor) => model.forward(q, xx, tt, y).probs);
  const t = new HostArray(new Float32Array([250, 250, 250, 731.5]), [4]);
  const probs = await g(mp, randn([4, 2, 8, 8], 12), t, randint([4], 5, 13));
  const again = await g(mp, randn([4, 2, 8, 8], 14), t, randint([4], 5, 15));
  await g.dispose();
  const rows = rows2d(probs);
  assert.deepEqual(rows[1], rows[0]);
  assert.deepEqual(rows[2], rows[0]);
  assert.deepEqual(probs.data, again.data);
  assert.ok(maxAbsDiff(new HostArray(Float32Array.from(rows[3]!), [6]),
    new HostArray(Float32Array.from(rows[0]!), [6])) > 1e-4);
  rows.forEach((row) => [0, 3].forEach((o) =>
    assert.ok(Math.abs(row[o]! + row[o + 1]! + row[o + 2]! - 1) < 1e-6)));
});

test('zero-initialised experts: at init, the plain DiT of the same weights', async () => {
  const c = tiny();
  const model = switchDiTClass.create(c);
  const { num_experts: _a, num_experts_per_tok: _b, prior_weight: _c, prior_alpha: _d,
    ...plain } = c;
  const dit = new DiTTransformer2DModel(plain as DiTConfig);
  const strip = (p: Tree<HostArray>) => ({ ...(p as Record<string, unknown>),
    transformer_blocks: (p as { transformer_blocks: Record<string, unknown>[] }).transformer_blocks
      .map(({ router: _, ...rest }) => rest) }) as unknown as
    ParamsOf<DiTTransformer2DModel, HostArray>;
  const f = compile((a: P, b: ParamsOf<DiTTransformer2DModel>, x: Tensor, t: Tensor, y: Tensor) =>
    ({ sw: model.forward(a, x, t, y).sample, dit: dit.forward(b, x, t, y) }));
  const x = randn([3, 2, 8, 8], 16);
  const t = new HostArray(new Float32Array([3, 500, 999.25]), [3]);
  const y = randint([3], 5, 17);
  // torch-default init (what `diffuse train` uses), and every other weight random (DiT's
  // initialize_weights would make both models output zero: its adaLN and output are zero).
  const fresh = model.init(RngKey.fromSeed(18)) as Tree<HostArray>;
  const noisy = mapTree(fresh, isHost, (a, path) =>
    (/router/.test(path) ? a : randn(a.shape, path.length, 0.2)));
  const official = stateDict(ditInitialize(fresh, RngKey.fromSeed(19)));
  for (const [name, a] of official) {
    if (/router\.experts\./.test(name)) assert.ok(f32(a).every((v) => v === 0), name);
  }
  assert.ok(f32(official.get('transformer_blocks.1.router.f_gate.weight')!).some((v) => v !== 0));
  for (const params of [fresh, noisy]) {
    const r = await f(params as unknown as HostP, strip(params), x, t, y);
    const err = maxAbsDiff(r.sw, r.dit);
    assert.ok(err <= 1e-6, `switch vs plain DiT: ${err}`);
    assert.ok(f32(r.dit).some((v) => v !== 0));
  }
  await f.dispose();
});

test('the diffusion-prior loss equals a plain computation (matching, targets, JSD)', async () => {
  const c = tiny({ prior_weight: 0.5 });
  const model = switchDiTClass.create(c);
  const params = model.init(RngKey.fromSeed(20)) as Tree<HostArray>;
  // Sharper gates, so the top-2 map over the 1000 tasks changes with t.
  const p = mapTree(params, isHost, (a, path) =>
    (/f_gate\.weight$/.test(path) ? randn(a.shape, 21 + path.length, 3) : a)) as unknown as HostP;
  const f = compile((q: P, x: Tensor, t: Tensor, y: Tensor) => {
    const r = model.forward(q, x, t, y);
    const tasks = ops.cast(ops.clamp(ops.floor(t), 0, 999), 'int64');
    const direct = diffusionPriorLoss(r.probs, model.taskMap(q), model.prior, tasks, 2);
    return { probs: r.probs, loss: r.priorLoss, map: model.taskMap(q), direct: direct.loss,
      assignment: direct.assignment };
  });
  const t = new HostArray(new Float32Array([0, 17.9, 400, 650.5, 999, 1000]), [6]);
  const r = await f(p, randn([6, 2, 8, 8], 22), t, randint([6], 5, 23));
  await f.dispose();
  const map = rows2d(r.map);
  const prior = rows2d(switchPriorTable(2, 3, 2));
  map.forEach((row) => row.forEach((v, j) => assert.ok(v === 0 || v === 1, `${j}`)));
  map.forEach((row) => [0, 3].forEach((o) => assert.equal(row[o]! + row[o + 1]! + row[o + 2]!, 2)));
  assert.ok(new Set(map.map((row) => row.join())).size > 1, 'the top-2 map varies with t');
  // The L1 cost between gate column a and prior column b over all tasks; the graph's matching
  // must reach the least total cost.
  const cost = [...Array(6).keys()].map((a) => [...Array(6).keys()].map((b) =>
    map.reduce((s, row, i) => s + Math.abs(row[a]! - prior[i]![b]!), 0)));
  const perm = permutationOf(r.assignment);
  assert.equal(perm.reduce((s, b, a) => s + cost[a]![b]!, 0), minAssignmentCost(cost));
  // JSD(probs / L, prior[floor(t)] matched and normalised), mean over the batch.
  const probs = rows2d(r.probs).map((row) => row.map((v) => v / 2));
  const tasks = f32(t).map((v) => Math.min(Math.floor(v), 999));
  const target = tasks.map((task) => perm.map((b) => prior[task]![b]! / 4));
  const want = jsd(probs, target);
  const got = r.direct.data[0] as number;
  console.log(`prior JSD: graph ${got.toFixed(6)}, plain ${want.toFixed(6)}`);
  assert.ok(Math.abs(got - want) < 1e-5, `${got} vs ${want}`);
  assert.ok(Math.abs((r.loss.data[0] as number) - 0.5 * want) < 1e-5);
  assert.ok(want > 0.01);
});

test('the prior loss: zero when the gates equal the matched prior; its gradient', async () => {
  // Gates already shaped like a column permutation of the prior: the matching finds it (the
  // cost is 0) and the JSD against gates equal to the target rows is 0.
  const prior = switchPriorTable(2, 3, 2);
  const perm = [4, 0, 5, 2, 1, 3]; // gate column a holds prior column perm[a]
  const pr = rows2d(prior);
  const map = new HostArray(Float32Array.from(pr.flatMap((row) => perm.map((b) => row[b]!))),
    [1000, 6]);
  const tasks = new HostArray(new BigInt64Array([0n, 300n, 700n, 999n]), [4], 'int64');
  const exact = new HostArray(Float32Array.from([0, 300, 700, 999].flatMap((i) =>
    perm.map((b) => (2 * pr[i]![b]!) / 4))), [4, 6]); // probs = L * target
  const f = compile((pp: Tensor, m: Tensor, tk: Tensor) =>
    diffusionPriorLoss(pp, m, prior, tk, 2));
  const r = await f(exact, map, tasks);
  assert.ok(Math.abs(r.loss.data[0] as number) < 1e-5, `${r.loss.data[0]}`);
  const found = permutationOf(r.assignment);
  // Prior columns 2 and 3 are equal (both cover every task), so either may take either.
  assert.deepEqual(found.map((b) => (b === 3 ? 2 : b)), perm.map((b) => (b === 3 ? 2 : b)));
  await f.dispose();
  // Gradients reach the gate probabilities (the matching and the target carry none).
  const soft = new HostArray(Float32Array.from(f32(exact), (v) => 0.8 * v + 0.2 / 3), [4, 6]);
  await checkGrad('prior JSD wrt gate probabilities',
    (pp) => diffusionPriorLoss(pp!, ops.constant(map), prior, ops.constant(tasks), 2).loss, [soft]);
});

test('save and load: config.json and weights round-trip, same outputs', async () => {
  const c = tiny({ num_experts: 4, num_experts_per_tok: 1, prior_weight: 0.25 });
  const model = switchDiTClass.create(c);
  const params = mapTree(model.init(RngKey.fromSeed(24)) as Tree<HostArray>, isHost, (a, path) =>
    (/router\.experts/.test(path) ? randn(a.shape, 25, 0.1) : a)) as HostP;
  await withTempDir('switch-dit', async (dir) => {
    await saveModel(dir, switchDiTClass, c, params);
    const json = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')) as
      Record<string, unknown>;
    assert.equal(json._class_name, 'SwitchDiTTransformer2DModel');
    assert.equal(json.num_experts, 4);
    const loaded = await loadModel(dir, switchDiTClass);
    assert.deepEqual(loaded.config, c);
    const [a, b] = [params, loaded.params].map((q) => stateDict(q as Tree<HostArray>)) as
      [Map<string, HostArray>, Map<string, HostArray>];
    assert.deepEqual([...b.keys()], [...a.keys()]);
    for (const [k, v] of a) assert.deepEqual(b.get(k)!.data, v.data, k);
    const f = compile((q: P, x: Tensor, t: Tensor, y: Tensor) => model.forward(q, x, t, y).sample);
    const args = [randn([2, 2, 8, 8], 26), randint([2], 1000, 27), randint([2], 5, 28)] as const;
    const [o1, o2] = [await f(params, ...args), await f(loaded.params, ...args)];
    await f.dispose();
    assert.deepEqual(o2.data, o1.data);
  });
});

test('the switch-dit family: dit\'s sizes, the prior loss as aux, refused options', async () => {
  // (A test of the registration in pipelines/image-models.ts, beside the model it registers.)
  const { createImageModel, familyOfClass } = await import('../pipelines/image-models.js');
  for (const size of ['s', 'xs', 'tiny']) {
    const [sw, dit] = [createImageModel('switch-dit', size, 10), createImageModel('dit', size, 10)];
    const c = sw.config as SwitchDiTConfig;
    for (const k of ['patch_size', 'num_layers', 'num_attention_heads', 'attention_head_dim',
      'sample_size', 'in_channels', 'num_embeds_ada_norm'] as const) {
      assert.equal(c[k], (dit.config as DiTConfig)[k], `${size}: ${k}`);
    }
    assert.equal([c.num_experts, c.num_experts_per_tok, c.prior_weight].join(), '3,2,1');
    const d = c.num_attention_heads * c.attention_head_dim;
    assert.equal(sw.module.numParams() - dit.module.numParams(),
      c.num_layers * (3 * d * d + 6 * d + 3));
  }
  assert.equal(familyOfClass('SwitchDiTTransformer2DModel'), 'switch-dit');
  const m = createImageModel('switch-dit', 'tiny', 10);
  const params = m.module.init(RngKey.fromSeed(29));
  const f = compile((p: P, x: Tensor, t: Tensor, y: Tensor) => {
    const r = m.apply(p, x, t, y);
    return { out: r.out, aux: r.aux! };
  });
  const r = await f(params as HostP, randn([2, 1, 32, 32], 30),
    new HostArray(new Float32Array([10, 900]), [2]), randint([2], 10, 31));
  await f.dispose();
  assert.deepEqual(r.out.shape, [2, 1, 32, 32]);
  assert.ok((r.aux.data[0] as number) > 0 && (r.aux.data[0] as number) < Math.LN2);
  assert.throws(() => m.apply(params, ops.zeros([1, 1, 32, 32]), ops.zeros([1]), undefined,
    { hiddenAfter: 1 }), /Switch-DiT: condition corruption and hidden states/);
});
