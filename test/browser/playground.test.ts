/**
 * @file The playground in a real browser: the page built by web/build.ts (the shipped MNIST
 * U-Net exported beside it) is served by a small static server with cross-origin isolation,
 * opened in headless Chromium through playwright-core, and asked for a 7 (DDIM, 15 steps,
 * the default guidance, seed 0) on onnxruntime-web's WASM back-end. The canvas must hold a
 * digit (not blank), the shipped MNIST classifier must read it as a 7, and it must be the image
 * `sampleImages` gives in Node for the same request (up to the 8-bit canvas and the two
 * runtimes' rounding). Without Chromium the test is skipped, saying how to get it.
 *
 * DIFFUSE_CHROMIUM names the browser binary (default: chromium on PATH); DIFFUSE_WRITE_DOCS=1
 * also saves a screenshot to docs/playground.png.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { extname, join, normalize, sep } from 'node:path';
import { test } from 'node:test';
import { chromium } from 'playwright-core';
import { HostArray } from '../../src/engine/host.js';
import { featureExtractor, loadMetricClassifier } from '../../src/pipelines/metrics.js';
import { loadPipeline, sampleImages } from '../../src/pipelines/sample.js';
import { packageRoot } from '../../src/util/package-root.js';
import { buildPlayground } from '../../web/build.js';
import { withTempDir } from '../support/temp-dir.js';

const SKIP_REASON = 'no Chromium: install it (apt-get install chromium) or set ' +
  'DIFFUSE_CHROMIUM=/path/to/chrome to run the playground browser test';

/** The browser binary, or undefined. */
function findChromium(): string | undefined {
  const given = process.env['DIFFUSE_CHROMIUM'];
  if (given) {
    if (!existsSync(given)) {
      throw new Error(`DIFFUSE_CHROMIUM=${given}: no such file (expected a Chromium or Chrome binary)`);
    }
    return given;
  }
  for (const name of ['chromium', 'chromium-browser', 'google-chrome']) {
    const r = spawnSync('which', [name], { encoding: 'utf8' });
    const path = r.status === 0 ? r.stdout.trim() : '';
    if (path && existsSync(path)) return path;
  }
  return undefined;
}

const executablePath = findChromium();
const REQUEST = { label: 7, sampler: 'ddim', steps: 15, guidance: 1.5, seed: 0 };

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript',
  '.json': 'application/json', '.wasm': 'application/wasm', '.map': 'application/json',
};

/** Serves `dir` on a free loopback port; COOP/COEP make the page cross-origin isolated, which
 *  ORT's WASM threads need (SharedArrayBuffer). */
async function serve(dir: string): Promise<{ server: Server; url: string }> {
  const server = createServer((req, res) => {
    const path = normalize(join(dir, decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname)));
    const file = path.endsWith(sep) ? join(path, 'index.html') : path;
    if (!file.startsWith(dir + sep)) return void res.writeHead(403).end();
    readFile(file).then((body) => {
      res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream',
        'cross-origin-opener-policy': 'same-origin', 'cross-origin-embedder-policy': 'require-corp' });
      res.end(body);
    }, () => res.writeHead(404).end());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return { server, url: `http://127.0.0.1:${port}/` };
}

test('playground: a 7 sampled in headless Chromium (WASM) is a 7, and the image Node samples',
  { skip: executablePath ? false : SKIP_REASON, timeout: 180_000 }, async (t) => {
    await withTempDir('playground', async (dir) => {
      let t0 = performance.now();
      const built = await buildPlayground({ outDir: dir });
      t.diagnostic(`built in ${((performance.now() - t0) / 1000).toFixed(1)} s: ${built.files
        .map((f) => `${f.name} ${(f.bytes / 2 ** 20).toFixed(1)} MiB`).join(', ')}`);
      const { server, url } = await serve(dir);
      // Chromium's sandbox needs a non-root user; CI containers run as root.
      const browser = await chromium.launch({ executablePath: executablePath!,
        args: process.getuid?.() === 0 ? ['--no-sandbox'] : [] });
      try {
        const page = await browser.newPage({ viewport: { width: 820, height: 560 } });
        const problems: string[] = [];
        page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
        page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
        // Page-side code is given as strings: this file is compiled without the DOM's types.
        const state = () => page.evaluate<string>('document.body.dataset.state');
        const settled = async (states: string[], timeout: number): Promise<void> => {
          await page.waitForFunction(`${JSON.stringify(states)}.includes(document.body.dataset.state)`,
            undefined, { timeout });
          const now = await state();
          const error = await page.textContent('#error');
          assert.notEqual(now, 'error', `the page failed: ${error} ${problems.join('; ')}`);
        };
        t0 = performance.now();
        await page.goto(url);
        await settled(['ready', 'error'], 60_000);
        t.diagnostic(`model loaded in ${((performance.now() - t0) / 1000).toFixed(1)} s; ` +
          `${await page.textContent('#model-info')}`);
        assert.equal(await page.evaluate<boolean>('crossOriginIsolated'), true);
        await page.selectOption('#class', String(REQUEST.label));
        await page.selectOption('#sampler', REQUEST.sampler);
        await page.fill('#steps', String(REQUEST.steps));
        assert.equal(Number(await page.inputValue('#guidance')), REQUEST.guidance); // the default
        assert.equal(await page.inputValue('#seed'), String(REQUEST.seed));
        await page.click('#sample');
        await settled(['done', 'error'], 120_000);
        const timing = await page.textContent('#timing');
        t.diagnostic(`headless Chromium: ${timing}`);
        assert.match(timing ?? '', /s per image on WASM/);
        assert.equal(await page.evaluate<number>("document.getElementById('progress').value"), REQUEST.steps);
        if (process.env['DIFFUSE_WRITE_DOCS'] === '1') {
          await page.screenshot({ path: join(packageRoot(), 'docs', 'playground.png') });
        }
        const pixels = await page.evaluate<{ w: number; h: number; gray: number[] }>(`(() => {
          const c = document.getElementById('canvas');
          const rgba = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          return { w: c.width, h: c.height, gray: Array.from({ length: rgba.length / 4 }, (_, i) => rgba[4 * i]) };
        })()`);
        assert.deepEqual([pixels.w, pixels.h], [32, 32]);
        const image = Float32Array.from(pixels.gray, (v) => v / 127.5 - 1);
        const mean = image.reduce((a, b) => a + b, 0) / image.length;
        const std = Math.sqrt(image.reduce((a, b) => a + (b - mean) ** 2, 0) / image.length);
        assert.ok(std > 0.3, `the canvas looks blank (pixel std ${std.toFixed(3)} in [-1, 1])`);

        const extractor = featureExtractor(await loadMetricClassifier());
        try {
          const { logits } = await extractor.outputs(new HostArray(image, [1, 1, 32, 32]));
          const predicted = logits.indexOf(Math.max(...logits));
          assert.equal(predicted, REQUEST.label, `the classifier reads the page's digit as ${predicted}`);
          t.diagnostic(`the classifier reads a ${predicted}; pixel std ${std.toFixed(3)}`);
        } finally {
          await extractor.dispose();
        }
        // The same request through the pipeline in Node: the page runs Diffuse's sampler.
        const own = await sampleImages(await loadPipeline(join(packageRoot(), 'models', 'mnist-unet')), {
          sampler: REQUEST.sampler, steps: REQUEST.steps, n: 1, classes: [REQUEST.label],
          guidance: REQUEST.guidance, seed: REQUEST.seed });
        let diff = 0;
        own.images.data.forEach((v, i) => (diff = Math.max(diff, Math.abs(v - image[i]!))));
        t.diagnostic(`page vs Node: largest pixel difference ${diff.toFixed(4)} (one 8-bit step: ` +
          `${(1 / 127.5).toFixed(4)})`);
        assert.ok(diff < 0.02, `the page's image differs from Node's by up to ${diff.toFixed(4)}`);
        assert.deepEqual(problems, []);
      } finally {
        await browser.close();
        server.closeAllConnections();
        await new Promise((resolve) => server.close(resolve));
      }
    });
  });
