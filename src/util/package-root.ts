/** @file The folder of Diffuse's own package.json, where the shipped models live. */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

let root: string | undefined;

/** The folder of the `diffuse` package.json above this file (from dist/, .build/ or an
 *  installed copy in node_modules). */
export function packageRoot(): string {
  if (root) return root;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg) && (JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name ===
      'diffuse') return (root = dir);
    const up = dirname(dir);
    if (up === dir) throw new Error(`no diffuse package.json above ${import.meta.url}`);
    dir = up;
  }
}
