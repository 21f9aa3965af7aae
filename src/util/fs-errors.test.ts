import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { ensureWritableFile, ensureWritableFolder, explainFsError } from './fs-errors.js';

test('folder checks name the folder and the reason in words', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'fs-errors-'));
  try {
    await ensureWritableFolder(join(dir, 'a', 'b'));
    writeFileSync(join(dir, 'file'), '');
    await assert.rejects(ensureWritableFolder(join(dir, 'file', 'sub')),
      /^FileSystemError: cannot create folder .*file\/sub: a file is in the way/);
    await assert.rejects(ensureWritableFile(join(dir, 'a')),
      /cannot write file .*\/a: a folder is in the way/);
    const e = explainFsError(Object.assign(new Error('x'), { code: 'ENOSPC' }), 'write', 'f');
    assert.equal((e as Error).message, 'cannot write f: the disk is full (no space left on the ' +
      'device)');
    const plain = new TypeError('not fs');
    assert.equal(explainFsError(plain, 'write', 'f'), plain);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// A read-only mount needs root; elsewhere the test says so instead of passing vacuously.
test('a folder under a read-only file system says read-only, not ENOENT', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'fs-errors-ro-'));
  try {
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k,ro', 'tmpfs', dir], { stdio: 'ignore' });
    } catch {
      t.diagnostic('mount -t tmpfs is not permitted here: checked with a mocked error only');
      const e = explainFsError(Object.assign(new Error('x'), { code: 'EROFS' }), 'create folder', dir);
      assert.match((e as Error).message, /the file system is read-only/);
      return;
    }
    await assert.rejects(ensureWritableFolder(join(dir, 'out', 'images')),
      /cannot create folder .*out\/images: the file system is read-only/);
  } finally {
    try { execFileSync('umount', [dir], { stdio: 'ignore' }); } catch { /* not mounted */ }
    rmSync(dir, { recursive: true, force: true });
  }
});
