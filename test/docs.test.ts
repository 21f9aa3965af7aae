/** The engine guide's example runs, and the guide shows exactly the file the test runs. */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import ort from 'onnxruntime-node';
import { tour } from '../docs/examples/engine-tour.js';
import { repoRoot } from './support/paths.js';

test('docs/engine.md embeds docs/examples/engine-tour.ts verbatim', () => {
  const guide = readFileSync(join(repoRoot, 'docs', 'engine.md'), 'utf8');
  const example = readFileSync(join(repoRoot, 'docs', 'examples', 'engine-tour.ts'), 'utf8');
  assert.ok(guide.includes(example.trim()), 'docs/engine.md is out of date with its example');
});

test('the engine tour trains a line and exports a loadable model', async () => {
  const r = await tour();
  try {
    assert.ok(Math.abs(r.w - 3) < 1e-3 && Math.abs(r.b + 1) < 1e-3, `w ${r.w}, b ${r.b}`);
    assert.match(r.graph, /%2 = add\(%0, %1\) : float32\[3\]/);
    const s = await ort.InferenceSession.create(r.onnxPath);
    const out = await s.run({ x: new ort.Tensor('float32', Float32Array.of(2, 10), [2]) });
    const y = out.out!.data as Float32Array;
    assert.ok(Math.abs(y[0]! - 5) < 1e-2 && Math.abs(y[1]! - 29) < 1e-2, `predictions ${y}`);
    await s.release();
  } finally {
    await rm(r.onnxPath, { force: true });
  }
});
