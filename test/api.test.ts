/**
 * The package's public surface: every entry point of package.json's `exports` imports by the
 * package's name and carries the names its layer promises; deep imports into dist/ are not
 * part of it; the packed tarball ships the library, the CLI and the models, and no tests.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import * as root from 'diffuse';
import * as data from 'diffuse/data';
import * as distributed from 'diffuse/distributed';
import * as diffusion from 'diffuse/diffusion';
import * as io from 'diffuse/io';
import * as models from 'diffuse/models';
import * as nn from 'diffuse/nn';
import * as pipelines from 'diffuse/pipelines';
import { repoRoot } from './support/paths.js';

type Exports = Record<string, { types: string; default: string } | string>;
const pkg = JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as {
  name: string; exports: Exports; files: string[]; bin: Record<string, string>;
};

/** Names each entry point must export, and of what kind. */
const promised: Record<string, [Record<string, unknown>, Record<string, string>]> = {
  '.': [root, {
    compile: 'function', grad: 'function', valueAndGrad: 'function', trace: 'function',
    exportOnnx: 'function', HostArray: 'function', Tensor: 'function', ShapeError: 'function',
    RngKey: 'function', RngStream: 'function', TorchGenerator: 'function', ops: 'object',
    nn: 'object', matmul: 'function',
  }],
  './nn': [nn, {
    Module: 'function', Linear: 'function', Conv2d: 'function', MultiHeadAttention: 'function',
    adamw: 'function', compileTrainStep: 'function', loadStateDict: 'function', init: 'object',
  }],
  './diffusion': [diffusion, {
    sample: 'function', samplerSpec: 'function', SAMPLERS: 'object', SAMPLER_NAMES: 'object',
    parseScheduler: 'function', sampleDdim: 'function', sampleDpmSolverPP: 'function',
    DDIMScheduler: 'function', schedulerFromConfig: 'function', discreteVp: 'function',
    toX0: 'function', classifierFreeGuidance: 'function', classifierGuidance: 'function',
    trainingScheduler: 'function', ConfigError: 'function',
  }],
  './models': [models, {
    UNet2DModel: 'function', UNET2D_CLASS: 'object', UNET2D_PRESETS: 'object',
    DiTTransformer2DModel: 'function', ditPreset: 'function', DiTMoETransformer2DModel: 'function',
    AutoencoderKL: 'function', AUTOENCODER_KL_PRESETS: 'object', DiffuseClassifier: 'function',
    ToyMlp: 'function', ConfigError: 'function',
  }],
  './data': [data, {
    loadMnist: 'function', loadImageFolder: 'function', batchAt: 'function',
    GaussianMixture: 'function', sampleToy2D: 'function', slicedWasserstein: 'function',
    movingMnistBatch: 'function', movingMnistSet: 'function',
  }],
  './io': [io, {
    SafetensorsFile: 'function', writeSafetensors: 'function', loadModel: 'function',
    saveModel: 'function', readSchedulerConfig: 'function', readModelIndex: 'function',
    encodePng: 'function', imageGrid: 'function', DiffusersFolderError: 'function',
    writeGif: 'function', writeVideo: 'function', videoGrid: 'function',
  }],
  './pipelines': [pipelines, {
    loadPipeline: 'function', sampleImages: 'function', train: 'function',
    prepareMnistFid: 'function', trainToy: 'function', trainClassifier: 'function',
    graphDenoiser: 'function', MODEL_FAMILIES: 'object', distill: 'function', studentSampling: 'function',
    classifyImages: 'function', modelDenoiser: 'function', probeSweep: 'function',
    trainDdm: 'function', compareEnsemble: 'function', runJob: 'function', JOB_HANDLER_MODULE: 'string',
    trainVideo: 'function', loadVideoPipeline: 'function', sampleVideos: 'function',
    sampleLongVideoThreads: 'function', compareLongVideos: 'function', frameJumps: 'function',
    exportDenoiser: 'function', exportModelFolder: 'function', convertWeights: 'function',
    trainVae: 'function', loadVae: 'function', latentCoder: 'function', pipelineImageShape: 'function',
    trainDiffuseVae: 'function', sampleDiffuseVae: 'function', runD2nwg: 'function', runMolrgSweep: 'function',
    trainDiffDis: 'function', classifyDiffDis: 'function', runInvDiff: 'function',
    runLdfacenet: 'function', trainDivControl: 'function', adaptDivControl: 'function',
    evaluateDivControl: 'function', trainEchoDistill: 'function', evaluateEchoDistill: 'function',
  }],
  './distributed': [distributed, {
    embeddedBackend: 'function', redisBackend: 'function', startRedisWorker: 'function',
    runInThread: 'function', JobFailedError: 'function', parseRedisUrl: 'function',
  }],
};

describe('entry points', () => {
  test('package.json exports exactly the entry points tested here, each with types', () => {
    assert.equal(pkg.name, 'diffuse');
    const entries = Object.keys(pkg.exports).filter((k) => k !== './package.json');
    assert.deepEqual(entries.sort(), Object.keys(promised).sort());
    for (const k of entries) {
      const e = pkg.exports[k] as { types: string; default: string };
      const base = `./dist/src/${k === '.' ? '' : `${k.slice(2)}/`}index`;
      assert.deepEqual(e, { types: `${base}.d.ts`, default: `${base}.js` }, k);
    }
  });

  for (const [entry, [mod, names]] of Object.entries(promised)) {
    test(`'${join('diffuse', entry)}' exports its layer's names`, () => {
      for (const [name, kind] of Object.entries(names)) {
        assert.equal(typeof mod[name], kind, `${entry}: ${name}`);
      }
    });
  }

  test('the names behave: a value through each layer', async () => {
    assert.deepEqual(root.HostArray.fromNested([[1, 2]]).shape, [1, 2]);
    assert.equal(typeof root.ops.silu, 'function');
    assert.equal(root.nn.Linear, nn.Linear); // the root's nn namespace is diffuse/nn
    assert.equal(new nn.Linear(3, 2).numParams(), 8);
    const spec = diffusion.parseScheduler({ _class_name: 'DDIMScheduler' });
    assert.equal(spec.prediction, 'eps');
    assert.equal(diffusion.samplerSpec('dpm++2m', spec).className,
      'DPMSolverMultistepScheduler');
    assert.ok(diffusion.SAMPLER_NAMES.includes('unipc'));
    assert.equal(models.UNET2D_CLASS.className, 'UNet2DModel');
    assert.equal(models.autoencoderKLClass.className, 'AutoencoderKL');
    // (2 + 32) -> 128 -> 128 -> 128 -> 2, weights and biases
    assert.equal(new models.ToyMlp(models.TOY_MLP_DEFAULTS).numParams(),
      34 * 128 + 128 + 2 * (128 * 128 + 128) + 128 * 2 + 2);
    assert.deepEqual(data.sampleToy2D('two_moons', 5, data.seededRandom(0)).length, 10);
    const png = io.decodePng(io.encodePng({ width: 2, height: 1, channels: 1,
      data: Uint8Array.of(0, 255) }));
    assert.deepEqual([png.width, png.height, png.channels, png.data[4]], [2, 1, 4, 255]); // RGBA
    assert.deepEqual(pipelines.MODEL_FAMILIES, ['unet', 'dit', 'dit-moe', 'switch-dit']);
    // The two ConfigErrors are different classes (scheduler configs, model configs).
    assert.notEqual(diffusion.ConfigError, models.ConfigError);
    assert.throws(() => diffusion.parseScheduler({ _class_name: 'DDIMScheduler',
      beta_schedule: 'cubic' }), diffusion.ConfigError);
    await assert.rejects(io.readModelIndex(join(repoRoot, 'no-such-folder')));
  });

  test('deep imports into dist/ are not part of the API', async () => {
    // A variable specifier, so that tsc does not resolve (and reject) it at compile time.
    const deep = 'diffuse/dist/src/engine/host.js';
    await assert.rejects(import(deep), { code: 'ERR_PACKAGE_PATH_NOT_EXPORTED' });
    assert.throws(() => import.meta.resolve('diffuse/src/index.ts'),
      { code: 'ERR_PACKAGE_PATH_NOT_EXPORTED' });
    // ./package.json is exported: programs find the shipped models beside it.
    assert.match(import.meta.resolve('diffuse/package.json'), /\/package\.json$/);
  });
});

describe('the packed package', () => {
  test('npm pack ships dist/src, bin and models, and no tests or test helpers', (t) => {
    const r = spawnSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'],
      { cwd: repoRoot, encoding: 'utf8' });
    if (r.error) return t.skip(`npm not runnable here: ${r.error.message}`);
    assert.equal(r.status, 0, r.stderr);
    const files = (JSON.parse(r.stdout) as { files: { path: string }[] }[])[0]!.files
      .map((f) => f.path);
    const bad = files.filter((f) => /\.test\.|^dist\/test\/|^test\/|^src\//.test(f));
    assert.deepEqual(bad, []);
    for (const want of ['bin/diffuse.js', 'dist/src/index.js', 'dist/src/cli/main.js',
      'models/mnist-unet/unet/diffusion_pytorch_model.safetensors',
      'models/mnist-classifier/config.json', 'package.json', 'README.md', 'LICENSE']) {
      assert.ok(files.includes(want), `${want} is not in the tarball`);
    }
    for (const e of Object.values(pkg.exports)) {
      for (const path of typeof e === 'string' ? [e] : [e.types, e.default]) {
        assert.ok(files.includes(path.slice(2)), `exports names ${path}, not in the tarball`);
      }
    }
    assert.ok(files.includes(pkg.bin.diffuse!), 'the bin is not in the tarball');
  });
});
