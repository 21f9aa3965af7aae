import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseCacheSize } from './cpu-cache.js';

test('cache sizes as sysfs writes them', () => {
  assert.equal(parseCacheSize('32768K\n'), 32 * 2 ** 20);
  assert.equal(parseCacheSize('1M'), 2 ** 20);
  assert.equal(parseCacheSize('512'), 512);
  assert.equal(parseCacheSize('2 G'), 2 * 2 ** 30);
  assert.equal(parseCacheSize('unknown'), undefined);
  assert.equal(parseCacheSize('12.5M'), undefined);
});
