/** @file Option parsers for the CLI: each names the option's expected form when it fails. */
import { InvalidArgumentError } from 'commander';

export function positiveInt(v: string, allowZero = false, what = 'value'): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < (allowZero ? 0 : 1)) {
    throw new InvalidArgumentError(`${what} must be a ${allowZero ? 'non-negative' : 'positive'} integer, got '${v}'`);
  }
  return n;
}

export function positiveNumber(v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`expected a positive number, got '${v}'`);
  return n;
}

export function choice(allowed: readonly string[]): (v: string) => string {
  return (v) => {
    if (!allowed.includes(v)) throw new InvalidArgumentError(`expected one of ${allowed.join(', ')}, got '${v}'`);
    return v;
  };
}

/** A bad combination of options found after parsing (commander reports parse errors itself). */
export class UsageError extends Error {
  override name = 'UsageError';
}
