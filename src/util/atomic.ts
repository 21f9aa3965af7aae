/**
 * @file Atomic writes. A file is written to a temp file in the same folder and renamed over
 * the target, so a reader sees the old file or the new one, never half of one. A folder (a
 * checkpoint, an exported pipeline) is built in a sibling temp folder and swapped in with two
 * renames; POSIX has no atomic exchange of two folders, so a crash between the renames leaves
 * the new folder complete under its temp name and the old one under a `.old-` name.
 * `recoverFolder` finds the newest complete one and puts it back, so no completed folder is
 * ever lost.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';

export async function writeFileAtomic(path: string, bytes: Uint8Array | string): Promise<void> {
  await mkdir(dirname(path) || '.', { recursive: true });
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    await writeFile(tmp, bytes);
    injectedError('DIFFUSE_FILE_WRITE_ERROR', fileErrors, tmp);
    await rename(tmp, path);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}

/** The points of a folder swap where a crash leaves something to recover. */
export type SwapPhase = 'built' | 'old-moved' | 'swapped';

const tag = (): string => `${process.pid}-${randomBytes(4).toString('hex')}`;

/**
 * Test hook for crash tests of the built CLI: DIFFUSE_KILL_AT=<phase>[:<n>] kills this process
 * with SIGKILL the n-th time (default 1) a folder swap reaches <phase>.
 */
let killCount = 0;
function killPoint(phase: SwapPhase): void {
  const spec = process.env['DIFFUSE_KILL_AT'];
  if (!spec) return;
  const [want, nth] = spec.split(':');
  if (want === phase && ++killCount === Number(nth ?? 1)) process.kill(process.pid, 'SIGKILL');
}

/**
 * Test hooks for full-disk tests of the built CLI where no small file system can be mounted:
 * DIFFUSE_WRITE_ERROR=<code>[:<n>] (ENOSPC, EROFS, ...) makes the n-th folder swap (default 1)
 * fail as a write into its temp folder failing with that errno would: the temp folder is
 * removed, the target folder is left as it was, and the error (with `code`, and the temp
 * folder as `path`) reaches the caller. DIFFUSE_FILE_WRITE_ERROR does the same to the n-th
 * writeFileAtomic (a sampled PNG, say): its temp file is removed, the target left as it was.
 */
const swapErrors = { count: 0 };
const fileErrors = { count: 0 };
function injectedError(variable: string, counter: { count: number }, tmp: string): void {
  const spec = process.env[variable];
  if (!spec) return;
  const [code, nth] = spec.split(':');
  if (!code || ++counter.count !== Number(nth ?? 1)) return;
  throw Object.assign(new Error(`${code}: injected by ${variable}, write '${tmp}'`),
    { code, syscall: 'write', path: tmp });
}

export interface ReplaceFolderOptions {
  /** Called after each phase; an exception thrown here leaves the folders as a crash at that
   *  point would (tests inject crashes this way). */
  onPhase?: (phase: SwapPhase) => void;
}

/**
 * Builds `dir` in a sibling temp folder and swaps it in: readers never see half a folder.
 * `build` must write the file that marks the folder complete last (see recoverFolder).
 */
export async function replaceFolder(dir: string, build: (tmp: string) => Promise<void>,
  opts: ReplaceFolderOptions = {}): Promise<void> {
  const target = resolve(dir);
  const t = tag();
  const tmp = `${target}.tmp-${t}`;
  const old = `${target}.old-${t}`;
  const phase = (p: SwapPhase): void => {
    killPoint(p);
    opts.onPhase?.(p);
  };
  await mkdir(tmp, { recursive: true });
  try {
    await build(tmp);
    injectedError('DIFFUSE_WRITE_ERROR', swapErrors, tmp);
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
  phase('built');
  if (existsSync(target)) {
    try {
      await rename(target, old);
    } catch (e) {
      await rm(tmp, { recursive: true, force: true });
      throw e;
    }
    phase('old-moved');
  }
  await rename(tmp, target);
  phase('swapped');
  await rm(old, { recursive: true, force: true });
}

/**
 * After a crash: if `dir` is missing, the newest complete leftover of a swap (by `rank`, which
 * returns null for an incomplete folder) is renamed back to `dir`; every other leftover is
 * removed. Returns what was restored, or null. Call it with the run's lock held.
 */
export async function recoverFolder(dir: string,
  rank: (folder: string) => Promise<number | null>): Promise<string | null> {
  const target = resolve(dir);
  const parent = dirname(target);
  if (!existsSync(parent)) return null;
  const prefix = `${basename(target)}.`;
  const leftovers = (await readdir(parent))
    .filter((f) => f.startsWith(`${prefix}tmp-`) || f.startsWith(`${prefix}old-`))
    .map((f) => join(parent, f));
  let restored: string | null = null;
  if (!existsSync(target)) {
    let best: { path: string; rank: number } | null = null;
    for (const f of leftovers) {
      const r = await rank(f);
      if (r !== null && (best === null || r > best.rank)) best = { path: f, rank: r };
    }
    if (best) {
      await rename(best.path, target);
      restored = best.path;
    }
  }
  for (const f of leftovers) if (f !== restored) await rm(f, { recursive: true, force: true });
  return restored;
}
