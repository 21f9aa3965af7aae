/**
 * @file diffusers `scheduler_config.json`, parsed once at the boundary (docs/architecture.md, convention 10): keys keep
 * diffusers' snake_case names and defaults (v0.31); unknown keys warn; bad or unsupported
 * values throw a ConfigError naming the key, the value and the allowed set.
 */

export type SchedulerClass =
  | 'DDPMScheduler'
  | 'DDIMScheduler'
  | 'EulerDiscreteScheduler'
  | 'EulerAncestralDiscreteScheduler'
  | 'HeunDiscreteScheduler'
  | 'DPMSolverMultistepScheduler'
  | 'UniPCMultistepScheduler'
  | 'FlowMatchEulerDiscreteScheduler'
  | 'FlowMatchHeunDiscreteScheduler';

export class ConfigError extends Error {
  constructor(
    readonly key: string,
    readonly value: unknown,
    readonly expected: string,
    readonly scheduler?: string,
  ) {
    super(
      `${scheduler ? `${scheduler}: ` : ''}config key '${key}' = ${JSON.stringify(value)}: ` +
        `expected ${expected}`,
    );
    this.name = 'ConfigError';
  }
}

type Value = number | boolean | string | null | readonly number[];

/** A key's default and check: the check returns the parsed value or throws via `bad`. */
interface KeySpec {
  default: Value;
  parse(v: unknown, bad: (expected: string) => never): Value;
}

/** Largest train-time table a config may ask for: diffusers' models use 1000 (some 4000); a
 *  typo such as 1e9 would otherwise allocate gigabytes of schedule before failing. */
export const MAX_TRAIN_TIMESTEPS = 100_000;

interface NumOpts {
  int?: boolean;
  /** Interval notation, e.g. '(0, 1)' or '[1, 100000]'; 'inf' for an open end. */
  range?: string;
  min?: number;
  nullable?: boolean;
}

/** [lo, hi, lo included, hi included] of an interval such as '(0, 1]'. */
function interval(range: string): [number, number, boolean, boolean] {
  const m = /^([[(])\s*(-?[\d.e+-]+|-inf)\s*,\s*(-?[\d.e+-]+|inf)\s*([\])])$/.exec(range);
  if (!m) throw new Error(`bad interval ${range}`);
  const val = (t: string) => (t === 'inf' ? Infinity : t === '-inf' ? -Infinity : Number(t));
  return [val(m[2]!), val(m[3]!), m[1] === '[', m[4] === ']'];
}

const num = (d: number | null, opts: NumOpts = {}): KeySpec => {
  const [lo, hi, loIn, hiIn] = opts.range
    ? interval(opts.range)
    : [opts.min ?? -Infinity, Infinity, true, false];
  const what =
    (opts.int ? 'an integer' : 'a number') +
    (opts.range ? ` in ${opts.range}` : opts.min !== undefined ? ` >= ${opts.min}` : '') +
    (opts.nullable ? ' or null' : '');
  return {
    default: d,
    parse: (v, bad) => {
      if (v === null && opts.nullable) return null;
      const x = v === 'inf' ? Infinity : v === '-inf' ? -Infinity : v;
      if (typeof x !== 'number' || Number.isNaN(x)) return bad(what);
      if (opts.int && !Number.isInteger(x)) return bad(what);
      if (x < lo || x > hi || (x === lo && !loIn) || (x === hi && !hiIn)) return bad(what);
      return x;
    },
  };
};

const bool = (d: boolean): KeySpec => ({
  default: d,
  parse: (v, bad) => (typeof v === 'boolean' ? v : bad('true or false')),
});

/** One of `allowed`; `unsupported` values are diffusers-valid but not implemented here. */
const oneOf = (
  d: string | null,
  allowed: readonly (string | null)[],
  unsupported: readonly string[] = [],
): KeySpec => ({
  default: d,
  parse: (v, bad) => {
    if (allowed.includes(v as string | null)) return v as string | null;
    const list = allowed.map((a) => JSON.stringify(a)).join(' | ');
    if (unsupported.includes(v as string))
      return bad(`${list} (${JSON.stringify(v)} is not implemented)`);
    return bad(`one of ${list}`);
  },
});

/** A flag whose `true` is a diffusers option this port does not implement. */
const off = (name: string): KeySpec => ({
  default: false,
  parse: (v, bad) =>
    v === false || v === null ? false : bad(`false (${name} is not implemented)`),
});

/** A beta table: every beta a probability in (0, 1] (1 only where zero terminal SNR puts it). */
const betaTable: KeySpec = {
  default: null,
  parse: (v, bad) =>
    v === null
      ? null
      : Array.isArray(v) &&
          v.length >= 1 &&
          v.length <= MAX_TRAIN_TIMESTEPS &&
          v.every((x) => typeof x === 'number' && x > 0 && x <= 1)
        ? (v as number[])
        : bad(`null or an array of 1..${MAX_TRAIN_TIMESTEPS} betas in (0, 1]`),
};

const ints: KeySpec = {
  default: [],
  parse: (v, bad) =>
    Array.isArray(v) && v.every((x) => Number.isInteger(x))
      ? (v as number[])
      : bad('an array of integers'),
};

const trainTimesteps = num(1000, { int: true, range: `[1, ${MAX_TRAIN_TIMESTEPS}]` });

const SPACING = ['linspace', 'leading', 'trailing'] as const;
const PRED = ['epsilon', 'sample', 'v_prediction'] as const;
const BETAS = ['linear', 'scaled_linear', 'squaredcos_cap_v2'] as const;

const base = (betaStart: number, betaEnd: number, spacing: string): Record<string, KeySpec> => ({
  num_train_timesteps: trainTimesteps,
  beta_start: num(betaStart, { range: '(0, 1)' }),
  beta_end: num(betaEnd, { range: '(0, 1)' }),
  beta_schedule: oneOf('linear', BETAS, ['sigmoid', 'exp']),
  trained_betas: betaTable,
  prediction_type: oneOf('epsilon', PRED),
  timestep_spacing: oneOf(spacing, SPACING),
  steps_offset: num(0, { int: true, range: `[0, ${MAX_TRAIN_TIMESTEPS})` }),
});

const x0Keys: Record<string, KeySpec> = {
  thresholding: bool(false),
  dynamic_thresholding_ratio: num(0.995, { range: '(0, 1]' }),
  sample_max_value: num(1.0, { range: '(0, inf)' }),
};

const sigmaKeys: Record<string, KeySpec> = {
  use_karras_sigmas: bool(false),
  use_exponential_sigmas: off('use_exponential_sigmas'),
  use_beta_sigmas: off('use_beta_sigmas'),
};

/** Every key each class accepts, with diffusers v0.31's defaults. */
export const SCHEMAS: Record<SchedulerClass, Record<string, KeySpec>> = {
  DDPMScheduler: {
    ...base(0.0001, 0.02, 'leading'),
    ...x0Keys,
    variance_type: oneOf(
      'fixed_small',
      ['fixed_small', 'fixed_large'],
      ['fixed_small_log', 'fixed_large_log', 'learned', 'learned_range'],
    ),
    clip_sample: bool(true),
    clip_sample_range: num(1.0, { range: '(0, inf)' }),
    rescale_betas_zero_snr: bool(false),
  },
  DDIMScheduler: {
    ...base(0.0001, 0.02, 'leading'),
    ...x0Keys,
    clip_sample: bool(true),
    set_alpha_to_one: bool(true),
    clip_sample_range: num(1.0, { range: '(0, inf)' }),
    rescale_betas_zero_snr: bool(false),
  },
  EulerDiscreteScheduler: {
    ...base(0.0001, 0.02, 'linspace'),
    ...sigmaKeys,
    interpolation_type: oneOf('linear', ['linear'], ['log_linear']),
    sigma_min: num(null, { nullable: true, min: 0 }),
    sigma_max: num(null, { nullable: true, min: 0 }),
    timestep_type: oneOf('discrete', ['discrete'], ['continuous']),
    rescale_betas_zero_snr: bool(false),
    final_sigmas_type: oneOf('zero', ['zero', 'sigma_min']),
  },
  EulerAncestralDiscreteScheduler: {
    ...base(0.0001, 0.02, 'linspace'),
    rescale_betas_zero_snr: bool(false),
  },
  HeunDiscreteScheduler: {
    ...base(0.00085, 0.012, 'linspace'),
    ...sigmaKeys,
    clip_sample: bool(false),
    clip_sample_range: num(1.0, { range: '(0, inf)' }),
  },
  DPMSolverMultistepScheduler: {
    ...base(0.0001, 0.02, 'linspace'),
    ...x0Keys,
    ...sigmaKeys,
    solver_order: num(2, { int: true, range: '[1, 3]' }),
    algorithm_type: oneOf(
      'dpmsolver++',
      ['dpmsolver++'],
      ['dpmsolver', 'sde-dpmsolver', 'sde-dpmsolver++', 'deis'],
    ),
    solver_type: oneOf('midpoint', ['midpoint', 'heun']),
    lower_order_final: bool(true),
    euler_at_final: bool(false),
    use_lu_lambdas: off('use_lu_lambdas'),
    final_sigmas_type: oneOf('zero', ['zero', 'sigma_min']),
    lambda_min_clipped: num(-Infinity),
    variance_type: oneOf(null, [null], ['learned', 'learned_range']),
    rescale_betas_zero_snr: bool(false),
  },
  UniPCMultistepScheduler: {
    ...base(0.0001, 0.02, 'linspace'),
    ...x0Keys,
    ...sigmaKeys,
    solver_order: num(2, { int: true, range: '[1, 10]' }),
    predict_x0: {
      default: true,
      parse: (v, bad) => (v === true ? true : bad('true (predict_x0 = false is not implemented)')),
    },
    solver_type: oneOf('bh2', ['bh1', 'bh2']),
    lower_order_final: bool(true),
    disable_corrector: ints,
    solver_p: oneOf(null, [null]),
    final_sigmas_type: oneOf('zero', ['zero', 'sigma_min']),
    rescale_betas_zero_snr: bool(false),
  },
  FlowMatchEulerDiscreteScheduler: {
    num_train_timesteps: trainTimesteps,
    shift: num(1.0, { range: '(0, inf)' }),
    use_dynamic_shifting: bool(false),
    base_shift: num(0.5, { nullable: true }),
    max_shift: num(1.15, { nullable: true }),
    base_image_seq_len: num(256, { int: true, range: '[1, inf)', nullable: true }),
    max_image_seq_len: num(4096, { int: true, range: '[1, inf)', nullable: true }),
  },
  FlowMatchHeunDiscreteScheduler: {
    num_train_timesteps: trainTimesteps,
    shift: num(1.0, { range: '(0, inf)' }),
  },
};

export const SCHEDULER_CLASSES = Object.keys(SCHEMAS) as SchedulerClass[];

/** A parsed config: the class and every key of its schema (snake_case, diffusers' names). */
export interface SchedulerConfig {
  readonly _class_name: SchedulerClass;
  readonly [key: string]: Value;
}

export interface ParseOptions {
  /** Which class, when the JSON has no `_class_name` (or to override it). */
  className?: SchedulerClass;
  /** Called for each unknown key; default console.warn. */
  warn?: (message: string) => void;
}

/** Parses and validates a scheduler config object (the contents of scheduler_config.json). */
export function parseSchedulerConfig(
  json: Record<string, unknown>,
  opts: ParseOptions = {},
): SchedulerConfig {
  const cls = opts.className ?? json['_class_name'];
  if (typeof cls !== 'string' || !(cls in SCHEMAS)) {
    throw new ConfigError('_class_name', cls, `one of ${SCHEDULER_CLASSES.join(' | ')}`);
  }
  const name = cls as SchedulerClass;
  const schema = SCHEMAS[name];
  const warn = opts.warn ?? ((m: string) => console.warn(m));
  const out: Record<string, Value> = { _class_name: name };
  for (const [key, spec] of Object.entries(schema)) {
    const bad = (expected: string): never => {
      throw new ConfigError(key, json[key], expected, name);
    };
    out[key] = key in json && json[key] !== undefined ? spec.parse(json[key], bad) : spec.default;
  }
  for (const key of Object.keys(json)) {
    if (!key.startsWith('_') && !(key in schema))
      warn(`${name}: unknown config key '${key}' ignored`);
  }
  return Object.freeze(out) as SchedulerConfig;
}

/** The JSON diffusers writes for a config (`save_config`), with infinities as strings. */
export function configToJson(
  config: SchedulerConfig,
  diffusersVersion = '0.31.0',
): Record<string, unknown> {
  const out: Record<string, unknown> = {
    _class_name: config._class_name,
    _diffusers_version: diffusersVersion,
  };
  for (const [k, v] of Object.entries(config)) {
    if (k.startsWith('_')) continue;
    out[k] = v === Infinity ? 'inf' : v === -Infinity ? '-inf' : v;
  }
  return out;
}

/** Typed read of a key (the schema guarantees the type). */
export function cfgNum(c: SchedulerConfig, key: string): number {
  return c[key] as number;
}
export function cfgBool(c: SchedulerConfig, key: string): boolean {
  return c[key] as boolean;
}
export function cfgStr(c: SchedulerConfig, key: string): string {
  return c[key] as string;
}
