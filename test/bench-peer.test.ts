/** The bench's comparison with the peer: peer files by model, and medians and per-round
 *  spread of alternating runs (bench/peer.ts). */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { comparisonRows, peerTimes, readPeerFile } from '../bench/peer.js';

const times = (s: number) => ({ fwd_bs1_ms: 10 * s, fwd_bs16_ms: 100 * s, fwd_bs64_ms: 400 * s,
  train_step_bs64_s: 2 * s, ddim50_x64_s: 30 * s, ddim50_bs1_s: 1 * s });

test('comparisonRows: medians in ms, the ratio of medians, the per-round range', () => {
  const ours = [times(1), times(1.2), times(0.9)];
  const theirs = [times(2), times(2), times(3)];
  const rows = comparisonRows(ours, theirs);
  assert.equal(rows.length, 6);
  const train = rows[3]!;
  assert.equal(train.value, 2000); // median of 2.0, 2.4, 1.8 s
  assert.equal(train.ratio, 2); // 4 s / 2 s
  assert.match(train.name, /^train step bs64 \(peer 4\.00 s; range 1\.67-3\.33x\)$/);
  assert.equal(rows[0]!.value, 10);
  assert.throws(() => comparisonRows(ours, theirs.slice(1)), /3 Diffuse rounds against 2/);
  assert.throws(() => comparisonRows([times(1)], [{ fwd_bs1_ms: 1 }]), /round 1 has no fwd_bs16_ms/);
});

test('readPeerFile: lines by model, a line without one is the U-Net, later keys merge', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'diffuse-peer-'));
  try {
    const file = join(dir, 'peer.jsonl');
    await writeFile(file, [JSON.stringify(times(1)),
      JSON.stringify({ model: 'dit-pixel', ...times(2) }),
      JSON.stringify({ model: 'unet', train_peak_rss_mb: 900 }), ''].join('\n'));
    const m = readPeerFile(file);
    assert.deepEqual([...m.keys()], ['unet', 'dit-pixel']);
    assert.equal(m.get('unet')!.train_step_bs64_s, 2);
    assert.equal(m.get('unet')!.train_peak_rss_mb, 900);
    assert.equal(m.get('dit-pixel')!.ddim50_x64_s, 60);
    assert.equal(peerTimes(m.get('unet'))!.fwd_bs64_ms, 400);
    assert.equal(peerTimes({ model: 'unet', train_peak_rss_mb: 900 }), undefined, 'memory only: no times');
    assert.equal(peerTimes(undefined), undefined);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
