/** Weights stored at half precision: the folder loads and samples as before from rounded weights. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isHostArray, type HostArray } from '../engine/host.js';
import { flatten, type Tree } from '../engine/tree.js';
import { withTempDir } from '../../test/support/temp-dir.js';
import { withTinyPipeline } from '../../test/support/tiny-pipeline.js';
import { convertWeights } from './convert.js';
import { loadPipeline } from './sample.js';

const leaves = (t: Tree<HostArray>): Float32Array[] =>
  flatten(t, isHostArray).leaves.map((a) => a.data as Float32Array);

test('convertWeights to float16 halves the weights, which load within half-precision rounding', async () => {
  await withTinyPipeline('unet', 'eps', async (p) => {
    await withTempDir('convert', async (dir) => {
      const half = join(dir, 'half');
      const r = await convertWeights(p.modelFolder.replace(/\/unet$/, ''), half, 'float16');
      assert.equal(r.files, 1);
      assert.ok(Math.abs(r.bytesAfter / r.bytesBefore - 0.5) < 0.05, `${r.bytesAfter} / ${r.bytesBefore}`);
      const q = await loadPipeline(half);
      const [a, b] = [leaves(p.params), leaves(q.params)];
      assert.equal(a.length, b.length);
      let worst = 0;
      a.forEach((x, i) => x.forEach((v, j) => {
        if (Math.abs(v) > 1e-4) worst = Math.max(worst, Math.abs(b[i]![j]! - v) / Math.abs(v));
      }));
      assert.ok(worst > 0 && worst <= 2 ** -11, `largest relative rounding ${worst}`);
      // The rest of the folder is copied as it is.
      assert.equal(await readFile(join(half, 'model_index.json'), 'utf8'),
        await readFile(join(p.modelFolder, '..', 'model_index.json'), 'utf8'));
      // Back to float32: exactly the rounded values.
      await convertWeights(half, join(dir, 'full'), 'float32');
      const back = leaves((await loadPipeline(join(dir, 'full'))).params);
      back.forEach((x, i) => assert.deepEqual(x, b[i]));
      await assert.rejects(convertWeights(half, join(half, 'inner'), 'float16'), /must be outside the folder/);
      await assert.rejects(convertWeights(join(dir, 'missing'), join(dir, 'x'), 'float16'), /expected a model or pipeline folder/);
    });
  });
});
