/**
 * @file One writer per run folder. A second `diffuse train` into the same `--out` would
 * overwrite the first run's checkpoints and interleave its log; the lock file `<out>/.lock`
 * (created exclusively, holding the owner's pid and host) refuses it with a clear message. A
 * lock whose owner is gone (a killed run) is stale and taken over.
 */
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { link, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export class RunLockedError extends Error {
  override name = 'RunLockedError';
}

interface LockInfo {
  pid: number;
  host: string;
  started: string;
}

const LOCK_NAME = '.lock';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'; // exists, owned by someone else
  }
}

async function readLock(path: string): Promise<LockInfo | null> {
  try {
    const info = JSON.parse(await readFile(path, 'utf8')) as LockInfo;
    return Number.isInteger(info.pid) ? info : null;
  } catch {
    return null; // unreadable or half-written: treated as stale
  }
}

/**
 * Creates the lock file `path` holding `text`, or fails with EEXIST. The text is written to a
 * temp file first and hard-linked to `path` (which fails if `path` exists), so a lock is never
 * seen empty or half-written: a second run reading it then would take it for stale and remove
 * it, and both would run. Where hard links are not supported, an exclusive create instead.
 */
async function createLock(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    await writeFile(tmp, text, { flag: 'wx' });
    try {
      await link(tmp, path);
      return;
    } catch (e) {
      if (!['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS'].includes(String((e as NodeJS.ErrnoException).code))) {
        throw e;
      }
    }
  } finally {
    await rm(tmp, { force: true });
  }
  try {
    await writeFile(path, text, { flag: 'wx' });
  } catch (e) {
    // Created by this call when the write itself failed (a full disk): no empty lock is left.
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') await rm(path, { force: true });
    throw e;
  }
}

/** A held lock; `release` removes the lock file if it is still this process's. */
export interface RunLock {
  readonly path: string;
  release(): Promise<void>;
}

/**
 * Takes the lock of run folder `dir` (which must exist), or throws RunLockedError naming the
 * process that holds it. `takeOver`: the caller knows the holder is gone (a job queue gave it
 * the job after the holder's lease expired), wherever the holder ran.
 */
export async function acquireRunLock(dir: string, opts: { takeOver?: boolean } = {}): Promise<RunLock> {
  const path = join(dir, LOCK_NAME);
  const mine: LockInfo = { pid: process.pid, host: hostname(), started: new Date().toISOString() };
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await createLock(path, `${JSON.stringify(mine)}\n`);
      return {
        path,
        release: async () => {
          const now = await readLock(path);
          if (now?.pid === mine.pid && now.host === mine.host) await rm(path, { force: true });
        },
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const owner = await readLock(path);
    // Another host's lock cannot be checked from here: only a local dead pid is stale.
    if (owner && !opts.takeOver && (owner.host !== mine.host || alive(owner.pid))) {
      throw new RunLockedError(`${dir} is in use by another diffuse run (pid ${owner.pid} on ` +
        `${owner.host}, since ${owner.started}; lock file ${path}); wait for it to end or ` +
        'choose another --out');
    }
    await rm(path, { force: true }); // stale: its owner is gone
  }
  throw new RunLockedError(`${dir}: could not take the run lock ${path}`);
}
