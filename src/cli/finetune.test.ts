/** `diffuse finetune`: its option table, and a run end to end on a tiny DiT and a folder of
 *  PNGs (the share printed, a plain model exported that loads like any other). */
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { HostArray } from '../engine/host.js';
import { RngKey } from '../engine/random/philox.js';
import { flatten, type Tree } from '../engine/tree.js';
import { trainingScheduler } from '../diffusion/training.js';
import { writePng } from '../io/png.js';
import { peft, trainableShare } from '../methods/peft.js';
import { exportPipeline } from '../pipelines/checkpoint.js';
import { createImageModel } from '../pipelines/image-models.js';
import { loadPipeline } from '../pipelines/sample.js';
import { withTempDir } from '../../test/support/temp-dir.js';
import { runCli } from '../../test/support/cli-run.js';
import { DEFAULT_LR, FINETUNE_OPTIONS } from './finetune.js';
import { parseArgs } from './options.js';
import { UsageError } from './errors.js';

const isHost = (x: unknown): x is HostArray => x instanceof HostArray;

test('options: a method, --from, the learning rate by method; no --model, --size or --init', () => {
  const o = parseArgs(FINETUNE_OPTIONS, 'finetune', ['--from', 'm']).values;
  assert.deepEqual([o.from, o.method, o.lr, o.rank, o.out, o.data, o.steps],
    ['m', 'difffit', undefined, 1, 'runs/finetune', 'mnist', 2000]);
  assert.deepEqual(DEFAULT_LR, { full: 2e-4, bitfit: 5e-3, difffit: 5e-3, diffscaler: 5e-3 });
  assert.throws(() => parseArgs(FINETUNE_OPTIONS, 'finetune', ['--method', 'diffit']),
    (e: unknown) => e instanceof UsageError && e.message === '--method: expected one of full, ' +
      "bitfit, difffit, diffscaler, got 'diffit' (did you mean difffit?)");
  for (const gone of ['--model', '--size', '--init', '--objective']) {
    assert.throws(() => parseArgs(FINETUNE_OPTIONS, 'finetune', [gone, 'x']), /unknown option/);
  }
});

test('finetune --method difffit on a tiny DiT: the share printed, a plain DiT exported', () =>
  withTempDir('finetune', async (dir) => {
    const model = createImageModel('dit', 'tiny', 2, [1, 8, 8]);
    const weights = model.module.init(RngKey.fromSeed(1)) as Tree<HostArray>;
    const from = join(dir, 'base');
    await exportPipeline(from, { model, scheduler: trainingScheduler('flow') }, weights);
    // Two classes of four 8 x 8 grey images: a bright top half, a bright left half.
    const classes = [['top', (r: number) => r < 4], ['left', (_: number, x: number) => x < 4]];
    for (const [c, bright] of classes as [string, (r: number, x: number) => boolean][]) {
      await mkdir(join(dir, 'data', c), { recursive: true });
      for (let i = 0; i < 4; i++) {
        const px = Uint8Array.from({ length: 64 }, (_, j) =>
          (bright(Math.floor(j / 8), j % 8) ? 200 : 40) + 5 * i);
        await writePng(join(dir, 'data', c, `${i}.png`),
          { width: 8, height: 8, channels: 1, data: px });
      }
    }
    const out = join(dir, 'run');
    const r = await runCli(['finetune', '--from', from, '--method', 'difffit', '--data',
      join(dir, 'data'), '--steps', '2', '--batch-size', '4', '--sample-every', '0', '--out', out]);
    assert.equal(r.code, 0, r.printed);
    const s = trainableShare(peft('difffit').init(weights, RngKey.fromSeed(0)), weights);
    const n = (v: number) => v.toLocaleString('en-US');
    assert.match(r.printed, new RegExp(`^difffit: training ${n(s.trainable)} of ${n(s.total)} ` +
      `parameters \\(${(100 * s.share).toFixed(3)}%\\)`));
    assert.match(r.printed, /fine-tuned 2 steps in \d+ s; model in .*run.model/);
    const p = await loadPipeline(join(out, 'model'));
    assert.equal(p.model.family, 'dit');
    assert.deepEqual(flatten(p.params, isHost).paths, flatten(weights, isHost).paths);
    // A resumed run must be the same method: another one is refused, naming it.
    const again = await runCli(['finetune', '--from', from, '--method', 'bitfit', '--data',
      join(dir, 'data'), '--steps', '3', '--batch-size', '4', '--out', out, '--resume']);
    assert.equal(again.code, 1);
    assert.match(again.errors, /trained with adapt = "difffit", this run asks for "bitfit"/);
  }));
