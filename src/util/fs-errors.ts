/**
 * @file One clear line for a failed file-system call. Node's messages ("ENOENT: no such file
 * or directory, mkdir 'x'") name the system call, not what the user asked for, and mkdir on a
 * read-only file system reports ENOENT for a missing parent first; these say what could not be
 * done, where, and why in words.
 */
import { constants } from 'node:fs';
import { access, mkdir, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';

const REASONS: Readonly<Record<string, string>> = {
  ENOSPC: 'the disk is full (no space left on the device)',
  EDQUOT: 'the disk quota is used up',
  EROFS: 'the file system is read-only',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  ENOTDIR: 'a file is in the way where a folder is needed',
  EISDIR: 'a folder is in the way where a file is needed',
  ENOENT: 'a folder on the way does not exist',
  EEXIST: 'something already exists there',
  EMFILE: 'too many open files',
  ENAMETOOLONG: 'the name is too long',
  EIO: 'an input/output error (a failing disk?)',
};

/** An error of a file-system call, explained. `code` keeps Node's errno code. */
export class FileSystemError extends Error {
  override name = 'FileSystemError';
  constructor(readonly action: string, readonly path: string, readonly code: string | undefined,
    options?: ErrorOptions) {
    super(`cannot ${action} ${path}: ${(code && REASONS[code]) ?? code ?? 'unknown error'}`,
      options);
  }
}

/** The errno code of a Node file-system error, or undefined for anything else. */
export function errnoCode(e: unknown): string | undefined {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === 'string' && /^E[A-Z]+$/.test(code) ? code : undefined;
}

/** `e` as a FileSystemError when it is a Node file-system error; otherwise `e` unchanged. */
export function explainFsError(e: unknown, action: string, path: string): unknown {
  const code = errnoCode(e);
  return code ? new FileSystemError(action, path, code, { cause: e }) : e;
}

/**
 * Makes sure `dir` exists (creating it and its parents) and that files can be created in it,
 * before a long run that would write there at its end. Throws a FileSystemError.
 */
export async function ensureWritableFolder(dir: string): Promise<void> {
  const path = resolve(dir);
  try {
    await mkdir(path, { recursive: true });
  } catch (e) {
    throw explainFsError(await firstFailure(path, e), 'create folder', path);
  }
  try {
    await access(path, constants.W_OK);
  } catch (e) {
    throw explainFsError(e, 'write into folder', path);
  }
}

/** Makes sure the file `path` can be written later: its folder exists (or is created) and is
 *  writable, and `path` is not a folder. */
export async function ensureWritableFile(path: string): Promise<void> {
  const target = resolve(path);
  await ensureWritableFolder(dirname(target));
  const s = await stat(target).catch(() => null);
  if (s?.isDirectory()) throw new FileSystemError('write file', target, 'EISDIR');
}

/** The error of the deepest existing ancestor's check: mkdir -p under a read-only or
 *  unwritable parent reports ENOENT for the missing child; the parent's EROFS/EACCES is what
 *  a user needs to hear. */
async function firstFailure(path: string, e: unknown): Promise<unknown> {
  if (errnoCode(e) !== 'ENOENT') return e;
  for (let dir = dirname(path); ; dir = dirname(dir)) {
    const s = await stat(dir).catch(() => null);
    if (s) {
      if (!s.isDirectory()) return Object.assign(new Error('not a folder'), { code: 'ENOTDIR' });
      return access(dir, constants.W_OK).then(() => e, (denied: unknown) => denied);
    }
    if (dirname(dir) === dir) return e;
  }
}
