/** diffuse sample: loading diffusers folders, sampling, CFG, torch-compatible noise, the CLI. */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { totalmem } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { RngKey } from '../engine/random/philox.js';
import { TorchGenerator } from '../engine/random/torch.js';
import { mapTree, type Tree } from '../engine/tree.js';
import type { Batch } from '../diffusion/denoiser.js';
import { saveModel, writeSchedulerConfig } from '../io/diffusers.js';
import { decodePng, encodePng, imageGrid, readPng } from '../io/png.js';
import { DEFAULT_MODEL_DIR } from '../cli/sample.js';
import { goldenModelFolder } from '../../test/support/golden.js';
import { repoRoot } from '../../test/support/paths.js';
import { exportPipeline } from './checkpoint.js';
import { graphDenoiser } from './graph-denoiser.js';
import { createImageModel, type ModelFamily } from './image-models.js';
import {
  checkDestination, guidanceClipWarning, loadPipeline, MemoryLimitError, NonFiniteError, parseAccel,
  sampleImages, sampleInBatches, writeSamples, type Pipeline,
} from './sample.js';
import { schedulerFromConfig } from '../diffusion/diffusers/schedulers.js';
import { parseScheduler, specToJson } from '../diffusion/diffusers/spec.js';
import { samplerSpec } from '../diffusion/sampling.js';
import { trainingScheduler } from '../diffusion/training.js';
import { withTempDir } from '../../test/support/temp-dir.js';

const SHAPE = [1, 8, 8] as const;

const withDir = (fn: (dir: string) => Promise<void>): Promise<void> => withTempDir('sample', fn);

/** A freshly initialised tiny model, written as the pipeline `diffuse train` exports. */
async function tinyPipeline(dir: string, family: ModelFamily, classes: number): Promise<string> {
  const model = createImageModel(family, 'tiny', classes, SHAPE);
  const params = model.module.init(RngKey.fromSeed(7)) as Tree<HostArray>;
  await exportPipeline(dir, { model, scheduler: trainingScheduler('eps') }, params);
  return dir;
}

const pngBytes = (images: HostArray) => encodePng(imageGrid(images));

/**
 * diffusers' pipeline loop written out by hand (DDPMPipeline / DDIMPipeline on the CPU): one
 * torch generator; the latent first, then noise in `step` where the scheduler draws it.
 */
async function diffusersLoop(p: Pipeline, sampler: 'ddim' | 'ddpm' | 'euler-a', steps: number,
  n: number, seed: number, labels?: number[]): Promise<Float32Array> {
  // the adapter classes (set-then-step), an implementation independent of sample()'s loop
  const scheduler = schedulerFromConfig(specToJson(samplerSpec(sampler, p.scheduler)));
  scheduler.setTimesteps(steps);
  const consts = mapTree(p.params, (x): x is HostArray => x instanceof HostArray,
    (a) => ops.constant(a));
  const den = graphDenoiser((x, t, y) => p.model.apply(consts, x, t, y).out, scheduler.prediction);
  const shape = [n, ...p.model.sampleShape];
  const g = new TorchGenerator(seed);
  const s0 = scheduler.initNoiseSigma;
  let x: Batch = new HostArray(g.randn(shape).map((v) => Math.fround(v * s0)), shape, 'float32');
  for (const t of scheduler.timesteps) {
    const out = await den.predict(scheduler.scaleModelInput(x, t), new Float64Array(n).fill(t),
      labels);
    const draws = sampler === 'euler-a' || (sampler === 'ddpm' && t > 0);
    x = scheduler.step(out, t, x, draws ? { noise: g.randn(shape) } : {}).prevSample;
  }
  await den.dispose();
  return Float32Array.from(x.data, (v) => Math.min(1, Math.max(-1, v)));
}

test('pipeline folders load and sample: unet and dit, conditional and not; seeds', () =>
  withDir(async (dir) => {
    for (const [family, classes] of [['unet', 0], ['unet', 3], ['dit', 0], ['dit', 3]] as const) {
      const p = await loadPipeline(await tinyPipeline(join(dir, `${family}${classes}`), family,
        classes));
      assert.equal(p.model.family, family);
      assert.deepEqual(p.notes, []);
      const r = await sampleImages(p, { sampler: 'ddim', steps: 2, n: 3, seed: 1 });
      assert.deepEqual(r.images.shape, [3, ...SHAPE]);
      assert.ok(r.images.data.every((v) => v >= -1 && v <= 1), `${family}${classes}: range`);
      assert.ok(r.images.data.some((v) => v > -1 && v < 1), `${family}${classes}: clamped`);
      assert.equal(r.modelCalls, 2);
    }
    const p = await loadPipeline(join(dir, 'unet3'));
    const run = async (seed: number, batchSize = 64) => pngBytes((await sampleImages(p,
      { sampler: 'euler-a', steps: 3, n: 5, seed, batchSize })).images);
    const a = await run(4);
    assert.deepEqual(await run(4), a, 'same seed, same bytes');
    assert.notDeepEqual(await run(5), a, 'another seed, other bytes');
    const r = await sampleImages(p, { sampler: 'euler-a', steps: 3, n: 5, seed: 4, batchSize: 2 });
    assert.equal(r.modelCalls, 9, '3 steps x ceil(5 / 2) batches');
  }));

test('bare model folders: a sibling scheduler/, a root scheduler_config.json, or defaults', () =>
  withDir(async (dir) => {
    const pipe = await tinyPipeline(join(dir, 'pipe'), 'unet', 0);
    const sibling = await loadPipeline(join(pipe, 'unet'));
    assert.deepEqual(sibling.notes, []);
    assert.equal(sibling.scheduler.config.clip_sample, false, 'as trainingScheduler writes it');
    // diffusers' google/ddpm-cifar10-32 layout: the model and scheduler_config.json at the root.
    const model = createImageModel('unet', 'tiny', 0, SHAPE);
    const params = model.module.init(RngKey.fromSeed(2));
    const root = join(dir, 'root');
    await saveModel(root, model.cls, model.config, params as never);
    await writeSchedulerConfig(root, 'DDPMScheduler', { beta_end: 0.012, clip_sample: false });
    const r = await loadPipeline(root);
    assert.equal(r.scheduler.config.beta_end, 0.012);
    assert.deepEqual(r.notes, []);
    const bare = join(dir, 'lonely', 'm');
    await saveModel(bare, model.cls, model.config, params as never);
    const d = await loadPipeline(bare);
    assert.match(d.notes.join('\n'), /no scheduler_config\.json .* DDPMScheduler defaults/);
    assert.equal(d.scheduler.className, 'DDPMScheduler');
    assert.equal(d.scheduler.config.beta_end, 0.02);
    const s = await sampleImages(d, { sampler: 'ddpm', steps: 2, n: 2 });
    assert.deepEqual(s.images.shape, [2, ...SHAPE]);
  }));

test('CFG: guidance 1 is conditional sampling, guidance 0 unconditional (the null class)', () =>
  withDir(async (dir) => {
    const p = await loadPipeline(await tinyPipeline(dir, 'unet', 3));
    const n = 4;
    const o = { sampler: 'ddim', steps: 3, n, seed: 2, generator: 'torch', batchSize: n } as const;
    const labels = [0, 2, 1, 2];
    const g1 = await sampleImages(p, { ...o, guidance: 1, classes: labels });
    assert.deepEqual(g1.images.data, await diffusersLoop(p, 'ddim', 3, n, 2, labels));
    const g0 = await sampleImages(p, { ...o, guidance: 0, classes: labels });
    assert.deepEqual(g0.images.data, await diffusersLoop(p, 'ddim', 3, n, 2, [3, 3, 3, 3]));
    assert.equal(g0.modelCalls, 3, 'guidance 0: the null label alone, one call per step');
    const g3 = await sampleImages(p, { ...o, guidance: 3, classes: labels });
    assert.notDeepEqual(g3.images.data, g1.images.data);
    const cycled = await sampleImages(p, { ...o, classes: [2, 1] });
    assert.deepEqual(cycled.images.data, await diffusersLoop(p, 'ddim', 3, n, 2, [2, 1, 2, 1]));
    const all = await sampleImages(p, o);
    assert.deepEqual(all.images.data, await diffusersLoop(p, 'ddim', 3, n, 2, [0, 1, 2, 0]));
    assert.deepEqual([g1, g0, g3].map((r) => r.warnings), [[], [], []], 'trained pipelines do not clip');
    const clipped = { ...p, scheduler: parseScheduler({ ...specToJson(p.scheduler), clip_sample: true }) };
    assert.match((await sampleImages(clipped, { ...o, guidance: 3 })).warnings.join(), /clips its x0 estimate/);
    assert.deepEqual((await sampleImages(clipped, { ...o, guidance: 1 })).warnings, []);
  }));

test('torch generator: the latent, then step noise in diffusers order (DDIM, DDPM, Euler a)', () =>
  withDir(async (dir) => {
    const p = await loadPipeline(await tinyPipeline(dir, 'unet', 0));
    for (const sampler of ['ddim', 'ddpm', 'euler-a'] as const) {
      const r = await sampleImages(p, { sampler, steps: 3, n: 3, seed: 11, generator: 'torch' });
      assert.deepEqual(r.images.data, await diffusersLoop(p, sampler, 3, 3, 11), sampler);
    }
    const philox = await sampleImages(p, { sampler: 'ddim', steps: 3, n: 3, seed: 11 });
    assert.notDeepEqual(philox.images.data, await diffusersLoop(p, 'ddim', 3, 3, 11));
  }));

test('a folder diffusers wrote (golden UNet2DModel, no scheduler) loads and samples', async () => {
  const p = await loadPipeline(await goldenModelFolder('unet2d')); // weights from the seed
  assert.match(p.notes.join('\n'), /DDPMScheduler defaults/);
  const r = await sampleImages(p, { sampler: 'ddim', steps: 2, n: 2 });
  assert.deepEqual(r.images.shape, [2, 1, 32, 32]);
  assert.ok(r.images.data.every((v) => Number.isFinite(v) && v >= -1 && v <= 1));
});

test('errors name the folder and what was expected', () =>
  withDir(async (dir) => {
    await assert.rejects(loadPipeline(join(dir, 'nope')),
      /nope: no such folder \(looked for model_index\.json .* or config\.json/);
    await mkdir(join(dir, 'empty'));
    await assert.rejects(loadPipeline(join(dir, 'empty')),
      /empty: looked for model_index\.json \(a pipeline\) or config\.json .* found neither/);
    await writeFile(join(dir, 'empty', 'config.json'), '{"_class_name": "AutoencoderKL"}');
    await assert.rejects(loadPipeline(join(dir, 'empty')),
      /empty\/config\.json: model class 'AutoencoderKL' is not one Diffuse samples: expected/);
    const p = await loadPipeline(await tinyPipeline(join(dir, 'u'), 'unet', 0));
    const o = { sampler: 'ddim', steps: 1, n: 1 };
    await assert.rejects(sampleImages(p, { ...o, classes: [1] }), /the model is unconditional/);
    await assert.rejects(sampleImages(p, { ...o, guidance: 2 }), /needs a class-conditional/);
    await assert.rejects(sampleImages(p, { ...o, sampler: 'nope' }),
      /unknown sampler 'nope': expected one of ddpm, ddim, euler, euler-a, heun, dpm\+\+2m/);
    await assert.rejects(sampleImages(p, { ...o, sampler: 'flow-euler' }),
      /does not fit a model trained with DDPMScheduler/);
    const c = await loadPipeline(await tinyPipeline(join(dir, 'c'), 'unet', 3));
    await assert.rejects(sampleImages(c, { ...o, classes: [3] }),
      /class 3 is out of range: the model has 3 classes \(0\.\.2\)/);
  }));

const run = promisify(execFile);
type CliResult = { code: number; stdout: string; stderr: string };
/** Runs `diffuse` from the repository's dist/ (built by `npx tsc -p .`, as `npm test` does). */
const cli = (args: string[]): Promise<CliResult> =>
  run(process.execPath, [join(repoRoot, 'bin', 'diffuse.js'), ...args])
    .then((r) => ({ code: 0, ...r }), (e: CliResult) => e);

test('diffuse sample end to end: a grid, same seed same bytes, --out-dir, no default model', () =>
  withDir(async (dir) => {
    const model = await tinyPipeline(join(dir, 'pipe'), 'unet', 3);
    const args = ['sample', '--model', model, '--steps', '2', '--n', '4'];
    const a = await cli([...args, '--out', join(dir, 'a.png')]);
    assert.equal(a.code, 0, a.stderr);
    assert.match(a.stdout, /sampled 4 images in [\d.]+ s \([\d.]+ ms per image, 2 model calls\)/);
    assert.match(a.stdout, /2 steps, guidance 1\.5, seed 0/, 'conditional models default to guidance 1.5');
    const img = await readPng(join(dir, 'a.png'));
    assert.deepEqual([img.width, img.height], [2 * (8 + 2) + 2, 2 * (8 + 2) + 2]);
    const b = await cli([...args, '--out', join(dir, 'b.png')]);
    assert.equal(b.code, 0, b.stderr);
    assert.deepEqual(await readFile(join(dir, 'b.png')), await readFile(join(dir, 'a.png')));
    const d = await cli([...args, '--class', '1', '--guidance', '2', '--out-dir', join(dir, 'd')]);
    assert.equal(d.code, 0, d.stderr);
    const files = (await readdir(join(dir, 'd'))).sort();
    assert.deepEqual(files, ['000000.png', '000001.png', '000002.png', '000003.png']);
    const one = decodePng(await readFile(join(dir, 'd', files[0]!)));
    assert.deepEqual([one.width, one.height], [8, 8]);
    const bad = await cli(['sample', '--model', model, '--class', 'two']);
    assert.equal(bad.code, 2, 'a bad flag is a usage error');
    assert.match(bad.stderr, /expected a class number, a comma list .* got 'two'/);
    if (!existsSync(DEFAULT_MODEL_DIR)) {
      const none = await cli(['sample', '--out', join(dir, 'x.png')]);
      assert.equal(none.code, 1);
      assert.match(none.stderr, /no model at .*mnist-unet: train one with `diffuse train`/);
    }
  }));

test('the scheduler keeps what the config says about clipping, thresholding and variance', () => {
  const ddpm = parseScheduler({ _class_name: 'DDPMScheduler', clip_sample: false,
    thresholding: true, dynamic_thresholding_ratio: 0.9, sample_max_value: 2,
    variance_type: 'fixed_large' });
  const ddim = samplerSpec('ddim', ddpm).config;
  assert.deepEqual([ddim.clip_sample, ddim.thresholding, ddim.dynamic_thresholding_ratio,
    ddim.sample_max_value], [false, true, 0.9, 2]);
  assert.deepEqual(samplerSpec('ddim', ddpm).x0, { clipSample: null,
    thresholding: { ratio: 0.9, maxValue: 2 } });
  assert.equal(samplerSpec('ddpm', ddpm).config.variance_type, 'fixed_large');
  const dpm = samplerSpec('dpm++3m', ddpm).config; // DPM-Solver's variance_type means another thing
  assert.deepEqual([dpm.variance_type, dpm.solver_order, dpm.thresholding], [null, 3, true]);
});

test('DDIM with clipping and guidance is warned about; other combinations are not', () => {
  const spec = (json: Record<string, unknown>) =>
    parseScheduler({ _class_name: 'DDPMScheduler', clip_sample: true, ...json });
  const clipped = spec({});
  assert.match(guidanceClipWarning('ddim', clipped, 3) ?? '', /ddim clips its x0 estimate \(clip_sample\) while guidance 3/);
  assert.match(guidanceClipWarning('ddim', spec({ clip_sample: false, thresholding: true }), 2) ?? '',
    /\(thresholding\)/);
  assert.equal(guidanceClipWarning('ddim', clipped, 1), undefined, 'no guidance');
  assert.equal(guidanceClipWarning('ddim', spec({ clip_sample: false }), 3), undefined);
  assert.equal(guidanceClipWarning('ddpm', clipped, 3), undefined, 'DDPM mixes x0 and x_t, not the noise estimate');
  assert.equal(guidanceClipWarning('dpm++2m', clipped, 3), undefined);
  assert.equal(trainingScheduler('eps').config.clip_sample, false, 'trained pipelines ship without clipping');
});

test('batches: images depend on seed and index only, not on batch size (philox and torch)', () =>
  withDir(async (dir) => {
    const p = await loadPipeline(await tinyPipeline(dir, 'unet', 3));
    const o = { sampler: 'euler-a', steps: 3, n: 5, seed: 4, guidance: 2 } as const;
    const whole = await sampleImages(p, { ...o, batchSize: 64 });
    const firsts: number[] = [];
    const parts = new Float32Array(whole.images.data.length);
    const stats = await sampleInBatches(p, { ...o, batchSize: 2 }, (images, first) => {
      firsts.push(first);
      assert.equal(images.shape[0], Math.min(2, 5 - first));
      parts.set(images.data, first * 64);
    });
    assert.deepEqual(firsts, [0, 2, 4], 'batches of 2 images, in order');
    assert.deepEqual(parts, whole.images.data, 'same images as one batch');
    assert.equal(stats.modelCalls, 3 * (2 + 2 + 1), 'cond + uncond rows of each batch per step');
    const torch = { ...o, generator: 'torch' } as const;
    const t64 = await sampleImages(p, { ...torch, batchSize: 64 });
    const t2 = await sampleImages(p, { ...torch, batchSize: 2 });
    assert.deepEqual(t2.images.data, t64.images.data, 'torch: one noise sequence over all n');
  }));

test('memory: batches shrink to the limit, a request that cannot fit is refused first', () =>
  withDir(async (dir) => {
    const p = await loadPipeline(await tinyPipeline(dir, 'unet', 0));
    const o = { sampler: 'ddim', steps: 1, n: 6, seed: 1 } as const;
    const free = await sampleImages(p, o);
    // The tiny U-Net's largest intermediate at 8x8 is about 6 KiB a row (x4 working space):
    // 200 KiB leaves room for a few rows per call.
    const tight = await sampleImages(p, { ...o, memoryLimit: 200 * 1024 });
    assert.ok(tight.rowsPerCall < 6 && tight.rowsPerCall >= 1, `rows ${tight.rowsPerCall}`);
    assert.match(tight.warnings.join(), /batch size lowered from 64 to \d rows per model call/);
    assert.deepEqual(tight.images.data, free.images.data, 'same images in smaller batches');
    await assert.rejects(sampleImages(p, { ...o, memoryLimit: 4096 }), (e: unknown) =>
      e instanceof MemoryLimitError && /one 8x8 image needs about .* in UNet2DModel \(its largest intermediate, \w+ -> \[1, /.test(e.message));
    await assert.rejects(sampleImages(p, { ...o, n: 10_000, memoryLimit: 2 ** 20 }),
      /10000 images of 1x8x8 take 2\.4 MiB held at once, over half the memory limit of 1\.0 MiB; ask for at most 2048/);
    await assert.rejects(sampleImages(p, { ...o, memoryLimit: 2 * totalmem() }),
      /is more than this machine has/);
    await assert.rejects(sampleImages(p, { ...o, n: 3000, generator: 'torch', batchSize: 2,
      memoryLimit: 2 ** 21 }), /torch generator draws the noise of all 3000 images from one sequence/);
  }));

test('non-finite: NaN weights are refused at load, NaN outputs stop sampling', () =>
  withDir(async (dir) => {
    const folder = await tinyPipeline(join(dir, 'pipe'), 'unet', 0);
    const p = await loadPipeline(folder);
    const poisoned = mapTree(p.params, (x): x is HostArray => x instanceof HostArray,
      (a) => new HostArray(Float32Array.from(a.data as Float32Array), a.shape, 'float32'));
    const { flatten } = await import('../engine/tree.js');
    const { paths, leaves } = flatten(poisoned, (x): x is HostArray => x instanceof HostArray);
    const last = leaves.length - 1; // conv_out: every output pixel reads it
    (leaves[last]!.data as Float32Array)[0] = Number.NaN;
    await assert.rejects(sampleImages({ ...p, params: poisoned }, { sampler: 'ddim', steps: 2, n: 2 }),
      (e: unknown) => e instanceof NonFiniteError &&
        /the model returned NaN or infinite values \(image 0, model time \d+\): from finite inputs/.test(e.message));
    await exportPipeline(join(dir, 'nan'), { model: p.model, scheduler: p.scheduler }, poisoned);
    await assert.rejects(loadPipeline(join(dir, 'nan')),
      new RegExp(`weight '${paths[last]!.replace(/\./g, '\\.')}' has 1 NaN or infinite values of \\d+: the checkpoint is corrupt`));
  }));

test('destinations are checked before sampling; folder images are numbered from the batch', () =>
  withDir(async (dir) => {
    const p = await loadPipeline(await tinyPipeline(dir, 'unet', 0));
    await checkDestination(p, 16_000, { out: join(dir, 'grid.png') });
    await assert.rejects(checkDestination(p, 300_000, { out: join(dir, 'grid.png') }),
      /a grid of 300000 images of 8x8 is 5482x5482 pixels, over the 16 M pixels a grid may have; write one PNG per image/);
    await assert.rejects(checkDestination(p, 1_000_001, { outDir: join(dir, 'd') }),
      /1000001 images: a folder run writes at most 1000000/);
    await writeFile(join(dir, 'file'), '');
    await assert.rejects(checkDestination(p, 2, { outDir: join(dir, 'file', 'd') }),
      /cannot create folder .*file\/d: a file is in the way/);
    const rgba = { ...p.model, sampleShape: [4, 8, 8] as [number, number, number] };
    await assert.rejects(checkDestination({ model: rgba }, 2, { out: join(dir, 'x.png') }),
      /makes 4-channel images; PNGs are written for 1 \(gray\) or 3 \(RGB\) channels/);
    const images = new HostArray(new Float32Array(2 * 64), [2, 1, 8, 8], 'float32');
    assert.deepEqual((await writeSamples(images, { outDir: join(dir, 'd') }, 7)).map((f) => f.slice(-10)),
      ['000007.png', '000008.png']);
  }));

test('--accel spelling: deepcache:N, faster[:K], ras:R and their modifiers', () => {
  assert.deepEqual(parseAccel('deepcache:3'), { method: 'deepcache', interval: 3 });
  assert.deepEqual(parseAccel('deepcache:5,nonuniform,branch=1'),
    { method: 'deepcache', interval: 5, nonUniform: true, branch: 1 });
  assert.deepEqual(parseAccel('faster'), { method: 'faster', keySteps: 'paper' });
  assert.deepEqual(parseAccel('faster:4,serial,noinject'),
    { method: 'faster', keySteps: 4, parallel: false, noiseInjection: false });
  assert.deepEqual(parseAccel('ras:0.5'), { method: 'ras', ratio: 0.5 });
  assert.deepEqual(parseAccel('ras:0.25,random,starvation=-0.1,cache=low,metric=l2norm'),
    { method: 'ras', ratio: 0.25, selection: 'random', starvation: -0.1, cache: 'low',
      metric: 'l2norm' });
  assert.throws(() => parseAccel('deepcache:0'), /N must be >= 1 model calls per full step/);
  assert.throws(() => parseAccel('deepcache:3,fast'), /unknown modifier 'fast' of deepcache/);
  assert.throws(() => parseAccel('ras:1.5'), /R must be in \(0, 1\]/);
  assert.throws(() => parseAccel('ras:0.5,starvation=x'), /malformed modifier 'starvation=x'/);
  assert.throws(() => parseAccel('tome:0.5'), /unknown acceleration; expected deepcache:N/);
});
