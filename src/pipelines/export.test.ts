/**
 * @file `diffuse export`: the exported ONNX file, run by a plain onnxruntime-node session,
 * gives the pipeline's own compiled denoiser's outputs (class-conditional U-Net at any batch
 * size, null class included; unconditional flow DiT at a fixed batch), its sidecar describes
 * it, and bad folders and output paths fail with errors that name them.
 */
import assert from 'node:assert/strict';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { Command } from 'commander';
import onnxProto from 'onnx-proto';
import ort from 'onnxruntime-node';
import { RngKey } from '../engine/random/philox.js';
import { parseScheduler } from '../diffusion/diffusers/spec.js';
import { UsageError } from '../cli/errors.js';
import { registerExport } from '../cli/export.js';
import { withTempDir } from '../../test/support/temp-dir.js';
import { withTinyPipeline } from '../../test/support/tiny-pipeline.js';
import { exportDenoiser, exportModelFolder, sidecarPath, type ExportedMeta } from './export.js';
import { modelDenoiser } from './graph-denoiser.js';
import type { Pipeline } from './sample.js';

/** Random inputs for `rows` rows: x ~ N(0, 1), model times spread over [0, 1000). */
function inputs(p: Pipeline, rows: number, seed: number): { x: Float32Array; t: Float64Array } {
  const per = p.model.sampleShape.reduce((a, b) => a * b, 1);
  const key = RngKey.fromSeed(seed);
  const t = Float64Array.from(key.fold(1).uniform(rows), (u) => Math.round(u * 999 * 100) / 100);
  return { x: key.fold(0).normal(rows * per), t };
}

/** The largest |a - b| over two arrays of the same length. */
function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** Runs the exported file and the pipeline's compiled denoiser on the same rows: the largest
 *  difference of their outputs. */
async function compare(p: Pipeline, file: string, rows: number, labels?: number[]): Promise<number> {
  const [c, h, w] = p.model.sampleShape;
  const { x, t } = inputs(p, rows, rows);
  const session = await ort.InferenceSession.create(file);
  const own = modelDenoiser(p.model, p.params, p.scheduler.prediction);
  try {
    const feeds: Record<string, ort.Tensor> = {
      x: new ort.Tensor('float32', x, [rows, c, h, w]),
      t: new ort.Tensor('float32', Float32Array.from(t), [rows]),
      ...(labels ? { class_labels: new ort.Tensor('int64', BigInt64Array.from(labels, BigInt), [rows]) } : {}),
    };
    const got = (await session.run(feeds))['prediction']!;
    assert.deepEqual(got.dims, [rows, c, h, w]);
    const want = await own.predict({ data: x, shape: [rows, c, h, w] }, t, labels);
    // Not a vacuous match: the fresh model's outputs are far from zero (rms about 0.3).
    assert.ok(Math.hypot(...want.data) / Math.sqrt(want.data.length) > 0.05);
    return maxDiff(got.data as Float32Array, want.data);
  } finally {
    await session.release();
    await own.dispose();
  }
}

/** The graph's inputs as `name dtype [dims]`, read from the file. */
async function graphInputs(file: string): Promise<string[]> {
  const m = onnxProto.onnx.ModelProto.decode(await readFile(file));
  return m.graph!.input!.map((i) => {
    const tt = i.type!.tensorType!;
    const dims = tt.shape!.dim!.map((d) => d.dimParam || String(d.dimValue));
    const int64 = tt.elemType === onnxProto.onnx.TensorProto.DataType.INT64;
    return `${i.name} ${int64 ? 'int64' : 'float32'} [${dims.join(', ')}]`;
  });
}

test('export: a class-conditional U-Net runs in onnxruntime-node as the compiled denoiser, at any ' +
  'batch size', async () => {
  await withTinyPipeline('unet', 'eps', async (p) => withTempDir('export', async (dir) => {
    const file = join(dir, 'out', 'model.onnx'); // a missing folder is created
    const r = await exportDenoiser(p, file);
    assert.equal(r.metaPath, join(dir, 'out', 'model.json'));
    assert.deepEqual(await graphInputs(file), ['x float32 [batch, 1, 8, 8]', 't float32 [batch]',
      'class_labels int64 [batch]']);
    // Labels 0..2 and the null class 3 (the unconditional half of CFG).
    assert.ok(await compare(p, file, 4, [0, 2, 3, 1]) <= 1e-5);
    assert.ok(await compare(p, file, 1, [3]) <= 1e-5);
    const meta = JSON.parse(await readFile(r.metaPath, 'utf8')) as ExportedMeta;
    assert.deepEqual(meta, r.meta);
    assert.deepEqual([meta.format, meta.onnx, meta.prediction, meta.sampleShape, meta.batch,
      meta.numClasses, meta.nullClass, meta.modelClass, meta.family],
    ['diffuse-denoiser', 'model.onnx', 'eps', [1, 8, 8], null, 3, 3, 'UNet2DModel', 'unet']);
    // The scheduler config parses back to the pipeline's own spec.
    const spec = parseScheduler(meta.scheduler);
    assert.deepEqual([spec.className, spec.prediction, spec.config], [p.scheduler.className,
      p.scheduler.prediction, p.scheduler.config]);
  }));
});

test('export: an unconditional flow DiT at a fixed batch has no class_labels input', async () => {
  await withTinyPipeline('dit', 'flow', async (p) => withTempDir('export', async (dir) => {
    const file = join(dir, 'dit.onnx');
    const r = await exportDenoiser(p, file, { batch: 2 });
    assert.equal(r.metaPath, join(dir, 'dit.json'));
    assert.deepEqual(await graphInputs(file), ['x float32 [2, 1, 8, 8]', 't float32 [2]']);
    assert.deepEqual([r.meta.prediction, r.meta.batch, r.meta.numClasses, r.meta.nullClass,
      r.meta.scheduler['_class_name']], ['flow', 2, 0, null, 'FlowMatchEulerDiscreteScheduler']);
    assert.ok(await compare(p, file, 2) <= 1e-5);
  }), undefined, 0);
});

test('export: the CLI writes both files; bad folders and output paths are named', async (t) => {
  t.mock.method(console, 'log', () => undefined);
  const run = async (args: string[]) => {
    const program = new Command('diffuse').exitOverride();
    registerExport(program);
    await program.parseAsync(['export', ...args], { from: 'user' });
  };
  await withTinyPipeline('unet', 'eps', async (p) => withTempDir('export', async (dir) => {
    const pipeline = dirname(p.modelFolder);
    const out = join(dir, 'm.onnx');
    await run(['--model', pipeline, '--out', out, '--batch', '3']);
    assert.deepEqual(await graphInputs(out), ['x float32 [3, 1, 8, 8]', 't float32 [3]',
      'class_labels int64 [3]']);
    assert.equal((JSON.parse(await readFile(sidecarPath(out), 'utf8')) as ExportedMeta).batch, 3);

    // Not a pipeline folder: what was looked for.
    const empty = join(dir, 'empty');
    await mkdir(empty);
    await assert.rejects(exportModelFolder(empty, join(dir, 'x.onnx')),
      /empty: looked for model_index\.json \(a pipeline\) or config\.json \(a model folder\); found neither/);
    await assert.rejects(exportModelFolder(join(dir, 'missing'), join(dir, 'x.onnx')), /missing: no such folder/);
    const file = join(dir, 'file.txt');
    await writeFile(file, 'x');
    await assert.rejects(exportModelFolder(file, join(dir, 'x.onnx')), /file\.txt: not a folder/);
    // The output path: a folder in the way (either file), or not an .onnx name.
    await mkdir(join(dir, 'taken.onnx'));
    await assert.rejects(exportModelFolder(pipeline, join(dir, 'taken.onnx')),
      /taken\.onnx is a folder; the output must be a file name ending in \.onnx, such as .*taken\.onnx\/model\.onnx/);
    await assert.rejects(exportModelFolder(pipeline, dir), /diffuse-export-\w+ is a folder/);
    await mkdir(join(dir, 'side.json'));
    await assert.rejects(exportModelFolder(pipeline, join(dir, 'side.onnx')),
      /cannot write file .*side\.json: a folder is in the way where a file is needed/);
    await assert.rejects(exportModelFolder(pipeline, join(dir, 'model.txt')),
      /the output must be a file name ending in \.onnx \(its sidecar goes beside it as NAME\.json\), got '.*model\.txt'/);
    // Through the CLI these are usage errors (exit code 2), named by the option.
    await assert.rejects(run(['--model', pipeline, '--out', join(dir, 'taken.onnx')]), (e: unknown) =>
      e instanceof UsageError && /^--out: .*taken\.onnx is a folder/.test(e.message));
  }));
});
