/**
 * @file The MoLRG phase-transition experiment behind `diffuse molrg` (Wang et al. 2024,
 * methods/molrg.ts): for each intrinsic dimension d and each number of training samples per
 * component N_k = ratio x d, a few seeds, train the low-rank DAE on N_k samples of each of K
 * components in ambient dimension D, sample it with DDIM and score it. The result is the
 * paper's figure, success over (d, N), with N / d on the horizontal axis so that a transition
 * at N = c d is a vertical boundary.
 *
 * Default sweep: d = 2, 4, 6, 8; N_k / d = 0.5, 1, 1.5, 2, 3, 4; K = 2, D = 48; 3 seeds; 1,000
 * steps of 8 restarts; 72 runs in 6.5 minutes (wall) on 2 CPU cores shared with another job,
 * giving docs/molrg.csv and docs/molrg.png.
 */
import { RngKey } from '../engine/random/philox.js';
import { RngStream } from '../engine/random/stream.js';
import { heatMap } from '../io/plot.js';
import { writeFileAtomic, writePng, type Image } from '../io/png.js';
import {
  balancedSamples, randomMolrg, relativeResiduals, sampleDae, subspaceDistance,
  SUCCESS_THRESHOLD, trainLowRankDae,
} from '../methods/molrg.js';

/** A run whose learned subspaces are within this distance of the truth recovered them. */
export const RECOVERY_THRESHOLD = 0.1;

export interface MolrgSweepOptions {
  /** Intrinsic dimensions d. */
  dims: readonly number[];
  /** Training samples per component as multiples of d (N_k = max(1, round(ratio d))). */
  ratios: readonly number[];
  components: number;
  ambient: number;
  /** Seeds 0 .. seeds - 1 per cell: each draws its own subspaces, data and initialisation. */
  seeds: number;
  /** Training steps per run. */
  steps: number;
  restarts?: number;
  lr?: number;
  /** Generated samples scored per run. */
  samples?: number;
  /** DDIM steps. */
  samplingSteps?: number;
  threshold?: number;
  onRun?: (row: MolrgRow, done: number, total: number) => void;
  signal?: AbortSignal;
}

export interface MolrgRow {
  d: number;
  ratio: number;
  /** Training samples per component N_k. */
  n: number;
  seed: number;
  /** Fraction of generated samples within the threshold of a true subspace. */
  success: number;
  /** Median relative residual of the generated samples. */
  residual: number;
  /** Subspace distance of the learned bases to the true ones (0 to 1). */
  distance: number;
  /** Whether the distance is below RECOVERY_THRESHOLD. */
  recovered: boolean;
  /** Training loss of the kept restart. */
  loss: number;
  seconds: number;
}

export const MOLRG_DEFAULTS = {
  dims: [2, 4, 6, 8], ratios: [0.5, 1, 1.5, 2, 3, 4], components: 2, ambient: 48, seeds: 3,
  steps: 1000,
} as const;

/** Runs the sweep, one row per (d, ratio, seed), in that order. */
export async function runMolrgSweep(o: MolrgSweepOptions): Promise<MolrgRow[]> {
  const rows: MolrgRow[] = [];
  const total = o.dims.length * o.ratios.length * o.seeds;
  for (const d of o.dims) {
    for (const ratio of o.ratios) {
      for (let seed = 0; seed < o.seeds; seed++) {
        if (o.signal?.aborted) throw o.signal.reason ?? new Error('aborted');
        const start = performance.now();
        const shape = { ambient: o.ambient, dim: d, components: o.components };
        const n = Math.max(1, Math.round(ratio * d));
        // one stream per (d, n, seed): a cell's data do not depend on the rest of the grid
        const rng = new RngStream(RngKey.fromSeed(seed).fold(d).fold(n));
        const mix = randomMolrg(shape, rng);
        const trained = await trainLowRankDae({ data: balancedSamples(mix, n, rng), shape,
          steps: o.steps, seed, ...(o.restarts ? { restarts: o.restarts } : {}),
          ...(o.lr ? { lr: o.lr } : {}) });
        const x = await sampleDae(trained, o.samples ?? 256,
          { steps: o.samplingSteps ?? 50, seed: seed + 1 });
        const r = relativeResiduals(x, mix);
        const distance = subspaceDistance(trained.params.bases, mix);
        const row: MolrgRow = {
          d, ratio, n, seed,
          success: r.reduce((s, v) => s + (v < (o.threshold ?? SUCCESS_THRESHOLD) ? 1 : 0), 0) /
            r.length,
          residual: median(r), distance, recovered: distance < RECOVERY_THRESHOLD,
          loss: Math.min(...trained.restartLosses), seconds: (performance.now() - start) / 1000,
        };
        rows.push(row);
        o.onRun?.(row, rows.length, total);
      }
    }
  }
  return rows;
}

function median(v: Float64Array): number {
  const s = Float64Array.from(v).sort();
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

export interface MolrgCell {
  d: number;
  ratio: number;
  /** Mean sample success over seeds. */
  success: number;
  /** Fraction of seeds that recovered the subspaces. */
  recovered: number;
}

/** The rows averaged over seeds, one cell per (d, ratio). */
export function molrgCells(rows: readonly MolrgRow[]): MolrgCell[] {
  const keys = [...new Set(rows.map((r) => `${r.d}:${r.ratio}`))];
  return keys.map((k) => {
    const group = rows.filter((r) => `${r.d}:${r.ratio}` === k);
    const mean = (f: (r: MolrgRow) => number) => group.reduce((s, r) => s + f(r), 0) / group.length;
    return { d: group[0]!.d, ratio: group[0]!.ratio, success: mean((r) => r.success),
      recovered: mean((r) => (r.recovered ? 1 : 0)) };
  });
}

/**
 * The transition constant c: for each d the smallest ratio from which every larger ratio has
 * recovered >= half of its seeds (NaN where none does), and their median over d.
 */
export function transitionRatio(rows: readonly MolrgRow[]):
  { perDim: Map<number, number>; c: number } {
  const cells = molrgCells(rows);
  const perDim = new Map<number, number>();
  for (const d of new Set(cells.map((c) => c.d))) {
    const own = cells.filter((c) => c.d === d).sort((a, b) => a.ratio - b.ratio);
    let c = NaN;
    for (let i = own.length - 1; i >= 0 && own[i]!.recovered >= 0.5; i--) c = own[i]!.ratio;
    perDim.set(d, c);
  }
  const found = [...perDim.values()].filter(Number.isFinite).sort((a, b) => a - b);
  const c = found.length === 0 ? NaN : found.length % 2 ? found[(found.length - 1) / 2]!
    : (found[found.length / 2 - 1]! + found[found.length / 2]!) / 2;
  return { perDim, c };
}

const CSV_COLUMNS = ['d', 'ratio', 'n', 'seed', 'success', 'residual', 'distance', 'recovered',
  'loss', 'seconds'] as const;

export function molrgCsv(rows: readonly MolrgRow[]): string {
  const cell = (v: number | boolean): string =>
    typeof v === 'boolean' ? (v ? '1' : '0') : Number.isInteger(v) ? String(v) : v.toPrecision(4);
  return [CSV_COLUMNS.join(','), ...rows.map((r) => CSV_COLUMNS.map((c) => cell(r[c])).join(','))]
    .join('\n') + '\n';
}

/**
 * Two heat maps over (d, N_k / d), largest d on top as in the paper's figure: the mean
 * fraction of generated samples on a true subspace, and the share of seeds whose learned
 * subspaces match the truth, both in percent.
 */
export function molrgHeatMaps(rows: readonly MolrgRow[], o: { ambient: number;
  components: number }): Image {
  const cells = molrgCells(rows);
  const dims = [...new Set(cells.map((c) => c.d))].sort((a, b) => b - a);
  const ratios = [...new Set(cells.map((c) => c.ratio))].sort((a, b) => a - b);
  const table = (f: (c: MolrgCell) => number) => dims.map((d) => ratios.map((r) => {
    const c = cells.find((x) => x.d === d && x.ratio === r);
    return c ? 100 * f(c) : NaN;
  }));
  const common = { rows: dims.map((d) => `d=${d}`), cols: ratios.map((r) => `${r}`),
    rowLabel: 'dim', colLabel: 'samples per component / d', format: (v: number) => v.toFixed(0) };
  const where = `K=${o.components} D=${o.ambient}`;
  return stackImages([
    heatMap(table((c) => c.success), { ...common,
      title: `samples on a subspace, percent, ${where}` }),
    heatMap(table((c) => c.recovered), { ...common,
      title: `subspaces recovered, percent of seeds, ${where}` }),
  ]);
}

/** RGB images one above the other on white, left-aligned. */
function stackImages(images: readonly Image[]): Image {
  const width = Math.max(...images.map((i) => i.width));
  const height = images.reduce((s, i) => s + i.height, 0);
  const data = new Uint8Array(width * height * 3).fill(255);
  let y0 = 0;
  for (const img of images) {
    if (img.channels !== 3) throw new RangeError('stackImages: expected RGB images');
    for (let y = 0; y < img.height; y++) {
      const line = img.data.subarray(y * img.width * 3, (y + 1) * img.width * 3);
      data.set(line, (y0 + y) * width * 3);
    }
    y0 += img.height;
  }
  return { width, height, channels: 3, data };
}

/** Writes the rows as CSV and the heat maps as PNG (either path may be omitted). */
export async function writeMolrgOutputs(rows: readonly MolrgRow[], o: { csv?: string;
  png?: string; ambient: number; components: number }): Promise<void> {
  if (o.csv) await writeFileAtomic(o.csv, molrgCsv(rows));
  if (o.png) await writePng(o.png, molrgHeatMaps(rows, o));
}
