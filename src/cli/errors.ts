/** @file How the `diffuse` command fails: its error classes and exit codes. */
import { CommanderError } from 'commander';

/** Exit codes: 2 for a bad command line or config file, 1 for a failure while running, 130
 *  (128 + SIGINT, the shell's convention) for a run stopped by Ctrl-C. */
export const EXIT = { ok: 0, failure: 1, usage: 2, interrupted: 130 } as const;

/** A bad option or combination of options: the CLI prints its one line and exits with 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** A run stopped by a signal: the CLI prints the message (what was kept, how to go on) and
 *  exits with 130. */
export class Interrupted extends Error {
  override name = 'Interrupted';
}

/** The exit code for an error that ended a command. Commander's own errors (unknown option,
 *  missing argument) are usage errors; its --help and --version "errors" are not failures. */
export function exitCodeOf(e: unknown): number {
  if (e instanceof CommanderError) return e.exitCode === 0 ? EXIT.ok : EXIT.usage;
  if (e instanceof UsageError) return EXIT.usage;
  return e instanceof Interrupted ? EXIT.interrupted : EXIT.failure;
}
