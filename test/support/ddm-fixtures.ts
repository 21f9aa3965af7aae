/** @file What a decentralized-experts run needs in a test: a tiny labelled image folder and a
 *  classifier to cluster its features with. */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { RngKey } from '../../src/engine/random/philox.js';
import { saveModel } from '../../src/io/diffusers.js';
import { encodePng } from '../../src/io/png.js';
import { CLASSIFIER_PRESETS, classifierClass, DiffuseClassifier } from '../../src/models/classifier.js';

/** 24 labelled 8x8 PNGs in two class folders: bright top halves and bright left halves. */
export async function writeTwoClassFolder(dir: string): Promise<void> {
  const z = RngKey.fromSeed(3).normal(24 * 64);
  for (const [c, name] of ['top', 'left'].entries()) {
    await mkdir(join(dir, name), { recursive: true });
    for (let i = 0; i < 12; i++) {
      const data = Uint8Array.from({ length: 64 }, (_, j) => {
        const on = c ? j % 8 < 4 : j < 32;
        return Math.max(0, Math.min(255, Math.round((on ? 220 : 30) + 25 * z[(c * 12 + i) * 64 + j]!)));
      });
      await writeFile(join(dir, name, `${i}.png`), encodePng({ width: 8, height: 8, channels: 1, data }));
    }
  }
}

/** A random tiny classifier to cluster with (its features are as good as any for a test). */
export async function writeFeatureClassifier(dir: string): Promise<void> {
  const config = { ...CLASSIFIER_PRESETS.tiny!, sample_size: 8, num_classes: 2, noise_conditioning: false };
  await saveModel(dir, classifierClass, config, new DiffuseClassifier(config).init(RngKey.fromSeed(9)) as never);
}
