/**
 * @file Writes test/data/golden/ from the full golden set (../shared/golden, diffusers 0.31.0 +
 * torch 1.13.1): the small files the tests read, byte for byte, except
 * - no diffusion_pytorch_model.safetensors: torch-init.ts regenerates it from the seed, and
 *   weights.sha256 records each original's SHA-256 so that tests can check the regeneration;
 * - intermediates.safetensors keeps batch element 0 of every tensor of rank 3 or more (the
 *   per-sample vectors stay whole), which halves the largest fixtures;
 * - io.json only for dit (the one a test reads); unet2d's and autoencoder_kl's are left out.
 * Run after `npm run build`: node dist/test/support/make-golden-fixtures.js --write
 * (README.md there is written by hand). Without --write it does nothing: the test runner runs
 * every file under dist/test, this one included.
 */
import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseSafetensors } from '../../src/io/safetensors.js';
import { serializeSafetensors, type TensorInput } from '../../src/io/safetensors-write.js';
import { GOLDEN_MODELS } from './golden.js';
import { goldenDir, sharedGoldenDir } from './paths.js';

const TRIM_NOTE =
  'trimmed for Diffuse test/data/golden: tensors of rank >= 3 keep batch element 0';

/** The intermediates file with rank >= 3 tensors cut to their first batch element. */
function trimIntermediates(bytes: Uint8Array): Uint8Array {
  const { metadata, tensors } = parseSafetensors(bytes);
  const out = new Map<string, TensorInput>();
  for (const [name, t] of tensors) {
    if (t.dtype !== 'F32') throw new Error(`${name}: ${t.dtype}, expected F32`);
    const data = t.data as Float32Array; // F32 entries hold a Float32Array
    const [n, ...rest] = t.shape;
    if (t.shape.length < 3 || n === 1) {
      out.set(name, { dtype: 'F32', shape: t.shape, data });
      continue;
    }
    const per = data.length / n!;
    out.set(name, { dtype: 'F32', shape: [1, ...rest], data: data.slice(0, per) });
  }
  return serializeSafetensors(out, { ...metadata, trimmed: TRIM_NOTE });
}

function main(): void {
  const sums: string[] = [];
  for (const model of GOLDEN_MODELS) {
    const from = join(sharedGoldenDir, model);
    const to = join(goldenDir, model);
    mkdirSync(to, { recursive: true });
    for (const f of ['config.json', 'weights_provenance.json', 'io.safetensors']) {
      copyFileSync(join(from, f), join(to, f));
    }
    if (model === 'dit') copyFileSync(join(from, 'io.json'), join(to, 'io.json'));
    if (model !== 'autoencoder_kl') {
      const bytes = readFileSync(join(from, 'intermediates.safetensors'));
      writeFileSync(join(to, 'intermediates.safetensors'), trimIntermediates(bytes));
    }
    const weights = join(model, 'diffusion_pytorch_model.safetensors');
    const hash = createHash('sha256').update(readFileSync(join(sharedGoldenDir, weights)));
    sums.push(`${hash.digest('hex')}  ${weights}\n`);
  }
  writeFileSync(join(goldenDir, 'weights.sha256'), sums.join(''));
  mkdirSync(join(goldenDir, 'schedulers'), { recursive: true });
  for (const f of readdirSync(join(sharedGoldenDir, 'schedulers'))) {
    copyFileSync(join(sharedGoldenDir, 'schedulers', f), join(goldenDir, 'schedulers', f));
  }
}

if (process.argv.includes('--write')) main();
