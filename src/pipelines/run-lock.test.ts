/** The run-folder lock: one holder, a clear refusal for a second, stale locks taken over. */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { acquireRunLock } from './run-lock.js';

test('a second holder is refused with the owner named; release frees the folder', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'diffuse-lock-'));
  try {
    const lock = await acquireRunLock(dir);
    const info = JSON.parse(await readFile(lock.path, 'utf8'));
    assert.equal(info.pid, process.pid);
    await assert.rejects(acquireRunLock(dir),
      new RegExp(`in use by another diffuse run \\(pid ${process.pid} on .*choose another --out`));
    await lock.release();
    assert.ok(!existsSync(lock.path));
    const again = await acquireRunLock(dir);
    await again.release();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a lock left by a dead process (or half written) is stale and taken over', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'diffuse-lock-'));
  try {
    const child = spawn(process.execPath, ['-e', '0']);
    const deadPid = child.pid!;
    await new Promise((r) => child.on('exit', r));
    await writeFile(join(dir, '.lock'), JSON.stringify({ pid: deadPid, host: hostname(),
      started: 'earlier' }));
    const lock = await acquireRunLock(dir);
    assert.equal(JSON.parse(await readFile(lock.path, 'utf8')).pid, process.pid);
    await lock.release();
    await writeFile(join(dir, '.lock'), '{"pid": 12'); // power loss while writing it
    const l2 = await acquireRunLock(dir);
    await l2.release();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
