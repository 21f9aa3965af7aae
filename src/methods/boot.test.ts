/** BOOT: the signal path of a DDIM schedule, and bootstrapped targets that are exactly the
 *  teacher's next DDIM state in signal space. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { mapTree, type Tree } from '../engine/tree.js';
import { classifierFreeGuidance } from '../diffusion/guidance.js';
import { sample, samplerSchedule } from '../diffusion/sampling.js';
import { trainingScheduler } from '../diffusion/training.js';
import { UNET2D_PRESETS, UNet2DModel } from '../models/unet2d.js';
import type { ParamsOf } from '../nn/module.js';
import { graphDenoiser } from '../pipelines/graph-denoiser.js';
import { bootTarget, signalPath, type BootBatch } from './boot.js';

const spec = trainingScheduler('eps');

test('signal path: delta in (0, 1], 1 at the last step (sigma = 0), a tiny start signal', () => {
  const path = signalPath(samplerSchedule('ddim', spec, 10));
  assert.deepEqual([...path.times], [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]);
  assert.ok(path.deltas.every((d) => d > 0 && d <= 1), `${path.deltas}`);
  assert.equal(path.deltas[9], 1);
  assert.ok(path.startSignal > 0 && path.startSignal < 0.2, `${path.startSignal}`);
  // "linspace" spacing lands DDIM steps between the evaluated points: no exact signal path.
  const linspace = samplerSchedule('ddim', { ...spec, config: { ...spec.config, timestep_spacing: 'linspace' } }, 4);
  assert.throws(() => signalPath(linspace), /does not|lands at/);
});

test('a bootstrapped target is the teacher\'s next DDIM state, in signal space', async () => {
  const model = new UNet2DModel({ ...UNET2D_PRESETS['mnist-s'], block_out_channels: [8, 16],
    layers_per_block: 1, norm_num_groups: 4, down_block_types: ['DownBlock2D', 'AttnDownBlock2D'],
    up_block_types: ['AttnUpBlock2D', 'UpBlock2D'], sample_size: 8, num_class_embeds: 4 });
  const params = mapTree(model.init(RngKey.fromSeed(5)) as Tree<HostArray>,
    (a): a is HostArray => a instanceof HostArray, (a) => ops.constant(a)) as ParamsOf<UNet2DModel>;
  const teacher = (x: Tensor, t: Tensor, y?: Tensor) => model.forward(params, x, t, y);
  const [n, steps, guidance] = [3, 4, 2];
  const classes = [0, 2, 1];
  const schedule = samplerSchedule('ddim', spec, steps);
  const path = signalPath(schedule);
  // The teacher's own path with the host DDIM sampler: x after each step.
  const eps = new HostArray(RngKey.fromSeed(9).normal(n * 64), [n, 1, 8, 8], 'float32');
  const states: Float32Array[] = [eps.data];
  const guided = classifierFreeGuidance(graphDenoiser(teacher, 'eps'),
    { scale: guidance, uncondition: [3, 3, 3] });
  await sample(guided, eps, spec, { sampler: 'ddim', steps, condition: classes,
    onStep: (r) => states.push(Float32Array.from(r.x.data)) });
  const signal = (k: number): Float32Array => k === steps ? states[k]!
    : states[k]!.map((x, i) => (x - schedule.sigmas[k]! * eps.data[i]!) / schedule.alphas[k]!);
  const labels = new HostArray(BigInt64Array.from(classes, BigInt), [n], 'int64');
  const target = compile((e: Tensor, yPrev: Tensor, b: Record<string, Tensor>) => bootTarget({
    // The student's previous output, as if it had learnt the path exactly.
    student: () => () => yPrev, teacher, teacherPrediction: 'eps', guidance, nullClass: 3,
  }, {}, { ...(b as unknown as BootBatch), eps: e }));
  const column = (v: number, shape = [n, 1, 1, 1]) => HostArray.full(shape, v);
  for (let k = 0; k < steps; k++) {
    const b = {
      timePrev: column(path.times[Math.max(0, k - 1)]!, [n]), time: column(path.times[k]!, [n]),
      alpha: column(path.alphas[k]!), sigma: column(path.sigmas[k]!), delta: column(path.deltas[k]!),
      start: column(k === 0 ? path.startSignal : 0), first: column(k === 0 ? 1 : 0), labels,
    };
    const run = target as unknown as (...a: unknown[]) => Promise<HostArray>; // a tree argument
    const got = (await run(eps, new HostArray(signal(k), [n, 1, 8, 8]), b)).data as Float32Array;
    const want = signal(k + 1);
    let err = 0;
    let scale = 0;
    want.forEach((v, i) => (err = Math.max(err, Math.abs(got[i]! - v)), scale = Math.max(scale, Math.abs(v))));
    assert.ok(err <= 1e-4 * Math.max(1, scale), `step ${k}: max error ${err} (values up to ${scale})`);
  }
  await target.dispose();
});
