/** diffuse train-experts' pipeline on a tiny classifier and a tiny pipeline: the folder layout
 *  and experts.json as the sampler side reads them, merged experts that load as classifiers,
 *  a reproducible run, and readExperts' refusals naming the file and the key. */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { withTinyPipeline } from '../../test/support/tiny-pipeline.js';
import { HostArray } from '../engine/host.js';
import { RngKey } from '../engine/random/philox.js';
import { flatten, type Tree } from '../engine/tree.js';
import { loadModel, saveModel, WEIGHTS_NAME } from '../io/diffusers.js';
import { CLASSIFIER_PRESETS, classifierClass, DiffuseClassifier } from '../models/classifier.js';
import {
  EXPERTS_DEFAULTS, EXPERTS_FILE, ExpertsFileError, readExperts, trainExperts,
  type ExpertsOptions,
} from './experts.js';

const isHost = (x: unknown): x is HostArray => x instanceof HostArray;

/** A temp folder with a tiny clean classifier in `classifier/` (and a noise-aware one). */
async function withTinyClassifier(fn: (root: string) => Promise<void>): Promise<void> {
  const root = await mkdtemp(join(tmpdir(), 'diffuse-experts-'));
  try {
    for (const noise of [false, true]) {
      const config = { ...CLASSIFIER_PRESETS.tiny!, noise_conditioning: noise };
      await saveModel(join(root, noise ? 'noisy' : 'classifier'), classifierClass, config,
        new DiffuseClassifier(config).init(RngKey.fromSeed(5)));
    }
    await fn(root);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

const tinyRun = (root: string, model: string, over: Partial<ExpertsOptions> = {}):
  ExpertsOptions => ({ ...EXPERTS_DEFAULTS, method: 'ppap', classifier: join(root, 'classifier'),
  model, experts: 2, rank: 2, steps: 3, batchSize: 8, generated: 16, samplerSteps: 2, seed: 3,
  out: join(root, 'out'), ...over });

test('ppap experts: the folder the sampler reads, merged experts, a reproducible run', () =>
  withTinyClassifier((root) => withTinyPipeline('unet', 'eps', async (p) => {
    const model = dirname(p.modelFolder); // the pipeline folder (its unet/ holds the model)
    const steps: string[] = [];
    const o = tinyRun(root, model);
    const r = await trainExperts(o,
      { onStep: (s) => steps.push(`${s.expert}:${s.step}/${s.steps}`) });
    assert.deepEqual(steps, ['0:1/3', '0:2/3', '0:3/3', '1:1/3', '1:2/3', '1:3/3']);
    // tiny without noise conditioning, by hand: convs 80 + 1,168, norms 48, fc 272, head 170;
    // LoRA r (out + in'): r (8 + 9) + r (16 + 72) + r (16 + 16) + r (10 + 16) at r = 2.
    const json = JSON.parse(await readFile(join(o.out, EXPERTS_FILE), 'utf8'));
    assert.deepEqual(json, { _diffuse_experts: 1, method: 'ppap', num_train_timesteps: 1000,
      ranges: [[0, 500], [500, 1000]], folders: ['expert-0', 'expert-1'], rank: 2,
      trainable_parameters: 326, base_parameters: 1738, classifier: join(root, 'classifier'),
      model, steps: 3, tau: 0.25, seed: 3 });
    assert.deepEqual((await readdir(root)).sort(), ['classifier', 'noisy', 'out']); // no temps
    const e = await readExperts(o.out);
    assert.deepEqual(e.folders, [join(o.out, 'expert-0'), join(o.out, 'expert-1')]);
    assert.deepEqual(e.ranges, [[0, 500], [500, 1000]]);
    assert.equal(e.method, 'ppap');
    assert.deepEqual(r.record, e);
    assert.deepEqual(r.experts.map((x) => [x.expert, x.t]), [[0, 250], [1, 750]]);
    for (const x of r.experts) {
      assert.ok(x.accuracy >= 0 && x.accuracy <= 1 && x.teacherAccuracy >= 0 && x.loss > 0);
    }
    assert.equal(r.generation!.images, 16);
    assert.ok(Math.abs(r.generation!.classShares.reduce((a, b) => a + b) - 1) < 1e-9);

    // Each expert loads as a clean classifier; its adapted weights moved, nothing else did.
    const base = flatten((await loadModel(o.classifier, classifierClass)).params as Tree<HostArray>,
      isHost);
    for (const folder of e.folders) {
      const x = await loadModel(folder, classifierClass);
      assert.equal(x.config.noise_conditioning, false);
      const w = flatten(x.params as Tree<HostArray>, isHost);
      assert.deepEqual(w.paths, base.paths);
      const moved = w.paths.filter((_, i) =>
        w.leaves[i]!.data.some((v, j) => v !== base.leaves[i]!.data[j]));
      assert.deepEqual(moved, ['blocks.0.conv.weight', 'blocks.1.conv.weight', 'fc.weight',
        'head.weight']);
    }

    // The same seed gives the same experts, byte for byte; another seed does not.
    const weights = (dir: string) => readFile(join(dir, 'expert-1', WEIGHTS_NAME));
    const first = await weights(o.out);
    await trainExperts({ ...o, out: join(root, 'again') });
    assert.ok(first.equals(await weights(join(root, 'again'))));
    await trainExperts({ ...o, seed: 4, out: join(root, 'again') }); // replaces the folder
    assert.ok(!first.equals(await weights(join(root, 'again'))));
  })));

test('supervised experts: labelled digits, no model, no temperature', () =>
  withTinyClassifier(async (root) => {
    const o = tinyRun(root, join(root, 'no-such-model'), { method: 'supervised', experts: 3,
      steps: 2 });
    const r = await trainExperts(o);
    const e = await readExperts(o.out);
    assert.equal(e.method, 'supervised');
    assert.equal(e.model, null);
    assert.equal(e.tau, null);
    assert.deepEqual(e.ranges, [[0, 333], [333, 666], [666, 1000]]);
    assert.equal(r.generation, null);
    assert.equal(r.experts.length, 3);
  }));

test('trainExperts refuses a noise-aware classifier and bad options before training', () =>
  withTinyClassifier(async (root) => {
    const o = tinyRun(root, join(root, 'none'), { method: 'supervised' });
    await assert.rejects(trainExperts({ ...o, classifier: join(root, 'noisy') }),
      /noisy: is a noise-aware classifier \(noise_conditioning: true\)/);
    await assert.rejects(trainExperts({ ...o, rank: 0 }), /rank must be an integer >= 1, got 0/);
    await assert.rejects(trainExperts({ ...o, experts: 1001 }),
      /number of experts must be an integer from 1 to T = 1000, got 1001/);
    assert.ok(!existsSync(o.out));
  }));

test('readExperts: a missing or malformed experts.json is named with its key', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'diffuse-experts-json-'));
  try {
    const file = join(dir, EXPERTS_FILE);
    await assert.rejects(readExperts(dir), (e: Error) => e instanceof ExpertsFileError &&
      e.message === `${file}: no such file: not an experts folder (diffuse train-experts ` +
      'writes one)');
    const good = { _diffuse_experts: 1, method: 'ppap', num_train_timesteps: 10,
      ranges: [[0, 5], [5, 10]], folders: ['a', 'b'], rank: 2, trainable_parameters: 1,
      base_parameters: 2, classifier: 'c', model: 'm', steps: 1, tau: 0.25, seed: 0 };
    const refused = async (over: Record<string, unknown>, message: RegExp) => {
      await writeFile(file, JSON.stringify({ ...good, ...over }));
      await assert.rejects(readExperts(dir), (e: Error) => {
        assert.ok(e instanceof ExpertsFileError);
        assert.ok(e.message.startsWith(`${file}: `), e.message);
        assert.match(e.message, message);
        return true;
      });
    };
    await refused({ _diffuse_experts: 2 }, /"_diffuse_experts" must be 1/);
    await refused({ method: 'distilled' },
      /"method" must be one of "ppap", "supervised", got "distilled"/);
    await refused({ ranges: [[0, 5], [6, 10]] },
      /"ranges" must be a list of \[lo, hi\) pairs of integers covering \[0, 10\) in order/);
    await refused({ ranges: [[0, 5], [5, 9]] }, /"ranges" must be/);
    await refused({ folders: ['a'] }, /"folders" must be a list of 2 folder names/);
    await refused({ folders: ['a', '../b'] }, /"folders" must be/);
    await refused({ rank: 0 }, /"rank" must be an integer >= 1, got 0/);
    await refused({ tau: -1 }, /"tau" must be a number > 0 or null/);
    await refused({ seed: undefined }, /"seed" must be an integer >= 0, got nothing/);
    await refused({}, /"folders"\[0\] \('a'\) has no config.json/);
    await writeFile(file, '{ not json');
    await assert.rejects(readExperts(dir), /experts.json: is not valid JSON/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
