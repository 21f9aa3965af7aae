/**
 * @file Builds the playground as a static folder (default dist/playground/): index.html,
 * playground.js (web/playground.ts and the src/diffusion samplers it uses, bundled by esbuild),
 * onnxruntime-web's bundle and the one .wasm file it loads, and model.onnx + model.json
 * exported from a pipeline (default the shipped models/mnist-unet). Any static server will do;
 * one that sends COOP/COEP headers (cross-origin isolation) lets ORT use several WASM threads.
 *
 *     node dist/web/build.js [--out DIR] [--model DIR]
 *
 * Node code, compiled by the main tsconfig; the page's own code is type-checked by
 * web/tsconfig.json (DOM, no Node types).
 */
import { copyFile, mkdir, stat } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { build, type Plugin } from 'esbuild';
import { exportModelFolder } from '../src/pipelines/export.js';
import { packageRoot } from '../src/util/package-root.js';

/** onnxruntime-web's ES module with WASM and WebGPU (JSEP) back-ends and its glue inlined, and
 *  the WebAssembly binary it fetches from beside itself. */
export const ORT_FILES = ['ort.bundle.min.mjs', 'ort-wasm-simd-threaded.jsep.wasm'] as const;

export interface PlaygroundBuild {
  outDir: string;
  /** Files written, with their sizes in bytes. */
  files: { name: string; bytes: number }[];
}

/**
 * onnxruntime-web stays its own file, imported by playground.js: its WASM threads start
 * workers from its own URL, which inside a bundle would be playground.js (the page's code).
 * Node-only modules are refused by name: the page's import graph must stay browser-clean.
 */
const pagePlugin: Plugin = {
  name: 'diffuse-playground',
  setup(b) {
    b.onResolve({ filter: /^onnxruntime-web$/ }, () => ({ path: `./${ORT_FILES[0]}`, external: true }));
    b.onResolve({ filter: /^(node:|onnxruntime-node$|fs$|path$|os$)/ }, (args) => ({
      errors: [{ text: `'${args.path}' is Node-only, imported by ${relative(process.cwd(), args.importer)}: ` +
        'the playground bundles only browser-clean modules (src/diffusion, src/engine/host, ' +
        'src/engine/random/philox); move the Node part out of that import chain' }],
    }));
  },
};

/** The folder of onnxruntime-web's dist files (its package.json is not exported). */
function ortDist(): string {
  const require = createRequire(import.meta.url);
  return dirname(require.resolve(`onnxruntime-web/${ORT_FILES[1]}`));
}

/** Builds the playground into `outDir` with the model in `modelDir` exported beside it. */
export async function buildPlayground(o: { outDir?: string; modelDir?: string; minify?: boolean } = {}):
  Promise<PlaygroundBuild> {
  const root = packageRoot();
  const outDir = resolve(o.outDir ?? join(root, 'dist', 'playground'));
  const modelDir = o.modelDir ?? join(root, 'models', 'mnist-unet');
  await mkdir(outDir, { recursive: true });
  await build({
    entryPoints: [join(root, 'web', 'playground.ts')],
    outfile: join(outDir, 'playground.js'),
    bundle: true, format: 'esm', platform: 'browser', target: 'es2022',
    minify: o.minify ?? true, sourcemap: true, legalComments: 'none', logLevel: 'silent',
    plugins: [pagePlugin],
  });
  await copyFile(join(root, 'web', 'index.html'), join(outDir, 'index.html'));
  for (const f of ORT_FILES) await copyFile(join(ortDist(), f), join(outDir, f));
  await exportModelFolder(modelDir, join(outDir, 'model.onnx'));
  const names = ['index.html', 'playground.js', ...ORT_FILES, 'model.onnx', 'model.json'];
  const files = await Promise.all(names.map(async (name) => ({ name, bytes: (await stat(join(outDir, name))).size })));
  return { outDir, files };
}

async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: {
    out: { type: 'string' }, model: { type: 'string' }, 'no-minify': { type: 'boolean' } } });
  const r = await buildPlayground({ ...(values.out ? { outDir: values.out } : {}),
    ...(values.model ? { modelDir: values.model } : {}), minify: !values['no-minify'] });
  for (const f of r.files) console.log(`${f.name.padEnd(36)} ${(f.bytes / 2 ** 20).toFixed(2).padStart(7)} MiB`);
  const rel = relative(process.cwd(), r.outDir);
  console.log(`playground in ${r.outDir}: serve that folder with any static file server ` +
    `(python3 -m http.server -d ${rel.startsWith('..') ? r.outDir : rel || '.'}) and open index.html`);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).catch((e: unknown) => {
    console.error(`playground build: ${(e as Error).message}`);
    process.exitCode = 1;
  });
}
