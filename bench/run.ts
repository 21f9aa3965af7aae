/**
 * @file `npm run bench [-- --json] [-- --only NAME]`: every benchmark suite, printed as a
 * table or as one JSON object per line (name, value, unit, ratio, ratioTo).
 */
import { availableParallelism, cpus } from 'node:os';
import { convBench, matmulPeak, trainStepBench } from './engine.js';
import { Report } from './harness.js';

const args = process.argv.slice(2);
const json = args.includes('--json');
const only = args.includes('--only') ? args[args.indexOf('--only') + 1] : undefined;
const report = new Report(json);
if (!json) {
  console.log(`# Diffuse benchmarks: ${cpus()[0]?.model ?? 'cpu'}, ${availableParallelism()} threads, ` +
    `node ${process.version}; medians after warm-up`);
}
const peak = await matmulPeak(report);
const suites: Record<string, () => Promise<void>> = {
  conv: () => convBench(report, peak),
  train: () => trainStepBench(report, peak),
};
for (const [name, run] of Object.entries(suites)) {
  if (!only || only === name) await run();
}
