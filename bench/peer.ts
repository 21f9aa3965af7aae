/**
 * @file Diffuse against its peer on the same machine: diffusers 0.31 on PyTorch's CPU backend
 * (bench/peer/diffusers_peer.py through run.sh, BASELINE.md's tuned environment).
 *
 * `--peer FILE` reads the peer's JSON lines (one per model; a line without `model` is the
 * U-Net's) and adds ratios to each model's table. `--peer` alone runs the peer itself when its
 * environment is there (DIFFUSERS_SRC, python3 with torch), alternating peer and Diffuse runs
 * (`--rounds N`, default 3) so that both see the same machine state: a VM's speed drifts by
 * tens of percent over minutes, which one run of each cannot tell from a real difference. It
 * prints the medians over rounds and the spread of the per-round ratios, then the peak RSS of a
 * training step and of DDIM-50 sampling at batch 64, each side in fresh processes.
 */
import { execFile } from 'node:child_process';
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { packageRoot } from '../src/util/package-root.js';
import { Report, type Row } from './harness.js';
import { modelSuite, type ModelTimes } from './models.js';
import { benchModel, peakRss, type BenchModelKey } from './rss.js';

export interface PeerLine extends Partial<ModelTimes> {
  model?: BenchModelKey;
  train_peak_rss_mb?: number;
  sample_peak_rss_mb?: number;
}

/** A peer file's lines by model. */
export function readPeerFile(path: string): Map<BenchModelKey, PeerLine> {
  const out = new Map<BenchModelKey, PeerLine>();
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    const p = JSON.parse(line) as PeerLine;
    const key = p.model ?? 'unet';
    out.set(key, { ...out.get(key), ...p });
  }
  return out;
}

/** Why the peer cannot run here, or undefined when it can. */
export async function peerMissing(): Promise<string | undefined> {
  if (!process.env['DIFFUSERS_SRC']) {
    return 'set DIFFUSERS_SRC to the src/ folder of diffusers v0.31.0 (and HUB_SRC to ' +
      'huggingface_hub v0.26\'s, if it is not installed); see bench/peer/run.sh';
  }
  try {
    await promisify(execFile)('/usr/bin/python3', ['-c', 'import torch']);
  } catch {
    return '/usr/bin/python3 cannot import torch (Debian: apt-get install python3-torch)';
  }
  // Debian's torch calls the system BLAS; the reference one made its U-Net forward 3.5x slower.
  const blas = '/usr/lib/x86_64-linux-gnu/libblas.so.3';
  if (existsSync(blas) && !/openblas|blis|mkl/.test(realpathSync(blas))) {
    return `${blas} is the reference BLAS, which would time a crippled peer (Debian: apt-get ` +
      'install libopenblas0-pthread)';
  }
  return undefined;
}

/** One run of the peer: its JSON line. */
export async function runPeer(model: BenchModelKey, args: string[]): Promise<PeerLine> {
  const script = join(packageRoot(), 'bench', 'peer', 'run.sh');
  // Debian's OpenBLAS variables force slower kernels; the peer gets the machine's default.
  const env = { ...process.env };
  delete env['OPENBLAS_CORETYPE'];
  delete env['OPENBLAS_L2_SIZE'];
  const { stdout } = await promisify(execFile)('/bin/sh', [script, '--model', model, ...args],
    { env, maxBuffer: 1 << 22 });
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as PeerLine;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const METRICS: [keyof ModelTimes, string, number][] = [
  ['fwd_bs1_ms', 'forward bs1', 1], ['fwd_bs16_ms', 'forward bs16', 1],
  ['fwd_bs64_ms', 'forward bs64', 1], ['train_step_bs64_s', 'train step bs64', 1000],
  ['ddim50_x64_s', 'DDIM-50 x64', 1000], ['ddim50_bs1_s', 'DDIM-50 bs1 (DiTs: with CFG)', 1000],
];

/** The peer's times when its line has all of them (a file may hold memory figures only). */
export function peerTimes(p: PeerLine | undefined): ModelTimes | undefined {
  return p && METRICS.every(([k]) => typeof p[k] === 'number') ? p as ModelTimes : undefined;
}

/** Rows comparing rounds of Diffuse's times with the peer's (paired by round): Diffuse's median
 *  in ms, the ratio of medians, and the range of per-round ratios in the name. */
export function comparisonRows(ours: ModelTimes[], theirs: PeerLine[]): Row[] {
  if (ours.length !== theirs.length || ours.length === 0) {
    throw new Error(`comparisonRows: ${ours.length} Diffuse rounds against ${theirs.length} of the peer`);
  }
  return METRICS.map(([k, label, toMs]) => {
    const peerTimes = theirs.map((p, i) => {
      const v = p[k];
      if (typeof v !== 'number') throw new Error(`the peer's round ${i + 1} has no ${k}`);
      return v;
    });
    const ratios = ours.map((o, i) => peerTimes[i]! / o[k]);
    const oursMs = median(ours.map((o) => o[k])) * toMs;
    const peerMs = median(peerTimes) * toMs;
    return { name: `${label} (peer ${fmtMs(peerMs)}; range ${Math.min(...ratios).toFixed(2)}-` +
      `${Math.max(...ratios).toFixed(2)}x)`, value: oursMs, unit: 'ms', ratio: peerMs / oursMs,
    ratioTo: 'faster than the peer here' };
  });
}

/** `rounds` alternating runs of the peer and of Diffuse on one model; medians and spread. */
export async function alternateWithPeer(report: Report, peak: number, key: BenchModelKey,
  rounds: number, json: boolean): Promise<void> {
  const ours: ModelTimes[] = [];
  const theirs: PeerLine[] = [];
  const m = benchModel(key);
  for (let r = 0; r < rounds; r++) {
    if (!json) console.log(`# ${key}: round ${r + 1} of ${rounds}: the peer, then Diffuse`);
    theirs.push(await runPeer(key, ['--reps', '3']));
    ours.push(await modelSuite(new Report(json, { silent: true }), peak, m));
  }
  report.section(`${m.title}: Diffuse against the peer on this machine, ${rounds} alternating ` +
    'runs (value: Diffuse\'s median; ratio: the peer\'s median time / Diffuse\'s; range: per-round ratios)');
  for (const row of comparisonRows(ours, theirs)) report.add(row);
  let memory: PeerLine = {};
  for (const phase of ['train', 'sample'] as const) memory = { ...memory, ...await runPeer(key, ['--phase', phase]) };
  await memoryRows(report, key, memory);
}

/** Peak RSS of a training step and of DDIM-50 at batch 64, beside the peer's when known. */
export async function memoryRows(report: Report, key: BenchModelKey, peer: PeerLine = {}): Promise<void> {
  for (const phase of ['train', 'sample'] as const) {
    const mb = await peakRss(key, phase);
    const theirs = peer[`${phase}_peak_rss_mb`];
    report.add({ name: `peak RSS, ${phase === 'train' ? 'training steps' : 'DDIM-50'} bs64` +
      `${theirs === undefined ? '' : ` (peer ${theirs.toFixed(0)} MiB)`}`, value: mb, unit: 'MiB',
    ...(theirs === undefined ? {} : { ratio: theirs / mb, ratioTo: 'the peer\'s / ours (above 1: Diffuse holds less)' }) });
  }
}

const fmtMs = (ms: number) => (ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toPrecision(3)} ms`);
