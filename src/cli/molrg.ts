/** @file `diffuse molrg`: the MoLRG phase transition (Wang et al. 2024): success over (d, N). */
import type { Command } from 'commander';
import {
  MOLRG_DEFAULTS, molrgCells, runMolrgSweep, transitionRatio, writeMolrgOutputs,
} from '../pipelines/molrg.js';
import { UsageError } from './errors.js';
import { addOptions, commandOptions, custom, int, num, path } from './options.js';
import { progress } from './progress.js';

/** `2,4,6,8` or `0.5,1,2`: positive numbers (integers when `integer`), in the order given. */
export function parsePositiveList(v: string, integer: boolean): number[] {
  const parts = v.split(',').map((s) => s.trim());
  const bad = parts.find((s) => !/^(\d+(\.\d*)?|\.\d+)$/.test(s) || !(Number(s) > 0) ||
    (integer && !Number.isInteger(Number(s))));
  if (bad !== undefined) {
    throw new RangeError(`'${bad}' is not a positive ${integer ? 'integer' : 'number'}`);
  }
  return parts.map(Number);
}

const parseDims = (v: string): number[] => parsePositiveList(v, true);
const parseRatios = (v: string): number[] => parsePositiveList(v, false);

export const MOLRG_OPTIONS = {
  dims: custom(parseDims, { arg: '<list>', help: 'intrinsic dimensions d',
    expected: 'positive integers such as 2,4,6,8', default: [...MOLRG_DEFAULTS.dims] }),
  ratios: custom(parseRatios, { arg: '<list>', help: 'training samples per component, as ' +
    'multiples of d (rounded, at least 1)', expected: 'positive numbers such as 0.5,1,2,4',
  default: [...MOLRG_DEFAULTS.ratios] }),
  components: int({ min: 1, max: 6, help: 'mixture components K',
    default: MOLRG_DEFAULTS.components }),
  ambient: int({ min: 2, help: 'ambient dimension D (at least K times the largest d)',
    default: MOLRG_DEFAULTS.ambient }),
  seeds: int({ min: 1, help: 'seeds per cell (each its own subspaces, data and initialisation)',
    default: MOLRG_DEFAULTS.seeds }),
  steps: int({ min: 1, help: 'training steps per run', default: MOLRG_DEFAULTS.steps }),
  restarts: int({ min: 1, help: 'random initialisations trained together per run; the lowest ' +
    'training loss is kept', default: 8 }),
  lr: num({ range: '(0, 10]', help: 'peak learning rate (AdamW, warm-up then cosine)',
    default: 5e-2 }),
  samples: int({ min: 1, help: 'generated samples scored per run', default: 256 }),
  samplingSteps: int({ min: 1, help: 'DDIM steps', default: 50 }),
  csv: path({ arg: '<file.csv>', help: 'where to write one row per run', default: 'molrg.csv' }),
  png: path({ arg: '<file.png>', help: 'where to write the heat maps', default: 'molrg.png' }),
};

export function registerMolrg(program: Command): void {
  addOptions(program.command('molrg')
    .description('the MoLRG phase transition (Wang et al. 2024): train the low-rank DAE on ' +
      'N samples per component of a mixture of low-rank Gaussians for a grid of intrinsic ' +
      'dimensions d and N / d, score its samples by their distance to the true subspaces, ' +
      'and write a CSV and heat maps of success over (d, N / d)'), MOLRG_OPTIONS)
    .action(async (_: unknown, cmd: Command) => {
      const o = commandOptions(MOLRG_OPTIONS, cmd).values;
      const largest = Math.max(...o.dims);
      if (o.components * largest > o.ambient) {
        throw new UsageError(`--ambient: expected at least components x largest d = ` +
          `${o.components * largest}, got ${o.ambient}`);
      }
      const total = o.dims.length * o.ratios.length * o.seeds;
      const bar = progress('runs', total, ['d', 'N']);
      const rows = await runMolrgSweep({ ...o, samplingSteps: o.samplingSteps,
        onRun: (r, done) => bar.update(done, { d: r.d, N: r.n }) });
      bar.stop();
      console.log(`\n${'d'.padStart(3)} ${'N/d'.padStart(5)} ${'N'.padStart(4)} ` +
        `${'on subspace'.padStart(12)} ${'recovered'.padStart(10)}`);
      for (const c of molrgCells(rows)) {
        console.log(`${String(c.d).padStart(3)} ${String(c.ratio).padStart(5)} ` +
          `${String(Math.max(1, Math.round(c.ratio * c.d))).padStart(4)} ` +
          `${(100 * c.success).toFixed(0).padStart(11)}% ` +
          `${(100 * c.recovered).toFixed(0).padStart(9)}%`);
      }
      const { c, perDim } = transitionRatio(rows);
      console.log(`transition (recovered in >= half the seeds from N = c d on): ` +
        [...perDim].map(([d, v]) => `d=${d}: c=${v}`).join(', ') + `; median c = ${c}`);
      await writeMolrgOutputs(rows, { csv: o.csv, png: o.png, ambient: o.ambient,
        components: o.components });
      console.log(`wrote ${o.csv} and ${o.png}`);
    });
}
