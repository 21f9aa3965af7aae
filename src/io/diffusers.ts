/**
 * @file diffusers' folder layout: a model folder (`config.json` + `diffusion_pytorch_model
 * .safetensors`, sharded with an index, `.fp16` and other variants), `scheduler_config.json`
 * and a pipeline's `model_index.json`.
 *
 * Reference: diffusers v0.31.0 `models/modeling_utils.py` (save_pretrained / from_pretrained),
 * `models/model_loading_utils.py` and `utils/hub_utils.py` (`_add_variant`, index files),
 * `configuration_utils.py` (config files), `pipelines/pipeline_utils.py` (model_index.json),
 * `utils/constants.py` (file names), and huggingface_hub v0.26 `serialization/_base.py`
 * (how a state dict is cut into shards). JSON is written as Python's `json.dumps(indent=2,
 * sort_keys=True)` writes it, so a config read and written back is byte-identical except that
 * a float with an integral value (`"dropout": 0.0`) comes back as an int (`0`): JS has one
 * number type. Python's NaN / Infinity tokens are read and written as json.loads/dumps do.
 *
 * Saving never leaves a folder that loads half-written: everything goes into a sibling
 * `DIR.tmp-*` folder (weights first, config.json last), which replaces DIR only when complete
 * (DIR -> DIR.old-*, DIR.tmp-* -> DIR, then DIR.old-* is removed). Files in an existing DIR
 * that this save does not own (a pipeline's other components, other variants' weights) are
 * hard-linked into the new folder first. The Python JSON dialect is in python-json.ts.
 *
 * Loading checks every weights header against the model (names, dtypes, shapes, offsets within
 * the file) before it reads any tensor data, and reads only the tensors the model takes.
 *
 * About 670 lines, over the 400 budget: the read and write sides share the file-name rules,
 * the index and the error type; the weights side (openWeights, planLoad, ~170 lines) could move
 * to its own module with them.
 */
import { randomBytes } from 'node:crypto';
import {
  copyFile, link, lstat, mkdir, open, readdir, readlink, rename, rm, stat, symlink,
} from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { HostArray, numel } from '../engine/host.js';
import { DIFFUSERS_VERSION } from '../models/config.js';
import { stateDict as flattenParams, type Module, type ParamsOf } from '../nn/module.js';
import { loadStateDict, StateDictError } from '../nn/state.js';
import { FileKindError, fileKind, kindOf, readRegularFile } from './files.js';
import { parsePythonJson, toPythonJson, type Json } from './python-json.js';
import {
  SafetensorsFile, writeSafetensors, type SafetensorsDtype, type TensorData, type TensorInput,
} from './safetensors.js';

// ---- names (diffusers utils/constants.py) ----

export const CONFIG_NAME = 'config.json';
export const WEIGHTS_NAME = 'diffusion_pytorch_model.safetensors';
export const WEIGHTS_INDEX_NAME = 'diffusion_pytorch_model.safetensors.index.json';
export const SCHEDULER_CONFIG_NAME = 'scheduler_config.json';
export const MODEL_INDEX_NAME = 'model_index.json';

/** diffusers' `_add_variant`: the variant goes before the last extension. */
function addVariant(name: string, variant?: string): string {
  if (variant === undefined) return name;
  const dot = name.lastIndexOf('.');
  return `${name.slice(0, dot)}.${variant}${name.slice(dot)}`;
}

function checkVariant(variant: string | undefined): void {
  if (variant !== undefined && !/^[A-Za-z0-9_-]+$/.test(variant)) {
    throw new DiffusersFolderError('', `variant must be letters, digits, '_' or '-', got ` +
      `${JSON.stringify(variant)}`);
  }
}

export { toPythonJson, type Json } from './python-json.js';

// ---- types ----

/** How a model module describes itself to the loader (each model file exports one). */
export interface ModelClass<M extends Module, C> {
  /** diffusers' `_class_name`, e.g. 'UNet2DModel'. */
  className: string;
  /** Other class names its configs may carry (e.g. 'Transformer2DModel' for DiT); readConfig
   *  must accept the same ones. */
  aliases?: readonly string[];
  /** Parses and validates a raw config (readConfig from src/models/config.ts). */
  readConfig(raw: Record<string, unknown>, opts?: { warn?: (message: string) => void }): C;
  create(config: C): M;
  /** snake_case keys, without `_class_name` / `_diffusers_version`. */
  toConfig(config: C): Record<string, unknown>;
  /** Legacy checkpoint names -> module names, or null to drop a tensor. */
  rename?: (name: string) => string | null;
}

/** A folder, file or index that does not have the form diffusers gives it; names the path. */
export class DiffusersFolderError extends Error {
  override name = 'DiffusersFolderError';
  constructor(readonly path: string, problem: string, options?: { cause?: unknown }) {
    super(path ? `${path}: ${problem}` : problem, options);
  }
}

/** A JSON config file as read: `className` is its `_class_name` (absent if the file has none). */
export interface ConfigFile {
  path: string;
  className?: string;
  config: Record<string, unknown>;
}

export interface ReadModelOptions {
  /** Component folder inside `dir` (e.g. 'unet'); `dir` itself is used when it has no config. */
  subfolder?: string;
  /** Weights variant, e.g. 'fp16' -> diffusion_pytorch_model.fp16.safetensors. */
  variant?: string;
}

export interface ModelFolder extends ConfigFile {
  /** The folder the model was found in (`dir/subfolder` or `dir`). */
  folder: string;
  /** The weight files read, in order (one, or the shards named by the index). */
  weightFiles: string[];
  /** Every tensor: F16/BF16/F64 as float32, I64/I32/BOOL as such, other integers as int32. */
  stateDict: Map<string, HostArray>;
}

const isObject = (x: unknown): x is Record<string, unknown> =>
  typeof x === 'object' && x !== null && !Array.isArray(x);

async function readJsonObject(path: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = (await readRegularFile(path, 'a JSON file')).toString('utf8');
  } catch (e) {
    throw asFolderError(e);
  }
  let json: unknown;
  try {
    json = parsePythonJson(text);
  } catch (e) {
    throw new DiffusersFolderError(path, `invalid JSON (${(e as Error).message})`, { cause: e });
  }
  if (!isObject(json)) {
    throw new DiffusersFolderError(path, `expected a JSON object, got ${
      Array.isArray(json) ? 'an array' : json === null ? 'null' : typeof json}`);
  }
  return json;
}

/** Reads a config file and checks `_class_name` against `expect` (any of them) when given. */
async function readConfigFile(path: string, expect?: readonly string[]): Promise<ConfigFile> {
  const config = await readJsonObject(path);
  const cls = config._class_name;
  if (cls !== undefined && typeof cls !== 'string') {
    throw new DiffusersFolderError(path, `_class_name must be a string, got ` +
      JSON.stringify(cls));
  }
  if (expect && cls !== undefined && !expect.includes(cls)) {
    throw new DiffusersFolderError(path, `_class_name is '${cls}', expected ` +
      `${expect.map((c) => `'${c}'`).join(' or ')}: the folder holds another class`);
  }
  return cls === undefined ? { path, config } : { path, className: cls, config };
}

// ---- small file helpers ----

const exists = (path: string) => stat(path).then(() => true, () => false);
const tmpSuffix = () => `${process.pid}-${randomBytes(6).toString('hex')}`;

/** Makes renames in `folder` durable; best effort (folders cannot be opened on Windows). */
async function syncFolder(folder: string): Promise<void> {
  if (process.platform === 'win32') return;
  const handle = await open(folder, 'r').catch(() => undefined);
  await handle?.sync().catch(() => undefined);
  await handle?.close().catch(() => undefined);
}

/** Writes text to a temporary file beside `path`, fsyncs it and renames it over `path`. */
async function writeFileAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp-${tmpSuffix()}`;
  try {
    const handle = await open(tmp, 'wx');
    try {
      await handle.writeFile(text, 'utf8');
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(tmp, path);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
  await syncFolder(dirname(path));
}

/** Any error as a DiffusersFolderError naming its path (a FileKindError's own, else `path`). */
function asFolderError(e: unknown, path = ''): DiffusersFolderError {
  if (e instanceof DiffusersFolderError) return e;
  if (e instanceof FileKindError) return new DiffusersFolderError(e.path, e.problem, { cause: e });
  return new DiffusersFolderError(path, (e as Error).message, { cause: e });
}

/** Whether `path` is a regular file; false when absent; anything else there is an error. */
async function isFile(path: string, expected: string): Promise<boolean> {
  const kind = await fileKind(path, expected);
  if (kind !== 'file' && kind !== 'missing') throw asFolderError(kind);
  return kind === 'file';
}

/** Picks `dir/subfolder` when it holds `fileName`, else `dir` (diffusers' repo-root fallback). */
async function resolveFolder(dir: string, fileName: string, subfolder?: string): Promise<string> {
  const candidates = subfolder ? [join(dir, subfolder), dir] : [dir];
  for (const folder of candidates) {
    if (await isFile(join(folder, fileName), 'a JSON file')) return folder;
  }
  const top = await stat(dir).catch(() => undefined);
  if (top && !top.isDirectory()) { // e.g. the weights file given for the model folder
    throw new DiffusersFolderError(dir, `not a folder (${top.isFile() ? 'a file' : kindOf(top)}` +
      `): expected a folder holding ${fileName}`);
  }
  let hint = '';
  if (!(await exists(dir))) { // an interrupted save leaves its complete copies beside DIR
    const siblings = await readdir(dirname(dir)).catch(() => [] as string[]);
    const left = siblings.filter((n) => n.startsWith(`${basename(dir)}.old-`) ||
      n.startsWith(`${basename(dir)}.tmp-`));
    if (left.length > 0) hint = ` (an interrupted save left ${left.join(', ')})`;
  }
  const where = candidates.map((c) => join(c, fileName)).join(' nor ');
  throw new DiffusersFolderError(dir, `no ${where}${hint}`);
}

// ---- reading models ----

function toHostArray(t: TensorData): HostArray {
  switch (t.dtype) {
    case 'F32': case 'F16': case 'BF16': // halves arrive widened (readAll({ widen: true }))
      if (!(t.data instanceof Float32Array)) throw new Error(`${t.name}: ${t.dtype} not widened`);
      return new HostArray(t.data, t.shape);
    case 'F64': return new HostArray(Float32Array.from(t.data), t.shape); // as torch's copy_
    case 'I64': return new HostArray(t.data, t.shape);
    case 'I32': return new HostArray(t.data, t.shape);
    case 'BOOL': return new HostArray(t.data, t.shape, 'bool');
    default: return new HostArray(Int32Array.from(t.data), t.shape);
  }
}

const SAFETENSORS = 'a .safetensors file';

/** The dtypes a parameter may be stored in; each is read as float32. */
const FLOAT_DTYPES: readonly SafetensorsDtype[] = ['F32', 'F16', 'BF16', 'F64'];

const fmt = (shape: readonly number[]) => `[${shape.join(', ')}]`;

/** Opens a weights file: its header is read and checked against the file's size, no data. */
async function openWeightsFile(path: string): Promise<SafetensorsFile> {
  try {
    return await SafetensorsFile.open(path);
  } catch (e) {
    throw asFolderError(e, path);
  }
}

/** One tensor of an open weights file, halves widened to float32. */
async function readTensor(file: SafetensorsFile, name: string): Promise<HostArray> {
  try {
    return toHostArray(await file.read(name, { widen: true }));
  } catch (e) {
    throw asFolderError(e, file.path);
  }
}

async function closeAll(files: readonly SafetensorsFile[]): Promise<void> {
  await Promise.all(files.map((f) => f.close().catch(() => undefined)));
}

/** Reads an index's weight_map: shard file name -> the tensors it holds. */
async function readIndex(path: string): Promise<Map<string, Set<string>>> {
  const index = await readJsonObject(path);
  const map = index.weight_map;
  if (!isObject(map)) throw new DiffusersFolderError(path, `'weight_map' is not an object`);
  const shards = new Map<string, Set<string>>();
  for (const [tensor, shard] of Object.entries(map)) {
    // Shard names come from the file: plain names only, so an index cannot reach elsewhere.
    if (typeof shard !== 'string' || !/^[^/\\]+$/.test(shard) || shard === '..') {
      throw new DiffusersFolderError(path, `weight_map['${tensor}'] must be a file name in ` +
        `this folder, got ${JSON.stringify(shard)}`);
    }
    if (!shards.has(shard)) shards.set(shard, new Set());
    shards.get(shard)!.add(tensor);
  }
  return new Map([...shards].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/**
 * Opens the weight files of `folder`: the shards named by the index when there is one (for a
 * variant also the legacy `diffusion_pytorch_model.safetensors.<v>.index.json`), else the
 * single file. Only headers are read; the index is checked against them, and no tensor may be
 * in two shards. The caller closes the files.
 */
async function openWeights(folder: string, variant?: string): Promise<SafetensorsFile[]> {
  const indexNames = [addVariant(WEIGHTS_INDEX_NAME, variant)];
  if (variant !== undefined) {
    indexNames.push(WEIGHTS_INDEX_NAME.replace('.index.', `.${variant}.index.`));
  }
  for (const indexName of indexNames) {
    const indexPath = join(folder, indexName);
    if (!(await isFile(indexPath, 'a JSON index file'))) continue;
    const shards = await readIndex(indexPath);
    const missing: string[] = [];
    for (const [shard, tensors] of shards) {
      if (!(await isFile(join(folder, shard), SAFETENSORS))) {
        missing.push(`${shard} (${tensors.size} tensors)`);
      }
    }
    if (missing.length > 0) {
      throw new DiffusersFolderError(indexPath, `names missing shards: ${missing.join(', ')}`);
    }
    const files: SafetensorsFile[] = [];
    try {
      const seen = new Set<string>();
      for (const [shard, tensors] of shards) {
        const file = await openWeightsFile(join(folder, shard));
        files.push(file);
        for (const name of tensors) {
          if (!file.entries.has(name)) {
            throw new DiffusersFolderError(file.path, `has no tensor '${name}', which the index ` +
              'puts here');
          }
        }
        for (const name of file.entries.keys()) {
          if (seen.has(name)) throw new DiffusersFolderError(file.path, `'${name}' is in two shards`);
          seen.add(name);
        }
      }
    } catch (e) {
      await closeAll(files);
      throw e;
    }
    return files;
  }
  const single = addVariant(WEIGHTS_NAME, variant);
  const path = join(folder, single);
  if (!(await isFile(path, SAFETENSORS))) {
    const present = (await readdir(folder)).filter((n) => n.startsWith('diffusion_pytorch_model'));
    const has = present.length > 0 ? present.join(', ') : 'no weight files';
    const bin = present.some((n) => n.endsWith('.bin')) ? ' (.bin pickles are not read)' : '';
    throw new DiffusersFolderError(folder, `no weights: looked for ` +
      `${[...indexNames, single].join(', ')}; the folder has ${has}${bin}`);
  }
  return [await openWeightsFile(path)];
}

/**
 * Reads a model folder without building a model: the raw config and every tensor. Looks in
 * `dir/subfolder` (when it holds config.json) or `dir`; takes the sharded index when present,
 * else the single file (see openWeights).
 */
export async function readModelFolder(dir: string, opts: ReadModelOptions = {}):
  Promise<ModelFolder> {
  checkVariant(opts.variant);
  const folder = await resolveFolder(dir, CONFIG_NAME, opts.subfolder);
  const config = await readConfigFile(join(folder, CONFIG_NAME));
  const files = await openWeights(folder, opts.variant);
  const stateDict = new Map<string, HostArray>();
  try {
    for (const file of files) { // in file order, one tensor at a time
      for (const name of file.entries.keys()) stateDict.set(name, await readTensor(file, name));
    }
  } finally {
    await closeAll(files);
  }
  return { ...config, folder, weightFiles: files.map((f) => f.path), stateDict };
}

/**
 * Checks the headers of `files` against the parameters `model` declares (names after `rename`,
 * dtypes as the file names them, shapes) before any tensor data is read, so a foreign or
 * corrupt file fails at once however large its tensors; returns parameter -> where to read it.
 */
function planLoad(model: Module, files: readonly SafetensorsFile[],
  rename: ((name: string) => string | null) | undefined, source: string):
  Map<string, { file: SafetensorsFile; name: string }> {
  const expected = model.parameterShapes();
  const plan = new Map<string, { file: SafetensorsFile; name: string }>();
  for (const file of files) {
    const where = ` in ${file.path}`;
    for (const [name, { dtype, shape }] of file.entries) {
      const target = rename ? rename(name) : name;
      if (target === null) continue;
      const want = expected.get(target);
      if (!want) {
        throw new StateDictError(`unexpected key '${name}'${where} (${dtype} ${fmt(shape)}): ` +
          'the model has no such parameter');
      }
      const other = plan.get(target);
      if (other) { // a legacy name and its new name in one checkpoint: neither may win silently
        throw new StateDictError(`keys '${other.name}' in ${other.file.path} and '${name}'` +
          `${where} both load parameter '${target}'`);
      }
      if (!FLOAT_DTYPES.includes(dtype)) {
        throw new StateDictError(`key '${name}'${where} is ${dtype}, expected ` +
          `${FLOAT_DTYPES.join(', ')} (parameters are read as float32)`);
      }
      if (shape.length !== want.length || shape.some((d, i) => d !== want[i])) {
        throw new StateDictError(`key '${name}'${where} has shape ${fmt(shape)}, the model ` +
          `expects ${fmt(want)}`);
      }
      plan.set(target, { file, name });
    }
  }
  for (const [target, shape] of expected) {
    if (!plan.has(target)) {
      throw new StateDictError(`missing key '${target}' in ${source} (expected shape ` +
        `${fmt(shape)})`);
    }
  }
  return plan;
}

export interface LoadModelOptions extends ReadModelOptions {
  /** Receives each config warning (unknown keys); default console.warn. */
  warn?: (message: string) => void;
}

/**
 * Loads a model saved in diffusers' layout: checks `_class_name`, parses the config, builds the
 * module, checks the weights' headers against it (names with `cls.rename` applied to legacy
 * ones, dtypes, shapes), then reads only the tensors it needs into its parameter tree (float32;
 * F16/BF16/F64 files are converted). A missing, unexpected or misshaped tensor fails naming the
 * key and the file before any tensor data is read.
 */
export async function loadModel<M extends Module, C>(dir: string, cls: ModelClass<M, C>,
  opts: LoadModelOptions = {}):
  Promise<{ config: C; model: M; params: ParamsOf<M, HostArray>; folder: string }> {
  checkVariant(opts.variant);
  const folder = await resolveFolder(dir, CONFIG_NAME, opts.subfolder);
  const read = await readConfigFile(join(folder, CONFIG_NAME));
  const expected = [cls.className, ...(cls.aliases ?? [])];
  if (read.className !== undefined && !expected.includes(read.className)) {
    throw new DiffusersFolderError(read.path, `_class_name is '${read.className}', expected ` +
      `'${cls.className}': this folder holds another model`);
  }
  const config = cls.readConfig(read.config, opts.warn ? { warn: opts.warn } : undefined);
  const model = cls.create(config);
  const files = await openWeights(folder, opts.variant);
  const source = files.length === 1 ? files[0]!.path : folder;
  const dict = new Map<string, HostArray>();
  try {
    for (const { file, name } of planLoad(model, files, cls.rename, source).values()) {
      dict.set(name, await readTensor(file, name));
    }
  } finally {
    await closeAll(files);
  }
  const params = loadStateDict(model, dict, { rename: cls.rename, source });
  return { config, model, params, folder };
}

// ---- saving models ----

export interface SaveModelOptions {
  /** Largest shard in bytes, or a size such as '5GB' (decimal units, as diffusers). */
  maxShardSize?: number | string;
  /** Storage type of the weights (params are float32; halves are rounded to nearest even). */
  dtype?: 'float32' | 'float16' | 'bfloat16';
  /** Names files as diffusers does for a variant: diffusion_pytorch_model.fp16.safetensors. */
  variant?: string;
  /** safetensors `__metadata__`; `format: 'pt'` is always written, as diffusers does. */
  metadata?: Record<string, string>;
}

const SIZE_UNITS: Record<string, number> = { KB: 1e3, MB: 1e6, GB: 1e9, TB: 1e12 };

function parseSize(size: number | string): number {
  if (typeof size === 'number' && size > 0) return size;
  const m = typeof size === 'string' ? /^\s*(\d+(?:\.\d+)?)\s*([KMGT]B)\s*$/i.exec(size) : null;
  if (!m) {
    throw new DiffusersFolderError('', `maxShardSize must be a positive number of bytes or ` +
      `a size like '5GB', got ${JSON.stringify(size)}`);
  }
  return Math.floor(Number(m[1]) * SIZE_UNITS[m[2]!.toUpperCase()]!);
}

/** huggingface_hub's greedy split in state-dict order; a tensor over the limit gets its own. */
function splitShards(sizes: [string, number][], max: number): string[][] {
  const shards: string[][] = [];
  let current: string[] = [];
  let currentSize = 0;
  for (const [name, size] of sizes) {
    if (size > max) { shards.push([name]); continue; }
    if (currentSize + size > max) { shards.push(current); current = []; currentSize = 0; }
    current.push(name);
    currentSize += size;
  }
  if (current.length > 0) shards.push(current);
  return shards;
}

/** Whether `name` is a weights file or index of `variant`, which a save replaces. */
function ownedBySave(name: string, variant?: string): boolean {
  const v = variant === undefined ? '' : `\\.${variant}`;
  const shard = '(?:-\\d{5}-of-\\d{5})?';
  const legacy = variant === undefined ? '' : `|-\\d{5}-of-\\d{5}${v}`; // transformers' old form
  return name === CONFIG_NAME || new RegExp(`^diffusion_pytorch_model(?:${v}${shard}${legacy})` +
    `\\.safetensors$|^diffusion_pytorch_model\\.safetensors(?:\\.index${v}|${v}\\.index)\\.json$`)
    .test(name) || /\.tmp-\d+-[0-9a-f]{12}$/.test(name);
}

/** Hard-links (or copies) `from` into `to`, recursively; `from` is left as it is. */
async function linkTree(from: string, to: string): Promise<void> {
  const s = await lstat(from);
  if (s.isDirectory()) {
    await mkdir(to);
    for (const name of await readdir(from)) await linkTree(join(from, name), join(to, name));
  } else if (s.isSymbolicLink()) {
    await symlink(await readlink(from), to);
  } else {
    await link(from, to).catch(() => copyFile(from, to));
  }
}

/**
 * Saves a model in diffusers' layout: config.json (with `_class_name`, `_diffusers_version`) and
 * the weights, sharded with an index beyond `maxShardSize` (default '10GB'). `params` must match
 * what `cls.create(config)` declares (checked before anything is written). The folder is built
 * as `dir.tmp-*` and swapped in only when complete; see the file header. Other variants'
 * weights already in `dir` are kept, as diffusers keeps them.
 */
export async function saveModel<M extends Module, C>(dir: string, cls: ModelClass<M, C>,
  config: C, params: ParamsOf<M, HostArray>, opts: SaveModelOptions = {}): Promise<void> {
  checkVariant(opts.variant);
  dir = resolve(dir); // 'out/' -> 'out', so 'out.tmp-*' lands beside it, not inside
  const max = parseSize(opts.maxShardSize ?? '10GB');
  const dtypes = { float32: 'F32', float16: 'F16', bfloat16: 'BF16' } as const;
  const dtype = dtypes[opts.dtype ?? 'float32'];
  const bytes = dtype === 'F32' ? 4 : 2;
  // Sound: ParamsOf<M, HostArray> is a tree of plain objects and arrays with HostArray leaves.
  const dict = flattenParams(params as unknown as Parameters<typeof flattenParams>[0]);
  loadStateDict(cls.create(config), dict, { source: `the params given to saveModel(${dir})` });
  const sizes = [...dict].map(([name, a]): [string, number] => [name, numel(a.shape) * bytes]);
  const shards = splitShards(sizes, max);
  const weightsName = addVariant(WEIGHTS_NAME, opts.variant);
  const count = (i: number) => String(i).padStart(5, '0');
  const names = shards.length === 1 ? [weightsName] : shards.map((_, i) => // as diffusers:
    weightsName.replace(/\.safetensors$/, `-${count(i + 1)}-of-${count(shards.length)}$&`));
  const metadata = { ...opts.metadata, format: 'pt' };
  const raw = cls.toConfig(config);
  const { _class_name: _c, _diffusers_version: _v, ...rest } = raw;
  const configText = `${toPythonJson({
    _class_name: cls.className, _diffusers_version: DIFFUSERS_VERSION, ...rest })}\n`;

  await mkdir(dirname(dir), { recursive: true });
  const old = await lstat(dir).catch(() => undefined);
  if (old && !old.isDirectory()) throw new DiffusersFolderError(dir, 'exists and is not a folder');
  const stage = `${dir}.tmp-${tmpSuffix()}`;
  await mkdir(stage);
  try {
    for (const [i, shard] of shards.entries()) {
      const tensors = new Map<string, TensorInput>();
      for (const name of shard) {
        const a = dict.get(name)!;
        // `data` is a getter so each array is read (and rounded) only while its file is written;
        // the cast is sound: loadStateDict above checked every array is float32.
        tensors.set(name, { dtype, shape: a.shape, get data() { return a.data as Float32Array } });
      }
      await writeSafetensors(join(stage, names[i]!), tensors, metadata);
    }
    if (shards.length > 1) {
      const weight_map = Object.fromEntries(shards.flatMap((s, i) => s.map((n) => [n, names[i]])));
      const total_size = sizes.reduce((a, [, s]) => a + s, 0);
      await writeFileAtomic(join(stage, addVariant(WEIGHTS_INDEX_NAME, opts.variant)),
        `${toPythonJson({ metadata: { total_size }, weight_map })}\n`);
    }
    await writeFileAtomic(join(stage, CONFIG_NAME), configText); // last: the folder now loads
    if (old) {
      for (const name of await readdir(dir)) {
        if (!ownedBySave(name, opts.variant)) await linkTree(join(dir, name), join(stage, name));
      }
    }
    await syncFolder(stage);
  } catch (e) {
    await rm(stage, { recursive: true, force: true });
    throw e;
  }
  await swapIn(stage, dir, Boolean(old));
}

/**
 * Moves the complete `stage` folder to `dir`, replacing what was there. POSIX has no atomic
 * swap of two folders: between the two renames DIR is absent, and both complete copies exist.
 */
async function swapIn(stage: string, dir: string, replace: boolean): Promise<void> {
  const old = `${dir}.old-${tmpSuffix()}`;
  try {
    if (replace) await rename(dir, old);
    try {
      await rename(stage, dir);
    } catch (e) {
      if (replace) await rename(old, dir).catch(() => undefined);
      throw e;
    }
  } catch (e) {
    await rm(stage, { recursive: true, force: true });
    throw e;
  }
  if (replace) await rm(old, { recursive: true, force: true });
  await syncFolder(dirname(dir));
}

// ---- schedulers and pipelines ----

/**
 * Reads `scheduler_config.json` from `dir/subfolder` (default 'scheduler') or `dir`. With
 * `expect`, its `_class_name` must be one of those (diffusers lets compatible schedulers share
 * a config, so a DDIM sampler may accept a DDPMScheduler file).
 */
export async function readSchedulerConfig(dir: string,
  opts: { subfolder?: string; expect?: string | readonly string[] } = {}): Promise<ConfigFile> {
  const folder = await resolveFolder(dir, SCHEDULER_CONFIG_NAME, opts.subfolder ?? 'scheduler');
  const expect = typeof opts.expect === 'string' ? [opts.expect] : opts.expect;
  return readConfigFile(join(folder, SCHEDULER_CONFIG_NAME), expect);
}

/** Writes `dir[/subfolder]/scheduler_config.json` atomically; keys are the scheduler's own. */
export async function writeSchedulerConfig(dir: string, className: string,
  config: Record<string, unknown>, opts: { subfolder?: string } = {}): Promise<string> {
  const folder = opts.subfolder ? join(dir, opts.subfolder) : dir;
  await mkdir(folder, { recursive: true });
  const path = join(folder, SCHEDULER_CONFIG_NAME);
  const { _class_name: _c, _diffusers_version: _v, ...rest } = config;
  await writeFileAtomic(path, `${toPythonJson({
    _class_name: className, _diffusers_version: DIFFUSERS_VERSION, ...rest })}\n`);
  return path;
}

/** A component entry: [library, className], or [null, null] for an optional one left out. */
export type ComponentSpec = readonly [string, string] | readonly [null, null];

export interface ModelIndex {
  path: string;
  pipelineClass: string;
  diffusersVersion?: string;
  components: Record<string, ComponentSpec>;
  /** Other entries (e.g. `requires_safety_checker`), as read. */
  options: Record<string, unknown>;
  /** Entries whose names start with '_' (diffusers' loaders skip them) other than the class
   *  and version, as read: where a tool keeps its own notes on a pipeline. */
  privateEntries: Record<string, unknown>;
}

/** Reads `dir/model_index.json`: the pipeline class and component -> [library, ClassName]. */
export async function readModelIndex(dir: string): Promise<ModelIndex> {
  const path = join(dir, MODEL_INDEX_NAME);
  const raw = await readJsonObject(path);
  const { _class_name: cls, _diffusers_version: version, ...entries } = raw;
  if (typeof cls !== 'string') {
    const custom = Array.isArray(cls) ? ' (custom pipelines are not supported)' : '';
    throw new DiffusersFolderError(path, `_class_name must be the pipeline's class name, got ` +
      `${JSON.stringify(cls)}${custom}`);
  }
  const components: Record<string, ComponentSpec> = {};
  const options: Record<string, unknown> = {};
  const privateEntries: Record<string, unknown> = {};
  for (const [key, v] of Object.entries(entries)) {
    if (key.startsWith('_')) { // diffusers' bookkeeping (_name_or_path) or another tool's
      privateEntries[key] = v;
      continue;
    }
    const spec = Array.isArray(v) && v.length === 2 &&
      (v.every((x) => typeof x === 'string') || v.every((x) => x === null));
    if (spec) components[key] = v as unknown as ComponentSpec; // Sound: checked just above.
    else options[key] = v;
  }
  const out: ModelIndex = { path, pipelineClass: cls, components, options, privateEntries };
  if (typeof version === 'string') out.diffusersVersion = version;
  return out;
}

/** Writes `dir/model_index.json` atomically; write it after the components it names. */
export async function writeModelIndex(dir: string, pipelineClass: string,
  components: Record<string, ComponentSpec>, options: Record<string, Json> = {}): Promise<string> {
  for (const [key, spec] of Object.entries(components)) {
    const ok = spec.length === 2 && (spec.every((x) => typeof x === 'string' && x !== '') ||
      spec.every((x) => x === null));
    if (!ok || key.startsWith('_')) {
      throw new DiffusersFolderError('', `model_index component '${key}' must be [library, ` +
        `ClassName] or [null, null], got ${JSON.stringify(spec)}`);
    }
  }
  await mkdir(dir, { recursive: true });
  const path = join(dir, MODEL_INDEX_NAME);
  await writeFileAtomic(path, `${toPythonJson({ ...options, ...components,
    _class_name: pipelineClass, _diffusers_version: DIFFUSERS_VERSION })}\n`);
  return path;
}
