/**
 * @file `diffuse divcontrol eval` (pipelines/divcontrol.ts): every arm samples the same held-out
 * digits' conditions from the same start noise (flow Euler, null class label), and is scored by
 * control fidelity (conditionMse: the condition of the sample against the one given) and by
 * class agreement (the shipped classifier's label of the sample against the source digit's).
 *
 * The digits are a seeded draw of n from the held-out split (heldOutDigits, seed 0).
 *
 * Arms: the base alone (no control: what the conditions' fidelity is without a control
 * branch); the multi-condition model on each base condition (trained) and on the held-out ones
 * (zero-shot: the gate on the novel descriptor, and for comparison routed as each base
 * condition); a few-shot adapter; a control branch trained from scratch on the novel condition.
 */
import { HostArray } from '../engine/host.js';
import * as ops from '../engine/ops.js';
import { compile } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import type { Tree } from '../engine/tree.js';
import { tailorWeights } from '../methods/divcontrol.js';
import {
  CONDITION_KINDS, conditionImages, conditionMse, type ConditionKind,
} from '../methods/divcontrol-conditions.js';
import type { ParamsOf } from '../nn/module.js';
import type { Linear } from '../nn/layers.js';
import {
  controlDenoiser, descriptorOf, heldOutDigits, loadDivControl, sampleWith, startNoise,
  type DivControlPipeline,
} from './divcontrol.js';
import { modelDenoiser } from './graph-denoiser.js';
import { imageModelOf } from './image-models.js';
import { featureExtractor, loadMetricClassifier } from './metrics.js';

export interface DivControlEvalOptions {
  /** The multi-condition pipeline (diffuse divcontrol train). */
  control: string;
  /** An adapted pipeline (diffuse divcontrol adapt) and a from-scratch one, when compared. */
  adapted?: string;
  scratch?: string;
  /** Held-out digits scored (the first n of the split), flow Euler steps, noise seed. */
  n: number;
  steps: number;
  seed: number;
  /** After each arm: arms done and their total. */
  onArm?: (done: number, total: number, arm: string) => void;
}

export type Setting = 'none' | 'trained' | 'zero-shot' | 'few-shot' | 'scratch';

export interface DivControlEvalRow {
  arm: string;
  condition: ConditionKind;
  setting: Setting;
  /** Values trained for this arm (the adapter's alone for few-shot). */
  trainableParams: number;
  /** Mean conditionMse over the digits, and its standard error. */
  fidelityMse: number;
  fidelitySe: number;
  classAgreement: number;
  n: number;
}

export interface DivControlEvalResult {
  rows: DivControlEvalRow[];
  /** Held-out digits over condition / sample rows: ten columns. */
  grid: { images: HostArray<'float32'>; cols: number; rowNames: string[] };
  /** Cosine similarity of the gate's tailor weights for each pair of conditions (Fig. 6). */
  gateSimilarity: { a: ConditionKind; b: ConditionKind; cos: number }[];
}

const GRID_COLS = 10;

/** Mean and standard error of per-image values. */
function meanAndSe(v: ArrayLike<number>): { mean: number; se: number } {
  const n = v.length;
  const m = Array.from(v).reduce((s, x) => s + x, 0) / n;
  const variance = Array.from(v).reduce((s, x) => s + (x - m) ** 2, 0) / Math.max(1, n - 1);
  return { mean: m, se: Math.sqrt(variance / n) };
}

/** The tailor weights of each condition's descriptor under `p`'s gate. */
async function gateWeights(p: DivControlPipeline): Promise<Map<ConditionKind, Float32Array>> {
  const gate = ops.constantTree(p.netParams.gate as unknown as Tree<HostArray>) as unknown as
    ParamsOf<Linear>;
  const f = compile((e: Tensor) => tailorWeights(gate, ops.constant(p.netParams.gate_bias), e,
    p.net.config.active_tailors).weights, { name: 'divcontrol_gate' });
  try {
    const out = new Map<ConditionKind, Float32Array>();
    for (const k of CONDITION_KINDS) {
      out.set(k, Float32Array.from((await f(descriptorOf(k))).data as Float32Array));
    }
    return out;
  } finally {
    await f.dispose();
  }
}

function cosine(a: Float32Array, b: Float32Array): number {
  let [ab, aa, bb] = [0, 0, 0];
  for (let i = 0; i < a.length; i++) (ab += a[i]! * b[i]!, aa += a[i]! ** 2, bb += b[i]! ** 2);
  return ab / Math.sqrt(aa * bb || 1);
}

/** Rows [n, C, H, W] of several batches, the first `cols` of each, stacked for a grid. */
function gridOf(rows: readonly HostArray<'float32'>[], cols: number): HostArray<'float32'> {
  const [, c, h, w] = rows[0]!.shape as [number, number, number, number];
  const per = c * h * w;
  const images = new Float32Array(rows.length * cols * per);
  rows.forEach((r, i) => images.set(r.data.subarray(0, cols * per), i * cols * per));
  return new HostArray<'float32'>(images, [rows.length * cols, c, h, w], 'float32');
}

/** Runs every arm; see the file header. */
export async function evaluateDivControl(o: DivControlEvalOptions): Promise<DivControlEvalResult> {
  if (o.n < GRID_COLS) {
    throw new RangeError(`n: expected at least ${GRID_COLS} held-out digits, got ${o.n}`);
  }
  const multi = await loadDivControl(o.control);
  const adapted = o.adapted ? await loadDivControl(o.adapted) : undefined;
  const scratch = o.scratch ? await loadDivControl(o.scratch) : undefined;
  if (adapted && !adapted.adapter) {
    throw new Error(`--adapted ${o.adapted}: no adapter/ (run diffuse divcontrol adapt)`);
  }
  const { images: digits, labels } = heldOutDigits(o.n);
  const conds = new Map(CONDITION_KINDS.map((k) => [k, conditionImages(k, digits)]));
  const noise = startNoise(digits.shape, o.seed);
  const classifier = featureExtractor(await loadMetricClassifier());
  const rows: DivControlEvalRow[] = [];
  const grid: [string, HostArray<'float32'>][] = [['source digits', digits]];
  const seenKinds = multi.record.conditions;
  const novel = CONDITION_KINDS.filter((k) => !seenKinds.includes(k));
  const total = 1 + CONDITION_KINDS.length + novel.length * seenKinds.length +
    (adapted ? 1 : 0) + (scratch ? scratch.record.conditions.length : 0);
  let done = 0;
  const step = (arm: string) => o.onArm?.(++done, total, arm);
  const agreement = async (x: HostArray<'float32'>): Promise<number> => {
    const out = await classifier.outputs(x);
    let hits = 0;
    for (let i = 0; i < out.n; i++) {
      const row = out.logits.subarray(i * out.classes, (i + 1) * out.classes);
      if (row.indexOf(Math.max(...row)) === labels[i]) hits++;
    }
    return hits / out.n;
  };
  const score = async (arm: string, kind: ConditionKind, setting: Setting, params: number,
    x: HostArray<'float32'>): Promise<void> => {
    const f = meanAndSe(conditionMse(kind, x, conds.get(kind)!));
    rows.push({ arm, condition: kind, setting, trainableParams: params, n: o.n, fidelityMse: f.mean,
      fidelitySe: f.se, classAgreement: await agreement(x) });
  };
  const controlled = async (p: DivControlPipeline, kind: ConditionKind, routedAs: ConditionKind,
    useAdapter: boolean): Promise<HostArray<'float32'>> => {
    const den = controlDenoiser(p, useAdapter);
    try {
      const condition = { cond: conds.get(kind)!, descriptor: descriptorOf(routedAs) };
      return await sampleWith(den, p.scheduler, noise, condition, o.steps);
    } finally {
      await den.dispose();
    }
  };
  try {
    // No control: the base's own samples (null label), scored against every condition.
    const cfg = multi.base.config;
    const base = modelDenoiser(imageModelOf('dit', cfg), multi.baseParams as unknown as Tree<HostArray>,
      'flow');
    let plain: HostArray<'float32'>;
    try {
      const nullClass = new Int32Array(o.n).fill(cfg.num_embeds_ada_norm);
      plain = await sampleWith(base, multi.scheduler, noise, nullClass, o.steps);
    } finally {
      await base.dispose();
    }
    for (const k of CONDITION_KINDS) await score('no control', k, 'none', 0, plain);
    step('no control');
    const netParams = multi.net.numParams();
    for (const k of CONDITION_KINDS) {
      const setting = seenKinds.includes(k) ? 'trained' : 'zero-shot';
      const x = await controlled(multi, k, k, false);
      await score('divcontrol', k, setting, netParams, x);
      grid.push([`${k} condition`, conds.get(k)!], [`${k}: divcontrol (${setting})`, x]);
      step(`divcontrol ${k}`);
    }
    for (const k of novel) {
      for (const r of seenKinds) {
        const x = await controlled(multi, k, r, false);
        await score(`divcontrol routed as ${r}`, k, 'zero-shot', netParams, x);
        step(`${k} routed as ${r}`);
      }
    }
    if (adapted) {
      const k = adapted.record.adapted!;
      const x = await controlled(adapted, k, k, true);
      await score('few-shot adapter', k, 'few-shot', adapted.adapter!.module.numParams(), x);
      grid.push([`${k}: few-shot adapter`, x]);
      step('few-shot adapter');
    }
    for (const k of scratch?.record.conditions ?? []) {
      const x = await controlled(scratch!, k, k, false);
      await score('from scratch', k, 'scratch', scratch!.net.numParams(), x);
      grid.push([`${k}: from scratch`, x]);
      step(`scratch ${k}`);
    }
    grid.push(['no control', plain]);
  } finally {
    await classifier.dispose();
  }
  const w = await gateWeights(multi);
  const gateSimilarity = CONDITION_KINDS.flatMap((a, i) => CONDITION_KINDS.slice(i + 1)
    .map((b) => ({ a, b, cos: cosine(w.get(a)!, w.get(b)!) })));
  return { rows, gateSimilarity, grid: { images: gridOf(grid.map(([, x]) => x), GRID_COLS),
    cols: GRID_COLS, rowNames: grid.map(([name]) => name) } };
}

export const EVAL_CSV_COLUMNS = ['arm', 'condition', 'setting', 'trainable_params', 'n',
  'fidelity_mse', 'fidelity_se', 'class_agreement'] as const;

export function evalCsv(rows: readonly DivControlEvalRow[]): string {
  const line = (r: DivControlEvalRow) => [r.arm, r.condition, r.setting, r.trainableParams, r.n,
    r.fidelityMse.toFixed(5), r.fidelitySe.toFixed(5), r.classAgreement.toFixed(4)].join(',');
  return `${EVAL_CSV_COLUMNS.join(',')}\n${rows.map(line).join('\n')}\n`;
}
