/**
 * @file Small raster plots without a graphics stack: 2-D scatter panels side by side, and
 * line plots with ticks, axis labels and a legend, in a 3x5 pixel font. Used to show toy data
 * against samples and speed-quality curves (`diffuse eval --sweep`).
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

export interface LineSeries {
  label: string;
  /** Interleaved x, y pairs, joined in the order given. */
  points: ArrayLike<number>;
  /** Interleaved lo, hi per point: a vertical bar at each x (e.g. the spread over seeds). */
  spread?: ArrayLike<number>;
  color?: Rgb;
}

export interface LinePlotOptions {
  title?: string;
  xLabel: string;
  yLabel: string;
  /** Size of the whole picture (default 640 x 420). */
  width?: number;
  height?: number;
  /** Dashed horizontal reference lines, e.g. a floor no method can beat. */
  hlines?: readonly { y: number; label: string; color?: Rgb }[];
}

/** A round tick step, 1, 2 or 5 times a power of ten, giving `most` ticks or a few fewer. */
function tickStep(range: number, most: number): number {
  const raw = (range || 1) / most;
  const p = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw)!;
}

/** A tick value with no more digits than its step needs. */
function tickLabel(v: number, step: number): string {
  const digits = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  return v.toFixed(digits);
}

/** A line from (x0, y0) to (x1, y1), `width` pixels thick; `dash` > 0 draws dash-long dashes. */
function drawLine(c: Canvas, x0: number, y0: number, x1: number, y1: number, color: Rgb,
  width = 2, dash = 0): void {
  const n = Math.max(1, Math.ceil(Math.max(Math.abs(x1 - x0), Math.abs(y1 - y0))));
  for (let i = 0; i <= n; i++) {
    if (dash > 0 && Math.floor(i / dash) % 2 === 1) continue;
    const [x, y] = [x0 + ((x1 - x0) * i) / n, y0 + ((y1 - y0) * i) / n];
    for (let k = 0; k < width * width; k++) {
      c.set(x + (k % width), y + Math.floor(k / width), color);
    }
  }
}

/**
 * Lines with markers on linear axes (bounds: the data and reference lines, padded by 5%), with
 * round ticks, axis labels, a title and a legend to the right, in the 3x5 font.
 */
export function linePlot(series: readonly LineSeries[], opts: LinePlotOptions): Image {
  // The legend's column widens (and the image with it) for labels over 17 characters.
  const longest = Math.max(0, ...[...series, ...(opts.hlines ?? [])].map((e) => e.label.length));
  const right = Math.max(180, 50 + 8 * longest);
  const [width, height] = [(opts.width ?? 640) + right - 180, opts.height ?? 420];
  const [left, top, bottom] = [72, opts.title ? 52 : 36, 48];
  const [pw, ph] = [width - left - right, height - top - bottom];
  let [xlo, xhi, ylo, yhi] = [Infinity, -Infinity, Infinity, -Infinity];
  for (const s of series) {
    for (let i = 0; i + 1 < s.points.length; i += 2) {
      const [x, y] = [s.points[i]!, s.points[i + 1]!];
      if (Number.isFinite(x)) (xlo = Math.min(xlo, x), xhi = Math.max(xhi, x));
      if (Number.isFinite(y)) (ylo = Math.min(ylo, y), yhi = Math.max(yhi, y));
    }
    for (let i = 0; i < (s.spread?.length ?? 0); i++) {
      const y = s.spread![i]!;
      if (Number.isFinite(y)) (ylo = Math.min(ylo, y), yhi = Math.max(yhi, y));
    }
  }
  for (const h of opts.hlines ?? []) (ylo = Math.min(ylo, h.y), yhi = Math.max(yhi, h.y));
  if (!Number.isFinite(xlo)) [xlo, xhi] = [0, 1];
  if (!Number.isFinite(ylo)) [ylo, yhi] = [0, 1];
  const pad = (lo: number, hi: number) => 0.05 * (hi - lo || Math.abs(lo) || 1);
  const [mx, my] = [pad(xlo, xhi), pad(ylo, yhi)];
  [xlo, xhi, ylo, yhi] = [xlo - mx, xhi + mx, ylo - my, yhi + my];
  const px = (x: number) => left + ((x - xlo) / (xhi - xlo)) * (pw - 1);
  const py = (y: number) => top + ((yhi - y) / (yhi - ylo)) * (ph - 1);
  const canvas = new Canvas(width, height);
  const [ink, grid] = [[0, 0, 0] as Rgb, [225, 225, 225] as Rgb];
  if (opts.title) canvas.text(left, 8, opts.title, ink);
  canvas.text(left - 64, top - 20, opts.yLabel, ink);
  canvas.text(left + pw / 2 - opts.xLabel.length * 4, height - 16, opts.xLabel, ink);
  const xs = tickStep(xhi - xlo, 6); // x labels are wider than y ones
  for (let v = Math.ceil(xlo / xs) * xs; v <= xhi; v += xs) {
    drawLine(canvas, px(v), top, px(v), top + ph - 1, grid, 1);
    const label = tickLabel(v, xs);
    canvas.text(px(v) - label.length * 4, top + ph + 6, label, ink);
  }
  const ys = tickStep(yhi - ylo, 8);
  for (let v = Math.ceil(ylo / ys) * ys; v <= yhi; v += ys) {
    drawLine(canvas, left, py(v), left + pw - 1, py(v), grid, 1);
    const label = tickLabel(v, ys);
    canvas.text(left - 6 - label.length * 8, py(v) - 5, label, ink);
  }
  canvas.rect(left - 1, top - 1, pw + 2, ph + 2, [120, 120, 120]);
  const palette: Rgb[] = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40],
    [148, 103, 189], [140, 86, 75], [227, 119, 194], [127, 127, 127]];
  const legend: { label: string; color: Rgb; dashed: boolean }[] = [];
  for (const h of opts.hlines ?? []) {
    const color = h.color ?? [110, 110, 110];
    drawLine(canvas, left, py(h.y), left + pw - 1, py(h.y), color, 1, 6);
    legend.push({ label: h.label, color, dashed: true });
  }
  series.forEach((s, k) => {
    const color = s.color ?? palette[k % palette.length]!;
    for (let i = 0; i + 3 < s.points.length; i += 2) {
      const [x0, y0, x1, y1] = [px(s.points[i]!), py(s.points[i + 1]!), px(s.points[i + 2]!),
        py(s.points[i + 3]!)];
      drawLine(canvas, x0, y0, x1, y1, color);
    }
    for (let i = 0; i + 1 < s.points.length; i += 2) {
      const [x, y] = [Math.round(px(s.points[i]!)), Math.round(py(s.points[i + 1]!))];
      for (let k = 0; k < 25; k++) canvas.set(x - 2 + (k % 5), y - 2 + Math.floor(k / 5), color);
      const [lo, hi] = [s.spread?.[i], s.spread?.[i + 1]];
      if (lo !== undefined && hi !== undefined && Number.isFinite(lo) && Number.isFinite(hi)) {
        drawLine(canvas, x, py(lo), x, py(hi), color, 1); // the bar, with 7-pixel caps
        for (const end of [lo, hi]) drawLine(canvas, x - 3, py(end), x + 3, py(end), color, 1);
      }
    }
    legend.push({ label: s.label, color, dashed: false });
  });
  legend.forEach((e, k) => {
    const [x, y] = [left + pw + 14, top + 4 + 18 * k];
    drawLine(canvas, x, y + 4, x + 20, y + 4, e.color, e.dashed ? 1 : 2, e.dashed ? 3 : 0);
    canvas.text(x + 28, y, e.label, ink);
  });
  return { width: canvas.width, height: canvas.height, channels: 3, data: canvas.data };
}

export interface HeatMapOptions {
  title?: string;
  /** Labels of the rows (top to bottom) and columns (left to right). */
  rows: readonly string[];
  cols: readonly string[];
  rowLabel?: string;
  colLabel?: string;
  /** The text written in a cell (default: the value with 3 significant digits). */
  format?: (v: number) => string;
}

/**
 * A table of values as coloured cells, white (lowest) to dark blue (highest), the value
 * written in each cell and its best (highest) cell outlined; NaN cells are grey and empty.
 * `values[r][c]` is row r, column c.
 */
export function heatMap(values: readonly (readonly number[])[], opts: HeatMapOptions): Image {
  const { rows, cols } = opts;
  if (values.length !== rows.length || values.some((r) => r.length !== cols.length)) {
    throw new RangeError(`heatMap: expected ${rows.length} rows of ${cols.length} values`);
  }
  const fmt = opts.format ?? ((v: number) => v.toPrecision(3));
  const cellW = Math.max(56, 8 * Math.max(...values.flat().map((v) => fmt(v).length)) + 12);
  const cellH = 28;
  const left = 16 + 8 * Math.max(...rows.map((r) => r.length), (opts.rowLabel ?? '').length);
  const top = (opts.title ? 30 : 8) + 20 + (opts.colLabel ? 18 : 0);
  const canvas = new Canvas(left + cols.length * cellW + 12, top + rows.length * cellH + 12);
  const ink: Rgb = [0, 0, 0];
  if (opts.title) canvas.text(8, 8, opts.title, ink);
  if (opts.colLabel) canvas.text(left, top - 38, opts.colLabel, ink);
  if (opts.rowLabel) canvas.text(8, top - 20, opts.rowLabel, ink);
  const finite = values.flat().filter(Number.isFinite);
  const [lo, hi] = [Math.min(...finite), Math.max(...finite)];
  let best: [number, number] | undefined;
  values.forEach((row, r) => row.forEach((v, c) => {
    if (Number.isFinite(v) && (!best || v > values[best[0]]![best[1]]!)) best = [r, c];
  }));
  cols.forEach((label, c) => canvas.text(left + c * cellW + 6, top - 16, label, ink));
  values.forEach((row, r) => {
    const y = top + r * cellH;
    canvas.text(8, y + 9, rows[r]!, ink);
    row.forEach((v, c) => {
      const x = left + c * cellW;
      const u = Number.isFinite(v) ? (hi > lo ? (v - lo) / (hi - lo) : 1) : NaN;
      const color: Rgb = Number.isNaN(u) ? [200, 200, 200]
        : [Math.round(255 - 215 * u), Math.round(255 - 170 * u), Math.round(255 - 75 * u)];
      for (let j = 1; j < cellH - 1; j++) for (let i = 1; i < cellW - 1; i++) canvas.set(x + i, y + j, color);
      if (Number.isFinite(v)) canvas.text(x + 6, y + 9, fmt(v), u > 0.55 ? [255, 255, 255] : ink);
    });
  });
  if (best) {
    const [r, c] = best;
    canvas.rect(left + c * cellW, top + r * cellH, cellW, cellH, [214, 39, 40]);
    canvas.rect(left + c * cellW + 1, top + r * cellH + 1, cellW - 2, cellH - 2, [214, 39, 40]);
  }
  return { width: canvas.width, height: canvas.height, channels: 3, data: canvas.data };
}
