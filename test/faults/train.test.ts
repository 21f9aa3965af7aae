/**
 * @file Fault probes of `diffuse train`, end to end against the built CLI (runCli): two runs
 * into one folder, a SIGKILL at every phase of a checkpoint or model/ swap, a full disk while
 * a checkpoint is written, a diverging run, every --config key with a bad value, Ctrl-C (of
 * `diffuse distill` too, which runs the same loop). Each
 * failure must end with a non-zero exit and one line (no stack trace), in seconds and under
 * 1.5 GB; no probe may lose a completed checkpoint or the run's log, and every run that is
 * resumed must end bit for bit where an uninterrupted run with the same options ends.
 *
 * Runs are as small as the CLI allows: the tiny U-Net on eight 8x8 PNGs (faster to load than
 * MNIST), batch 4, 6 steps, a checkpoint every 2 steps. Uninterrupted reference runs are made
 * once per step count and shared.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync,
  writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join, relative } from 'node:path';
import { after, before, test } from 'node:test';
import { encodePng, readModelFolder, SafetensorsFile } from 'diffuse/io';
import { EVAL_OPTIONS } from '../../src/cli/eval.js';
import { kebab, type OptionSpec, type Schema } from '../../src/cli/options.js';
import { SAMPLE_OPTIONS } from '../../src/cli/sample.js';
import { TOY_OPTIONS } from '../../src/cli/toy.js';
import { TRAIN_CLASSIFIER_OPTIONS } from '../../src/cli/train-classifier.js';
import { TRAIN_OPTIONS } from '../../src/cli/train.js';
import { DISTILL_OPTIONS } from '../../src/cli/distill.js';
import {
  assertFails, assertOk, assertSane, largestPeak, runCli, type CliOptions, type CliResult,
} from './cli.js';

let root: string;
let data: string;

before(() => {
  root = mkdtempSync(join(tmpdir(), 'diffuse-faults-train-'));
  // Eight 8x8 grey PNGs in two classes: a pattern per class and image, no randomness.
  data = join(root, 'data');
  for (const [c, cls] of ['a', 'b'].entries()) {
    mkdirSync(join(data, cls), { recursive: true });
    for (let i = 0; i < 4; i++) {
      const px = Uint8Array.from({ length: 64 }, (_, p) => (p * 37 + i * 51 + c * 100) % 256);
      writeFileSync(join(data, cls, `${i}.png`),
        encodePng({ width: 8, height: 8, channels: 1, data: px }));
    }
  }
});

after(() => {
  rmSync(root, { recursive: true, force: true });
  console.log(`largest peak RSS of a diffuse run: ${largestPeak.MiB.toFixed(0)} MiB`);
});

let folders = 0;
/** A fresh path under the suite's temp folder (not created). */
const fresh = (name: string): string => join(root, `${name}-${folders++}`);

/** The options every run shares; a constant LR so that a run extended with a larger --steps
 *  continues the same schedule as a longer run. */
const runArgs = (out: string, steps = 6, more: readonly string[] = []): string[] => [
  'train', '--data', data, '--size', 'tiny', '--batch-size', '4', '--steps', String(steps),
  '--sample-every', '0', '--log-every', '1', '--checkpoint-every', '2',
  '--lr-schedule', 'constant', '--out', out, ...more,
];

/** A run of runArgs; killed after two minutes if it hangs. */
async function train(out: string, steps = 6, more: readonly string[] = [], o: CliOptions = {}):
  Promise<CliResult> {
  return runCli(runArgs(out, steps, more), { timeoutMs: 120_000, ...o });
}

/** Every file of `out`'s checkpoint/ and model/, by relative path. */
function weights(out: string): Map<string, Buffer> {
  const files = new Map<string, Buffer>();
  const walk = (dir: string): void => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else files.set(relative(out, p), readFileSync(p));
    }
  };
  for (const d of ['checkpoint', 'model']) if (existsSync(join(out, d))) walk(join(out, d));
  return files;
}

/** `out` ends where the uninterrupted run `ref` ends: the same files, byte for byte. */
function assertSameWeights(out: string, ref: string, what: string): void {
  const [a, b] = [weights(out), weights(ref)];
  assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort(), `${what}: other files`);
  assert.ok(b.has('model/unet/diffusion_pytorch_model.safetensors') ||
    b.has('model/transformer/diffusion_pytorch_model.safetensors'), `${what}: no model/`);
  for (const [k, bytes] of b) assert.ok(bytes.equals(a.get(k)!), `${what}: ${k} differs`);
}

interface LogLine { step: number; loss: number }

function readLog(out: string): LogLine[] {
  return readFileSync(join(out, 'log.jsonl'), 'utf8').trim().split('\n')
    .map((l) => JSON.parse(l) as LogLine);
}

/** The log has each step once, in order, with the reference run's losses. */
function assertSameLog(out: string, ref: string, what: string): void {
  const [a, b] = [readLog(out), readLog(ref)];
  assert.deepEqual(a.map((l) => l.step), b.map((l) => l.step), `${what}: log steps`);
  assert.deepEqual(a.map((l) => l.loss), b.map((l) => l.loss), `${what}: log losses`);
}

/** Temp or old folders (and temp files) of a swap anywhere in `out`. */
function leftovers(out: string): string[] {
  return readdirSync(out, { recursive: true, encoding: 'utf8' })
    .filter((f) => /\.(tmp|old)-/.test(basename(f)));
}

const stepOf = (checkpoint: string): number =>
  (JSON.parse(readFileSync(join(checkpoint, 'trainer_state.json'), 'utf8')) as { step: number }).step;

/** Loads every weight file of a checkpoint (config and all tensors) and returns the number
 *  of non-finite values. */
async function nonFinite(checkpoint: string, component: string): Promise<number> {
  let bad = 0;
  const count = (a: ArrayLike<number>): void => {
    for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i]!)) bad++;
  };
  for (const c of [component, `${component}_ema`]) {
    for (const a of (await readModelFolder(join(checkpoint, c))).stateDict.values()) {
      count(a.data as Float32Array);
    }
  }
  const opt = await SafetensorsFile.open(join(checkpoint, 'optimizer.safetensors'));
  try {
    for (const name of opt.entries.keys()) count((await opt.read(name)).data as Float32Array);
  } finally {
    await opt.close();
  }
  return bad;
}

// ---- uninterrupted references, one per step count ----

const references = new Map<number, Promise<string>>();
/** The run folder of an uninterrupted run of `steps` steps (made once). */
function reference(steps: number): Promise<string> {
  let ref = references.get(steps);
  if (!ref) {
    ref = (async () => {
      const out = fresh(`ref${steps}`);
      assertOk(await train(out, steps), `reference run of ${steps} steps`);
      return out;
    })();
    references.set(steps, ref);
  }
  return ref;
}

// ---- 1. concurrent writers ----

test('a second run into a busy --out is refused naming the lock and its owner; the first ' +
  'finishes untouched', async (t) => {
  const out = fresh('busy');
  // The first run is paused (SIGSTOP) once it has trained a step, so it surely holds the lock
  // while the second starts, however fast the machine; it is let go when the second is done.
  let paused: ((pid: number) => void) | undefined;
  const holding = new Promise<number>((resolve) => { paused = resolve; });
  let stopped = false;
  const first = train(out, 6, [], {
    onOutput: (seen, pid) => {
      if (!stopped && /train 1\/6/.test(seen)) {
        stopped = true;
        process.kill(pid, 'SIGSTOP');
        paused!(pid);
      }
    },
  });
  const pid = await Promise.race([holding, first.then((r) => {
    throw new Error(`the first run ended before its first step: exit ${r.code}\n${r.stderr}`);
  })]);
  let second: CliResult;
  try {
    second = await train(out);
  } finally {
    process.kill(pid, 'SIGCONT');
  }
  const line = assertFails(second, 1, new RegExp(`in use by another diffuse run \\(pid ${pid} ` +
    `on .*lock file ${out.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/\\.lock\\)`), 'second run');
  assert.ok(second.seconds < 5, `refused after ${second.seconds.toFixed(1)} s: ${line}`);
  t.diagnostic(`${line} (${second.seconds.toFixed(1)} s, ${second.peakMiB.toFixed(0)} MiB)`);
  const r = await first;
  assertOk(r, 'first run');
  assert.ok(!existsSync(join(out, '.lock')), 'the lock is released');
  const ref = await reference(6);
  assertSameLog(out, ref, 'first run');
  assertSameWeights(out, ref, 'first run');
});

// ---- 2. SIGKILL at every phase of a folder swap, then --resume ----

/**
 * Swaps of a 6-step run with a checkpoint every 2 steps, in order: checkpoint/ at steps 2, 4
 * and 6 (the last one at the end of the run), then model/. `old-moved` happens only where the
 * target already exists: checkpoint/ at steps 4 and 6, never model/ in a fresh run.
 */
const KILLS: { at: string; what: string; left: (out: string) => void }[] = [
  { at: 'built:1', what: 'the first checkpoint built, not yet swapped in', left: (out) => {
    assert.ok(!existsSync(join(out, 'checkpoint')));
    assert.equal(leftovers(out).filter((f) => f.startsWith('checkpoint.tmp-')).length, 1);
  } },
  { at: 'built:2', what: 'checkpoint 4 built, checkpoint 2 in place', left: (out) => {
    assert.equal(stepOf(join(out, 'checkpoint')), 2);
  } },
  { at: 'old-moved:1', what: 'checkpoint 2 moved aside, checkpoint 4 not yet in place',
    left: (out) => {
      assert.ok(!existsSync(join(out, 'checkpoint')), 'between the two renames');
    } },
  { at: 'swapped:2', what: 'checkpoint 4 swapped in, checkpoint 2 not yet removed',
    left: (out) => {
      assert.equal(stepOf(join(out, 'checkpoint')), 4);
      assert.equal(leftovers(out).filter((f) => f.startsWith('checkpoint.old-')).length, 1);
    } },
  { at: 'built:4', what: 'model/ built, not yet swapped in', left: (out) => {
    assert.equal(stepOf(join(out, 'checkpoint')), 6);
    assert.ok(!existsSync(join(out, 'model')));
  } },
  { at: 'swapped:4', what: 'model/ swapped in, before the run ends', left: (out) => {
    assert.ok(existsSync(join(out, 'model', 'model_index.json')));
  } },
];

for (const k of KILLS) {
  test(`SIGKILL at DIFFUSE_KILL_AT=${k.at} (${k.what}): --resume ends bit-identical`, async () => {
    const out = fresh(`kill-${k.at.replace(':', '-')}`);
    const killed = await train(out, 6, [], { env: { DIFFUSE_KILL_AT: k.at } });
    assert.equal(killed.signal, 'SIGKILL', `not killed: exit ${killed.code}\n${killed.stderr}`);
    k.left(out);
    // The killed run's lock names a dead process: the resume takes it over.
    const lock = JSON.parse(readFileSync(join(out, '.lock'), 'utf8')) as { pid: number };
    assert.throws(() => process.kill(lock.pid, 0), { code: 'ESRCH' }, 'the owner is dead');
    assertOk(await train(out, 6, ['--resume']), 'resume');
    const ref = await reference(6);
    assertSameWeights(out, ref, k.at);
    assertSameLog(out, ref, k.at);
    assert.deepEqual(leftovers(out), [], 'temp and old folders are gone');
    assert.ok(!existsSync(join(out, '.lock')));
  });
}

test('SIGKILL between the renames of a model/ swap that replaces a model/ (a finished run ' +
  'extended by --steps): --resume ends bit-identical to the longer run', async () => {
  const out = fresh('kill-model-old-moved');
  cpSync(await reference(6), out, { recursive: true });
  // The extension swaps checkpoint/ (old-moved 1) and then model/ (old-moved 2).
  const killed = await train(out, 8, ['--resume'], { env: { DIFFUSE_KILL_AT: 'old-moved:2' } });
  assert.equal(killed.signal, 'SIGKILL', `not killed: exit ${killed.code}\n${killed.stderr}`);
  assert.ok(!existsSync(join(out, 'model')), 'between the two renames');
  assert.equal(leftovers(out).filter((f) => /^model\.(old|tmp)-/.test(f)).length, 2);
  assertOk(await train(out, 8, ['--resume']), 'resume');
  const ref = await reference(8);
  assertSameWeights(out, ref, 'model old-moved');
  assertSameLog(out, ref, 'model old-moved');
  assert.deepEqual(leftovers(out), []);
});

// ---- 3. a full disk while a checkpoint is written ----

/** Mounts a tmpfs of `kib` KiB at `dir`; false where that is not allowed (not root). */
function mountTmpfs(dir: string, kib: number, remount = false): boolean {
  const o = `${remount ? 'remount,' : ''}size=${kib}k`;
  return spawnSync('mount', ['-t', 'tmpfs', '-o', o, 'tmpfs', dir], { stdio: 'ignore' })
    .status === 0;
}

/** Bytes a folder takes on a tmpfs (whole pages per file). */
function pagesOf(dir: string): number {
  let bytes = 0;
  for (const f of readdirSync(dir, { recursive: true, encoding: 'utf8' })) {
    const s = statSync(join(dir, f));
    if (s.isFile()) bytes += Math.ceil(s.size / 4096) * 4096;
  }
  return bytes;
}

test('a disk that fills while a checkpoint is written: one line naming the file and the kept ' +
  'checkpoint; after freeing space --resume ends bit-identical', async (t) => {
  const ref = await reference(6);
  const disk = fresh('disk');
  mkdirSync(disk);
  // Room for one checkpoint and the log, not for the second checkpoint built beside it.
  const kib = Math.ceil((1.5 * pagesOf(join(ref, 'checkpoint'))) / 1024);
  // DIFFUSE_FAULTS_NO_MOUNT=1 takes the fallback below even where mounting works.
  const mounted = !process.env['DIFFUSE_FAULTS_NO_MOUNT'] && mountTmpfs(disk, kib);
  // Not root (or no tmpfs): the same failure injected into the n-th checkpoint swap, the one
  // of step 4 (the second of a fresh run, the first of a resume from step 2).
  if (!mounted) t.diagnostic('cannot mount a tmpfs here: ENOSPC injected by DIFFUSE_WRITE_ERROR');
  const env = (nth: number): Record<string, string> =>
    mounted ? {} : { DIFFUSE_WRITE_ERROR: `ENOSPC:${nth}` };
  try {
    const out = join(disk, 'run');
    const fullLine = /^diffuse: cannot write \S+\/checkpoint(\/\S+)?: the disk is full[^;]*; the checkpoint of step 2 is kept: free some space, then continue with --resume$/;
    const full = await train(out, 6, [], { env: env(2) });
    t.diagnostic(assertFails(full, 1, fullLine, 'full disk'));
    const check = async (what: string): Promise<void> => {
      assert.equal(stepOf(join(out, 'checkpoint')), 2, `${what}: the previous checkpoint is in place`);
      assert.equal(await nonFinite(join(out, 'checkpoint'), 'unet'), 0, `${what}: and loads`);
      assert.deepEqual(readLog(out).map((l) => l.step), [1, 2, 3, 4], `${what}: the log is kept`);
      assert.deepEqual(leftovers(out), [], what);
    };
    await check('full disk');
    // A --resume before any space is freed fails the same way and loses nothing either (the
    // log is cut back to step 2 in place, which needs no space, and written again to step 4).
    const again = await train(out, 6, ['--resume'], { env: env(1) });
    assertFails(again, 1, fullLine, 'resume on the full disk');
    await check('resume on the full disk');
    if (mounted) assert.ok(mountTmpfs(disk, 16 * 1024, true), 'remount bigger');
    assertOk(await train(out, 6, ['--resume']), 'resume after freeing space');
    assertSameWeights(out, ref, 'full disk');
    assertSameLog(out, ref, 'full disk');
  } finally {
    if (mounted) spawnSync('umount', [disk], { stdio: 'ignore' });
  }
});

// ---- 4. a diverging run ----

test('a diverging run (a DiT at --lr 10) stops at the step that went non-finite; the last ' +
  'finite checkpoint stays, no model/ is exported', async (t) => {
  const out = fresh('diverge');
  // The first AdamW step moves every weight by about lr = 10 (the largest --lr allowed); the
  // DiT's stacked modulations then overflow float32 in the backward pass of step 2.
  const r = await runCli(['train', '--data', data, '--model', 'dit', '--size', 'tiny',
    '--batch-size', '4', '--steps', '8', '--lr', '10', '--warmup-steps', '0',
    '--lr-schedule', 'constant', '--sample-every', '0', '--log-every', '1',
    '--checkpoint-every', '1', '--out', out], { timeoutMs: 120_000 });
  const line = assertFails(r, 1,
    /^diffuse: training diverged at step (\d+): .* is (NaN|-?Infinity).*; the checkpoint of step (\d+) is kept \(try a lower --lr\)$/,
    'diverging run');
  t.diagnostic(line);
  const m = /at step (\d+):.*the checkpoint of step (\d+)/.exec(line)!;
  const [diverged, keptStep] = [Number(m[1]), Number(m[2])];
  assert.equal(keptStep, diverged - 1, 'a checkpoint every step: the one before');
  assert.equal(stepOf(join(out, 'checkpoint')), keptStep);
  assert.equal(await nonFinite(join(out, 'checkpoint'), 'transformer'), 0, 'the kept checkpoint is finite');
  assert.ok(!existsSync(join(out, 'model')), 'no model/ exported from a diverged run');
  assert.deepEqual(readLog(out).map((l) => l.step), Array.from({ length: keptStep }, (_, i) => i + 1));
});

// ---- 5. every --config key with a bad value ----

/** The commands and their option tables; each one with a --config option is probed. */
const TABLES: Record<string, Schema> = {
  train: TRAIN_OPTIONS, sample: SAMPLE_OPTIONS, eval: EVAL_OPTIONS, toy: TOY_OPTIONS,
  'train-classifier': TRAIN_CLASSIFIER_OPTIONS, distill: DISTILL_OPTIONS,
};

/** Two values `spec` must refuse: one outside its range or choices (or empty), one of the
 *  wrong JSON type. */
function badValues(spec: OptionSpec): [unknown, unknown] {
  switch (spec.kind) {
    case 'int': { // 'an integer >= 1', 'an integer from 1 to 8'
      const [, min, max] = /(-?\d+)(?: to (-?\d+))?$/.exec(spec.expected)!;
      return [max === undefined ? Number(min) - 1 : Number(max) + 1, '3'];
    }
    case 'number': { // 'a number in (0, 10]': past the upper end
      const [, max] = /,\s*(\S+)\s*[\])]$/.exec(spec.expected)!;
      return [Number(max) * 2 + 1, '0.5'];
    }
    case 'enum': return ['no-such-choice', 3];
    case 'boolean': return ['yes', 1];
    case 'path': case 'string': return ['', 42];
    case 'custom': return [{}, true];
  }
}

test('every --config key with an out-of-range or wrong-typed value: exit 2 and one line ' +
  'naming the key and the expected form, no run folder', async (t) => {
  const probes: { command: string; key: string; value: unknown; spec: OptionSpec }[] = [];
  for (const [command, table] of Object.entries(TABLES)) {
    if (!('config' in table)) continue;
    for (const [key, spec] of Object.entries(table)) {
      if (spec.flagOnly) continue;
      for (const value of badValues(spec)) {
        // Checked here first: a value the table took would start a real run.
        assert.throws(() => spec.fromJson(value), `${command} ${key}: ${JSON.stringify(value)} is valid`);
        probes.push({ command, key, value, spec });
      }
    }
  }
  assert.ok(probes.length >= 2 * 20, `${probes.length} probes`);
  let slowest = 0;
  let example = '';
  const cwd = fresh('config');
  mkdirSync(cwd);
  const run = async ({ command, key, value, spec }: typeof probes[number], i: number) => {
    const file = join(cwd, `bad-${i}.json`);
    const out = join(cwd, `run-${i}`);
    writeFileSync(file, JSON.stringify({ out, [kebab(key)]: value }));
    const r = await runCli([command, '--config', file], { cwd, timeoutMs: 30_000 });
    const what = `${command} "${kebab(key)}": ${JSON.stringify(value)}`;
    const line = assertFails(r, 2, /^diffuse: /, what);
    assert.ok(line.includes(`"${kebab(key)}" in config file ${file}: expected ${spec.expected}`),
      `${what}: ${line}`);
    assert.ok(r.seconds < 5, `${what}: ${r.seconds.toFixed(1)} s`);
    slowest = Math.max(slowest, r.seconds);
    example ||= line;
    assert.ok(!existsSync(out), `${what}: ${out} was created`);
  };
  // Four at a time: each is a short start-up of node, mostly waiting on one core.
  let next = 0;
  await Promise.all(Array.from({ length: 4 }, async () => {
    while (next < probes.length) {
      const i = next++;
      await run(probes[i]!, i);
    }
  }));
  t.diagnostic(`${probes.length} probes, slowest ${slowest.toFixed(1)} s: ${example}`);
  const made = readdirSync(cwd).filter((f) => !f.startsWith('bad-'));
  assert.deepEqual(made, [], 'no run folder (or runs/ for the default --out) was created');
});

// ---- 6. Ctrl-C ----

test('Ctrl-C during train exits 130 with a checkpoint; --resume ends bit-identical', async (t) => {
  const out = fresh('ctrl-c');
  const r = await train(out, 6, [], { interruptOn: /train 1\/6/ });
  const line = assertFails(r, 130, /^diffuse: interrupted at step (\d+); checkpoint in \S+\/checkpoint\. Continue with: diffuse train --out \S+ --resume/, 'Ctrl-C');
  t.diagnostic(line);
  const step = Number(/at step (\d+)/.exec(line)![1]);
  assert.ok(step >= 1 && step < 6, line);
  assert.equal(stepOf(join(out, 'checkpoint')), step, 'the checkpoint is of the step reported');
  assert.ok(!existsSync(join(out, 'model')), 'no model/ from an interrupted run');
  assertOk(await train(out, 6, ['--resume']), 'resume');
  const ref = await reference(6);
  assertSameWeights(out, ref, 'Ctrl-C');
  assertSameLog(out, ref, 'Ctrl-C');
  assert.deepEqual(leftovers(out), []);
});

test('Ctrl-C during distill exits 130 with a checkpoint; --resume ends bit-identical', async (t) => {
  // A tiny teacher: the model/ of a 2-step reference training run, distilled by BOOT (no data).
  const teacher = join(await reference(2), 'model');
  const args = (out: string): string[] => ['distill', '--method', 'boot', '--teacher', teacher,
    '--iterations', '4', '--batch-size', '4', '--teacher-steps', '4', '--sample-every', '0',
    '--log-every', '1', '--checkpoint-every', '2', '--out', out];
  const out = fresh('distill-ctrl-c');
  const r = await runCli(args(out), { timeoutMs: 120_000, interruptOn: /distill boot 1\/4/ });
  const line = assertFails(r, 130, /^diffuse: interrupted at step (\d+); checkpoint in \S+\/checkpoint\. Continue with: diffuse distill --out \S+ --resume/, 'Ctrl-C');
  t.diagnostic(line);
  const step = Number(/at step (\d+)/.exec(line)![1]);
  assert.ok(step >= 1 && step < 4, line);
  assert.equal(stepOf(join(out, 'checkpoint')), step, 'the checkpoint is of the step reported');
  assertOk(await runCli([...args(out), '--resume'], { timeoutMs: 120_000 }), 'resume');
  const ref = fresh('distill-ref');
  assertOk(await runCli(args(ref), { timeoutMs: 120_000 }), 'uninterrupted distill');
  assertSameWeights(out, ref, 'distill Ctrl-C');
  assertSameLog(out, ref, 'distill Ctrl-C');
  assert.deepEqual(leftovers(out), []);
});
