/**
 * @file The `diffuse` command. Subcommands live one per file beside this one and register
 * themselves on the program here.
 */
import { readFileSync } from 'node:fs';
import { Command, CommanderError } from 'commander';
import { registerEval } from './eval.js';
import { registerSample } from './sample.js';
import { registerToy } from './toy.js';
import { registerTrainClassifier } from './train-classifier.js';
import { registerTrain } from './train.js';

const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as {
  version: string;
};

export function buildProgram(): Command {
  const program = new Command('diffuse')
    .description('Diffusion models in TypeScript: train, sample, guide and accelerate them, ' +
      'compiled to ONNX and run on ONNX Runtime.')
    .version(pkg.version, '-v, --version', 'print the version')
    .showHelpAfterError('(run diffuse --help for usage)')
    .configureOutput({ outputError: (s, write) => write(s) });
  registerTrain(program);
  registerToy(program);
  registerSample(program);
  registerTrainClassifier(program);
  registerEval(program);
  return program;
}

export async function main(argv: readonly string[]): Promise<number> {
  const program = buildProgram().exitOverride();
  try {
    await program.parseAsync([...argv], { from: 'user' });
    if (argv.length === 0) program.outputHelp();
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode;
    console.error(`diffuse: ${(e as Error).message}`);
    return 1;
  }
}
