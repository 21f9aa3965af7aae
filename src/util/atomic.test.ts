/** Folder swaps: a crash after any phase loses no complete folder, and recovery cleans up. */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { recoverFolder, replaceFolder, type SwapPhase } from './atomic.js';

const version = async (dir: string): Promise<number | null> => {
  try {
    return Number(await readFile(join(dir, 'done'), 'utf8'));
  } catch {
    return null;
  }
};
const write = (v: number) => async (tmp: string) => writeFile(join(tmp, 'done'), String(v));

test('a crash after each phase of a swap: recovery restores the newest complete folder', async () => {
  for (const crashAt of ['built', 'old-moved', 'swapped'] as SwapPhase[]) {
    const root = await mkdtemp(join(tmpdir(), 'diffuse-swap-'));
    try {
      const dir = join(root, 'checkpoint');
      await replaceFolder(dir, write(1));
      const crash = new Error('crash');
      await assert.rejects(replaceFolder(dir, write(2), {
        onPhase: (p) => { if (p === crashAt) throw crash; },
      }), /crash/);
      await recoverFolder(dir, version);
      // before the swap began the old folder stands; once it began, the new one is complete
      assert.equal(await version(dir), crashAt === 'built' ? 1 : 2, crashAt);
      assert.deepEqual((await readdir(root)).sort(), ['checkpoint'], `leftovers after ${crashAt}`);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  }
});

test('recovery picks the highest-ranked complete leftover and ignores incomplete ones', async () => {
  const root = await mkdtemp(join(tmpdir(), 'diffuse-swap-'));
  try {
    const dir = join(root, 'checkpoint');
    for (const [name, v] of [['checkpoint.old-1-a', 3], ['checkpoint.tmp-1-a', 4],
      ['checkpoint.tmp-2-b', null]] as const) {
      const f = join(root, name);
      await mkdir(f);
      if (v !== null) await writeFile(join(f, 'done'), String(v));
    }
    assert.equal(await recoverFolder(dir, version), join(root, 'checkpoint.tmp-1-a'));
    assert.equal(await version(dir), 4);
    assert.deepEqual(await readdir(root), ['checkpoint']);
    // with the folder in place, leftovers are only removed
    await mkdir(join(root, 'checkpoint.tmp-9-z'));
    assert.equal(await recoverFolder(dir, version), null);
    assert.ok(!existsSync(join(root, 'checkpoint.tmp-9-z')));
    assert.equal(await version(dir), 4);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test('DIFFUSE_WRITE_ERROR fails the n-th swap as a full disk would; the old folder stays', async () => {
  const root = await mkdtemp(join(tmpdir(), 'diffuse-swap-'));
  process.env['DIFFUSE_WRITE_ERROR'] = 'ENOSPC:2';
  try {
    const dir = join(root, 'checkpoint');
    await replaceFolder(dir, write(1));
    await assert.rejects(replaceFolder(dir, write(2)),
      (e: NodeJS.ErrnoException) => e.code === 'ENOSPC' && e.path!.startsWith(`${dir}.tmp-`));
    assert.equal(await version(dir), 1);
    assert.deepEqual(await readdir(root), ['checkpoint'], 'the temp folder is removed');
    await replaceFolder(dir, write(3)); // only the n-th swap fails
    assert.equal(await version(dir), 3);
  } finally {
    delete process.env['DIFFUSE_WRITE_ERROR'];
    await rm(root, { recursive: true, force: true });
  }
});
