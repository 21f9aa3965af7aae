/**
 * @file Opening the files a user names (weights, configs, images) for reading. Why: a path that
 * is a folder, a FIFO or a device must fail with one line naming the path, what it is and the
 * file that was expected, before anything is opened: opening a FIFO for reading blocks until a
 * writer appears, so it is looked at with stat first and opened non-blocking.
 */
import { constants, type Stats } from 'node:fs';
import { open, stat, type FileHandle } from 'node:fs/promises';

/** A path that is missing, unreadable or not a regular file; `problem` is without the path. */
export class FileKindError extends Error {
  override name = 'FileKindError';
  constructor(readonly path: string, readonly problem: string, options?: { cause?: unknown }) {
    super(`${path}: ${problem}`, options);
  }
}

/** What a path that is not a regular file is, in words. */
export function kindOf(s: Stats): string {
  if (s.isDirectory()) return 'a folder';
  if (s.isFIFO()) return 'a FIFO';
  if (s.isSocket()) return 'a socket';
  if (s.isCharacterDevice()) return 'a character device';
  if (s.isBlockDevice()) return 'a block device';
  if (s.isSymbolicLink()) return 'a symbolic link';
  return 'not a file';
}

function notRegular(path: string, s: Stats, expected: string): FileKindError {
  return new FileKindError(path, `not a regular file (${kindOf(s)}): expected ${expected}`);
}

/**
 * What `path` is: 'file' for a regular file (symlinks followed), 'missing' when nothing is
 * there, else a FileKindError to throw (a folder, a FIFO, ... or a stat failure).
 */
export async function fileKind(path: string, expected: string):
  Promise<'file' | 'missing' | FileKindError> {
  let s: Stats;
  try {
    s = await stat(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return 'missing';
    return new FileKindError(path, `cannot read (${(e as Error).message}): expected ${expected}`,
      { cause: e });
  }
  return s.isFile() ? 'file' : notRegular(path, s, expected);
}

/**
 * Opens a regular file for reading, or throws a FileKindError naming the path, what it is and
 * `expected` (e.g. 'a .safetensors file'). Never blocks on a FIFO.
 */
export async function openRegularFile(path: string, expected: string): Promise<FileHandle> {
  const kind = await fileKind(path, expected);
  if (kind === 'missing') throw new FileKindError(path, `no such file: expected ${expected}`);
  if (kind !== 'file') throw kind;
  // O_NONBLOCK: if the path was swapped for a FIFO since the stat, open still returns at once.
  let file: FileHandle;
  try {
    file = await open(path, constants.O_RDONLY | (constants.O_NONBLOCK ?? 0));
  } catch (e) {
    throw new FileKindError(path, `cannot open (${(e as Error).message}): expected ${expected}`,
      { cause: e });
  }
  const s = await file.stat();
  if (!s.isFile()) {
    await file.close();
    throw notRegular(path, s, expected);
  }
  return file;
}

/** The whole of a regular file (see openRegularFile). */
export async function readRegularFile(path: string, expected: string): Promise<Buffer> {
  const file = await openRegularFile(path, expected);
  try {
    return await file.readFile();
  } finally {
    await file.close();
  }
}
