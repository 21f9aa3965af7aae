/** `diffuse train-vae`, then `diffuse train --latent` on its VAE, then `diffuse sample` of the
 *  latent pipeline: end to end on a folder of tiny PNGs. */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { PNG } from 'pngjs';
import { withTempDir } from '../../test/support/temp-dir.js';
import { runCli } from '../../test/support/cli-run.js';
import { twoClassImages, writeImageFolder } from '../../test/support/tiny-images.js';
import { parseArgs } from './options.js';
import { TRAIN_VAE_OPTIONS } from './train-vae.js';

test('train-vae options: LDM\'s defaults (L1, kl_weight 1e-6), the MNIST preset', () => {
  const o = parseArgs(TRAIN_VAE_OPTIONS, 'train-vae', []).values;
  assert.deepEqual([o.size, o.reconstruction, o.klWeight, o.data, o.out], ['mnist-f4', 'l1', 1e-6, 'mnist', 'runs/vae']);
  assert.throws(() => parseArgs(TRAIN_VAE_OPTIONS, 'train-vae', ['--reconstruction', 'l3']), /expected one of l1, l2/);
});

test('train-vae, train --latent, sample: a latent pipeline from the command line', () =>
  withTempDir('train-vae', async (dir) => {
    const data = join(dir, 'data');
    await writeImageFolder(data, twoClassImages());
    const vae = join(dir, 'vae');
    const a = await runCli(['train-vae', '--data', data, '--size', 'tiny', '--latent-channels', '2', '--steps', '4',
      '--batch-size', '8', '--sample-every', '2', '--out', vae]);
    assert.equal(a.code, 0, a.errors);
    assert.match(a.printed, /1x8x8 images <-> 2x4x4 latents, scaling factor [\d.]+, held-out reconstruction MSE [\d.]+$/);
    assert.ok(existsSync(join(vae, 'samples', 'step-000004.png')));
    const ldm = join(dir, 'ldm');
    const b = await runCli(['train', '--data', data, '--latent', vae, '--model', 'unet', '--size', 'tiny', '--steps', '2',
      '--batch-size', '8', '--sample-every', '0', '--out', ldm]);
    assert.equal(b.code, 0, b.errors);
    const grid = join(dir, 'grid.png');
    const c = await runCli(['sample', '--model', join(ldm, 'model'), '--n', '4', '--steps', '3', '--out', grid]);
    assert.equal(c.code, 0, c.errors);
    const png = PNG.sync.read(await readFile(grid));
    assert.deepEqual([png.width, png.height], [2 * (8 + 2) + 2, 2 * (8 + 2) + 2]); // 8x8 images, not 4x4 latents
    const bad = await runCli(['train', '--data', data, '--latent', join(dir, 'nothing'), '--steps', '1', '--batch-size', '8', '--out', join(dir, 'x')]);
    assert.equal(bad.code, 1);
    assert.match(bad.errors, /nothing: no VAE here: looked for config.json in .*model\/vae/);
  }));
