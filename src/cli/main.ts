/**
 * @file The `diffuse` command. Subcommands live one per file beside this one and register
 * themselves on the program here; each declares its options in one table (options.ts) and
 * calls pipelines/. Exit codes (errors.ts): 0 done, 1 failed while running, 2 bad command line
 * or config file, 130 interrupted.
 */
import { readFileSync } from 'node:fs';
import { Command, CommanderError } from 'commander';
import { registerAb } from './ab.js';
import { EXIT, exitCodeOf } from './errors.js';
import { registerClassify } from './classify.js';
import { registerConvert } from './convert.js';
import { registerD2nwg } from './d2nwg.js';
import { registerDiffDis } from './diffdis.js';
import { registerDdm, registerWorker } from './ddm.js';
import { registerDiffuseVae } from './diffusevae.js';
import { registerDivControl } from './divcontrol.js';
import { registerDistill } from './distill.js';
import { registerEchoDistill } from './echodistill.js';
import { registerEncode } from './encode.js';
import { registerEval } from './eval.js';
import { registerFinetune } from './finetune.js';
import { registerInvDiff } from './invdiff.js';
import { registerLdfacenet } from './ldfacenet.js';
import { registerMolrg } from './molrg.js';
import { registerMultiTask } from './multi-task.js';
import { registerTrainExperts } from './experts.js';
import { registerProbe } from './probe.js';
import { registerExport } from './export.js';
import { registerSample } from './sample.js';
import { registerServe } from './serve.js';
import { registerToy } from './toy.js';
import { registerTrainClassifier } from './train-classifier.js';
import { registerTrainVae } from './train-vae.js';
import { registerTrain } from './train.js';
import { registerVideo } from './video.js';
import { registerVideoEval } from './video-eval.js';

const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as {
  version: string;
};

export function buildProgram(): Command {
  const program = new Command('diffuse')
    .description('Diffusion models in TypeScript: train, sample, guide and accelerate them, ' +
      'compiled to ONNX and run on ONNX Runtime.')
    .version(pkg.version, '-v, --version', 'print the version')
    .showHelpAfterError('(run diffuse --help for usage)')
    .configureOutput({ outputError: (s, write) => write(s) })
    // Before the subcommands are added, so they inherit it: commander's errors are thrown to
    // main (exit code 2), not ended with process.exit(1) inside a subcommand.
    .exitOverride();
  registerTrain(program);
  registerFinetune(program);
  registerToy(program);
  registerMolrg(program);
  registerSample(program);
  registerExport(program);
  registerTrainClassifier(program);
  registerTrainVae(program);
  registerDiffuseVae(program);
  registerDivControl(program);
  registerD2nwg(program);
  registerLdfacenet(program);
  registerInvDiff(program);
  registerTrainExperts(program);
  registerEval(program);
  registerDistill(program);
  registerEchoDistill(program);
  registerClassify(program);
  registerProbe(program);
  registerEncode(program);
  registerAb(program);
  registerMultiTask(program);
  registerDiffDis(program);
  registerDdm(program);
  registerWorker(program);
  registerVideo(program);
  registerVideoEval(program);
  registerConvert(program);
  registerServe(program);
  return program;
}

export async function main(argv: readonly string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync([...argv], { from: 'user' });
    return EXIT.ok;
  } catch (e) {
    // Commander has printed its own messages (unknown option, missing argument, --help).
    if (!(e instanceof CommanderError)) console.error(`diffuse: ${(e as Error).message}`);
    return exitCodeOf(e);
  }
}
