/**
 * @file JSON as Python's `json` module reads and writes it, for diffusers' config files:
 * `json.dumps(indent=2, sort_keys=True)` output byte for byte (except that a float with an
 * integral value, `0.0`, is written as the int `0`: JS has one number type), and Python's NaN /
 * Infinity tokens read and written as json.loads / json.dumps do.
 */

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Python's float repr: shortest digits, exponent form below 1e-4 and from 1e16. */
function pyNumber(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (!Number.isFinite(v)) return v > 0 ? 'Infinity' : '-Infinity';
  if (Object.is(v, -0)) return '-0.0';
  if (Number.isInteger(v) && Math.abs(v) < 1e16) return String(v); // JSON ints stay ints
  const [mant, exp] = v.toExponential().split('e') as [string, string];
  const e = Number(exp);
  if (e >= -4 && e < 16) return String(v);
  return `${mant}e${e < 0 ? '-' : '+'}${String(Math.abs(e)).padStart(2, '0')}`;
}

/** `json.dumps(value, indent=2, sort_keys=True)` (ensure_ascii, NaN/Infinity tokens). */
export function toPythonJson(value: unknown, indent = ''): string {
  if (value === null) return 'null';
  if (typeof value === 'boolean') return String(value);
  if (typeof value === 'number') return pyNumber(value);
  if (typeof value === 'string') {
    return JSON.stringify(value).replace(/[^\x20-\x7e]/g,
      (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  }
  const inner = `${indent}  `;
  if (Array.isArray(value)) {
    if (value.length === 0) return '[]';
    return `[\n${value.map((v) => inner + toPythonJson(v, inner)).join(',\n')}\n${indent}]`;
  }
  if (typeof value === 'object') {
    const obj = value as Record<string, unknown>;
    const keys = Object.keys(obj).filter((k) => obj[k] !== undefined)
      .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)); // as sort_keys, but past U+FFFF
    if (keys.length === 0) return '{}';
    const items = keys.map((k) => `${inner}${toPythonJson(k)}: ${toPythonJson(obj[k], inner)}`);
    return `{\n${items.join(',\n')}\n${indent}}`;
  }
  throw new TypeError(`toPythonJson: cannot write a ${typeof value}`);
}

const NONFINITE = /"(?:[^"\\]|\\.)*"|-?Infinity|NaN/g;

/** JSON.parse that also takes Python's NaN / Infinity / -Infinity, as json.loads does. */
export function parsePythonJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (first) {
    const marks: Record<string, number> = {
      '\u0000NaN': NaN, '\u0000Infinity': Infinity, '\u0000-Infinity': -Infinity,
    };
    let replaced = false;
    const quoted = text.replace(NONFINITE, (tok) => {
      if (tok.startsWith('"')) return tok;
      replaced = true;
      return JSON.stringify(`\u0000${tok}`);
    });
    if (!replaced) throw first;
    return JSON.parse(quoted, (_k, v: unknown) =>
      typeof v === 'string' && Object.hasOwn(marks, v) ? marks[v] : v);
  }
}
