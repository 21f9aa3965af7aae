/**
 * @file Server-sent events (the WHATWG `text/event-stream` format), written by hand: an event
 * is `event: NAME` and one `data:` line of JSON, ended by a blank line; a line starting with
 * a colon is a comment, which clients ignore (the keep-alive ping).
 */

/** The response headers of an event stream. `x-accel-buffering: no` stops nginx-style proxies
 *  from holding events back until the stream ends. */
export const SSE_HEADERS = {
  'content-type': 'text/event-stream; charset=utf-8',
  'cache-control': 'no-cache',
  connection: 'keep-alive',
  'x-accel-buffering': 'no',
} as const;

/** One event. JSON.stringify never emits a raw newline, so the data is one `data:` line. */
export function sseEvent(event: string, data: unknown): string {
  if (!/^[A-Za-z][\w-]*$/.test(event)) {
    throw new RangeError(`SSE event name: expected a word, got ${JSON.stringify(event)}`);
  }
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

/** A comment line that keeps idle connections (and proxies in between) from timing out. */
export const SSE_PING = ': ping\n\n';

/** An event as a client parses it. */
export interface ParsedEvent {
  event: string;
  data: unknown;
}

/**
 * Parses a whole or partial event stream into its complete events (`rest` is an unfinished
 * tail to prepend to the next chunk). For tests and the load test, which read the stream.
 */
export function parseSse(text: string): { events: ParsedEvent[]; rest: string } {
  const blocks = text.split('\n\n');
  const rest = blocks.pop() ?? '';
  const events: ParsedEvent[] = [];
  for (const block of blocks) {
    let event = 'message';
    const data: string[] = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':') || line === '') continue;
      const colon = line.indexOf(':');
      const [field, value] = colon < 0 ? [line, ''] : [line.slice(0, colon), line.slice(colon + 1).replace(/^ /, '')];
      if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
    }
    if (data.length) events.push({ event, data: JSON.parse(data.join('\n')) as unknown });
  }
  return { events, rest };
}
