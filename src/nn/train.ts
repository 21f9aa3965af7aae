/**
 * @file compileTrainStep: forward, loss, backward, clipping, optimizer update and EMA as
 * ONE graph and one ORT run per step. The training state is plain data (host arrays and a
 * step count), so saving it is a checkpoint and loading it resumes exactly.
 */
import { valueAndGrad } from '../engine/autodiff.js';
import { HostArray } from '../engine/host.js';
import { compile, type RuntimeOptions } from '../engine/runtime.js';
import type { Tensor } from '../engine/tensor.js';
import { mapTree, type Tree } from '../engine/tree.js';
import { emaDecay, emaUpdate, type EmaOptions } from './ema.js';
import { clipGradNorm, globalNorm, type Optimizer } from './optim.js';

export interface TrainState {
  params: Tree<HostArray>;
  opt: Tree<HostArray>;
  /** The EMA of params, when enabled. */
  ema?: Tree<HostArray>;
  /** Optimisation steps taken so far. */
  step: number;
}

export interface TrainStepOptions {
  /** Clip the global gradient norm to this value. */
  clipGradNorm?: number;
  ema?: EmaOptions;
  runtime?: RuntimeOptions;
}

export interface StepMetrics {
  loss: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
  lr: number;
}

export interface TrainStep<B> {
  /** The state to start training from. */
  init(params: Tree<HostArray>): TrainState;
  /** One step: returns the next state and the step's metrics. */
  step(state: TrainState, batch: B): Promise<{ state: TrainState; metrics: StepMetrics }>;
  /** The compiled graph (for inspection and benchmarks). */
  readonly compiled: ReturnType<typeof compile>;
  dispose(): Promise<void>;
}

const isHost = (x: unknown): x is HostArray => x instanceof HostArray;

/**
 * Compiles a training step for `lossFn(params, batch) -> scalar`. The batch is any tree of
 * host arrays; all randomness (noise, timesteps, dropout masks) belongs in it, drawn on the
 * host from the seeded RNG, so a step is a pure function of (state, batch).
 */
export function compileTrainStep<B extends Tree<HostArray>>(
  lossFn: (params: Tree<Tensor>, batch: Tree<Tensor>) => Tensor,
  optimizer: Optimizer,
  opts: TrainStepOptions = {},
): TrainStep<B> {
  const graph = (params: Tree<Tensor>, opt: Tree<Tensor>, ema: Tree<Tensor>, step: Tensor,
    batch: Tree<Tensor>) => {
    const [loss, grads] = valueAndGrad(lossFn)(params, batch);
    let g = grads;
    let gradNorm: Tensor;
    if (opts.clipGradNorm !== undefined) ({ grads: g, norm: gradNorm } = clipGradNorm(grads, opts.clipGradNorm));
    else gradNorm = globalNorm(grads);
    const upd = optimizer.update(params, g, opt, step);
    const newEma = opts.ema ? emaUpdate(ema, upd.params, emaDecay(step, opts.ema)) : [];
    return { loss, gradNorm, lr: upd.lr, params: upd.params, opt: upd.state, ema: newEma };
  };
  // Typed loosely: the mapped host signature of these generic trees is too deep for tsc.
  const compiled = compile(graph as (...args: never[]) => unknown, {
    memoryPattern: false, ...opts.runtime, argNames: ['params', 'opt', 'ema', 'step', 'batch'], name: 'train_step',
  });
  return {
    compiled,
    init: (params) => ({
      params, opt: optimizer.init(params), step: 0,
      ...(opts.ema ? { ema: mapTree(params, isHost, (p) => p.clone()) } : {}),
    }),
    async step(state, batch) {
      const t = HostArray.scalar(state.step + 1);
      const run = compiled as unknown as (...a: unknown[]) => Promise<unknown>;
      const out = (await run(state.params, state.opt, state.ema ?? [], t, batch)) as {
        loss: HostArray; gradNorm: HostArray; lr: HostArray; params: Tree<HostArray>;
        opt: Tree<HostArray>; ema: Tree<HostArray>;
      };
      const next: TrainState = { params: out.params, opt: out.opt, step: state.step + 1 };
      if (opts.ema) next.ema = out.ema;
      const scalar = (a: HostArray): number => a.data[0] as number;
      return { state: next, metrics: { loss: scalar(out.loss), gradNorm: scalar(out.gradNorm),
        lr: scalar(out.lr) } };
    },
    dispose: () => compiled.dispose(),
  };
}
