/**
 * @file `diffuse convert`: a model or pipeline folder with its weights stored as float16 (half
 * the files; what shipped models use to stay small) or back to float32 (pipelines/convert.ts).
 */
import type { Command } from 'commander';
import { convertWeights } from '../pipelines/convert.js';
import { UsageError } from './errors.js';
import { addOptions, commandOptions, oneOf, path } from './options.js';

export const CONVERT_OPTIONS = {
  model: path({ arg: '<dir>', help: 'a model or pipeline folder' }),
  out: path({ arg: '<dir>', help: 'the converted folder (replaced whole if it exists)' }),
  dtype: oneOf(['float16', 'bfloat16', 'float32'], { arg: '<dtype>', help: 'how float weights are stored; ' +
    'loading widens them to float32', default: 'float16' }),
};

export function registerConvert(program: Command): void {
  addOptions(program.command('convert')
    .description('copy a model or pipeline folder with its float weights stored as float16, bfloat16 or float32'),
  CONVERT_OPTIONS)
    .action(async (_: unknown, cmd: Command) => {
      const o = commandOptions(CONVERT_OPTIONS, cmd).values;
      if (o.model === undefined) throw new UsageError('--model: expected a model or pipeline folder');
      if (o.out === undefined) throw new UsageError('--out: expected the folder to write');
      const r = await convertWeights(o.model, o.out, o.dtype);
      const mb = (b: number) => (b / 1e6).toFixed(2);
      console.log(`${r.files} weights file${r.files === 1 ? '' : 's'} as ${o.dtype}: ${mb(r.bytesBefore)} MB -> ` +
        `${mb(r.bytesAfter)} MB; wrote ${o.out}`);
    });
}
