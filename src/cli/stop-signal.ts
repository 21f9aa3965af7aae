/** @file Ctrl-C and SIGTERM during a training run: finish the step, write a checkpoint, stop. */

/** An AbortSignal raised by the first SIGINT or SIGTERM (with a note on stderr); `release`
 *  removes the handlers. */
export function stopOnSignal(): { signal: AbortSignal; release: () => void } {
  const stop = new AbortController();
  const onSignal = () => {
    process.stderr.write('\nstopping after this step; writing a checkpoint...\n');
    stop.abort();
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  return {
    signal: stop.signal,
    release: () => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    },
  };
}
