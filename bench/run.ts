/**
 * @file `npm run bench [-- --json] [-- --only NAME[,NAME]] [-- --quiet] [-- --peer [FILE]] [-- --rounds N]
 * [-- --provider NAME]`: every benchmark suite (conv, train, unet, dit, accel, video), printed
 * as a table or as one JSON object per line (name, value, unit, ratio, ratioTo). Ends with the
 * load other processes put on the machine meanwhile; --quiet waits for idle moments and drops
 * samples taken under load (see harness.ts).
 * --peer FILE reads the peer's JSON lines (bench/peer/run.sh: diffusers timed on this machine)
 * and adds the models' ratios against it; --peer alone runs the peer, alternating with Diffuse
 * (peer.ts). --provider checks a GPU provider (or, with cpu, the portable graph) against the
 * CPU and times it (provider.ts).
 */
import { existsSync, readFileSync } from 'node:fs';
import { availableParallelism, cpus } from 'node:os';
import { RuntimeError, type Provider } from '../src/engine/runtime.js';
import { accelSuite } from './accel.js';
import { convBench, matmulPeak, trainStepBench } from './engine.js';
import { load, Report } from './harness.js';
import { modelSuite } from './models.js';
import { alternateWithPeer, memoryRows, peerMissing, peerTimes, readPeerFile, type PeerLine } from './peer.js';
import { providerSuite } from './provider.js';
import { benchModel, type BenchModelKey } from './rss.js';
import { videoSuite } from './video.js';

const args = process.argv.slice(2);
const json = args.includes('--json');
const value = (flag: string) => (args.includes(flag) ? args[args.indexOf(flag) + 1] : undefined);
/** --only NAME[,NAME...]: the suites to run. */
const only = value('--only')?.split(',');
const report = new Report(json);
load.quiet = args.includes('--quiet');
const peerArg = value('--peer');
const peerFile = peerArg !== undefined && !peerArg.startsWith('--') ? peerArg : undefined;
const runPeer = args.includes('--peer') && peerFile === undefined;
const rounds = Number(value('--rounds') ?? 3);
const provider = value('--provider') as Provider | undefined;
/** A bad flag or a missing peer: one line, no stack. */
function refuse(message: string): never {
  console.error(`bench: ${message}`);
  process.exit(2);
}
if (peerFile !== undefined && !existsSync(peerFile)) {
  refuse(`--peer ${peerFile}: no such file (the JSON lines of bench/peer/run.sh)`);
}
const SUITES = ['conv', 'train', 'unet', 'dit', 'accel', 'video'] as const;
const unknown = (only ?? []).filter((n) => !(SUITES as readonly string[]).includes(n));
if (unknown.length) refuse(`--only: no suite ${unknown.join(', ')} (the suites: ${SUITES.join(', ')})`);
if (!Number.isInteger(rounds) || rounds < 1) refuse(`--rounds: a positive integer, not ${value('--rounds')}`);
if (provider !== undefined && !['cpu', 'cuda', 'webgpu'].includes(provider)) {
  refuse(`--provider: cpu, cuda or webgpu, not ${provider}`);
}
if (runPeer) {
  const why = await peerMissing();
  if (why) refuse(`--peer: the peer cannot run here: ${why}`);
}
const peers = peerFile ? readPeerFile(peerFile) : new Map<BenchModelKey, PeerLine>();
// BASELINE.md's figures were taken with AVX-512; without it both stacks run slower.
const flags = (() => {
  try {
    return readFileSync('/proc/cpuinfo', 'utf8').match(/^flags\s*:(.*)$/m)?.[1]?.trim().split(/\s+/);
  } catch {
    return undefined;
  }
})();
const avx512 = flags?.includes('avx512f');
if (!json) {
  const isa = flags === undefined ? 'unknown' : ['avx2', 'avx512f', 'avx512_bf16', 'avx512_vnni', 'amx_bf16']
    .filter((f) => flags.includes(f)).join(' ');
  console.log(`# Diffuse benchmarks: ${cpus()[0]?.model ?? 'cpu'}, ${availableParallelism()} threads, ` +
    `${isa} (AVX-512 ${avx512 === undefined ? 'unknown' : avx512 ? 'yes' : 'no'}), node ${process.version}; medians after warm-up`);
}
const peak = await matmulPeak(report);
/** One model: alternating with the peer (--peer), or once, beside a peer file's figures. */
async function model(key: BenchModelKey): Promise<void> {
  if (runPeer) return alternateWithPeer(report, peak, key, rounds, json);
  const peer = peers.get(key);
  const times = peerTimes(peer);
  await modelSuite(report, peak, benchModel(key), times ? { peer: times } : {});
  await memoryRows(report, key, peer);
}
const suites: Partial<Record<(typeof SUITES)[number] | 'provider', () => Promise<void>>> = provider ? {
  provider: async () => {
    try {
      if (!(await providerSuite(report, provider))) process.exitCode = 1;
    } catch (e) {
      // A missing provider or GPU: runtime.ts's message says how to get one.
      if (e instanceof RuntimeError) refuse(e.message);
      throw e;
    }
  },
} : {
  conv: () => convBench(report, peak),
  train: () => trainStepBench(report, peak),
  unet: () => model('unet'),
  dit: async () => {
    await model('dit-pixel');
    await model('dit-latent');
  },
  accel: () => accelSuite(report),
  video: () => videoSuite(report),
};
for (const [name, run] of Object.entries(suites)) {
  if (!only || only.includes(name) || provider) await run();
}
const share = load.wallMs ? load.foreignMs / load.wallMs : 0;
report.add({ name: 'load: other processes during timed runs', value: share, unit: 'cores' });
if (load.dropped) report.add({ name: 'samples dropped (taken under load, --quiet)', value: load.dropped, unit: '' });
