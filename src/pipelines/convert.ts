/**
 * @file A model or pipeline folder with its float weights stored at another precision:
 * float16 halves the files (what diffusers calls the fp16 variant). Loading widens them back to
 * float32 (io/diffusers.ts), so the model computes in float32 from rounded weights; the
 * largest relative rounding is 2^-11 (float16) or 2^-8 (bfloat16). Everything that is not a
 * .safetensors file is copied as it is; integer tensors are kept.
 */
import { copyFile, mkdir, readdir, stat } from 'node:fs/promises';
import { join, relative, resolve, sep } from 'node:path';
import { SafetensorsFile, type TensorData } from '../io/safetensors.js';
import { writeSafetensors, type TensorInput } from '../io/safetensors-write.js';
import { replaceFolder } from '../util/atomic.js';

export type WeightsDtype = 'float32' | 'float16' | 'bfloat16';
const CODES = { float32: 'F32', float16: 'F16', bfloat16: 'BF16' } as const;
const FLOATS = new Set(['F64', 'F32', 'F16', 'BF16']);

export interface ConvertResult {
  /** .safetensors files rewritten, and their bytes before and after. */
  files: number;
  bytesBefore: number;
  bytesAfter: number;
}

/** Writes `src` to `dst` (replaced whole, atomically) with float weights stored as `dtype`. */
export async function convertWeights(src: string, dst: string, dtype: WeightsDtype): Promise<ConvertResult> {
  const [from, to] = [resolve(src), resolve(dst)];
  if (!(await stat(from).catch(() => null))?.isDirectory()) {
    throw new Error(`${src}: expected a model or pipeline folder`);
  }
  if (to === from || to.startsWith(from + sep)) {
    throw new Error(`${dst}: the output must be outside the folder it converts (${src})`);
  }
  if (!Object.hasOwn(CODES, dtype)) throw new Error(`dtype '${dtype}': expected float32, float16 or bfloat16`);
  const result: ConvertResult = { files: 0, bytesBefore: 0, bytesAfter: 0 };
  await replaceFolder(to, async (tmp) => {
    const walk = async (dir: string): Promise<void> => {
      for (const e of await readdir(dir, { withFileTypes: true })) {
        const path = join(dir, e.name);
        const out = join(tmp, relative(from, path));
        if (e.isDirectory()) {
          await mkdir(out, { recursive: true });
          await walk(path);
        } else if (e.name.endsWith('.safetensors')) {
          await convertFile(path, out, dtype);
          result.files++;
          result.bytesBefore += (await stat(path)).size;
          result.bytesAfter += (await stat(out)).size;
        } else if (e.isFile()) {
          await copyFile(path, out);
        } else {
          throw new Error(`${path}: expected only folders and regular files in a model folder`);
        }
      }
    };
    await walk(from);
  });
  return result;
}

async function convertFile(path: string, out: string, dtype: WeightsDtype): Promise<void> {
  const file = await SafetensorsFile.open(path);
  try {
    const tensors = new Map<string, TensorInput>();
    for (const [name, t] of await file.readAll({ widen: true })) {
      tensors.set(name, FLOATS.has(t.dtype) ? { dtype: CODES[dtype], shape: t.shape,
        data: Float32Array.from(t.data as ArrayLike<number>) } as TensorInput : asInput(t));
    }
    await writeSafetensors(out, tensors, file.metadata);
  } finally {
    await file.close();
  }
}

const asInput = (t: TensorData): TensorInput => ({ dtype: t.dtype, shape: t.shape, data: t.data }) as TensorInput;
