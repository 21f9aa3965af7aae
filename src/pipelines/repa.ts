/**
 * @file REPA's frozen encoder for `diffuse train --repa`: the features every training image is
 * aligned to, computed once before the run (the encoder sees only the clean image, so they
 * are a fixed table, as REPA's precomputed DINOv2 features are).
 *
 * The encoder is a diffusion U-Net read as DDAE does (methods/ddae.ts): its mid block on the
 * image lightly noised to t = 10, null label, the map pooled to at most 8 x 8. Why not the
 * shipped MNIST classifier: it is the network MNIST-FID and class accuracy are measured with,
 * and aligning to the judge's own features would flatter the score without making better
 * digits. The shipped U-Net is another network, trained without labels' help in its features
 * (probe: 97.5% linear accuracy from this block and t), whose 8 x 8 map matches the tokens of
 * the DiT's 4x4 patches on 32 x 32 images.
 */
import { HostArray } from '../engine/host.js';
import { RngKey } from '../engine/random/philox.js';
import { blockFeatureMap } from '../methods/ddae.js';
import type { ImageDataset } from '../data/dataset.js';
import { featureGraph, featuresAt } from './probe.js';
import { loadPipeline, requirePixelSpace } from './sample.js';

/** The encoder's block and timestep (DDAE's best region for this U-Net: docs/probe-pool4.csv). */
export const REPA_ENCODER = { block: 'mid', t: 10 } as const;

/** The encoder's features of every image of `data`: [N, C, h, w], in the dataset's order. */
export async function repaTargets(encoderDir: string, data: ImageDataset,
  onBatch: (done: number) => void = () => {}): Promise<HostArray<'float32'>> {
  const p = await loadPipeline(encoderDir);
  requirePixelSpace(p, 'REPA\'s encoder');
  if (p.model.family !== 'unet') {
    throw new Error(`--repa-encoder ${encoderDir}: expected a U-Net pipeline (DDAE features), ` +
      `got a ${p.model.family}`);
  }
  const shape = p.model.sampleShape;
  if (data.images.shape.slice(1).some((v, i) => v !== shape[i])) {
    throw new Error(`--repa-encoder ${encoderDir}: it takes images [${shape.join(', ')}], the ` +
      `training images are [${data.images.shape.slice(1).join(', ')}]`);
  }
  const graph = featureGraph(p, 'repa_encoder', undefined, (model, params, x, t, y) =>
    [blockFeatureMap(model, params, x, t, y, REPA_ENCODER.block)]);
  try {
    const [c, h, w] = graph.outputShapes()[0]! as [number, number, number];
    let done = 0;
    const [feats] = await featuresAt(graph.run, p, data.images, REPA_ENCODER.t, RngKey.fromSeed(0),
      64, (n) => onBatch((done += n)));
    return new HostArray(feats!, [data.images.shape[0]!, c, h, w]);
  } finally {
    await graph.dispose();
  }
}

/** Rows `rows` of a table [N, ...]: a batch's targets. */
export function takeRows(table: HostArray<'float32'>, rows: ArrayLike<number>): HostArray<'float32'> {
  const per = table.size / table.shape[0]!;
  const out = new Float32Array(rows.length * per);
  const src = table.data as Float32Array;
  for (let i = 0; i < rows.length; i++) out.set(src.subarray(rows[i]! * per, (rows[i]! + 1) * per), i * per);
  return new HostArray(out, [rows.length, ...table.shape.slice(1)]);
}
