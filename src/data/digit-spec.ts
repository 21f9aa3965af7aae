/**
 * @file Which MNIST digits a run uses: `mnist` or `mnist-bold`, optionally narrowed to some
 * classes (`mnist:0-4`, `mnist-bold:5,7,9`). Adapting a model pre-trained on some classes to
 * the others (DiffFit's new-class setting) needs both halves by name, for training and for the
 * MNIST-FID reference alike.
 */
import { subset, type ImageDataset } from './dataset.js';

export const DIGIT_DOMAINS = ['mnist', 'mnist-bold'] as const;
export type DigitDomain = (typeof DIGIT_DOMAINS)[number];

export interface DigitSpec {
  domain: DigitDomain;
  /** Ascending classes to keep; undefined keeps all ten. */
  digits?: readonly number[];
}

export const DIGIT_SPEC_SPELLING = 'mnist or mnist-bold, optionally with :DIGITS (a range ' +
  'such as 0-4, or a list such as 5,7,9)';

/** Parses `mnist`, `mnist-bold` or either with `:DIGITS`; undefined for any other name (a
 *  folder of PNGs), so callers can fall through to their other sources. */
export function parseDigitSpec(spec: string): DigitSpec | undefined {
  const m = /^(mnist|mnist-bold)(?::(.*))?$/.exec(spec);
  if (!m) return undefined;
  const domain = m[1] as DigitDomain;
  if (m[2] === undefined) return { domain };
  const digits = new Set<number>();
  for (const part of m[2].split(',')) {
    const r = /^\s*(\d)\s*(?:-\s*(\d)\s*)?$/.exec(part);
    if (!r) throw new RangeError(`${spec}: '${part}' is not a digit 0-9 or a range such as 0-4`);
    const [lo, hi] = [Number(r[1]), Number(r[2] ?? r[1])];
    if (hi < lo) throw new RangeError(`${spec}: the range ${lo}-${hi} runs backwards`);
    for (let d = lo; d <= hi; d++) digits.add(d);
  }
  return { domain, digits: [...digits].sort((a, b) => a - b) };
}

/** The spec's canonical name (`mnist:0-4` stays, `mnist:4,3,2` becomes `mnist:2-4`), for file
 *  names and logs. */
export function digitSpecName(s: DigitSpec): string {
  if (!s.digits) return s.domain;
  const runs: string[] = [];
  for (let i = 0; i < s.digits.length;) {
    let j = i;
    while (j + 1 < s.digits.length && s.digits[j + 1] === s.digits[j]! + 1) j++;
    runs.push(j === i ? `${s.digits[i]}` : `${s.digits[i]}-${s.digits[j]}`);
    i = j + 1;
  }
  return `${s.domain}:${runs.join(',')}`;
}

/** The images of `d` whose label is one of `digits`. */
export function keepClasses(d: ImageDataset, digits: readonly number[]): ImageDataset {
  if (!d.labels) throw new TypeError('keepClasses: the dataset has no labels');
  const keep = new Set(digits);
  const rows: number[] = [];
  d.labels.forEach((l, i) => { if (keep.has(l)) rows.push(i); });
  return subset(d, rows);
}
