/** EchoDistill (methods/echodistill.ts): every term against plain TypeScript on tiny linear
 *  networks, where each gradient goes (the shared table from both models, the echo into the
 *  teacher only, the alignment target and the GAN halves held fixed), and one compiled step on
 *  tiny U-Nets in which the echo moves the teacher and leaves the student's update untouched. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { grad } from '../engine/autodiff.js';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { flatten, type Tree } from '../engine/tree.js';
import { UNET2D_PRESETS, UNet2DModel } from '../models/unet2d.js';
import { compileTrainStep } from '../nn/train.js';
import type { ParamsOf } from '../nn/module.js';
import {
  combineTerms, ConceptDiscriminator, echoDistillLoss, echoTerms, partwiseAdam, type EchoArm,
  type EchoBatch, type EchoParams, type EchoSetup,
} from './echodistill.js';

// ---- tiny linear networks on 2 x 2 images, two classes and a null class ----

const [B, P, K] = [2, 4, 2];
const rowOf = (e: Tensor, y: Tensor): Tensor => ops.reshape(ops.gather(e, y, 0), [-1, 1, 1, 1]);
const tiny = (arm: EchoArm): EchoSetup => ({
  arm,
  // teacher eps(x, t, y) = a x + E[y] + c t / 1000; student G(z, y) = s z + E[y]
  teacher: (w, e) => (x, t, y) => {
    const p = w as { a: Tensor; c: Tensor };
    return ops.add(ops.add(ops.mul(x, p.a), rowOf(e, y!)),
      ops.mul(ops.reshape(ops.div(t, 1000), [-1, 1, 1, 1]), p.c));
  },
  student: (w, e) => (z, _t, y) => ops.add(ops.mul(z, (w as { s: Tensor }).s), rowOf(e, y!)),
  // D(x, y) = <v, x> + u[y]
  discriminator: (w) => (x, y) => {
    const p = w as { v: Tensor; u: Tensor };
    return ops.add(ops.sum(ops.mul(ops.reshape(x, [-1, P]), p.v), [1]), ops.gather(p.u, y, 0));
  },
  teacherPrediction: 'eps', guidance: 2, nullClass: K, align: 0.3, adversarial: 0.7,
});

const f32 = (v: number[], shape: number[]) => new HostArray(Float32Array.from(v), shape);
const ids = (v: number[]) => new HostArray(BigInt64Array.from(v, BigInt), [v.length], 'int64');
const key = RngKey.fromSeed(11);
const draw = (k: number, n: number) => Array.from(key.fold(k).normal(n));
const params: EchoParams<HostArray> = {
  table: f32(draw(1, K + 1), [K + 1, 1]),
  student: { s: f32([0.8], [1]) },
  discriminator: { v: f32(draw(2, P), [P]), u: f32([0.3, -0.2, 0.1], [K + 1]) },
  teacher: { a: f32([0.5], [1]), c: f32([0.9], [1]) },
};
const point = (k: number, t: number[], alpha: number[]) => ({
  noise: f32(draw(k, B * P), [B, 1, 2, 2]), time: f32(t, [B]),
  alpha: f32(alpha, [B, 1, 1, 1]), sigma: f32(alpha.map((a) => Math.sqrt(1 - a * a)), [B, 1, 1, 1]),
});
const batch = (echoWeight: number) => ({
  real: f32(draw(3, B * P), [B, 1, 2, 2]), labels: ids([1, 0]), teacherLabels: ids([1, K]),
  realPoint: point(4, [300, 700], [0.8, 0.3]), z: f32(draw(5, B * P), [B, 1, 2, 2]),
  studentTime: f32([0, 0], [B]), alignPoint: point(6, [100, 250], [0.95, 0.7]),
  echoPoint: point(7, [500, 50], [0.5, 0.99]), echoWeight: f32([echoWeight], [1]),
});

/** The same terms in plain TypeScript. */
function reference(arm: EchoArm, echoWeight: number) {
  const b = batch(echoWeight);
  const v = (a: HostArray) => Array.from(a.data as Float32Array);
  const n = (a: HostArray) => Array.from(a.data as BigInt64Array, Number);
  const st = params.student as { s: HostArray };
  const dp = params.discriminator as { v: HostArray; u: HostArray };
  const [E, s, dv, du] = [v(params.table), v(st.s)[0]!, v(dp.v), v(dp.u)];
  const tp = params.teacher as { a: HostArray; c: HostArray };
  const [a, c] = [v(tp.a)[0]!, v(tp.c)[0]!];
  const rows = (x: number[]) => [x.slice(0, P), x.slice(P)];
  const y = n(b.labels);
  const fake = rows(v(b.z)).map((z, i) => z.map((zp) => s * zp + E[y[i]!]!));
  const real = rows(v(b.real));
  const d = (x: number[], yi: number) => x.reduce((acc, xp, p) => acc + dv[p]! * xp, du[yi]!);
  const relu = (x: number) => Math.max(0, x);
  const mean = (xs: number[]) => xs.reduce((p, q) => p + q, 0) / xs.length;
  const out = {
    discriminator: mean(real.map((x, i) => relu(1 - d(x, y[i]!)))) +
      mean(fake.map((x, i) => relu(1 + d(x, y[i]!)))),
    generator: -mean(fake.map((x, i) => d(x, y[i]!))),
  } as Record<string, number>;
  if (arm === 'student') return out;
  const eps = (x: number, t: number, yi: number) => a * x + E[yi]! + c * t / 1000;
  /** Per-element squared errors of the teacher's eps on rows x0 noised at point q. */
  const denoise = (x0: number[][], q: ReturnType<typeof point>, labels: number[]) => {
    const [nz, t, al, sg] = [rows(v(q.noise)), v(q.time), v(q.alpha), v(q.sigma)];
    return x0.flatMap((x, i) => x.map((xp, p) => {
      const e = nz[i]![p]!;
      return (eps(al[i]! * xp + sg[i]! * e, t[i]!, labels[i]!) - e) ** 2;
    }));
  };
  out.teacher = mean(denoise(real, b.realPoint, n(b.teacherLabels)));
  const q = b.alignPoint;
  const [an, at, aa, as] = [rows(v(q.noise)), v(q.time), v(q.alpha), v(q.sigma)];
  out.align = mean(fake.map((x, i) => x.reduce((acc, xp, p) => {
    const xt = aa[i]! * xp + as[i]! * an[i]![p]!;
    const [cond, unc] = [eps(xt, at[i]!, y[i]!), eps(xt, at[i]!, K)];
    const x0 = (xt - as[i]! * (unc + 2 * (cond - unc))) / aa[i]!;
    return acc + (xp - x0) ** 2;
  }, 0)));
  if (arm === 'echo') out.echo = mean(denoise(fake, b.echoPoint, y));
  out.loss = out.discriminator! + 0.7 * out.generator! + out.teacher + 0.3 * out.align +
    echoWeight * (out.echo ?? 0);
  return out;
}

type Fn = (...a: unknown[]) => Promise<unknown>;
const paramsOf = (arm: EchoArm): Tree<HostArray> => {
  const { teacher, ...alone } = params;
  return (arm === 'student' ? alone : { ...alone, teacher: teacher! }) as unknown as Tree<HostArray>;
};
const close = (got: number, want: number, what: string) =>
  assert.ok(Math.abs(got - want) <= 1e-5 * Math.max(1, Math.abs(want)), `${what}: ${got} vs ${want}`);

test('each term and the weighted loss equal plain TypeScript, in every arm', async () => {
  for (const arm of ['student', 'one-way', 'echo'] as const) {
    const want = reference(arm, 0.6);
    const f = compile((p: Tree<Tensor>, b: Tree<Tensor>) => {
      const t = echoTerms(tiny(arm), p as unknown as EchoParams, b as unknown as EchoBatch);
      return { ...t, loss: combineTerms(tiny(arm), t, (b as unknown as EchoBatch).echoWeight) };
    });
    const got = await (f as unknown as Fn)(paramsOf(arm), batch(0.6)) as Record<string, HostArray>;
    assert.deepEqual(Object.keys(got).sort(), Object.keys({ ...want, loss: 0 }).sort(), arm);
    for (const [name, value] of Object.entries(want)) {
      close(got[name]!.data[0] as number, value, `${arm} ${name}`);
    }
    await f.dispose();
  }
});

/** The gradient of each term by part of the trained tree, as {term: {part: |grad|}}. */
async function gradientNorms(arm: EchoArm, echoWeight: number):
  Promise<Record<string, Record<string, number>>> {
  const names = ['discriminator', 'generator', 'teacher', 'align', 'echo', 'loss'] as const;
  const f = compile((p: Tree<Tensor>, b: Tree<Tensor>) => Object.fromEntries(names.map((name) => [name,
    grad((q: Tree<Tensor>) => {
      const t = echoTerms(tiny(arm), q as unknown as EchoParams, b as unknown as EchoBatch);
      return name === 'loss' ? combineTerms(tiny(arm), t, (b as unknown as EchoBatch).echoWeight)
        : t[name] ?? ops.mul(ops.sum((q as unknown as EchoParams).table), 0);
    })(p)])));
  const g = await (f as unknown as Fn)(paramsOf(arm), batch(echoWeight)) as Record<string, Tree<HostArray>>;
  await f.dispose();
  const norm = (t: Tree<HostArray> | undefined) => t === undefined ? 0 : Math.sqrt(flatten(t,
    (x): x is HostArray => x instanceof HostArray).leaves.reduce((s, a) =>
    s + (a.data as Float32Array).reduce((q, x) => q + x * x, 0), 0));
  return Object.fromEntries(names.map((n) => {
    const gp = g[n] as unknown as Record<string, Tree<HostArray>>;
    const parts = ['table', 'student', 'discriminator', 'teacher'];
    return [n, Object.fromEntries(parts.map((k) => [k, norm(gp[k])]))];
  }));
}

test('gradients: the shared table from both models, the echo into the teacher only', async () => {
  const g = await gradientNorms('echo', 1);
  // The shared table hears the teacher (its diffusion loss) and the student (align, generator).
  assert.ok(g.teacher!.table! > 1e-3, JSON.stringify(g.teacher));
  assert.ok(g.align!.table! > 1e-3 && g.generator!.table! > 1e-3, JSON.stringify(g));
  // Held fixed: the alignment target (no teacher gradient), D in the generator's term, the
  // samples in D's term and in the echo.
  assert.equal(g.align!.teacher, 0);
  assert.equal(g.generator!.discriminator, 0);
  assert.equal(g.discriminator!.student, 0);
  assert.equal(g.discriminator!.table, 0);
  assert.equal(g.echo!.student, 0);
  assert.ok(g.echo!.teacher! > 1e-3 && g.echo!.table! > 1e-3, JSON.stringify(g.echo));
  // Only D learns from L_D; the teacher only from L_T and the echo.
  assert.equal(g.discriminator!.teacher, 0);
  assert.equal(g.teacher!.student, 0);
  // Echo off (w_echo = 0, or the one-way arm): the teacher's gradient is L_T's alone.
  const off = await gradientNorms('echo', 0);
  const oneWay = await gradientNorms('one-way', 1);
  close(off.loss!.teacher!, off.teacher!.teacher!, 'echo weight 0');
  close(oneWay.loss!.teacher!, oneWay.teacher!.teacher!, 'one-way');
  assert.ok(Math.abs(g.loss!.teacher! - off.loss!.teacher!) > 1e-4, 'the echo left the teacher');
  // The student alone: no teacher anywhere.
  const alone = await gradientNorms('student', 1);
  assert.equal(alone.loss!.teacher, 0);
});

test('one step on tiny U-Nets: the echo moves the teacher, not the student\'s update', async () => {
  const model = new UNet2DModel({ ...UNET2D_PRESETS['mnist-s'], block_out_channels: [8, 16],
    layers_per_block: 1, norm_num_groups: 4, down_block_types: ['DownBlock2D', 'DownBlock2D'],
    up_block_types: ['UpBlock2D', 'UpBlock2D'], sample_size: 8, num_class_embeds: K + 1 });
  const disc = new ConceptDiscriminator(1, K + 1, 4);
  const init = model.init(RngKey.fromSeed(3)) as unknown as Record<string, Tree<HostArray>>;
  const { class_embedding: ce, ...rest } = init;
  const net = (w: Tree<Tensor>, e: Tensor) => (x: Tensor, t: Tensor, y?: Tensor) =>
    model.forward({ ...(w as object), class_embedding: { weight: e } } as ParamsOf<UNet2DModel>, x, t, y);
  const setup: EchoSetup = { ...tiny('echo'), teacher: net, student: net,
    discriminator: (w) => (x, y) => disc.forward(w as never, x, y) };
  const step = compileTrainStep<Tree<HostArray>>(echoDistillLoss(setup),
    partwiseAdam({ table: 1e-2, teacher: 1e-2, discriminator: 1e-2, student: 1e-3 }));
  const start: EchoParams<HostArray> = { table: (ce as { weight: HostArray }).weight, student: rest,
    teacher: rest, discriminator: disc.init(RngKey.fromSeed(4)) as Tree<HostArray> };
  const images = (k: number) => f32(draw(k, B * 64), [B, 1, 8, 8]);
  const pt = (k: number, t: number[], alpha: number[]) => ({ ...point(k, t, alpha), noise: images(k) });
  const big = (w: number) => ({ ...batch(w), real: images(20), z: images(21),
    realPoint: pt(22, [300, 700], [0.8, 0.3]), alignPoint: pt(23, [100, 250], [0.95, 0.7]),
    echoPoint: pt(24, [500, 50], [0.5, 0.99]) });
  const state = step.init(start as unknown as Tree<HostArray>);
  const [on, off] = [await step.step(state, big(1)), await step.step(state, big(0))];
  await step.dispose();
  const isHost = (x: unknown): x is HostArray => x instanceof HostArray;
  const part = (t: Tree<HostArray>, k: keyof EchoParams) =>
    flatten((t as Record<string, Tree<HostArray>>)[k]!, isHost).leaves;
  const maxDiff = (x: HostArray[], y: HostArray[]) => Math.max(...x.map((a, i) => {
    const b = y[i]!.data as Float32Array;
    return Math.max(...Array.from(a.data as Float32Array, (v, j) => Math.abs(v - b[j]!)));
  }));
  const [after, afterOff, before] = [on.state.params, off.state.params, start as unknown as Tree<HostArray>];
  for (const k of ['table', 'student', 'teacher', 'discriminator'] as const) {
    assert.ok(maxDiff(part(afterOff, k), part(before, k)) > 1e-5, `${k} did not move`);
  }
  assert.equal(maxDiff(part(after, 'student'), part(afterOff, 'student')), 0, 'the echo reached the student');
  assert.equal(maxDiff(part(after, 'discriminator'), part(afterOff, 'discriminator')), 0);
  assert.ok(maxDiff(part(after, 'teacher'), part(afterOff, 'teacher')) > 1e-6, 'the echo missed the teacher');
  assert.ok(Number.isFinite(on.metrics.loss) && on.metrics.loss !== off.metrics.loss);
});
