/**
 * @file The MNIST stand-in for DivControl's conditions (methods/divcontrol.ts): four operators
 * that turn a digit into a condition image, each with a hand-written descriptor that stands in
 * for the text embedding of its instruction, and the control fidelity of a sample.
 *
 * The paper pairs each condition with an instruction ("segmentation map to image") and embeds it
 * with a pretrained text encoder, so related conditions get related embeddings and the gate can
 * route an unseen one. Here there is no text encoder: a descriptor is four numbers a person
 * would write down about the operator, [outline only, fine detail kept, strokes filled, binary].
 * The base conditions are edge, lowres and silhouette; blur is held out as the novel one, a
 * low-shift condition in the paper's sense (its descriptor lies between lowres' and
 * silhouette's, and BLUR is one of the paper's own novel conditions).
 *
 * Images are [N, 1, H, W] in [-1, 1] with background -1 (data/mnist.ts); every condition image
 * is too, so one patch embedding reads them all.
 */
import { HostArray } from '../engine/host.js';
import { dilate } from '../data/transforms.js';

export const CONDITION_KINDS = ['edge', 'lowres', 'silhouette', 'blur'] as const;
export type ConditionKind = (typeof CONDITION_KINDS)[number];

/** The conditions the multi-condition model is trained on, and the held-out one. */
export const BASE_CONDITIONS: readonly ConditionKind[] = ['edge', 'lowres', 'silhouette'];
export const NOVEL_CONDITION: ConditionKind = 'blur';

/** [outline only, fine detail kept, strokes filled, binary]: the instruction's stand-in. */
export const CONDITION_DESCRIPTORS: Readonly<Record<ConditionKind, readonly number[]>> = {
  edge: [1, 1, 0, 0], // "edge map to image": Sobel outline at full resolution
  lowres: [0, 0.25, 1, 0], // "low-resolution image to image": 4x4 blocks, a quarter of the detail
  silhouette: [0, 0.75, 1, 1], // "silhouette mask to image": thresholded, grown by a pixel
  blur: [0, 0.5, 1, 0], // "blurred image to image": Gaussian, sigma 1.5 pixels
};

/** Sobel gradient magnitude of the ink p = (x + 1) / 2, / 4 (a unit step's largest), clipped to
 *  [0, 1], back to [-1, 1]; outside the image counts as background. */
function sobelEdges(x: HostArray<'float32'>): HostArray<'float32'> {
  const [n, c, h, w] = x.shape as [number, number, number, number];
  const src = x.data;
  const out = new Float32Array(src.length);
  for (let q = 0; q < n * c; q++) {
    const o = q * h * w;
    const ink = (r: number, s: number) =>
      r < 0 || s < 0 || r >= h || s >= w ? 0 : (src[o + r * w + s]! + 1) / 2;
    for (let r = 0; r < h; r++) {
      for (let s = 0; s < w; s++) {
        const gx = ink(r - 1, s + 1) + 2 * ink(r, s + 1) + ink(r + 1, s + 1)
          - ink(r - 1, s - 1) - 2 * ink(r, s - 1) - ink(r + 1, s - 1);
        const gy = ink(r + 1, s - 1) + 2 * ink(r + 1, s) + ink(r + 1, s + 1)
          - ink(r - 1, s - 1) - 2 * ink(r - 1, s) - ink(r - 1, s + 1);
        out[o + r * w + s] = 2 * Math.min(1, Math.hypot(gx, gy) / 4) - 1;
      }
    }
  }
  return new HostArray(out, x.shape);
}

/** Average over f x f blocks, each block filled with its mean (H, W divisible by f). */
function blockAverage(x: HostArray<'float32'>, f: number): HostArray<'float32'> {
  const [n, c, h, w] = x.shape as [number, number, number, number];
  const src = x.data;
  const out = new Float32Array(src.length);
  for (let q = 0; q < n * c; q++) {
    const o = q * h * w;
    for (let by = 0; by < h; by += f) {
      for (let bx = 0; bx < w; bx += f) {
        let m = 0;
        for (let y = by; y < by + f; y++) for (let s = bx; s < bx + f; s++) m += src[o + y * w + s]!;
        m /= f * f;
        for (let y = by; y < by + f; y++) for (let s = bx; s < bx + f; s++) out[o + y * w + s] = m;
      }
    }
  }
  return new HostArray(out, x.shape);
}

/** Ink above half (x > 0) as a mask in {-1, 1}, dilated by one pixel. */
function silhouette(x: HostArray<'float32'>): HostArray<'float32'> {
  return dilate(new HostArray(Float32Array.from(x.data, (v) => (v > 0 ? 1 : -1)), x.shape), 1);
}

/** Separable Gaussian blur of the ink (sigma in pixels, taps to 3 sigma; background outside). */
function gaussianBlur(x: HostArray<'float32'>, sigma: number): HostArray<'float32'> {
  const [n, c, h, w] = x.shape as [number, number, number, number];
  const rad = Math.ceil(3 * sigma);
  const k = Array.from({ length: 2 * rad + 1 },
    (_, i) => Math.exp(-((i - rad) ** 2) / (2 * sigma * sigma)));
  const total = k.reduce((a, b) => a + b, 0);
  const taps = k.map((v) => v / total);
  const ink = Float32Array.from(x.data, (v) => (v + 1) / 2);
  const pass = (src: Float32Array, horizontal: boolean): Float32Array => {
    const out = new Float32Array(src.length);
    for (let q = 0; q < n * c; q++) {
      const o = q * h * w;
      for (let r = 0; r < h; r++) {
        for (let s = 0; s < w; s++) {
          let acc = 0;
          for (let i = -rad; i <= rad; i++) {
            const [rr, ss] = horizontal ? [r, s + i] : [r + i, s];
            if (rr >= 0 && ss >= 0 && rr < h && ss < w) acc += taps[i + rad]! * src[o + rr * w + ss]!;
          }
          out[o + r * w + s] = acc;
        }
      }
    }
    return out;
  };
  const blurred = pass(pass(ink, true), false);
  return new HostArray(Float32Array.from(blurred, (v) => 2 * v - 1), x.shape);
}

/** The condition image of each digit [N, 1, H, W] for condition `kind`. */
export function conditionImages(kind: ConditionKind, x: HostArray<'float32'>): HostArray<'float32'> {
  switch (kind) {
    case 'edge': return sobelEdges(x);
    case 'lowres': return blockAverage(x, 4);
    case 'silhouette': return silhouette(x);
    case 'blur': return gaussianBlur(x, 1.5);
  }
}

/** Control fidelity per image: the mean squared difference between the condition of the
 *  generated image and the condition it was given (both [N, 1, H, W]; 0 is perfect). */
export function conditionMse(kind: ConditionKind, generated: HostArray<'float32'>,
  given: HostArray<'float32'>): Float64Array {
  const got = conditionImages(kind, generated);
  const n = given.shape[0]!;
  const per = given.size / n;
  return Float64Array.from({ length: n }, (_, i) => {
    let s = 0;
    for (let j = i * per; j < (i + 1) * per; j++) s += (got.data[j]! - given.data[j]!) ** 2;
    return s / per;
  });
}
