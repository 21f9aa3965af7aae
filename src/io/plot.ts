/**
 * @file Small raster plots without a graphics stack: 2-D scatter panels side by side, with
 * a 3x5 pixel font for titles. Used to show toy data against samples.
 */
import type { Image } from './png.js';

/** 3x5 glyphs, rows top to bottom, 3 bits per row (MSB = left pixel). */
const GLYPHS: Record<string, number[]> = {
  A: [2, 5, 7, 5, 5], B: [6, 5, 6, 5, 6], C: [3, 4, 4, 4, 3], D: [6, 5, 5, 5, 6], E: [7, 4, 6, 4, 7],
  F: [7, 4, 6, 4, 4], G: [3, 4, 5, 5, 3], H: [5, 5, 7, 5, 5], I: [7, 2, 2, 2, 7], J: [1, 1, 1, 5, 2],
  K: [5, 5, 6, 5, 5], L: [4, 4, 4, 4, 7], M: [5, 7, 7, 5, 5], N: [6, 5, 5, 5, 5], O: [2, 5, 5, 5, 2],
  P: [6, 5, 6, 4, 4], Q: [2, 5, 5, 6, 3], R: [6, 5, 6, 5, 5], S: [3, 4, 2, 1, 6], T: [7, 2, 2, 2, 2],
  U: [5, 5, 5, 5, 7], V: [5, 5, 5, 5, 2], W: [5, 5, 7, 7, 5], X: [5, 5, 2, 5, 5], Y: [5, 5, 2, 2, 2],
  Z: [7, 1, 2, 4, 7], '0': [7, 5, 5, 5, 7], '1': [2, 6, 2, 2, 7], '2': [6, 1, 2, 4, 7],
  '3': [6, 1, 2, 1, 6], '4': [5, 5, 7, 1, 1], '5': [7, 4, 6, 1, 6], '6': [3, 4, 7, 5, 7],
  '7': [7, 1, 1, 2, 2], '8': [7, 5, 7, 5, 7], '9': [7, 5, 7, 1, 6], '.': [0, 0, 0, 0, 2],
  ',': [0, 0, 0, 2, 4], ':': [0, 2, 0, 2, 0], '-': [0, 0, 7, 0, 0], '=': [0, 7, 0, 7, 0],
  '/': [1, 1, 2, 4, 4], '(': [1, 2, 2, 2, 1], ')': [4, 2, 2, 2, 4], '+': [0, 2, 7, 2, 0], ' ': [0, 0, 0, 0, 0],
};

export type Rgb = readonly [number, number, number];

class Canvas {
  readonly data: Uint8Array;
  constructor(readonly width: number, readonly height: number, background: Rgb = [255, 255, 255]) {
    this.data = new Uint8Array(width * height * 3);
    for (let i = 0; i < width * height; i++) this.data.set(background, 3 * i);
  }
  set(x: number, y: number, c: Rgb): void {
    if (x < 0 || y < 0 || x >= this.width || y >= this.height) return;
    this.data.set(c, 3 * (Math.floor(y) * this.width + Math.floor(x)));
  }
  rect(x: number, y: number, w: number, h: number, c: Rgb): void {
    for (let i = 0; i < w; i++) (this.set(x + i, y, c), this.set(x + i, y + h - 1, c));
    for (let j = 0; j < h; j++) (this.set(x, y + j, c), this.set(x + w - 1, y + j, c));
  }
  /** Text at scale `s` (each font pixel an s x s block). */
  text(x: number, y: number, str: string, c: Rgb, s = 2): void {
    let cx = x;
    for (const ch of str.toUpperCase()) {
      const g = GLYPHS[ch] ?? GLYPHS[' ']!;
      g.forEach((row, r) => {
        for (let b = 0; b < 3; b++) {
          if (row & (4 >> b)) for (let i = 0; i < s * s; i++) this.set(cx + b * s + (i % s), y + r * s + Math.floor(i / s), c);
        }
      });
      cx += 4 * s;
    }
  }
}

export interface ScatterPanel {
  title: string;
  /** Interleaved x, y pairs. */
  points: ArrayLike<number>;
  color?: Rgb;
}

/**
 * Scatter panels side by side on shared axes [lo, hi] in both coordinates (default: the
 * union of the points' range, padded by 5%), each `size` pixels square under its title.
 */
export function scatterPanels(panels: readonly ScatterPanel[],
  opts: { size?: number; bounds?: readonly [number, number] } = {}): Image {
  const size = opts.size ?? 320;
  const header = 24;
  const gap = 12;
  let [lo, hi] = opts.bounds ?? [Infinity, -Infinity];
  if (!opts.bounds) {
    for (const p of panels) {
      for (let i = 0; i < p.points.length; i++) {
        const v = p.points[i]!;
        if (Number.isFinite(v)) (lo = Math.min(lo, v), hi = Math.max(hi, v));
      }
    }
    const margin = 0.05 * (hi - lo || 1);
    lo -= margin;
    hi += margin;
  }
  const canvas = new Canvas(panels.length * (size + gap) + gap, size + header + gap);
  const palette: Rgb[] = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40]];
  panels.forEach((p, k) => {
    const x0 = gap + k * (size + gap);
    const y0 = header;
    canvas.text(x0, 6, p.title, [0, 0, 0]);
    canvas.rect(x0 - 1, y0 - 1, size + 2, size + 2, [160, 160, 160]);
    const color = p.color ?? palette[k % palette.length]!;
    const scale = (size - 1) / (hi - lo);
    for (let i = 0; i + 1 < p.points.length; i += 2) {
      const px = x0 + (p.points[i]! - lo) * scale;
      const py = y0 + (hi - p.points[i + 1]!) * scale;
      if (px < x0 || py < y0 || px >= x0 + size || py >= y0 + size) continue;
      canvas.set(px, py, color);
      canvas.set(px + 1, py, color);
      canvas.set(px, py + 1, color);
      canvas.set(px + 1, py + 1, color);
    }
  });
  return { width: canvas.width, height: canvas.height, channels: 3, data: canvas.data };
}
