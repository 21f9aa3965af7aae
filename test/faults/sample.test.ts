/**
 * @file Fault probes of `diffuse sample` and `diffuse eval`, end to end against the built CLI
 * (runCli) on the shipped MNIST U-Net and broken copies of it: oversized requests, configs out
 * of range, NaN weights, files that are not files, destinations that cannot be written, a full
 * disk while streaming, Ctrl-C while streaming. Each failure must end with a non-zero exit and
 * one line (no stack trace, no allocator dump), in seconds and under 1.5 GB; a stream that is
 * stopped leaves only whole PNGs, as many as it says.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync }
  from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { decodePng } from 'diffuse/io';
import { repoRoot } from '../support/paths.js';
import { assertFails, assertSane, runCli } from './cli.js';

const SHIPPED = join(repoRoot, 'models', 'mnist-unet');

let root: string;
before(() => {
  root = mkdtempSync(join(tmpdir(), 'diffuse-faults-sample-'));
});
after(() => rmSync(root, { recursive: true, force: true }));

let folders = 0;
const fresh = (name: string): string => join(root, `${name}-${folders++}`);

/** A copy of the shipped pipeline with `edit` applied to it. */
function brokenCopy(name: string, edit: (dir: string) => void): string {
  const dir = fresh(name);
  cpSync(SHIPPED, dir, { recursive: true });
  edit(dir);
  return dir;
}

function editJson(file: string, change: Record<string, unknown>): void {
  writeFileSync(file, JSON.stringify({ ...JSON.parse(readFileSync(file, 'utf8')), ...change }));
}

/** Overwrites the first float of tensor `name` in a safetensors file with NaN. */
function poison(file: string, name: string): void {
  const bytes = readFileSync(file);
  const headerLength = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString('utf8')) as
    Record<string, { data_offsets: [number, number] }>;
  bytes.writeFloatLE(Number.NaN, 8 + headerLength + header[name]!.data_offsets[0]);
  writeFileSync(file, bytes);
}

const sample = (args: readonly string[], cwd = root) =>
  runCli(['sample', '--n', '4', '--steps', '2', '--out', join(cwd, 'x.png'), ...args], { cwd });

test('broken model folders: one line each, at load, in seconds', async () => {
  const unet = (dir: string) => join(dir, 'unet');
  const cases: [string, string, RegExp][] = [
    [brokenCopy('beta-end', (d) => editJson(join(d, 'scheduler', 'scheduler_config.json'),
      { beta_end: 5 })), 'beta_end 5',
    /scheduler_config\.json: DDPMScheduler: config key 'beta_end' = 5: expected a number in \(0, 1\)$/],
    [brokenCopy('timesteps', (d) => editJson(join(d, 'scheduler', 'scheduler_config.json'),
      { num_train_timesteps: 1e9 })), 'num_train_timesteps 1e9',
    /config key 'num_train_timesteps' = 1000000000: expected an integer in \[1, 100000\]$/],
    [brokenCopy('size', (d) => editJson(join(unet(d), 'config.json'), { sample_size: 1024 })),
      'sample_size 1024',
    /one 1024x1024 image needs about [\d.]+ GiB in UNet2DModel .*over the memory limit of 1\.0 GiB/],
    [brokenCopy('nan', (d) => poison(join(unet(d), 'diffusion_pytorch_model.safetensors'),
      'conv_out.weight')), 'NaN weights',
    /unet: weight 'conv_out\.weight' has 1 NaN or infinite values of \d+: the checkpoint is corrupt/],
    [brokenCopy('fifo', (d) => {
      rmSync(join(unet(d), 'config.json'));
      spawnSync('mkfifo', [join(unet(d), 'config.json')]);
    }), 'config.json a FIFO', /config\.json: not a regular file \(a FIFO\): expected a JSON file$/],
    [brokenCopy('folder', (d) => {
      const w = join(unet(d), 'diffusion_pytorch_model.safetensors');
      rmSync(w);
      mkdirSync(w);
    }), 'weights a folder', /diffusion_pytorch_model\.safetensors: not a regular file \(a folder\)/],
  ];
  for (const [dir, what, line] of cases) {
    assertFails(await sample(['--model', dir]), 1, line, what);
  }
});

test('oversized requests are refused in seconds, before anything is allocated', async () => {
  assertFails(await sample(['--n', '1000000']), 1,
    /a grid of 1000000 images of 32x32 is 34002x34002 pixels, over the 16 M pixels a grid may have; write one PNG per image/,
    'a million-image grid');
  assertFails(await sample(['--out-dir', fresh('d')]), 2,
    /--out: expected either --out \(a grid\) or --out-dir/, '--out and --out-dir');
  assertFails(await runCli(['sample', '--n', '1000000000', '--out-dir', fresh('d')]), 1,
    /1000000000 images: a folder run writes at most 1000000/, 'a billion images');
  assertFails(await sample(['--max-memory', '100000000']), 1,
    /a memory limit of [\d.]+ GiB is more than this machine has/, '--max-memory beyond RAM');
  assertFails(await runCli(['eval', '--model', SHIPPED, '--n', '1000000']), 1,
    /1000000 images of 1x32x32 take 3\.8 GiB held at once, over half the memory limit/,
    'eval of a million samples');
  // A bad --accel names the spellings once and says what is wrong with this one.
  const accel = await sample(['--accel', 'deepcache:3,branch=x']);
  const said = assertFails(accel, 2, /--accel: expected deepcache:N\S* .*ras:R\S*, got 'deepcache:3,branch=x' \(unknown modifier 'branch=x' of deepcache\)$/m,
    '--accel with a bad modifier');
  assert.equal(said.split('expected').length, 2, `the spellings once: ${said}`);
  assertFails(await sample(['--accel', 'ras:0.5']), 1,
    /ras selects transformer tokens, so it needs a DiT or DiT-MoE; this model is a UNet2DModel/,
    'RAS on a U-Net');
});

test('a million images stream to a folder in bounded memory; Ctrl-C keeps whole PNGs', async () => {
  const out = fresh('stream');
  const r = await runCli(['sample', '--n', '1000000', '--steps', '1', '--out-dir', out],
    { interruptAfterMs: 8000 });
  const line = assertFails(r, 130, /interrupted after writing \d+ of 1000000 images to /, 'Ctrl-C');
  const written = Number(/writing (\d+) of/.exec(line)![1]);
  const files = readdirSync(out).sort();
  assert.ok(written >= 64, `at least one batch written in 8 s (${written})`);
  assert.equal(files.length, written, 'as many files as the message says, no temp files');
  assert.equal(files.at(-1), `${String(written - 1).padStart(6, '0')}.png`);
  const last = decodePng(readFileSync(join(out, files.at(-1)!)));
  assert.deepEqual([last.width, last.height], [32, 32], 'a whole 32x32 PNG');
  assert.ok(r.peakMiB < 1536, `peak ${r.peakMiB} MiB`);
});

/** Mounts a tmpfs of `kib` KiB at a new folder (root only); undefined where not permitted. */
function tmpfs(kib: number, readOnly = false): string | undefined {
  const dir = fresh('mnt');
  mkdirSync(dir);
  const o = `size=${kib}k${readOnly ? ',ro' : ''}`;
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', o, 'tmpfs', dir], { stdio: 'ignore' });
  return r.status === 0 ? dir : undefined;
}
const unmount = (dir: string) => spawnSync('umount', [dir], { stdio: 'ignore' });

test('destinations: a read-only file system and a full disk say so in words', async (t) => {
  const noMount = process.env['DIFFUSE_FAULTS_NO_MOUNT'] === '1';
  const ro = noMount ? undefined : tmpfs(64, true);
  const small = noMount ? undefined : tmpfs(48);
  try {
    if (!ro || !small) {
      t.diagnostic('mount -t tmpfs is not permitted here: the full-disk case is injected');
    }
    if (ro) {
      assertFails(await runCli(['sample', '--n', '4', '--out-dir', join(ro, 'a', 'b')]), 1,
        /cannot create folder \S+\/a\/b: the file system is read-only$/, 'read-only --out-dir');
    }
    assertFails(await sample(['--out', root]), 1,
      /cannot write file \S+: a folder is in the way where a file is needed$/, '--out a folder');
    const disk = small ?? fresh('disk');
    const env: Record<string, string> = small ? {} : { DIFFUSE_FILE_WRITE_ERROR: 'ENOSPC:40' };
    const r = await runCli(['sample', '--n', '2000', '--steps', '1', '--out-dir',
      join(disk, 'd')], { env });
    const line = assertFails(r, 1, /cannot write \S+\/d\/\d{6}\.png: the disk is full/, 'full disk');
    const files = readdirSync(join(disk, 'd'));
    assert.ok(files.every((f) => /^\d{6}\.png$/.test(f)), `only whole PNGs: ${files.join(' ')}`);
    assert.ok(files.length > 0 && files.length < 2000, `${files.length} files, then the error`);
    for (const f of files) decodePng(readFileSync(join(disk, 'd', f)));
    assertSane(r, line);
  } finally {
    if (ro) unmount(ro);
    if (small) unmount(small);
  }
});
