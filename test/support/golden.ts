/**
 * @file The golden models' folders as diffusers wrote them, rebuilt for tests from the small
 * in-repo files: config.json plus diffusion_pytorch_model.safetensors with the weights
 * regenerated from the seed (torch-init.ts), written by our own safetensors writer.
 *
 * Why: the weights are 30 MB of seeded random numbers, too big to commit, and the tests should
 * load them through the same folder-reading code as any diffusers checkpoint. The file written
 * here is byte-identical to the one diffusers' tooling wrote (torch-init.test.ts checks its
 * SHA-256 against test/data/golden/weights.sha256).
 */
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HostArray } from '../../src/engine/host.js';
import { serializeSafetensors, writeSafetensors } from '../../src/io/safetensors-write.js';
import { goldenDir } from './paths.js';
import {
  regenerateWeights, type F32Tensor, type ModelConfig, type WeightsProvenance,
} from './torch-init.js';

/** The golden model folders (test/data/golden/<name>). */
export type GoldenModel = 'unet2d' | 'autoencoder_kl' | 'dit';
export const GOLDEN_MODELS: readonly GoldenModel[] = ['unet2d', 'autoencoder_kl', 'dit'];

/** diffusers' save_pretrained writes this metadata into every weights file. */
export const WEIGHTS_METADATA = { format: 'pt' };

const readJson = <T>(path: string): T => JSON.parse(readFileSync(path, 'utf8')) as T;

const weightsCache = new Map<GoldenModel, Map<string, F32Tensor>>();

/** The golden model's weights, regenerated (once per process) from its config and provenance. */
export function goldenWeights(model: GoldenModel): Map<string, F32Tensor> {
  let w = weightsCache.get(model);
  if (!w) {
    const dir = join(goldenDir, model);
    w = regenerateWeights(readJson<ModelConfig>(join(dir, 'config.json')),
      readJson<WeightsProvenance>(join(dir, 'weights_provenance.json')));
    weightsCache.set(model, w);
  }
  return w;
}

/** The golden weights as host arrays, by state_dict name (what loadStateDict takes). */
export function goldenHostWeights(model: GoldenModel): Map<string, HostArray> {
  return new Map([...goldenWeights(model)].map(([k, t]) => [k, new HostArray(t.data, t.shape)]));
}

/** The bytes of the golden weights file: what diffusers wrote, if torch-init is right. */
export function goldenWeightsBytes(model: GoldenModel): Uint8Array {
  return serializeSafetensors(goldenWeights(model), WEIGHTS_METADATA);
}

const folders = new Map<GoldenModel, Promise<string>>();
let scratch: string | undefined;

/**
 * A temporary folder holding the golden model as diffusers saved it (config.json and
 * diffusion_pytorch_model.safetensors), written once per process and removed at exit.
 */
export function goldenModelFolder(model: GoldenModel): Promise<string> {
  let folder = folders.get(model);
  if (!folder) {
    folder = (async () => {
      if (!scratch) {
        const dir = mkdtempSync(join(tmpdir(), 'diffuse-golden-'));
        scratch = dir;
        process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
      }
      const out = mkdtempSync(join(scratch, `${model}-`));
      copyFileSync(join(goldenDir, model, 'config.json'), join(out, 'config.json'));
      await writeSafetensors(join(out, 'diffusion_pytorch_model.safetensors'),
        goldenWeights(model), WEIGHTS_METADATA);
      return out;
    })();
    folders.set(model, folder);
  }
  return folder;
}

/** The first `n` entries along axis 0: the batch elements a trimmed golden tensor keeps (see
 * test/data/golden/README.md). */
export function leading(a: HostArray, n: number): HostArray {
  if (a.shape[0] === n) return a;
  const per = a.size / a.shape[0]!;
  return new HostArray(a.data.slice(0, n * per), [n, ...a.shape.slice(1)]);
}
