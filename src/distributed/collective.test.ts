/** Collectives over MessageChannels: all-gather and neighbour exchange in rank order, early
 *  messages kept, and a silent or failed peer ending a wait with an error naming it. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Worker } from 'node:worker_threads';
import { localCollective, localCollectives, transferablePorts, type Collective } from './collective.js';

const ranks = (size: number, timeoutMs = 5_000): Collective[] =>
  localCollectives(size).map((l) => localCollective(l, { timeoutMs }));
const list = (a: Float32Array | null) => (a ? Array.from(a) : null);

test('all-gather returns every rank\'s data in rank order, on every rank', async () => {
  const cs = ranks(4);
  try {
    const out = await Promise.all(cs.map((c) => c.allGather('g', Float32Array.of(c.rank, c.rank * 2))));
    for (const got of out) assert.deepEqual(got.map((a) => Array.from(a)), [[0, 0], [1, 2], [2, 4], [3, 6]]);
    // The same tag again is a new round, not the old messages.
    const again = await Promise.all(cs.map((c) => c.allGather('g', Float32Array.of(10 + c.rank))));
    assert.deepEqual(again[2]!.map((a) => a[0]), [10, 11, 12, 13]);
  } finally {
    cs.forEach((c) => c.close());
  }
});

test('neighbour exchange hands each rank what its neighbours sent towards it; the ends get null', async () => {
  const cs = ranks(3);
  try {
    const out = await Promise.all(cs.map((c) => c.neighbourExchange('b',
      Float32Array.of(10 * c.rank), Float32Array.of(10 * c.rank + 1))));
    assert.deepEqual(out.map((o) => [list(o.fromLeft), list(o.fromRight)]),
      [[null, [10]], [[1], [20]], [[11], null]]);
  } finally {
    cs.forEach((c) => c.close());
  }
});

test('a message sent before it is awaited is kept for it', async () => {
  const [a, b] = ranks(2);
  try {
    const sent = a!.allGather('early', Float32Array.of(7));
    await new Promise((r) => setTimeout(r, 50)); // b's copy arrives and waits in its inbox
    const [fromB, atB] = await Promise.all([sent, b!.allGather('early', Float32Array.of(8))]);
    assert.deepEqual(fromB.map((x) => x[0]), [7, 8]);
    assert.deepEqual(atB.map((x) => x[0]), [7, 8]);
  } finally {
    a!.close();
    b!.close();
  }
});

test('a silent peer times out with its rank and the tag named; a failed one ends the wait at once', async () => {
  const cs = ranks(3, 200);
  try {
    await assert.rejects(cs[0]!.allGather('layer 3', Float32Array.of(1)),
      /rank 0: no 'layer 3' from rank 1 within 0.2 s/);
    const waiting = cs[2]!.neighbourExchange('step 9', Float32Array.of(1), null);
    const t0 = performance.now();
    cs[1]!.fail('out of memory');
    await assert.rejects(waiting, /rank 2: rank 1 failed \(out of memory\)/);
    assert.ok(performance.now() - t0 < 150);
  } finally {
    cs.forEach((c) => c.close());
  }
});

test('ranks in worker threads exchange through transferred ports', async () => {
  const links = localCollectives(3);
  const code = `
    const { workerData, parentPort } = require('node:worker_threads');
    import(workerData.module).then(async ({ localCollective }) => {
      const c = localCollective(workerData.links);
      const all = await c.allGather('t', Float32Array.of(workerData.links.rank + 1));
      const n = await c.neighbourExchange('n', Float32Array.of(-1), Float32Array.of(1));
      parentPort.postMessage({ all: all.map((a) => a[0]), left: n.fromLeft && n.fromLeft[0], right: n.fromRight && n.fromRight[0] });
      c.close();
    });`;
  const module = new URL('./collective.js', import.meta.url).href;
  const results = await Promise.all(links.map((l) => new Promise<unknown>((resolve, reject) => {
    const w = new Worker(code, { eval: true, workerData: { module, links: l }, transferList: transferablePorts(l) });
    w.once('message', resolve);
    w.once('error', reject);
  })));
  assert.deepEqual(results, [
    { all: [1, 2, 3], left: null, right: -1 },
    { all: [1, 2, 3], left: 1, right: -1 },
    { all: [1, 2, 3], left: 1, right: null },
  ]);
});
