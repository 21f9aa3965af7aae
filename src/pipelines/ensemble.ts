/**
 * @file A decentralized-experts ensemble as a sampling pipeline (methods/ddm.ts): its folder
 * layout, and its Denoiser built from loaded experts and router.
 *
 * The folder (what `diffuse ddm train` writes as RUN/model, and `diffuse sample --model`
 * reads, given either it or RUN):
 *
 *   model_index.json   _class_name DecentralizedDiffusionPipeline; `experts` (K),
 *                      `routing` (the default: top1, top2 or full), `clusters` (sizes)
 *   expert-0/ ...      one complete pipeline per expert (model_index.json, transformer/ or
 *                      unet/, scheduler/): each one samples on its own too
 *   router/            the router, a DiffuseClassifier of (x_t, log-SNR, class) -> expert
 *                      (config.json + diffusion_pytorch_model.safetensors)
 */
import * as ops from '../engine/ops.js';
import { HostArray } from '../engine/host.js';
import { compile, type RuntimeOptions } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import type { Tree } from '../engine/tree.js';
import { conditionLabels, int64Labels, type Denoiser } from '../diffusion/denoiser.js';
import type { Prediction } from '../diffusion/predictions.js';
import {
  ensembleDenoiser, flowNoiseLevel, type EnsembleMode, type EnsembleStats,
} from '../methods/ddm.js';
import { DiffuseClassifier, type ClassifierConfig } from '../models/classifier.js';
import type { ParamsOf } from '../nn/module.js';
import { modelDenoiser } from './graph-denoiser.js';
import type { ImageModel } from './image-models.js';

export const ENSEMBLE_PIPELINE_CLASS = 'DecentralizedDiffusionPipeline';
export const expertFolder = (k: number): string => `expert-${k}`;
export const ROUTER_FOLDER = 'router';
/** The config file of a `diffuse ddm train` run folder (pipelines/ddm.ts); its ensemble is model/. */
export const DDM_RUN_FILE = 'ddm.json';

/** What an ensemble pipeline holds once loaded. */
export interface EnsembleParts {
  experts: { model: ImageModel; params: Tree<HostArray> }[];
  router: { config: ClassifierConfig; params: ParamsOf<DiffuseClassifier, HostArray> };
  /** The routing the pipeline was saved with, used when a caller names none. */
  routing: EnsembleMode;
  /** The experts' num_train_timesteps: model time t = s T (rectified flow). */
  numTrainTimesteps: number;
}

export interface LoadedEnsemble {
  denoiser: Denoiser & { stats: EnsembleStats };
  dispose(): Promise<void>;
}

/**
 * The experts (each a compiled graph, weights baked in) and the router as one Denoiser. The
 * router sees the class labels of a class-conditional ensemble, the null label included.
 */
export function ensembleModel(parts: EnsembleParts, mode: EnsembleMode, prediction: Prediction,
  runtime: RuntimeOptions = {}): LoadedEnsemble {
  const experts = parts.experts.map((e, k) => modelDenoiser(e.model, e.params, prediction,
    { ...runtime, name: `expert_${k}` }));
  const { config } = parts.router;
  const net = new DiffuseClassifier(config);
  const p = ops.constantTree(parts.router.params as unknown as Tree<HostArray>) as
    unknown as ParamsOf<DiffuseClassifier>;
  const conditioned = config.condition_classes > 0;
  const name = { ...runtime, name: 'router' };
  const probs = conditioned
    ? compile((x: Tensor, level: Tensor, labels: Tensor) => ops.softmax(net.logits(p, x, level, labels), -1), name)
    : compile((x: Tensor, level: Tensor) => ops.softmax(net.logits(p, x, level), -1), name);
  const denoiser = ensembleDenoiser(experts, async (x, t, condition) => {
    const rows = x.shape[0]!;
    const xs = new HostArray<'float32'>(Float32Array.from(x.data), x.shape, 'float32');
    const level = new HostArray(flowNoiseLevel(t, parts.numTrainTimesteps), [rows]);
    if (conditioned && condition === undefined) {
      throw new TypeError('ensemble: the router is class-conditional; sample it with class labels');
    }
    const args = conditioned ? [xs, level, int64Labels(conditionLabels(condition))] : [xs, level];
    return ((await (probs as (...a: HostArray[]) => Promise<HostArray>)(...args)).data as Float32Array);
  }, mode);
  return {
    denoiser,
    dispose: async () => {
      await Promise.all([...experts.map((e) => e.dispose()), probs.dispose()]);
    },
  };
}
