/**
 * @file The CLI's options, declared once. Each command's options are one table of specs (kind,
 * range or choices, default, help); from the table come the commander options with their
 * parsers and defaults, the checks on `--config` file keys, and the --help text. A flag and a
 * config key go through the same check and fail with the same wording:
 *
 *     --steps: expected an integer >= 1, got '-5'
 *     "steps" in config file run.json: expected an integer >= 1, got -5
 *
 * Values are checked where they enter, once; commands receive typed values. Precedence: flags
 * given on the command line, then the config file, then the table's defaults.
 */
import { readFileSync } from 'node:fs';
import { Command, Option } from 'commander';
import { UsageError } from './errors.js';

/** A value its option's check refused: the form expected, and sometimes why it fell short. */
class Refused extends Error {
  constructor(readonly expected: string, readonly why?: string) {
    super(`expected ${expected}`);
  }
}

/** The one wording of every refusal: `AT: expected FORM, got VALUE (WHY)`. */
function refusal(at: string, expected: string, got: string, why?: string): UsageError {
  return new UsageError(`${at}: expected ${expected}, got ${got}${why ? ` (${why})` : ''}`);
}

type Kind = 'int' | 'number' | 'enum' | 'boolean' | 'string' | 'path' | 'custom';

/**
 * One option. `T` is the value's type; `D` says whether it has a default (and so is never
 * undefined after resolution). Built by the functions below, never by hand.
 */
export interface OptionSpec<T = unknown, D extends boolean = boolean> {
  readonly kind: Kind;
  readonly help: string;
  /** The argument's placeholder in --help (`<n>`); undefined for a boolean flag. */
  readonly arg: string | undefined;
  readonly default: T | undefined;
  /** The form a value must take, as errors and --help word it: `an integer >= 1`. */
  readonly expected: string;
  /** Whether --help repeats `expected` (ranges and choices; not free text). */
  readonly showExpected: boolean;
  /** Accepted as a flag only, not as a config file key (`--config` itself). */
  readonly flagOnly: boolean;
  /** A list the flag may be given for repeatedly (`--variant a.json --variant b.json`), each
   *  time adding to it. */
  readonly repeatable?: boolean;
  /** The value a flag's text stands for; throws Refused. */
  readonly fromText: (text: string) => T;
  /** The value a config file's JSON value stands for; throws Refused. */
  readonly fromJson: (json: unknown) => T;
  /** Type-level only: whether a default exists. */
  readonly hasDefault?: D;
}

/** A command's options, keyed by the camelCase form of their long names (`batchSize`). */
export type Schema = Readonly<Record<string, OptionSpec>>;

export type ValueOf<O> =
  O extends OptionSpec<infer T, infer D> ? (D extends true ? T : T | undefined) : never;
export type Values<S extends Schema> = { -readonly [K in keyof S]: ValueOf<S[K]> };

/** What every builder takes: help text, an optional default, the placeholder in --help. */
interface Doc<T> {
  help: string;
  default?: T;
  arg?: string;
}
type Has<O> = O extends { default: unknown } ? true : false;

interface Checks<T> {
  expected: string;
  fromText: (text: string) => T;
  fromJson: (json: unknown) => T;
  showExpected?: boolean;
}

function spec<T, D extends boolean>(kind: Kind, o: Doc<T>, arg: string | undefined,
  c: Checks<T>): OptionSpec<T, D> {
  return { kind, help: o.help, arg, default: o.default, showExpected: c.showExpected ?? true,
    flagOnly: false, expected: c.expected, fromText: c.fromText, fromJson: c.fromJson };
}

/** JSON's name for a value's type, for `got "100" (a string, not a number)`. */
const jsonType = (v: unknown): string =>
  v === null ? 'null' : Array.isArray(v) ? 'an array' : `a ${typeof v}`;

/** `v` as the JSON type an option takes, or a refusal naming the type it has. */
function asJson<K extends 'number' | 'string' | 'boolean'>(v: unknown, type: K, expected: string):
  { number: number; string: string; boolean: boolean }[K] {
  if (typeof v !== type) throw new Refused(expected, `${jsonType(v)}, not a ${type}`);
  return v as { number: number; string: string; boolean: boolean }[K];
}

// ---- numbers ----

/** An interval of allowed values, open or closed at each end. */
interface Range { min: number; max: number; minOpen: boolean; maxOpen: boolean }

/** `(0, 10]` -> 0 < x <= 10. */
function parseRange(s: string): Range {
  const m = /^([[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])$/.exec(s);
  const [min, max] = [Number(m?.[2]), Number(m?.[3])];
  if (!m || !Number.isFinite(min) || !Number.isFinite(max) || !(min < max)) {
    throw new Error(`option range '${s}': expected the form (a, b], [a, b), ... with a < b`);
  }
  return { min, max, minOpen: m[1] === '(', maxOpen: m[4] === ')' };
}

/** Decimal notation only: no hex, no 'Infinity', no 'NaN', no empty string. */
const DECIMAL = /^[+-]?(\d+(\.\d*)?|\.\d+)(e[+-]?\d+)?$/i;

/** The number checks of `int` and `num`, for a flag's text and for a config value alike. */
function numberChecks(expected: string, r: Range, integer: boolean): Checks<number> {
  const check = (n: number): number => {
    if (!Number.isFinite(n)) throw new Refused(expected, 'not a finite number');
    if (integer && !Number.isInteger(n)) throw new Refused(expected);
    if (integer && !Number.isSafeInteger(n)) {
      throw new Refused(expected, 'beyond 2^53, the largest exact integer');
    }
    if ((r.minOpen ? n <= r.min : n < r.min) || (r.maxOpen ? n >= r.max : n > r.max)) {
      throw new Refused(expected);
    }
    return n;
  };
  return {
    expected,
    fromText: (t) => {
      if (!DECIMAL.test(t.trim())) throw new Refused(expected);
      return check(Number(t));
    },
    fromJson: (v) => check(asJson(v, 'number', expected)),
  };
}

/** An integer >= `min` (and <= `max` when given). */
export function int<const O extends Doc<number> & { min: number; max?: number }>(o: O):
  OptionSpec<number, Has<O>> {
  const range = { min: o.min, max: o.max ?? Infinity, minOpen: false, maxOpen: false };
  const expected = o.max === undefined ? `an integer >= ${o.min}`
    : `an integer from ${o.min} to ${o.max}`;
  return spec('int', o, o.arg ?? '<n>', numberChecks(expected, range, true));
}

/** A finite number in `range`, written as an interval: `(0, 10]`, `[0, 1)`. */
export function num<const O extends Doc<number> & { range: string }>(o: O):
  OptionSpec<number, Has<O>> {
  const checks = numberChecks(`a number in ${o.range}`, parseRange(o.range), false);
  return spec('number', o, o.arg ?? '<x>', checks);
}

// ---- words ----

/** One of `values`. A near miss gets a did-you-mean. */
export function oneOf<const V extends string, const O extends Doc<NoInfer<V>>>(
  values: readonly V[], o: O): OptionSpec<V, Has<O>> {
  const expected = `one of ${values.join(', ')}`;
  const check = (s: string): V => {
    if ((values as readonly string[]).includes(s)) return s as V;
    const near = closest(s, values);
    throw new Refused(expected, near ? `did you mean ${near}?` : undefined);
  };
  return spec('enum', o, o.arg ?? '<name>', {
    expected, fromText: check, fromJson: (v) => check(asJson(v, 'string', expected)),
  });
}

/** A flag without an argument: false unless given (`"resume": true` in a config file). */
export function flag(o: { help: string }): OptionSpec<boolean, true> {
  const expected = 'true or false';
  return spec('boolean', { ...o, default: false }, undefined, {
    expected, showExpected: false,
    fromText: () => true,
    fromJson: (v) => asJson(v, 'boolean', expected),
  });
}

function words<O extends Doc<string>>(kind: 'string' | 'path', o: O, expected: string,
  arg: string): OptionSpec<string, Has<O>> {
  const check = (s: string): string => {
    if (s.trim() === '') throw new Refused(expected);
    return s;
  };
  return spec(kind, o, o.arg ?? arg, {
    expected, showExpected: false,
    fromText: check,
    fromJson: (v) => check(asJson(v, 'string', expected)),
  });
}

/** Free text (not empty). */
export function text<const O extends Doc<string>>(o: O): OptionSpec<string, Has<O>> {
  return words('string', o, 'a non-empty string', '<text>');
}

/** A file or folder path (not empty; whether it exists is the pipeline's to say). */
export function path<const O extends Doc<string>>(o: O): OptionSpec<string, Has<O>> {
  return words('path', o, 'a path', '<path>');
}

/** A list of paths: the flag repeated (`--variant a.json --variant b.json`) or given once with
 *  commas; in a config file, an array of strings. */
export function pathList<const O extends Doc<string[]>>(o: O): OptionSpec<string[], Has<O>> {
  const fromText = (t: string): string[] => {
    const items = t.split(',').map((x) => x.trim());
    if (items.some((x) => x === '')) throw new Refused('paths separated by commas', 'an empty entry');
    return items;
  };
  return { ...spec<string[], Has<O>>('custom', o, o.arg ?? '<path>', {
    expected: 'one or more paths', showExpected: false, fromText,
    fromJson: (v) => {
      if (typeof v === 'string') return fromText(v);
      if (Array.isArray(v) && v.length > 0 && v.every((x) => typeof x === 'string' && x !== '')) return [...v] as string[];
      throw new Refused('a path or a list of paths', jsonType(v));
    },
  }), repeatable: true };
}

/** The `--config <file.json>` option: a path, on the command line only. */
export function configFile(help: string): OptionSpec<string, false> {
  return { ...path({ help, arg: '<file.json>' }), flagOnly: true };
}

/**
 * A value with a syntax of its own (`1,3,7`, `ddim:10,heun:5`): `parse` takes the flag's text
 * and throws with the reason. In a config file it takes a string, a number, or an array
 * (joined with commas, so `"class": [1, 3]` means `--class 1,3`).
 */
export function custom<T, const O extends Doc<T | Readonly<T>> & { expected: string }>(
  parse: (text: string) => T, o: O): OptionSpec<T, Has<O>> {
  const fromText = (t: string): T => {
    try {
      return parse(t);
    } catch (e) {
      throw new Refused(o.expected, (e as Error).message);
    }
  };
  const scalar = (v: unknown) =>
    typeof v === 'string' || (typeof v === 'number' && Number.isFinite(v));
  return spec('custom', o, o.arg ?? '<value>', {
    expected: o.expected, showExpected: false, fromText,
    fromJson: (v) => {
      if (scalar(v)) return fromText(String(v));
      if (Array.isArray(v) && v.length > 0 && v.every(scalar)) return fromText(v.join(','));
      throw new Refused(o.expected, `${jsonType(v)}, not a string or a list`);
    },
  });
}

// ---- names and suggestions ----

/** `batchSize` -> `batch-size`, the long option's name and a config file's key. */
export const kebab = (key: string): string => key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
const camel = (key: string): string =>
  key.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());

/** Edit distance, for did-you-mean. */
function distance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++) {
      const swap = row[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1);
      next[j] = Math.min(row[j]! + 1, next[j - 1]! + 1, swap);
    }
    row = next;
  }
  return row[b.length]!;
}

/** The candidate within a third of the word's length in edits (at least one), if any. */
function closest(word: string, candidates: readonly string[]): string | undefined {
  const limit = Math.max(1, Math.floor(word.length / 3));
  let best: string | undefined;
  let bestD = Infinity;
  for (const c of candidates) {
    const d = distance(word.toLowerCase(), c.toLowerCase());
    if (d <= limit && d < bestD) [best, bestD] = [c, d];
  }
  return best;
}

// ---- commander ----

/** The --help line of an option: its help, then its range or choices. */
export function helpText(s: OptionSpec): string {
  return s.showExpected ? `${s.help}; ${s.expected}` : s.help;
}

/** Adds the schema's options to `cmd`, each with its parser and default. */
export function addOptions(cmd: Command, schema: Schema): Command {
  for (const [key, s] of Object.entries(schema)) {
    const o = new Option(s.arg ? `--${kebab(key)} ${s.arg}` : `--${kebab(key)}`, helpText(s));
    if (s.arg) {
      // A UsageError (not commander's InvalidArgumentError) passes through commander, so the
      // message is ours and the same as a config file's.
      o.argParser((t: string, previous: unknown) => {
        try {
          const v = s.fromText(t);
          // A repeated list flag adds to what came before it (not to the default).
          return s.repeatable && Array.isArray(previous) && previous !== s.default
            ? [...previous, ...(v as unknown[])] : v;
        } catch (e) {
          throw e instanceof Refused ? refusal(`--${kebab(key)}`, e.expected, `'${t}'`, e.why) : e;
        }
      });
    }
    if (s.default !== undefined && s.kind !== 'boolean') o.default(s.default);
    cmd.addOption(o);
  }
  return cmd;
}

// ---- config files ----

/** A config value as the file wrote it. */
function showJson(v: unknown): string {
  if (typeof v === 'number') return String(v); // JSON.stringify(Infinity) would say null
  const s = JSON.stringify(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

/**
 * The options a parsed config file sets, each checked as its flag is. Keys are the long
 * options' names (`batch-size`; `batchSize` is accepted too); `file` names the file in errors.
 */
export function parseConfig<S extends Schema>(schema: S, json: unknown, file: string,
  command: string): Partial<Values<S>> {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new UsageError(`config file ${file}: expected a JSON object of options, ` +
      `got ${jsonType(json)}`);
  }
  const keys = Object.keys(schema).filter((k) => !schema[k]!.flagOnly);
  const out: Record<string, unknown> = {};
  const seen: Record<string, string> = {};
  for (const [k, v] of Object.entries(json)) {
    const at = `"${k}" in config file ${file}`;
    const key = camel(k);
    if (!keys.includes(key) || (k !== kebab(key) && k !== key)) {
      const near = closest(k, keys.map(kebab));
      const hint = key in schema ? `--${kebab(key)} is a flag only`
        : near ? `did you mean "${near}"?` : `see diffuse ${command} --help`;
      throw new UsageError(`${at}: not an option of diffuse ${command} (${hint})`);
    }
    if (seen[key]) throw new UsageError(`${at}: sets --${kebab(key)} again (also "${seen[key]}")`);
    seen[key] = k;
    try {
      out[key] = schema[key]!.fromJson(v);
    } catch (e) {
      if (!(e instanceof Refused)) throw e;
      throw refusal(at, e.expected, showJson(v), e.why);
    }
  }
  return out as Partial<Values<S>>; // sound: each value came from its own option's check
}

/** Reads and checks a config file (parseConfig); a missing or malformed file is a usage error. */
export function readConfigFile<S extends Schema>(schema: S, file: string, command: string):
  Partial<Values<S>> {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new UsageError(`config file ${file}: ${(e as Error).message}`);
  }
  return parseConfig(schema, json, file, command);
}

// ---- resolution ----

export type Source = 'flag' | 'config' | 'default';

export interface Resolved<S extends Schema> {
  readonly values: Values<S>;
  readonly sources: { readonly [K in keyof S]: Source };
  /** A usage error about option `key` as the user gave it, for checks that span options:
   *  `--size: expected a dit-moe preset (s, tiny), got 'xs'`. */
  refuse(key: keyof S & string, expected: string, why?: string): UsageError;
}

/**
 * The values a command runs with: `given` (flags from the command line, already checked),
 * over the `--config` file when the schema has a `config` option and it was given, over the
 * defaults.
 */
export function resolveOptions<S extends Schema>(schema: S, command: string,
  given: Readonly<Record<string, unknown>>): Resolved<S> {
  const file = typeof given.config === 'string' && 'config' in schema ? given.config : undefined;
  const fromFile: Record<string, unknown> = file ? readConfigFile(schema, file, command) : {};
  const values: Record<string, unknown> = {};
  const sources: Record<string, Source> = {};
  for (const [key, s] of Object.entries(schema)) {
    const source: Source = key in given ? 'flag' : key in fromFile ? 'config' : 'default';
    sources[key] = source;
    values[key] = source === 'flag' ? given[key] : source === 'config' ? fromFile[key] : s.default;
  }
  const refuse = (key: string, expected: string, why?: string) => {
    const [v, source] = [values[key], sources[key]];
    const note = [source === 'default' ? 'the default' : '', why ?? ''].filter(Boolean);
    return source === 'config'
      ? refusal(`"${kebab(key)}" in config file ${file}`, expected, showJson(v), note.join('; '))
      : refusal(`--${kebab(key)}`, expected, `'${String(v)}'`, note.join('; '));
  };
  // Sound: every value came from its option's parser (flag or file) or is its default.
  return { values: values as Values<S>, sources: sources as Resolved<S>['sources'], refuse };
}

/** The resolved options of a parsed commander command (flags given on its command line). */
export function commandOptions<S extends Schema>(schema: S, cmd: Command): Resolved<S> {
  const all = cmd.opts();
  const given = Object.fromEntries(Object.keys(all)
    .filter((k) => cmd.getOptionValueSource(k) === 'cli').map((k) => [k, all[k]]));
  return resolveOptions(schema, cmd.name(), given);
}

/** Parses `argv` against a schema alone, as a command would before its action runs. Errors
 *  are thrown, not printed (commander's own errors as CommanderError). */
export function parseArgs<S extends Schema>(schema: S, command: string, argv: readonly string[]):
  Resolved<S> {
  const cmd = addOptions(new Command(command), schema).exitOverride()
    .configureOutput({ writeOut: () => {}, writeErr: () => {} });
  cmd.parse([...argv], { from: 'user' });
  return commandOptions(schema, cmd);
}
