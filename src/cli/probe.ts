/** @file `diffuse probe`: how linearly separable a diffusion U-Net's features are (DDAE). */
import type { Command } from 'commander';
import { mnistSplits } from '../data/mnist.js';
import { writePng } from '../io/png.js';
import { LINEAR_PROBE_DEFAULTS as L } from '../methods/linear-probe.js';
import { classAccuracy, featureExtractor, loadMetricClassifier } from '../pipelines/metrics.js';
import {
  attentionProbe, PROBE_CSV_COLUMNS, PROBE_DEFAULTS as D, probeBlocks, probeCsv, probeHeatMap, probeSweep,
  type ProbeRow,
} from '../pipelines/probe.js';
import { loadPipeline, PROVIDERS } from '../pipelines/sample.js';
import { writeFileAtomic } from '../util/atomic.js';
import { addOptions, commandOptions, custom, flag, int, num, oneOf, path } from './options.js';
import { progress } from './progress.js';
import { DEFAULT_MODEL_DIR } from './sample.js';

/** `--blocks mid,up.0`: block names (checked against the model when it is loaded). */
const parseBlocks = (v: string): string[] => {
  const list = v.split(',').map((s) => s.trim());
  const bad = list.find((s) => !/^(down\.\d+|mid|up\.\d+)$/.test(s));
  if (bad !== undefined) throw new RangeError(`'${bad}' is not a block name (down.i, mid, up.i)`);
  return list;
};

/** `--timesteps 0,10,50`: non-negative integers. */
const parseTimesteps = (v: string): number[] => {
  const list = v.split(',').map((s) => s.trim());
  const bad = list.find((s) => !/^\d+$/.test(s));
  if (bad !== undefined) throw new RangeError(`'${bad}' is not a timestep (an integer >= 0)`);
  return list.map(Number);
};

export const SWEEP_TIMESTEPS = [5, 10, 50, 100, 250, 500];

export const PROBE_OPTIONS = {
  model: path({ arg: '<dir>', help: `U-Net pipeline or model folder (default: ${DEFAULT_MODEL_DIR})` }),
  block: custom((v) => parseBlocks(v)[0]!, { arg: '<name>', expected: 'a block name such as up.1',
    help: 'the block whose output is pooled: down.i, mid or up.i', default: 'mid' }),
  t: int({ min: 0, help: 'the 0-based timestep the images are noised to (DDAE\'s t = 11 ' +
    'counts from 1: it is 10 here)', default: D.timesteps[0]! }),
  head: oneOf(['linear', 'attention'], { help: 'linear: DDAE\'s linear probe on pooled features; ' +
    'attention: Mukhopadhyay et al.\'s attention head over the block\'s feature map (up to 8x8 ' +
    'tokens; one block and timestep, not --sweep)', default: 'linear' }),
  sweep: flag({ help: 'probe every block at each of --timesteps; write --csv and --plot' }),
  blocks: custom(parseBlocks, { arg: '<list>', expected: 'block names such as down.2,mid,up.0',
    help: 'blocks of a sweep (default: all of the U-Net\'s)' }),
  timesteps: custom(parseTimesteps, { arg: '<list>', expected: 'timesteps such as 5,10,50',
    help: 'timesteps of a sweep', default: SWEEP_TIMESTEPS }),
  pool: int({ min: 1, help: 'average-pool each block to a pool x pool grid before the probe ' +
    '(1: DDAE\'s global average pool; 4: a 4x4 grid, as Mukhopadhyay et al. try)',
  default: D.pool }),
  draws: int({ min: 1, help: 'noisy copies of each training image', default: D.draws }),
  epochs: int({ min: 1, help: 'probe training epochs (Adam, cosine decay)', default: L.epochs }),
  lr: num({ range: '(0, 10]', help: 'probe learning rate', default: L.lr }),
  seed: int({ min: 0, help: 'seed of the noise and of the probe\'s batch order', default: D.seed }),
  batchSize: int({ min: 1, help: 'images per model call', default: D.batchSize }),
  provider: oneOf(PROVIDERS, { arg: '<p>', help: 'ONNX Runtime provider', default: 'cpu' }),
  csv: path({ arg: '<file>', help: `sweep results (columns ${PROBE_CSV_COLUMNS.join(', ')})`,
    default: 'probe-sweep.csv' }),
  plot: path({ arg: '<file.png>', help: 'sweep heat map: held-out accuracy by block and timestep',
    default: 'probe-sweep.png' }),
};

const pct = (v: number): string => `${(100 * v).toFixed(2)}%`;

export function registerProbe(program: Command): void {
  addOptions(program.command('probe')
    .description('train a linear probe on a diffusion U-Net\'s pooled features of noised MNIST ' +
      'digits (DDAE, Xiang et al. 2023) and report its held-out accuracy beside the shipped ' +
      'supervised classifier\'s; --sweep maps blocks x timesteps'), PROBE_OPTIONS)
    .action(async (_: unknown, cmd: Command) => {
      const resolved = commandOptions(PROBE_OPTIONS, cmd);
      const o = resolved.values;
      if (!o.sweep) {
        for (const k of ['blocks', 'timesteps'] as const) {
          if (resolved.sources[k] !== 'default') throw resolved.refuse(k, 'only with --sweep');
        }
      }
      if (o.head === 'attention') {
        if (o.sweep) throw resolved.refuse('head', 'linear with --sweep (an attention head per cell is too slow)');
        if (resolved.sources.pool !== 'default') throw resolved.refuse('pool', 'only with --head linear');
      }
      const pipeline = await loadPipeline(o.model ?? DEFAULT_MODEL_DIR);
      for (const note of pipeline.notes) console.error(`note: ${note}`);
      const data = mnistSplits();
      const blocks = o.sweep ? o.blocks ?? probeBlocks(pipeline) : [o.block];
      const timesteps = o.sweep ? o.timesteps : [o.t];
      let bar: ReturnType<typeof progress> | undefined;
      const done: ProbeRow[] = [];
      const events = {
        onImages: (n: number, total: number) => (bar ??= progress('features', total)).update(n),
        onRow: async (r: ProbeRow) => {
          if (!o.sweep) return;
          done.push(r);
          await writeFileAtomic(o.csv, probeCsv(done)); // a long sweep keeps what it measured
        },
      };
      const rows = o.head === 'attention'
        ? [await attentionProbe(pipeline, data, { block: o.block, t: o.t, draws: o.draws, seed: o.seed,
          batchSize: o.batchSize, epochs: o.epochs, lr: o.lr, provider: o.provider }, events)]
        : await probeSweep(pipeline, data, {
          blocks, timesteps, pool: o.pool, draws: o.draws, seed: o.seed, batchSize: o.batchSize,
          provider: o.provider, probe: { epochs: o.epochs, lr: o.lr },
        }, events);
      bar?.stop();
      const extractor = featureExtractor(await loadMetricClassifier());
      let supervised: number;
      try {
        supervised = classAccuracy(await extractor.outputs(data.heldOut.images), data.heldOut.labels!);
      } finally {
        await extractor.dispose();
      }
      const best = rows.reduce((a, b) => (b.accuracy > a.accuracy ? b : a));
      for (const r of rows) {
        console.log(`${r.block} t=${r.t}, ${o.head} head: held-out ${pct(r.accuracy)} (train ` +
          `${pct(r.trainAccuracy)}, ${r.dim} features)`);
      }
      if (o.sweep) {
        const title = `DDAE linear probe, pool ${o.pool}: held-out accuracy`;
        await writeFileAtomic(o.csv, probeCsv(rows));
        await writePng(o.plot, probeHeatMap(rows, title));
        console.log(`best: ${best.block} t=${best.t}, ${pct(best.accuracy)}; wrote ${o.csv} and ${o.plot}`);
      }
      console.log(`the shipped supervised classifier: ${pct(supervised)} on the same ` +
        `${data.heldOut.labels!.length} held-out digits`);
    });
}
