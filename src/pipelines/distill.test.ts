/** diffuse distill: both methods on the shared loop (exact resume), and what a student folder
 *  holds: its record, its scheduler, and a one-step BOOT sample equal to g(eps, 0). */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { mapTree, type Tree } from '../engine/tree.js';
import type { ImageDataset } from '../data/dataset.js';
import { readModelIndex } from '../io/diffusers.js';
import { withTinyPipeline } from '../../test/support/tiny-pipeline.js';
import { distill, type DistillOptions } from './distill.js';
import { loadPipeline, sampleImages } from './sample.js';
import { studentSampling } from './student.js';
import { withTempDir } from '../../test/support/temp-dir.js';

/** 24 labelled 8x8 images of the tiny pipeline's 3 classes. */
function tinyData(): ImageDataset {
  const n = 24;
  const z = RngKey.fromSeed(4).normal(n * 64);
  const labels = Int32Array.from({ length: n }, (_, i) => i % 3);
  const x = Float32Array.from(z, (v, j) => Math.tanh(0.5 * v + (labels[Math.floor(j / 64)]! - 1)));
  return { images: new HostArray(x, [n, 1, 8, 8]), labels, classNames: ['a', 'b', 'c'] };
}

const options = (teacher: string, out: string, over: Partial<DistillOptions>): DistillOptions => ({
  method: 'mmd', teacher, studentSteps: 2, teacherSteps: 4, guidance: 1.5, lr: 1e-3, gradClip: 1,
  emaDecay: 0, seed: 3, steps: 4, batchSize: 4, out, logEvery: 1, sampleEvery: 0,
  checkpointEvery: 2, ...over,
});

const withDir = (fn: (dir: string) => Promise<void>): Promise<void> => withTempDir('distill', fn);

for (const method of ['mmd', 'boot'] as const) {
  test(`${method}: a student resumed mid-run matches an uninterrupted one`, () =>
    withTinyPipeline('unet', 'eps', (teacher) => withDir(async (dir) => {
      const data = tinyData();
      const o = (out: string) => options(teacher.modelFolder.replace(/\/unet$/, ''), join(dir, out),
        { method, ...(method === 'boot' ? { studentSteps: 1, emaDecay: 0.9 } : {}) });
      const full = await distill(o('a'), data, false);
      assert.equal(full.losses.length, 4);
      assert.ok(full.losses.every(Number.isFinite), `${full.losses}`);
      const stop = new AbortController();
      const first = await distill(o('b'), data, false,
        { signal: stop.signal, onStep: (s) => s.step === 2 && stop.abort() });
      assert.equal(first.state.step, 2);
      const rest = await distill(o('b'), data, true);
      assert.deepEqual([...first.losses, ...rest.losses], full.losses);
      assert.deepEqual(rest.state.params, full.state.params);
      // The student moved away from the teacher.
      const moved = mapTree(full.state.params, (a): a is HostArray => a instanceof HostArray,
        (a) => a.data[0]) as Tree<number>;
      assert.notDeepEqual(moved, mapTree(teacher.params, (a): a is HostArray => a instanceof HostArray,
        (a) => a.data[0]));
      // A changed run option is refused on resume, naming it.
      await assert.rejects(distill({ ...o('b'), guidance: 2 }, data, true), /guidance = 1.5/);
      const index = await readModelIndex(join(dir, 'a', 'model'));
      assert.deepEqual(index.privateEntries['_diffuse_student'], { method, sampler: 'ddim',
        steps: method === 'mmd' ? 2 : 1, guidance: 1.5, teacher: o('a').teacher });
    })));
}

test('boot: the student folder samples in one DDIM step, and that sample is g(eps, t = 0)', () =>
  withTinyPipeline('unet', 'eps', (teacher) => withDir(async (dir) => {
    const o = options(teacher.modelFolder.replace(/\/unet$/, ''), join(dir, 's'),
      { method: 'boot', studentSteps: 1, steps: 2 });
    await distill(o, undefined, false);
    const student = await loadPipeline(join(dir, 's', 'model'));
    assert.equal(student.scheduler.className, 'DDIMScheduler');
    assert.equal(student.scheduler.prediction, 'x0');
    assert.equal(student.student?.method, 'boot');
    // Its defaults, and the settings it refuses.
    assert.deepEqual(studentSampling(student.student!, {}), { sampler: 'ddim', steps: 1, guidance: 1 });
    assert.throws(() => studentSampling(student.student!, { steps: 4 }), /one-step BOOT student.*--steps 4/);
    assert.throws(() => studentSampling(student.student!, { guidance: 1.5 }), /--guidance 1.5/);
    const r = await sampleImages(student, { sampler: 'ddim', steps: 1, n: 3, classes: [0, 1, 2], seed: 8 });
    assert.equal(r.modelCalls, 1);
    // The same noise through the student's network at model time 0 (its last path step).
    const eps = new HostArray(RngKey.fromSeed(8).fold(0).normal(3 * 64), [3, 1, 8, 8]); // stream -1
    const p = mapTree(student.params, (a): a is HostArray => a instanceof HostArray, (a) => ops.constant(a));
    const g = compile((x: Tensor, y: Tensor) => ops.clamp(student.model.apply(p, x, ops.full([3], 0), y).out, -1, 1));
    const direct = await g(eps, new HostArray(BigInt64Array.from([0n, 1n, 2n]), [3], 'int64'));
    const diff = Math.max(...Array.from(r.images.data as Float32Array, (v, i) => Math.abs(v - (direct.data[i] as number))));
    assert.ok(diff < 1e-5, `one-step sample vs g(eps, 0): ${diff}`);
    await g.dispose();
  })));

test('distill refuses a flow teacher, a many-step BOOT student and MMD without real images', () =>
  withTinyPipeline('dit', 'flow', (flow) => withDir(async (dir) => {
    await assert.rejects(distill(options(flow.modelFolder.replace(/\/transformer$/, ''), join(dir, 'f'),
      { method: 'boot', studentSteps: 1 }), undefined, false), /flow-matching model/);
    await withTinyPipeline('unet', 'eps', async (t) => {
      const teacher = t.modelFolder.replace(/\/unet$/, '');
      await assert.rejects(distill(options(teacher, join(dir, 'g'), { method: 'boot', studentSteps: 3 }),
        undefined, false), /one-step generators/);
      await assert.rejects(distill(options(teacher, join(dir, 'h'), {}), undefined, false),
        /needs the real images/);
    });
  })));
