/** @file Runs the `diffuse` command in-process for CLI tests, capturing what it prints. */
import { main } from '../../src/cli/main.js';

/** Runs `diffuse ...args`: the exit code, what it printed with console.log and with
 *  console.error. */
export async function runCli(args: string[]): Promise<{ code: number; printed: string; errors: string }> {
  const [lines, errors]: string[][] = [[], []];
  const [log, error] = [console.log, console.error];
  console.log = (...a: unknown[]) => { lines.push(a.join(' ')); };
  console.error = (...a: unknown[]) => { errors.push(a.join(' ')); };
  try {
    const code = await main(args);
    return { code, printed: lines.join('\n'), errors: errors.join('\n') };
  } finally {
    [console.log, console.error] = [log, error];
  }
}
