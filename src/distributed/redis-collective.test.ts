/** The Collective over a real Redis: all-gather and neighbour exchange across ranks with their
 *  own connections, and a failed or silent rank ending the waits on it with its rank named. */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, test } from 'node:test';
import { testRedis } from '../../test/support/queue-redis.js';
import type { Collective } from './collective.js';
import { redisCollective } from './redis-collective.js';

const redis = await testRedis();
const url = 'url' in redis ? redis.url : '';
const skip = 'skip' in redis ? redis.skip : false;
after(async () => {
  if ('stop' in redis) await redis.stop();
});

async function ranks(size: number, timeoutMs = 10_000): Promise<Collective[]> {
  const run = `test-collective-${randomBytes(4).toString('hex')}`;
  return Promise.all(Array.from({ length: size }, (_, rank) => redisCollective({ url, run, rank, size, timeoutMs })));
}

test('all-gather and neighbour exchange across ranks, in rank order', { skip }, async () => {
  const cs = await ranks(3);
  try {
    const all = await Promise.all(cs.map((c) => c.allGather('g', Float32Array.of(c.rank, 0.5))));
    for (const got of all) assert.deepEqual(got.map((a) => Array.from(a)), [[0, 0.5], [1, 0.5], [2, 0.5]]);
    const near = await Promise.all(cs.map((c) => c.neighbourExchange('n', Float32Array.of(-c.rank), Float32Array.of(c.rank))));
    assert.deepEqual(near.map((x) => [x.fromLeft && Array.from(x.fromLeft), x.fromRight && Array.from(x.fromRight)]),
      [[null, [-1]], [[0], [-2]], [[1], null]]);
  } finally {
    cs.forEach((c) => c.close());
  }
});

test('a failed rank ends the waits on it within seconds; a silent one at the deadline', { skip }, async () => {
  const cs = await ranks(2, 2_500);
  try {
    const t0 = performance.now();
    const waiting = cs[0]!.allGather('x', Float32Array.of(1));
    cs[1]!.fail('disk full');
    await assert.rejects(waiting, /rank 0: rank 1 failed \(disk full\)/);
    assert.ok(performance.now() - t0 < 2_400);
  } finally {
    cs.forEach((c) => c.close());
  }
  const [a, b] = await ranks(2, 1_500);
  try {
    await assert.rejects(a!.allGather('y', Float32Array.of(1)), /rank 0: no 'y' from rank 1 within 1.5 s/);
  } finally {
    a!.close();
    b!.close();
  }
});
