/** diffuse train's loop: exact resume, atomic checkpoints, the exported pipeline, bad input. */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { appendFile, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { readModelFolder, readModelIndex } from '../io/diffusers.js';
import { METHOD_DEFAULTS, train, type TrainOptions } from './train.js';
import { withTempDir } from '../../test/support/temp-dir.js';
import { twoClassImages } from '../../test/support/tiny-images.js';

const tinyData = twoClassImages;

const base = (out: string, over: Partial<TrainOptions> = {}): TrainOptions => ({
  model: 'unet', size: 'tiny', objective: 'eps', weighting: 'uniform', minSnrGamma: 5, conditional: true,
  labelDropout: 0.2, batchSize: 8, steps: 6, lr: 1e-3, lrSchedule: 'cosine', warmupSteps: 2, gradClip: 1,
  emaDecay: 0.99, seed: 5, out, logEvery: 1, sampleEvery: 0, checkpointEvery: 2, ...METHOD_DEFAULTS, ...over,
});

const withDir = (fn: (dir: string) => Promise<void>): Promise<void> => withTempDir('train', fn);

test('a run interrupted at step 3 and resumed gives the same losses as an uninterrupted run', () =>
  withDir(async (dir) => {
    const data = tinyData();
    const full = await train(base(join(dir, 'a')), data, false);
    assert.equal(full.losses.length, 6);
    const stop = new AbortController();
    const first = await train(base(join(dir, 'b')), data, false, {
      signal: stop.signal, onStep: (s) => s.step === 3 && stop.abort(),
    });
    assert.equal(first.interrupted, true);
    assert.equal(first.state.step, 3);
    assert.ok(!existsSync(join(dir, 'b', 'model')), 'no final pipeline for an interrupted run');
    const rest = await train(base(join(dir, 'b')), data, true);
    assert.deepEqual([...first.losses, ...rest.losses], full.losses);
    assert.deepEqual(rest.state.params, full.state.params);
    const log = (await readFile(join(dir, 'b', 'log.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l).step);
    assert.deepEqual(log, [1, 2, 3, 4, 5, 6]);
    const index = await readModelIndex(join(dir, 'a', 'model'));
    assert.deepEqual(Object.keys(index.components).sort(), ['scheduler', 'unet']);
    const leftovers = (await readdir(join(dir, 'b'))).filter((f) => f.includes('.tmp-') || f.includes('.old-'));
    assert.deepEqual(leftovers, []);
  }));

test('bad input stops with a message that names the problem; a failed save keeps the old checkpoint', () =>
  withDir(async (dir) => {
    const data = tinyData();
    const out = join(dir, 'run');
    const stop = new AbortController();
    await train(base(out), data, false, { signal: stop.signal, onStep: (s) => s.step === 2 && stop.abort() });
    await assert.rejects(train(base(out), data, false), /already holds a run .* --resume/);
    await assert.rejects(train(base(out, { model: 'dit' }), data, true), /trained with model = "unet", this run asks for "dit"/);
    await assert.rejects(train(base(join(dir, 'other')), data, true), /no checkpoint to resume/);
    await assert.rejects(train(base(join(dir, 'u')), { images: data.images }, false), /labelled dataset/);
    // A save that dies after its new folder is built keeps the old checkpoint.
    await assert.rejects(train(base(out, { checkpointEvery: 1 }), data, true, {
      onCheckpointPhase: (p) => { if (p === 'built') throw new Error('crash'); } }), /crash/);
    // A truncated last log line (power loss) does not block the resume.
    await appendFile(join(out, 'log.jsonl'), '{"step": 3, "lo');
    const resumed = await train(base(out), data, true);
    assert.equal(resumed.losses.length, 4, 'resumed from the step-2 checkpoint');
    assert.deepEqual((await readdir(out)).filter((f) => f.includes('.tmp-') || f.includes('.old-')), []);
    const log = (await readFile(join(out, 'log.jsonl'), 'utf8')).trim().split('\n');
    assert.deepEqual(log.map((l) => JSON.parse(l).step), [1, 2, 3, 4, 5, 6]);
  }));

test('a crash between the renames of a checkpoint swap loses nothing; the resume is exact', () =>
  withDir(async (dir) => {
    const data = tinyData();
    const full = await train(base(join(dir, 'a')), data, false);
    const out = join(dir, 'b');
    let saves = 0;
    await assert.rejects(train(base(out), data, false, {
      onCheckpointPhase: (p) => { if (p === 'old-moved' && ++saves === 2) throw new Error('kill'); },
    }), /kill/);
    assert.ok(!existsSync(join(out, 'checkpoint')), 'the crash left no checkpoint/ behind');
    const rest = await train(base(out), data, true);
    assert.deepEqual(rest.state.params, full.state.params);
  }));

test('a second run into the same folder is refused; a diverging run stops with its last checkpoint', () =>
  withDir(async (dir) => {
    const data = tinyData();
    const out = join(dir, 'run');
    const runs = await Promise.allSettled([train(base(out), data, false), train(base(out), data, false)]);
    const refused = runs.filter((r) => r.status === 'rejected');
    assert.equal(refused.length, 1);
    assert.match(String((refused[0] as PromiseRejectedResult).reason), /in use by another diffuse run/);
    const nan = join(dir, 'nan');
    await assert.rejects(train(base(nan, { lr: 1e30, gradClip: 1e30 }), data, false),
      /training diverged at step \d+: the (loss|gradient norm) is (NaN|Infinity).*; no checkpoint was saved yet/);
    assert.ok(!existsSync(join(nan, 'model')), 'no model exported from a diverged run');
    // With a checkpoint every step, the one kept is the last finite one, and it is finite.
    const kept = join(dir, 'kept');
    await assert.rejects(train(base(kept, { lr: 1e30, gradClip: 1e30, checkpointEvery: 1 }), data, false),
      /training diverged at step (\d+): .*; the checkpoint of step \d+ is kept/);
    const ckpt = await readModelFolder(join(kept, 'checkpoint', 'unet'));
    for (const a of ckpt.stateDict.values()) assert.ok((a.data as Float32Array).every(Number.isFinite));
  }));

test('a REPA + CEP run resumes exactly (projector and all), exports a plain model, and a resume without the methods is refused', () =>
  withDir(async (dir) => {
    const data = tinyData();
    // The frozen encoder: any U-Net pipeline for these images.
    await train(base(join(dir, 'enc'), { steps: 2, conditional: false }), data, false);
    const dit = (out: string) => base(out, { model: 'dit', size: 'tiny', objective: 'flow', repa: 0.5,
      repaEncoder: join(dir, 'enc', 'model'), cep: 'uniform' });
    const full = await train(dit(join(dir, 'a')), data, false);
    const stop = new AbortController();
    const first = await train(dit(join(dir, 'b')), data, false, {
      signal: stop.signal, onStep: (s) => s.step === 3 && stop.abort() });
    const rest = await train(dit(join(dir, 'b')), data, true);
    assert.deepEqual([...first.losses, ...rest.losses], full.losses);
    assert.deepEqual(rest.state.params, full.state.params);
    const trained = full.state.params as unknown as { model: unknown; repa: Record<string, unknown> };
    assert.deepEqual(Object.keys(trained.repa).sort(), ['linear1', 'linear2', 'linear3']);
    // model/ is a plain DiT: the projector is training-only.
    const m = await readModelFolder(join(dir, 'a', 'model', 'transformer'));
    assert.ok([...m.stateDict.keys()].every((n) => !n.includes('linear1')) && m.stateDict.size > 0);
    // The methods change the loss: the same run without them differs from step 1.
    const plain = await train(base(join(dir, 'c'), { model: 'dit', size: 'tiny', objective: 'flow', steps: 1 }), data, false);
    assert.notEqual(plain.losses[0], full.losses[0]);
    await assert.rejects(train(base(join(dir, 'b'), { model: 'dit', size: 'tiny', objective: 'flow', steps: 8 }), data, true),
      /trained with cep = "uniform", this run asks for nothing \(the default\)/);
    // Families without a label shift or a hidden state are refused before anything is computed.
    await assert.rejects(train(base(join(dir, 'd'), { model: 'switch-dit', size: 'tiny', objective: 'flow',
      repa: 0.5 }), data, false), /--repa is implemented for the U-Net and the DiT .*not switch-dit/);
  }));
