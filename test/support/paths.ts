/** @file Where tests find the repository, its test data and the golden files. */
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

function findRepoRoot(start: string): string {
  let dir = start;
  for (;;) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'tsconfig.json'))) return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error(`no repository root (package.json + tsconfig.json) above ${start}`);
    dir = up;
  }
}

/** The repository root (the folder holding package.json), found from this compiled file. */
export const repoRoot = findRepoRoot(dirname(fileURLToPath(import.meta.url)));

/** Test data committed with the project. */
export const testDataDir = join(repoRoot, 'test', 'data');

/** The golden files written by diffusers 0.31 that the tests read, without the weights (see
 * test/data/golden/README.md; golden.ts regenerates the weights from the seed). */
export const goldenDir = join(testDataDir, 'golden');

/** `../shared/` beside the repository, when there is one (a developer's machine, not a fresh
 * clone): the full golden set, weights included. Only optional cross-checks read it. */
export const sharedDir = resolve(repoRoot, '..', 'shared');
export const sharedGoldenDir = join(sharedDir, 'golden');
