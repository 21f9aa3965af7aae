/**
 * @file The body of `POST /v1/samples`, checked with the CLI's own option specs: a subset of
 * `diffuse sample`'s options (SAMPLE_OPTIONS), so a value the server takes is a value the
 * command takes, with the same words when it is refused. `n` and `steps` get the server's
 * per-request limits as their upper bounds. Then the checks that need the model (class range,
 * guidance on an unconditional model, the sampler's process, a student's own settings), with
 * the model facts the worker threads reported when they loaded it.
 *
 *     {"class": 7, "n": 4}                 -> 202
 *     {"steps": 500}                       -> 400 steps: expected an integer from 1 to 200, got 500
 *     {"sampler": "ddim ", "stpes": 4}     -> 400 stpes: not a field of a sample request (...)
 *
 * Nothing here becomes a path: the model is fixed when the server starts.
 */
import { int, parseConfig, type Schema } from '../cli/options.js';
import { SAMPLE_OPTIONS } from '../cli/sample.js';
import type { Acceleration } from '../pipelines/accel.js';
import { samplingChoice } from '../pipelines/sample.js';
import type { ModelInfo } from './worker.js';

export interface RequestLimits {
  /** The most images one request may ask for. */
  maxN: number;
  /** The most sampler steps one request may ask for. */
  maxSteps: number;
}

/** A checked request with every default filled in: what a worker thread samples. */
export interface SampleRequest {
  sampler: string;
  steps: number;
  n: number;
  guidance: number;
  seed: number;
  /** Absent: the model's default (all classes cycled, or none for an unconditional model). */
  classes?: number[] | 'all';
  accel?: Acceleration;
}

/** A request the server refuses with 400: `field` (when one is to blame) and the form it
 *  takes, for clients that show the error beside the field. */
export class RequestError extends Error {
  constructor(message: string, readonly field?: string, readonly expected?: string) {
    super(message);
    this.name = 'RequestError';
  }
}

/** The fields of a sample request, each with `diffuse sample`'s check. */
export function requestSchema(limits: RequestLimits) {
  return {
    class: SAMPLE_OPTIONS.class,
    n: int({ min: 1, max: limits.maxN, help: SAMPLE_OPTIONS.n.help }),
    steps: int({ min: 1, max: limits.maxSteps, help: SAMPLE_OPTIONS.steps.help }),
    sampler: SAMPLE_OPTIONS.sampler,
    guidance: SAMPLE_OPTIONS.guidance,
    seed: SAMPLE_OPTIONS.seed,
    accel: SAMPLE_OPTIONS.accel,
  } satisfies Schema;
}

export type RequestSchema = ReturnType<typeof requestSchema>;

/** parseConfig names the "file" in its messages; this name lets them be reworded as a body's. */
const BODY = 'request-body';
const CONFIG_PREFIX = new RegExp(`^"([^"]+)" in config file ${BODY}: `);

/** `body` (parsed JSON) as the options of a sampling run of the model `info` describes, or a
 *  RequestError naming the field and the form it takes. */
export function parseSampleRequest(schema: RequestSchema, limits: RequestLimits, body: unknown,
  info: ModelInfo): SampleRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new RequestError(`the body: expected a JSON object of sample options (${fields(schema)}), ` +
      `got ${body === null ? 'null' : Array.isArray(body) ? 'an array' : `a ${typeof body}`}`);
  }
  for (const key of Object.keys(body)) {
    // Own keys only: "constructor" or "__proto__" must not pass as fields.
    if (!Object.hasOwn(schema, key)) {
      throw new RequestError(`${key}: not a field of a sample request (expected ${fields(schema)})`,
        key, fields(schema));
    }
  }
  let given: Partial<{ [K in keyof RequestSchema]: unknown }>;
  try {
    given = parseConfig(schema, body, BODY, 'sample');
  } catch (e) {
    const m = CONFIG_PREFIX.exec((e as Error).message);
    if (!m) throw e;
    const field = m[1]!;
    throw new RequestError(`${field}: ${(e as Error).message.slice(m[0].length)}`, field,
      (schema as Schema)[field]?.expected);
  }
  return resolve(given as GivenRequest, limits, info);
}

const fields = (schema: Schema): string => Object.keys(schema).join(', ');

/** The fields a request gave, as parseConfig checked them. */
type GivenRequest = Partial<{
  class: number[] | 'all'; n: number; steps: number; sampler: string; guidance: number;
  seed: number; accel: Acceleration;
}>;

/** Fills in the defaults `diffuse sample` would, and checks what needs the model. */
function resolve(v: GivenRequest, limits: RequestLimits, info: ModelInfo): SampleRequest {
  const k = info.classes;
  if (v.class !== undefined) {
    if (k === 0) {
      throw new RequestError(`class: not accepted: ${info.className} here is unconditional ` +
        '(no class labels); leave class out', 'class', 'no value');
    }
    const bad = v.class === 'all' ? undefined : v.class.find((c) => c >= k);
    if (bad !== undefined) {
      throw new RequestError(`class: expected labels from 0 to ${k - 1} (the model has ${k} ` +
        `classes), got ${bad}`, 'class', `labels from 0 to ${k - 1}`);
    }
  }
  if (v.guidance !== undefined && v.guidance !== 1 && k === 0) {
    throw new RequestError(`guidance: expected 1 (none) on an unconditional model, got ` +
      `${v.guidance}`, 'guidance', '1');
  }
  let choice;
  try {
    choice = samplingChoice(info, { sampler: v.sampler, steps: v.steps, guidance: v.guidance },
      Math.min(SAMPLE_OPTIONS.steps.default!, limits.maxSteps));
  } catch (e) {
    // A BOOT student runs only as it was trained; the message names its settings.
    throw new RequestError(`sampler, steps, guidance: ${(e as Error).message}`);
  }
  if (!info.samplers.includes(choice.sampler)) {
    throw new RequestError(`sampler: expected one of ${info.samplers.join(', ')} for this ` +
      `model (${info.schedulerClass}), got ${choice.sampler}`, 'sampler',
    `one of ${info.samplers.join(', ')}`);
  }
  return {
    ...choice,
    n: v.n ?? Math.min(SAMPLE_OPTIONS.n.default!, limits.maxN),
    seed: v.seed ?? SAMPLE_OPTIONS.seed.default!,
    ...(v.class !== undefined ? { classes: v.class } : {}),
    ...(v.accel ? { accel: v.accel } : {}),
  };
}
