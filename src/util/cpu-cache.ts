/**
 * @file The CPU's last-level cache size, read once from Linux sysfs: what sampling sizes its
 * model calls by (engine/memory.ts rowsWithinCache).
 */
import { readdirSync, readFileSync } from 'node:fs';

const CACHE_DIR = '/sys/devices/system/cpu/cpu0/cache';
let cached: number | undefined | null = null;

/** "32768K", "1M" or a plain byte count, as sysfs writes a cache's size. */
export function parseCacheSize(text: string): number | undefined {
  const m = /^(\d+)\s*([KMG]?)$/i.exec(text.trim());
  if (!m) return undefined;
  const unit = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30 }[m[2]!.toUpperCase() as '' | 'K' | 'M' | 'G'];
  return Number(m[1]) * unit;
}

/** Bytes of the highest-level data or unified cache of CPU 0, or undefined where the system
 *  does not say (not Linux, or sysfs hidden). */
export function lastLevelCacheBytes(): number | undefined {
  if (cached !== null) return cached;
  cached = undefined;
  try {
    let level = 0;
    for (const entry of readdirSync(CACHE_DIR).filter((e) => /^index\d+$/.test(e))) {
      const read = (f: string) => readFileSync(`${CACHE_DIR}/${entry}/${f}`, 'utf8').trim();
      const l = Number(read('level'));
      const size = parseCacheSize(read('size'));
      if (read('type') !== 'Instruction' && size !== undefined && l > level) [level, cached] = [l, size];
    }
  } catch {
    cached = undefined;
  }
  return cached;
}
