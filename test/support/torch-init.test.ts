/**
 * @file The regenerated golden weights (torch-init.ts) are the ones diffusers wrote, bit for
 * bit: the weights file rebuilt from them has the SHA-256 recorded in
 * test/data/golden/weights.sha256 (taken from diffusers' own files). Where the full golden set
 * is beside the repository (../shared/golden), a mismatch names the first differing tensor and
 * the files are also compared byte for byte.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { parseSafetensors } from '../../src/io/safetensors.js';
import {
  GOLDEN_MODELS, goldenModelFolder, goldenWeights, goldenWeightsBytes, type GoldenModel,
} from './golden.js';
import { goldenDir, sharedGoldenDir } from './paths.js';
import { regenerateWeights, type ModelConfig, type WeightsProvenance } from './torch-init.js';

const WEIGHTS = 'diffusion_pytorch_model.safetensors';

/** weights.sha256, in sha256sum's format: "<hex>  <model>/<file>" per line. */
const recorded = new Map(readFileSync(join(goldenDir, 'weights.sha256'), 'utf8').trim()
  .split('\n').map((line) => {
    const [hash, path] = line.split(/ +/);
    return [path!.split('/')[0]!, hash!];
  }));

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** The first tensor whose bits differ from diffusers' file in ../shared, described. */
function firstMismatch(model: GoldenModel): string {
  const path = join(sharedGoldenDir, model, WEIGHTS);
  if (!existsSync(path)) return '(../shared/golden is absent: no tensor-by-tensor diagnosis)';
  const theirs = parseSafetensors(readFileSync(path)).tensors;
  for (const [name, t] of goldenWeights(model)) { // construction order of state_dict
    const d = theirs.get(name)?.data as Float32Array | undefined; // F32 file: Float32Array
    if (!d) return `${name} is not in diffusers' file`;
    for (let i = 0; i < d.length; i++) {
      if (!Object.is(d[i], t.data[i])) {
        return `first mismatch: ${name}[${i}] = ${t.data[i]}, diffusers has ${d[i]}`;
      }
    }
  }
  return 'tensors equal: the file layout differs';
}

describe('golden weights regenerated from the seed (torch 1.13 default init)', () => {
  for (const model of GOLDEN_MODELS) {
    test(`${model}: bit-exact, the file diffusers wrote byte for byte`, () => {
      const bytes = goldenWeightsBytes(model);
      const hash = sha256(bytes);
      if (hash !== recorded.get(model)) assert.fail(`${model}: ${firstMismatch(model)}`);
      const theirs = join(sharedGoldenDir, model, WEIGHTS);
      if (existsSync(theirs)) assert.ok(Buffer.from(bytes).equals(readFileSync(theirs)));
    });
  }

  test('the folder for loaders holds config.json and that same weights file', async () => {
    const dir = await goldenModelFolder('autoencoder_kl');
    assert.equal(await goldenModelFolder('autoencoder_kl'), dir, 'written once per process');
    assert.equal(readFileSync(join(dir, 'config.json'), 'utf8'),
      readFileSync(join(goldenDir, 'autoencoder_kl', 'config.json'), 'utf8'));
    assert.equal(sha256(readFileSync(join(dir, WEIGHTS))), recorded.get('autoencoder_kl'));
  });

  test('names, shapes and options outside the plans are refused', () => {
    const dir = join(goldenDir, 'autoencoder_kl');
    const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as ModelConfig;
    const prov = JSON.parse(readFileSync(join(dir, 'weights_provenance.json'), 'utf8')) as
      WeightsProvenance;
    const shapes = prov.state_dict_keys_and_shapes;
    const missing = { ...prov, state_dict_keys_and_shapes: { ...shapes, 'extra.weight': [1] } };
    assert.throws(() => regenerateWeights(config, missing), /plan has no extra.weight/);
    const { 'quant_conv.bias': _, ...fewer } = shapes;
    assert.throws(() => regenerateWeights(config, { ...prov, state_dict_keys_and_shapes: fewer }),
      /tensors not in the provenance: quant_conv.bias/);
    const bent = { ...shapes, 'quant_conv.bias': [7] };
    assert.throws(() => regenerateWeights(config, { ...prov, state_dict_keys_and_shapes: bent }),
      /quant_conv.bias is \[8\], provenance says \[7\]/);
    assert.throws(() => regenerateWeights({ ...config, use_quant_conv: false }, prov),
      /use_quant_conv = false is not supported/);
    assert.throws(() => regenerateWeights({ ...config, _class_name: 'VQModel' }, prov),
      /no init plan for VQModel/);
  });
});
