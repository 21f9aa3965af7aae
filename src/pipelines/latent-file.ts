/**
 * @file Codes of `diffuse encode` as safetensors files: tensors `x_T` [N, C, H, W], `eps`
 * [N, K, C, H, W] (K = steps - 1; absent for DDIM inversion, eta 0) and `residual` [N, C, H, W]
 * (when kept), float32; metadata strings LATENT_KEYS: format, method (dpm-encoder or
 * ddim-inversion), the encoding model's folder, steps, t0, eta, seed, labels (JSON, null
 * without), alpha_bars (JSON: alphas_cumprod along the walk, which a decoder must share) and
 * source (where the images came from, when known). Written atomically (writeSafetensors: a
 * temporary file renamed over the target); read back with every tensor checked against the
 * metadata.
 */
import { encoderTimesteps, type DpmLatents } from '../methods/dpm-encoder.js';
import { SafetensorsError, SafetensorsFile, writeSafetensors, type TensorInput } from
  '../io/safetensors.js';
import { explainFsError } from '../util/fs-errors.js';

/** Codes of a batch of images, with what they were made with. */
export interface LatentCodes {
  /** eta = 0 (DDIM inversion): `eps` is empty and `residual` null. */
  readonly z: DpmLatents;
  /** The model folder that encoded them. */
  readonly model: string;
  readonly seed: number;
  /** The labels the encoder used (null: none, an unconditional model). */
  readonly labels: readonly number[] | null;
  /** Where the images came from, when known (for messages and reconstruction checks). */
  readonly source?: string;
  /** alphas_cumprod of the encoding model at the walk's timesteps: a decoder must share them. */
  readonly alphaBars: Float64Array;
}

/** The metadata keys of a code file. */
export const LATENT_KEYS = ['format', 'method', 'model', 'steps', 't0', 'eta', 'seed', 'labels',
  'alpha_bars', 'source'] as const;
const FORMAT = 'diffuse-latents-1';

/** Writes codes to a safetensors file, atomically. */
export async function writeLatents(path: string, codes: LatentCodes): Promise<void> {
  const { z } = codes;
  const [n, ...sample] = z.shape as number[];
  const K = z.settings.eta > 0 ? z.settings.steps - 1 : 0;
  const f32 = (data: Float32Array, shape: number[]): TensorInput => ({ dtype: 'F32', shape, data });
  const tensors: Record<string, TensorInput> = { x_T: f32(z.xT, [n!, ...sample]) };
  if (z.settings.eta > 0) tensors.eps = f32(z.eps, [n!, K, ...sample]);
  if (z.residual) tensors.residual = f32(z.residual, [n!, ...sample]);
  const metadata: Record<string, string> = {
    format: FORMAT,
    method: z.settings.eta > 0 ? 'dpm-encoder' : 'ddim-inversion',
    model: codes.model,
    steps: String(z.settings.steps),
    t0: String(z.settings.t0),
    eta: String(z.settings.eta),
    seed: String(codes.seed),
    labels: JSON.stringify(codes.labels),
    alpha_bars: JSON.stringify(Array.from(codes.alphaBars)),
    ...(codes.source ? { source: codes.source } : {}),
  };
  try {
    await writeSafetensors(path, tensors, metadata);
  } catch (e) {
    throw e instanceof SafetensorsError ? e : explainFsError(e, 'write', path);
  }
}

/** A code file that is not one, or does not hold what its metadata says. */
export class LatentFileError extends Error {
  override name = 'LatentFileError';
}

/** Reads codes written by writeLatents, checking every tensor against the metadata. */
export async function readLatents(path: string): Promise<LatentCodes> {
  const file = await SafetensorsFile.open(path);
  const bad = (why: string): never => {
    throw new LatentFileError(`${path}: ${why}`);
  };
  try {
    const m = file.metadata;
    if (m.format !== FORMAT) {
      bad(`not a code file of diffuse encode (metadata format '${m.format ?? 'missing'}', ` +
        `expected '${FORMAT}')`);
    }
    const int = (k: string, min: number) => {
      const v = Number(m[k]);
      if (!Number.isSafeInteger(v) || v < min) {
        bad(`metadata ${k} '${m[k]}' is not an integer >= ${min}`);
      }
      return v;
    };
    const [steps, t0, seed] = [int('steps', 1), int('t0', 0), int('seed', 0)];
    const eta = Number(m.eta);
    if (!(eta >= 0 && eta <= 1)) bad(`metadata eta '${m.eta}' is not in [0, 1]`);
    try {
      encoderTimesteps(steps, t0);
    } catch (e) {
      bad(`metadata steps and t0: ${(e as Error).message}`);
    }
    const json = (k: string): unknown => {
      try {
        return JSON.parse(m[k] ?? '');
      } catch {
        return bad(`metadata ${k} is not JSON`);
      }
    };
    const labels = json('labels');
    if (labels !== null && !(Array.isArray(labels) && labels.every(Number.isInteger))) {
      bad('metadata labels is neither null nor a list of integers');
    }
    const alphaBars = json('alpha_bars');
    if (!Array.isArray(alphaBars) || !alphaBars.every((v) => typeof v === 'number')) {
      bad('metadata alpha_bars is not a list of numbers');
    }
    const read = async (name: string): Promise<{ shape: number[]; data: Float32Array }> => {
      const t = await file.read(name);
      if (t.dtype !== 'F32') bad(`tensor ${name} is ${t.dtype}, expected F32`);
      return { shape: t.shape, data: t.data as Float32Array };
    };
    const xT = await read('x_T');
    if (xT.shape.length < 2 || xT.shape[0]! < 1) bad(`x_T has shape [${xT.shape.join(', ')}]`);
    const [n, ...sample] = xT.shape;
    const K = eta > 0 ? steps - 1 : 0;
    const want = (name: string, shape: number[]) => {
      const e = file.entries.get(name);
      if (e && e.shape.join() !== shape.join()) {
        bad(`tensor ${name} has shape [${e.shape.join(', ')}]; x_T [${xT.shape.join(', ')}] and ` +
          `${steps} steps need [${shape.join(', ')}]`);
      }
      return e !== undefined;
    };
    if (eta > 0 && !want('eps', [n!, K, ...sample])) bad('no tensor eps (eta > 0)');
    if (eta === 0 && file.entries.has('eps')) bad('tensor eps in a DDIM inversion file (eta 0)');
    const hasResidual = want('residual', xT.shape);
    if (eta === 0 && hasResidual) bad('tensor residual in a DDIM inversion file (eta 0)');
    const eps = eta > 0 ? (await read('eps')).data : new Float32Array(0);
    const residual = hasResidual ? (await read('residual')).data : null;
    if ((alphaBars as number[]).length !== steps + 1) {
      bad(`metadata alpha_bars has ${(alphaBars as number[]).length} values for ${steps} steps`);
    }
    if (labels !== null && (labels as number[]).length !== n) {
      bad(`metadata labels has ${(labels as number[]).length} labels for ${n} images`);
    }
    return {
      z: { settings: { steps, t0, eta }, shape: xT.shape, xT: xT.data, eps, residual },
      model: m.model ?? '', seed, labels: labels as number[] | null,
      ...(m.source ? { source: m.source } : {}),
      alphaBars: Float64Array.from(alphaBars as number[]),
    };
  } finally {
    await file.close();
  }
}
