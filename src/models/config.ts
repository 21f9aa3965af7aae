/**
 * @file Model configs as diffusers writes them: snake_case keys exactly as the Python
 * constructor's arguments, plus `_class_name` and `_diffusers_version`. Parsing checks types
 * against the defaults, fills missing keys from them, and warns about unknown keys.
 */

/** The diffusers version whose formats Diffuse writes (the newest that the golden files and
 *  the reference stack here were produced with). */
export const DIFFUSERS_VERSION = '0.31.0';

export class ConfigError extends Error {
  override name = 'ConfigError';
}

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

function kind(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  return typeof v;
}

export interface ReadConfigOptions {
  /** Called once per unknown key (default: console.warn). */
  warn?: (message: string) => void;
  /** Keys whose default is null but which take a value of this kind when set. */
  nullable?: Readonly<Record<string, 'number' | 'string' | 'array' | 'boolean' | 'object'>>;
  /** Other class names this config may carry (diffusers' aliases). */
  aliases?: readonly string[];
}

/**
 * Reads a diffusers config for `className`: every key of `defaults` is taken from `raw` when
 * present (its JSON kind must match the default's), else from the default.
 */
export function readConfig<T extends object>(className: string,
  raw: Record<string, unknown>, defaults: T, opts: ReadConfigOptions = {}): T {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new ConfigError(`${className} config: expected a JSON object, got ${kind(raw)}`);
  }
  const cls = raw._class_name;
  if (cls !== undefined && cls !== className && !opts.aliases?.includes(cls as string)) {
    throw new ConfigError(`config is for ${String(cls)}, not ${className}`);
  }
  const warn = opts.warn ?? ((m: string) => console.warn(`warning: ${m}`));
  const out: Record<string, unknown> = { ...(defaults as Record<string, unknown>) };
  for (const [key, value] of Object.entries(raw)) {
    if (key.startsWith('_')) continue;
    if (!(key in defaults)) {
      warn(`${className} config: unknown key '${key}' ignored`);
      continue;
    }
    const dflt = (defaults as Record<string, unknown>)[key];
    const want = dflt === null ? opts.nullable?.[key] : kind(dflt);
    const got = kind(value);
    if (value !== null && want !== undefined && got !== want) {
      throw new ConfigError(`${className} config: '${key}' must be ${want === 'array' ? 'an' : 'a'} ` +
        `${want}, got ${JSON.stringify(value)}`);
    }
    if (value === null && dflt !== null) {
      throw new ConfigError(`${className} config: '${key}' must be a ${kind(dflt)}, got null`);
    }
    out[key] = value;
  }
  return out as T;
}

/** A config as diffusers saves it: `_class_name`, `_diffusers_version`, then every key. */
export function toDiffusersConfig(className: string, config: Record<string, unknown>):
  Record<string, Json> {
  // The class name and version come last so a stray key in config cannot override them.
  return { ...(config as Record<string, Json>), _class_name: className, _diffusers_version: DIFFUSERS_VERSION };
}

/** Throws a ConfigError naming the key unless `ok`. */
export function requireConfig(ok: boolean, className: string, key: string, expected: string,
  value: unknown): void {
  if (!ok) {
    throw new ConfigError(`${className} config: '${key}' must be ${expected}, got ${JSON.stringify(value)}`);
  }
}
