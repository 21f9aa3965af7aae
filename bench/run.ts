/**
 * @file `npm run bench [-- --json] [-- --only NAME] [-- --quiet]`: every benchmark suite
 * (conv, train, unet, dit), printed as a table or as one JSON object per line (name, value,
 * unit, ratio, ratioTo). Ends with the load other processes put on the machine meanwhile;
 * --quiet waits for idle moments and drops samples taken under load (see harness.ts).
 */
import { availableParallelism, cpus } from 'node:os';
import { convBench, matmulPeak, trainStepBench } from './engine.js';
import { load, Report } from './harness.js';
import { ditSuite, unetSuite } from './models.js';

const args = process.argv.slice(2);
const json = args.includes('--json');
const only = args.includes('--only') ? args[args.indexOf('--only') + 1] : undefined;
const report = new Report(json);
load.quiet = args.includes('--quiet');
if (!json) {
  console.log(`# Diffuse benchmarks: ${cpus()[0]?.model ?? 'cpu'}, ${availableParallelism()} threads, ` +
    `node ${process.version}; medians after warm-up`);
}
const peak = await matmulPeak(report);
const suites: Record<string, () => Promise<void>> = {
  conv: () => convBench(report, peak),
  train: () => trainStepBench(report, peak),
  unet: () => unetSuite(report, peak),
  dit: () => ditSuite(report, peak),
};
for (const [name, run] of Object.entries(suites)) {
  if (!only || only === name) await run();
}
const share = load.wallMs ? load.foreignMs / load.wallMs : 0;
report.add({ name: 'load: other processes during timed runs', value: share, unit: 'cores' });
if (load.dropped) report.add({ name: 'samples dropped (taken under load, --quiet)', value: load.dropped, unit: '' });
