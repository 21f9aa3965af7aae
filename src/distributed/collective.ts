/**
 * @file Collectives for workers that compute one thing together (Video-Infinity's clips: each
 * worker's temporal attention needs its neighbours' boundary frames and everyone's global
 * frames at every layer of every step). Two operations, both tagged so that messages of
 * different layers and steps never mix:
 * - `allGather(tag, data)`: every rank's data, in rank order;
 * - `neighbourExchange(tag, toLeft, toRight)`: what rank - 1 sent right and rank + 1 sent left.
 *
 * `localCollectives(size)` connects `size` ranks by MessageChannels (a full mesh): in one
 * thread, or each rank in its own worker thread (a rank's `LocalLinks` go in `workerData`
 * with its ports in the transfer list). Every wait has a deadline, and a rank that fails
 * can tell the others (`fail`), so a dead peer ends every wait on it with an error that names
 * it instead of a hang.
 */
import { MessageChannel, type MessagePort } from 'node:worker_threads';

export interface Collective {
  readonly rank: number;
  readonly size: number;
  allGather(tag: string, data: Float32Array): Promise<Float32Array[]>;
  neighbourExchange(tag: string, toLeft: Float32Array | null, toRight: Float32Array | null):
    Promise<{ fromLeft: Float32Array | null; fromRight: Float32Array | null }>;
  /** Tells every other rank that this one failed: their waits on it reject at once. */
  fail(reason: string): void;
  close(): void;
}

export class CollectiveError extends Error {
  override name = 'CollectiveError';
}

/** One rank's ends of the mesh: `ports[r]` talks to rank r (undefined for itself). */
export interface LocalLinks {
  rank: number;
  size: number;
  ports: (MessagePort | undefined)[];
}

type Message = { kind: 'data'; tag: string; data: Float32Array } | { kind: 'failed'; reason: string };

/** What a Collective asks of a transport: messages between two ranks, named by tag, that may
 *  arrive before they are awaited. */
export interface Transport {
  send(to: number, tag: string, data: Float32Array): void | Promise<void>;
  receive(from: number, tag: string): Promise<Float32Array>;
  fail(reason: string): void;
  close(): void;
}

/** The collective operations of rank `rank` of `size`, in point-to-point messages: the same
 *  protocol whatever carries them (MessageChannels here, Redis in redis-collective.ts). */
export function collectiveOver(rank: number, size: number, t: Transport): Collective {
  return {
    rank,
    size,
    async allGather(tag, data) {
      await Promise.all(Array.from({ length: size }, (_, r) => (r === rank ? undefined : t.send(r, tag, data))));
      return Promise.all(Array.from({ length: size }, (_, r) => (r === rank ? Promise.resolve(data) : t.receive(r, tag))));
    },
    async neighbourExchange(tag, toLeft, toRight) {
      await Promise.all([
        rank > 0 && toLeft ? t.send(rank - 1, `${tag}:right`, toLeft) : undefined, // the left rank's fromRight
        rank < size - 1 && toRight ? t.send(rank + 1, `${tag}:left`, toRight) : undefined,
      ]);
      const [fromLeft, fromRight] = await Promise.all([
        rank > 0 ? t.receive(rank - 1, `${tag}:left`) : Promise.resolve(null),
        rank < size - 1 ? t.receive(rank + 1, `${tag}:right`) : Promise.resolve(null),
      ]);
      return { fromLeft, fromRight };
    },
    fail: (reason) => t.fail(reason),
    close: () => t.close(),
  };
}

/** Links for `size` ranks, every pair joined by its own channel. */
export function localCollectives(size: number): LocalLinks[] {
  if (!(Number.isInteger(size) && size >= 1)) throw new RangeError(`size must be an integer >= 1, got ${size}`);
  const links: LocalLinks[] = Array.from({ length: size }, (_, rank) => ({ rank, size, ports: Array(size).fill(undefined) }));
  for (let a = 0; a < size; a++) {
    for (let b = a + 1; b < size; b++) {
      const { port1, port2 } = new MessageChannel();
      links[a]!.ports[b] = port1;
      links[b]!.ports[a] = port2;
    }
  }
  return links;
}

/** Every port of a rank's links, for a worker thread's transfer list. */
export const transferablePorts = (l: LocalLinks): MessagePort[] =>
  l.ports.filter((p): p is MessagePort => p !== undefined);

/** The Collective of one rank over its links; a wait longer than `timeoutMs` (default 60 s) fails. */
export function localCollective(links: LocalLinks, opts: { timeoutMs?: number } = {}): Collective {
  const { rank, size } = links;
  const timeoutMs = opts.timeoutMs ?? 60_000;
  // Messages that arrived before anyone waited for them, and waits for messages not yet here.
  const inbox = new Map<string, Float32Array>();
  const waiting = new Map<string, { resolve: (d: Float32Array) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  const failed = new Map<number, string>();
  const key = (from: number, tag: string) => `${from}\u0000${tag}`;
  let closed = false;

  links.ports.forEach((port, from) => {
    if (!port) return;
    port.on('message', (m: Message) => {
      if (m.kind === 'failed') {
        failed.set(from, m.reason);
        for (const [k, w] of waiting) {
          if (k.startsWith(`${from}\u0000`)) {
            clearTimeout(w.timer);
            waiting.delete(k);
            w.reject(new CollectiveError(`rank ${rank}: rank ${from} failed (${m.reason})`));
          }
        }
        return;
      }
      const k = key(from, m.tag);
      const w = waiting.get(k);
      if (w) {
        clearTimeout(w.timer);
        waiting.delete(k);
        w.resolve(m.data);
      } else {
        inbox.set(k, m.data);
      }
    });
  });

  const send = (to: number, tag: string, data: Float32Array) => {
    if (closed) throw new CollectiveError(`rank ${rank}: the collective is closed`);
    links.ports[to]!.postMessage({ kind: 'data', tag, data } satisfies Message);
  };
  const receive = (from: number, tag: string): Promise<Float32Array> => {
    const k = key(from, tag);
    const ready = inbox.get(k);
    if (ready) {
      inbox.delete(k);
      return Promise.resolve(ready);
    }
    const gone = failed.get(from);
    if (gone !== undefined) return Promise.reject(new CollectiveError(`rank ${rank}: rank ${from} failed (${gone})`));
    if (waiting.has(k)) return Promise.reject(new CollectiveError(`rank ${rank}: '${tag}' from rank ${from} is already awaited`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        waiting.delete(k);
        reject(new CollectiveError(`rank ${rank}: no '${tag}' from rank ${from} within ${timeoutMs / 1000} s ` +
          '(is that worker alive and at the same step?)'));
      }, timeoutMs);
      waiting.set(k, { resolve, reject, timer });
    });
  };

  return collectiveOver(rank, size, {
    send,
    receive,
    fail(reason) {
      for (const port of links.ports) port?.postMessage({ kind: 'failed', reason } satisfies Message);
    },
    close() {
      closed = true;
      for (const w of waiting.values()) {
        clearTimeout(w.timer);
        w.reject(new CollectiveError(`rank ${rank}: the collective was closed`));
      }
      waiting.clear();
      for (const port of links.ports) port?.close();
    },
  });
}
