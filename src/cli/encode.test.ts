/** `diffuse encode` / `decode` / `translate` / `img2img`: their option tables (no model runs). */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { UsageError } from './errors.js';
import {
  DECODE_OPTIONS, ENCODE_OPTIONS, IMG2IMG_OPTIONS, parseLabels, TRANSLATE_OPTIONS,
} from './encode.js';
import { parseArgs } from './options.js';

const usage = (f: () => unknown): string => {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof UsageError, `expected a UsageError, got ${String(e)}`);
    return e.message;
  }
  return assert.fail('expected a UsageError');
};

test('defaults: 100 steps, eta 0.1 (the paper\'s configs), 16 images, the residual kept', () => {
  const o = parseArgs(ENCODE_OPTIONS, 'encode', ['--test-split']).values;
  assert.deepEqual([o.steps, o.eta, o.n, o.t0, o.seed, o.dropResidual, o.out],
    [100, 0.1, 16, undefined, 0, false, 'latents.safetensors']);
  const t = parseArgs(TRANSLATE_OPTIONS, 'translate', ['--to', 'b', '--eta', '0', '--class',
    '1,3']).values;
  assert.deepEqual([t.to, t.eta, t.class, t.from], ['b', 0, [1, 3], undefined]);
  const i = parseArgs(IMG2IMG_OPTIONS, 'img2img', ['--strength', '1']).values;
  assert.deepEqual([i.strength, i.steps], [1, 50]);
  assert.equal(parseArgs(DECODE_OPTIONS, 'decode', ['--latents', 'z']).values.out, 'decoded.png');
});

test('bad values are refused with the option and the form expected', () => {
  assert.equal(usage(() => parseArgs(ENCODE_OPTIONS, 'encode', ['--eta', '1.5'])),
    "--eta: expected a number in [0, 1], got '1.5'");
  assert.equal(usage(() => parseArgs(ENCODE_OPTIONS, 'encode', ['--class', 'all'])),
    "--class: expected a class number or a comma list such as 1,3,7, got 'all' ('all' means " +
    'nothing here: give class numbers)');
  assert.equal(usage(() => parseArgs(IMG2IMG_OPTIONS, 'img2img', ['--strength', '0'])),
    "--strength: expected a number in (0, 1], got '0'");
  assert.deepEqual(parseLabels('7'), [7]);
});
