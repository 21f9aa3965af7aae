/**
 * @file `diffuse ddm train`, `diffuse ddm eval` and `diffuse worker`: decentralized experts
 * (pipelines/ddm.ts) trained as jobs on worker threads here or on a BullMQ queue on Redis, and
 * scored against a monolith.
 */
import { join } from 'node:path';
import type { Command } from 'commander';
import type { JobBackend, JobEvents } from '../distributed/jobs.js';
import { embeddedBackend } from '../distributed/embedded.js';
import { ENSEMBLE_MODES, type EnsembleMode } from '../methods/ddm.js';
import { CLASSIFIER_PRESET_NAMES } from '../pipelines/classifier.js';
import { loadTrainingData } from '../pipelines/data.js';
import {
  compareEnsemble, DEFAULT_FEATURES, ensembleCsv, ROUTER_DEFAULTS, trainDdm, type DdmJobResult,
  type DdmOptions,
} from '../pipelines/ddm.js';
import { prepareMnistFid } from '../pipelines/eval.js';
import { JOB_HANDLER_MODULE } from '../pipelines/jobs.js';
import { METHOD_DEFAULTS } from '../pipelines/train.js';
import { writeFileAtomic } from '../util/atomic.js';
import { UsageError } from './errors.js';
import {
  addOptions, commandOptions, custom, int, num, oneOf, path, text,
} from './options.js';
import { progress, type Progress } from './progress.js';
import { GUIDANCE_RANGE } from './sample.js';
import { checkSizePreset, TRAIN_OPTIONS } from './train.js';
import { stopOnSignal } from './training-run.js';

const QUEUE_SPELLING = 'redis://host:port[/db]';
const queueUrl = custom((v) => {
  if (!/^rediss?:\/\/[^\s/]+(\/\d+)?\/?$/.test(v)) throw new Error('not a redis:// URL');
  return v;
}, { arg: '<url>', expected: QUEUE_SPELLING, help: 'a BullMQ queue on this Redis server: the ' +
  'jobs go there and any `diffuse worker --queue` process on any machine runs them (the run ' +
  'folder must be the same path on all of them)' });

const queueName = text({ arg: '<name>', help: 'the BullMQ queue name', default: 'diffuse' });
const lockSeconds = int({ min: 1, max: 3600, help: 'a job whose worker stops renewing its lock for ' +
  'this long (a killed or cut-off worker) goes back to the queue', default: 30 });

const {
  model, size, unconditional, labelDropout, batchSize, lr, lrSchedule, warmupSteps, gradClip,
  emaDecay, seed, logEvery, checkpointEvery, data, config,
} = TRAIN_OPTIONS;


/** BullMQ and ioredis take most of a second to load: only the commands that use them do. */
const redis = () => import('../distributed/redis.js');

export const DDM_TRAIN_OPTIONS = {
  config, data, model: { ...model, default: 'dit' as const }, size: { ...size, default: 'xs' },
  unconditional, labelDropout, batchSize,
  steps: int({ min: 1, help: 'optimisation steps of each expert (a monolith of equal compute ' +
    'trains experts x steps)', default: 1000 }),
  lr, lrSchedule, warmupSteps, gradClip, emaDecay, seed, logEvery, checkpointEvery,
  experts: int({ min: 2, max: 64, help: 'K: clusters of the data, one expert each', default: 4 }),
  features: path({ arg: '<dir>', help: 'the classifier whose penultimate features are clustered ' +
    '(default: the shipped models/mnist-classifier)' }),
  routing: oneOf(ENSEMBLE_MODES, { arg: '<mode>', help: 'the ensemble\'s default routing: ' +
    'top1 or top2 (each sample\'s most probable experts, renormalised) or full (every expert weighted)', default: 'top2' }),
  routerSteps: int({ min: 1, help: 'the router\'s optimisation steps', default: ROUTER_DEFAULTS.steps }),
  routerBatchSize: int({ min: 1, help: 'the router\'s images per step', default: ROUTER_DEFAULTS.batchSize }),
  routerLr: num({ range: '(0, 1]', help: 'the router\'s peak AdamW learning rate', default: ROUTER_DEFAULTS.lr }),
  routerPreset: oneOf(CLASSIFIER_PRESET_NAMES, { arg: '<preset>', help: 'the router\'s classifier preset',
    default: ROUTER_DEFAULTS.preset }),
  queue: queueUrl, queueName, lockSeconds,
  workers: int({ min: 0, max: 64, help: 'jobs run at once in this process, one worker thread each ' +
    '(with --queue, 0 only enqueues and waits for `diffuse worker`s)', default: 1 }),
  retries: int({ min: 0, max: 100, help: 'extra attempts of a job whose run failed (a killed ' +
    'worker does not count)', default: 2 }),
  out: path({ arg: '<dir>', help: 'run folder (running again continues it)', default: 'runs/ddm' }),
};

export const DDM_EVAL_OPTIONS = {
  model: path({ arg: '<dir>', help: 'a `diffuse ddm train` run folder (or its model/)' }),
  monolith: path({ arg: '<dir>', help: 'a monolithic model of equal training compute to compare with' }),
  routings: custom((v) => {
    const list = v.split(',').map((s) => s.trim());
    const bad = list.find((r) => !ENSEMBLE_MODES.includes(r as EnsembleMode));
    if (bad !== undefined || list.length === 0) throw new Error(`unknown routing '${bad}'`);
    return list as EnsembleMode[];
  }, { arg: '<list>', expected: `a comma list of ${ENSEMBLE_MODES.join(', ')}`,
    help: 'the routings to score', default: [...ENSEMBLE_MODES] }),
  n: int({ min: 2, help: 'images per routing', default: 1000 }),
  sampler: text({ arg: '<name>', help: 'sampler', default: 'flow-euler' }),
  steps: int({ min: 1, help: 'sampling steps', default: 20 }),
  guidance: num({ range: GUIDANCE_RANGE, arg: '<w>', help: 'classifier-free guidance (1: none)', default: 1 }),
  seed: int({ min: 0, help: 'sampling seed', default: 0 }),
  csv: path({ arg: '<file>', help: 'results (routing, n, mnist_fid, class_accuracy, seconds_per_image, ' +
    'expert_rows_per_step)', default: 'ddm-eval.csv' }),
};

export const WORKER_OPTIONS = {
  queue: queueUrl, queueName, lockSeconds,
  concurrency: int({ min: 1, max: 64, help: 'jobs this process runs at once, one thread each', default: 1 }),
  threads: int({ min: 1, max: 1024, help: 'ONNX Runtime threads per job (default: the machine\'s ' +
    'cores shared by --concurrency); lower it when several workers share a machine' }),
};

/** Progress bars per job, on stderr. */
function jobBars(): JobEvents & { stop(): void } {
  const bars = new Map<string, Progress>();
  return {
    onStart: (id, worker, attempt) => process.stderr.write(`${id}: started on ${worker}` +
      `${attempt > 1 ? ` (attempt ${attempt}, resuming)` : ''}\n`),
    onProgress: (id, p) => {
      let bar = bars.get(id);
      if (!bar) bars.set(id, (bar = progress(id.replace(/^ddm-[0-9a-f]+-/, ''), p.steps, ['loss'])));
      bar.update(p.step, { loss: p.note?.replace('loss ', '') ?? '' });
    },
    onDone: (id, result) => {
      bars.get(id)?.stop();
      const r = result as Partial<DdmJobResult> | undefined;
      process.stderr.write(`${id}: ${r?.skipped ? 'already finished' : `done in ${(r?.seconds ?? 0).toFixed(0)} s` +
        `${r?.resumedFrom ? ` (resumed from step ${r.resumedFrom})` : ''}`}\n`);
    },
    onRetry: (id, error, attempt) => process.stderr.write(`${id}: attempt ${attempt} failed (${error}); retrying\n`),
    stop: () => bars.forEach((b) => b.stop()),
  };
}

export function registerDdm(program: Command): void {
  const ddm = program.command('ddm').description('Decentralized Diffusion Models (McAllister et al. ' +
    '2025): experts trained in isolation on clusters of the data, a router, ensemble sampling');
  addOptions(ddm.command('train')
    .description('cluster the data, train one flow-matching expert per cluster and a router as ' +
      'separate jobs (worker threads here, or a BullMQ queue with --queue), then write the ' +
      'ensemble pipeline RUN/model; running it again continues the run'), DDM_TRAIN_OPTIONS)
    .action(async (_: unknown, cmd: Command) => {
      const r = commandOptions(DDM_TRAIN_OPTIONS, cmd);
      const o = r.values;
      checkSizePreset(r, o.model, o.size);
      if (!o.queue && o.workers === 0) throw r.refuse('workers', 'at least 1 without --queue (nothing else would run the jobs)');
      const d = await loadTrainingData(o.data);
      const options: DdmOptions = {
        experts: o.experts, data: o.data, out: o.out, seed: o.seed, routing: o.routing,
        features: o.features ?? DEFAULT_FEATURES(), checkpointEvery: o.checkpointEvery,
        expert: { model: o.model, size: o.size, objective: 'flow', weighting: 'uniform', minSnrGamma: 5,
          conditional: !o.unconditional && !!d.labels, labelDropout: o.labelDropout, batchSize: o.batchSize,
          steps: o.steps, lr: o.lr, lrSchedule: o.lrSchedule, warmupSteps: o.warmupSteps, gradClip: o.gradClip,
          emaDecay: o.emaDecay, logEvery: o.logEvery, sampleEvery: 0, checkpointEvery: o.checkpointEvery, ...METHOD_DEFAULTS },
        router: { preset: o.routerPreset, steps: o.routerSteps, batchSize: o.routerBatchSize, lr: o.routerLr,
          labelDropout: o.labelDropout },
      };
      const backend: JobBackend = o.queue
        ? await (await redis()).redisBackend({ url: o.queue, queue: o.queueName, handler: JOB_HANDLER_MODULE,
          localWorkers: o.workers, lockSeconds: o.lockSeconds, retries: o.retries })
        : embeddedBackend({ handler: JOB_HANDLER_MODULE, workers: o.workers, retries: o.retries });
      const bars = jobBars();
      const stop = stopOnSignal();
      stop.signal.addEventListener('abort', () => void backend.close());
      try {
        const res = await trainDdm(options, backend, { ...bars,
          onPhase: (what) => process.stderr.write(`${what}...\n`) });
        bars.stop();
        console.log(`clusters: ${res.clusters.sizes.join(', ')} images (pictures in ${join(o.out, 'clusters')})`);
        console.log(`trained ${o.experts} experts and the router in ${res.seconds.toFixed(0)} s; ensemble in ${res.model}`);
      } finally {
        bars.stop();
        stop.release();
        await backend.close();
      }
    });
  addOptions(ddm.command('eval')
    .description('MNIST-FID and class accuracy of an ensemble at each routing, and of a monolith ' +
      'of equal compute (the same sampler, steps, seed and classes)'), DDM_EVAL_OPTIONS)
    .action(async (_: unknown, cmd: Command) => {
      const o = commandOptions(DDM_EVAL_OPTIONS, cmd).values;
      if (o.model === undefined) throw new UsageError('--model: expected a ddm run folder');
      const fid = await prepareMnistFid({ n: o.n });
      let bar: Progress | undefined;
      let current = '';
      try {
        const rows = await compareEnsemble(o.model, { routings: o.routings ?? ENSEMBLE_MODES, n: o.n, sampler: o.sampler,
          steps: o.steps, guidance: o.guidance, seed: o.seed, ...(o.monolith ? { monolith: o.monolith } : {}),
          onStep: (name, step, total) => {
            if (name !== current) (bar?.stop(), bar = progress(name, total, []), current = name);
            bar!.update(step + 1, {});
          } }, fid);
        bar?.stop();
        console.log(`MNIST-FID floor at n = ${o.n}: ${fid.floor.toFixed(3)}`);
        for (const r of rows) {
          console.log(`${r.name.padEnd(9)} MNIST-FID ${r.fid.toFixed(3).padStart(8)}` +
            `${r.accuracy === null ? '' : `  accuracy ${(100 * r.accuracy).toFixed(1)}%`}` +
            `  ${(1000 * r.secondsPerImage).toFixed(1)} ms/image  ${r.expertRowsPerStep.toFixed(2)} expert rows/step`);
        }
        await writeFileAtomic(o.csv, ensembleCsv(rows));
        console.log(`wrote ${o.csv}`);
      } finally {
        bar?.stop();
        await fid.dispose();
      }
    });
}

export function registerWorker(program: Command): void {
  addOptions(program.command('worker')
    .description('pull training jobs (e.g. a `diffuse ddm train --queue` run\'s experts) from a ' +
      'BullMQ queue on Redis and run them until stopped (Ctrl-C hands a running job back)'), WORKER_OPTIONS)
    .action(async (_: unknown, cmd: Command) => {
      const o = commandOptions(WORKER_OPTIONS, cmd).values;
      if (o.queue === undefined) throw new UsageError(`--queue: expected ${QUEUE_SPELLING}`);
      const worker = await (await redis()).startRedisWorker({ url: o.queue, queue: o.queueName, handler: JOB_HANDLER_MODULE,
        concurrency: o.concurrency, lockSeconds: o.lockSeconds, ...(o.threads ? { threads: o.threads } : {}),
        onEvent: (e) => {
          const at = new Date().toISOString();
          if (e.type === 'error') process.stderr.write(`${at} ${e.error}\n`);
          else process.stderr.write(`${at} ${e.id}: ${e.type}${e.type === 'start' && e.attempt > 1 ? ` (attempt ${e.attempt})` : ''}` +
            `${e.type === 'failed' ? `: ${e.error}` : ''} on ${e.worker}\n`);
        } });
      console.log(`worker ${worker.name} on ${o.queue} queue '${o.queueName}'; Ctrl-C to stop`);
      await new Promise<void>((resolveStop) => {
        const stop = () => resolveStop();
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
      });
      process.stderr.write('stopping: running jobs go back to the queue...\n');
      await worker.close();
    });
}
