/**
 * @file Fault probes of `diffuse classify` against the built CLI on the shipped U-Net: Ctrl-C
 * keeps the verdicts so far, `--resume` ends with exactly the CSV an uninterrupted run writes
 * (each image's noise depends on its index alone), and a resume with other settings is refused.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { assertFails, assertOk, assertSane, runCli } from './cli.js';

const root = mkdtempSync(join(tmpdir(), 'diffuse-faults-classify-'));
after(() => rmSync(root, { recursive: true, force: true }));

// One round of two timesteps: 20 model rows per image, a batch of 25 images in about a second.
const ARGS = ['classify', '--test-split', '--n', '60', '--samples', '2', '--keep', '1'];

test('classify: Ctrl-C keeps the verdicts; --resume finishes them exactly', async () => {
  const whole = join(root, 'whole.csv');
  assertOk(await runCli([...ARGS, '--out', whole]), 'an uninterrupted run');
  const expected = readFileSync(whole, 'utf8');
  assert.equal(expected.trim().split('\n').length, 61);

  const part = join(root, 'part.csv');
  const stopped = await runCli([...ARGS, '--out', part], { interruptOn: /classifying 25\/60/ });
  assertSane(stopped, 'Ctrl-C');
  // The interrupt lands after the first batch; a loaded machine may finish the run first.
  if (stopped.code === 130) {
    assert.match(stopped.stderr, /^diffuse: interrupted after \d+ of 60 images; their verdicts are in .*--resume$/m);
  } else {
    assert.equal(stopped.code, 0, stopped.stderr);
  }
  const kept = readFileSync(part, 'utf8').trim().split('\n');
  assert.ok(kept.length >= 26, `a batch of verdicts kept (${kept.length - 1})`);
  assert.deepEqual(kept, expected.trim().split('\n').slice(0, kept.length));

  // A resume from a prefix (the first batch only) ends with the uninterrupted CSV.
  writeFileSync(part, `${expected.trim().split('\n').slice(0, 26).join('\n')}\n`);
  const resumed = await runCli([...ARGS, '--out', part, '--resume']);
  assertOk(resumed, 'the resumed run');
  assert.match(resumed.stdout, /after 25 resumed/);
  assert.equal(readFileSync(part, 'utf8'), expected);

  assertFails(await runCli([...ARGS, '--out', part, '--resume', '--seed', '3']), 2,
    /--resume: .* was classified with seed = 0, this run asks for 3/, 'another seed');
  assertFails(await runCli([...ARGS, '--out', join(root, 'none.csv'), '--resume']), 2,
    /--resume: no run to continue/, 'nothing to resume');
});
