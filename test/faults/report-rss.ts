/**
 * @file Preloaded into the `diffuse` child of a fault test (node --import): writes the
 * process's peak resident set size (KiB) to $DIFFUSE_RSS_FILE when it exits.
 */
import { writeFileSync } from 'node:fs';

const file = process.env['DIFFUSE_RSS_FILE'];
if (file) process.on('exit', () => writeFileSync(file, String(process.resourceUsage().maxRSS)));
