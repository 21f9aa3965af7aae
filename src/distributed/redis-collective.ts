/**
 * @file The Collective over Redis, for ranks in separate processes or on separate machines:
 * a message from rank a to rank b under tag t is a Redis list `<run>:<b>:<a>:<t>` (RPUSH by
 * the sender, BLPOP by the receiver), so it may arrive before it is awaited. Messages expire
 * after ten minutes, so an abandoned run leaves nothing behind for long. A rank that fails
 * sets `<run>:failed:<rank>`; a waiting rank looks at those keys between one-second blocks,
 * so a failure ends every wait on that rank within about a second, and a silent rank ends it
 * at the deadline.
 */
import type { Redis } from 'ioredis';
import { CollectiveError, collectiveOver, type Collective } from './collective.js';
import { connectRedis } from './redis.js';

const EXPIRE_SECONDS = 600;

export interface RedisCollectiveOptions {
  /** redis://host:port[/db] */
  url: string;
  /** Names this run's keys: every rank of one run must use the same, and no other run. */
  run: string;
  rank: number;
  size: number;
  /** A wait longer than this fails (default 60 s). */
  timeoutMs?: number;
}

/** Connects rank `rank` of `size` (two connections: one blocks in BLPOP, one sends). */
export async function redisCollective(o: RedisCollectiveOptions): Promise<Collective> {
  const { rank, size, run } = o;
  if (!(Number.isInteger(size) && size >= 1 && Number.isInteger(rank) && rank >= 0 && rank < size)) {
    throw new RangeError(`rank ${rank} of ${size}: expected 0 <= rank < size`);
  }
  const timeoutMs = o.timeoutMs ?? 60_000;
  const sender: Redis = await connectRedis(o.url);
  const receiver: Redis = await connectRedis(o.url);
  const key = (to: number, from: number, tag: string) => `${run}:${to}:${from}:${tag}`;
  const failedKey = (r: number) => `${run}:failed:${r}`;
  // Receives go one at a time on the blocking connection; the messages wait in their lists.
  let queue: Promise<unknown> = Promise.resolve();
  let closed = false;

  const send = async (to: number, tag: string, data: Float32Array): Promise<void> => {
    const k = key(to, rank, tag);
    await sender.multi().rpush(k, Buffer.from(data.buffer, data.byteOffset, data.byteLength))
      .expire(k, EXPIRE_SECONDS).exec();
  };
  const receiveNow = async (from: number, tag: string): Promise<Float32Array> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (closed) throw new CollectiveError(`rank ${rank}: the collective was closed`);
      const got = await receiver.blpopBuffer(key(rank, from, tag), 1);
      if (got) {
        const bytes = got[1];
        const copy = new Uint8Array(bytes.byteLength);
        copy.set(bytes);
        return new Float32Array(copy.buffer);
      }
      const reason = await sender.get(failedKey(from));
      if (reason !== null) throw new CollectiveError(`rank ${rank}: rank ${from} failed (${reason})`);
      if (Date.now() > deadline) {
        throw new CollectiveError(`rank ${rank}: no '${tag}' from rank ${from} within ${timeoutMs / 1000} s ` +
          '(is that worker alive and at the same step?)');
      }
    }
  };
  const receive = (from: number, tag: string): Promise<Float32Array> => {
    const next = queue.then(() => receiveNow(from, tag));
    queue = next.catch(() => undefined);
    return next;
  };

  return collectiveOver(rank, size, {
    send,
    receive,
    fail(reason) {
      void sender.set(failedKey(rank), reason, 'EX', EXPIRE_SECONDS).catch(() => undefined);
    },
    close() {
      closed = true;
      // After a failure is published (fail() sends on this connection first).
      void sender.quit().catch(() => undefined);
      receiver.disconnect();
    },
  });
}
