/**
 * @file `npm run bench [-- --json] [-- --only NAME] [-- --quiet] [-- --peer FILE]`: every benchmark suite
 * (conv, train, unet, dit, accel, video), printed as a table or as one JSON object per line (name, value,
 * unit, ratio, ratioTo). Ends with the load other processes put on the machine meanwhile;
 * --quiet waits for idle moments and drops samples taken under load (see harness.ts).
 * --peer reads the JSON line of bench/peer/run.sh (diffusers timed on this machine) and adds
 * the U-Net's ratios against it.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism, cpus } from 'node:os';
import { accelSuite } from './accel.js';
import { convBench, matmulPeak, trainStepBench } from './engine.js';
import { load, Report } from './harness.js';
import { ditSuite, unetSuite, type PeerTimes } from './models.js';
import { videoSuite } from './video.js';

const args = process.argv.slice(2);
const json = args.includes('--json');
const only = args.includes('--only') ? args[args.indexOf('--only') + 1] : undefined;
const report = new Report(json);
load.quiet = args.includes('--quiet');
const peerFile = args.includes('--peer') ? args[args.indexOf('--peer') + 1] : undefined;
const peer = peerFile ? JSON.parse(readFileSync(peerFile, 'utf8')) as PeerTimes : undefined;
// BASELINE.md's figures were taken with AVX-512; without it both stacks run slower.
const avx512 = (() => {
  try {
    return /\bavx512f\b/.test(readFileSync('/proc/cpuinfo', 'utf8'));
  } catch {
    return undefined;
  }
})();
if (!json) {
  console.log(`# Diffuse benchmarks: ${cpus()[0]?.model ?? 'cpu'}, ${availableParallelism()} threads, ` +
    `AVX-512 ${avx512 === undefined ? 'unknown' : avx512 ? 'yes' : 'no'}, node ${process.version}; medians after warm-up`);
}
const peak = await matmulPeak(report);
const suites: Record<string, () => Promise<void>> = {
  conv: () => convBench(report, peak),
  train: () => trainStepBench(report, peak),
  unet: () => unetSuite(report, peak, peer),
  dit: () => ditSuite(report, peak),
  accel: () => accelSuite(report),
  video: () => videoSuite(report),
};
for (const [name, run] of Object.entries(suites)) {
  if (!only || only === name) await run();
}
const share = load.wallMs ? load.foreignMs / load.wallMs : 0;
report.add({ name: 'load: other processes during timed runs', value: share, unit: 'cores' });
if (load.dropped) report.add({ name: 'samples dropped (taken under load, --quiet)', value: load.dropped, unit: '' });
