/** @file `diffuse export`: a pipeline's denoiser as one ONNX file plus a JSON sidecar
 *  (pipelines/export.ts), for the browser playground and other ONNX runtimes. */
import type { Command } from 'commander';
import { ExportPathError, exportModelFolder } from '../pipelines/export.js';
import { UsageError } from './errors.js';
import { addOptions, commandOptions, int, path } from './options.js';
import { DEFAULT_MODEL_DIR } from './sample.js';

export const EXPORT_OPTIONS = {
  model: path({ arg: '<dir>', help: `pipeline or model folder (default: ${DEFAULT_MODEL_DIR})` }),
  out: path({ arg: '<file.onnx>', help: 'the ONNX file to write; the sidecar (prediction type, ' +
    'sample shape, classes, scheduler config) goes beside it as NAME.json', default: 'model.onnx' }),
  batch: int({ min: 1, help: 'a fixed batch size (default: any, a dimension named batch)' }),
};

export function registerExport(program: Command): void {
  addOptions(program.command('export')
    .description('write a model\'s denoiser as one self-contained ONNX file (weights included; ' +
      'inputs x, t and class_labels, output prediction) and a JSON sidecar, for ' +
      'onnxruntime-web and other runtimes'), EXPORT_OPTIONS)
    .action(async (_: unknown, cmd: Command) => {
      const o = commandOptions(EXPORT_OPTIONS, cmd).values;
      let r;
      try {
        r = await exportModelFolder(o.model ?? DEFAULT_MODEL_DIR, o.out,
          o.batch === undefined ? {} : { batch: o.batch });
      } catch (e) {
        // The out path's form is the command line's fault (exit 2); the rest is not.
        if (e instanceof ExportPathError) {
          throw new UsageError(`--out: ${e.message.replace(/^export: /, '')}`, { cause: e });
        }
        throw e;
      }
      for (const note of r.notes) console.error(`note: ${note}`);
      const m = r.meta;
      const x = m.inputs[0]!.shape.join(', ');
      console.log(`wrote ${r.onnxPath} (${(r.bytes / 2 ** 20).toFixed(1)} MiB: ${m.modelClass}, ` +
        `x [${x}] -> ${m.prediction}${m.numClasses ? `, ${m.numClasses} classes, null class ` +
          `${m.nullClass}` : ', unconditional'}) and ${r.metaPath}`);
    });
}
