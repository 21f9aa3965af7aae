/**
 * @file DPM-Encoder and CycleDiffusion: Wu & De la Torre 2023, "A Latent Space of Stochastic
 * Diffusion Models for Zero-Shot Image Editing and Guidance" (ICCV; arXiv 2210.05559, first
 * titled "Unifying Diffusion Models' Latent Space, with Applications to CycleDiffusion and
 * Guidance"), sec. 3 and Algorithm 1. Beside them, DDIM inversion (Song et al. 2021, sec. 4.3)
 * and SDEdit (Meng et al. 2022), which walk the same timesteps.
 *
 * Claim: the Gaussian draws a stochastic DDIM sampler (eta > 0) consumes, z = (x_T, eps_K, ...,
 * eps_1), are a latent code of its image. The DPM-Encoder samples z from its posterior given an
 * image x0: each x_{t-1} from the true DDIM posterior q(x_{t-1} | x_t, x0), then the eps that
 * makes the model's step land there. Decoding z with the same model rebuilds x0 (the paper says
 * exactly; see the residual below for the last step). Two models trained on different domains
 * with the same noise schedule share this latent space, so encoding with model A and decoding
 * with model B is zero-shot unpaired image-to-image translation (CycleDiffusion).
 *
 * | here             | paper / official code (ChenWu98/cycle-diffusion, ddpm_ddim_wrapper.py) |
 * | ---------------- | --------------------------------------------------------------------- |
 * | abar, abarNext   | alpha_t, alpha_{t-1} (cumulative): `at`, `at_next`                     |
 * | c1               | sigma_t(eta) = eta sqrt((1 - a_t / a_{t-1}) (1 - a_{t-1}) / (1 - a_t)) |
 * | c2               | sqrt(1 - a_{t-1} - c1^2), the weight of the eps direction              |
 * | ePost            | the posterior eps given x0: (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)       |
 * | x0Hat, eHat      | the model's estimates `x0_t`, `et`                                     |
 * | mu               | sqrt(a_{t-1}) x0Hat + c2 eHat, the model's step without noise          |
 * | walk             | reversed(seq_inv), each t going to the previous element, -1 after 0   |
 *
 * Encoding, per step t -> t_next (abar_next < 1):
 *   x_next = sqrt(abar_next) x0 + c2 ePost + c1 n,   n ~ N(0, I)  (DDIM eq. 7 with eta)
 *   eps = (x_next - mu(x_t)) / c1
 * Decoding: x_next = mu(x_t) + c1 eps.
 *
 * Differences from the official code, each on purpose:
 * - x_T is drawn at the walk's first timestep. The official `encode` draws it at timestep
 *   es_steps - 1, which is the walk's first timestep only for a stride-1 walk (its AFHQ
 *   configs: custom_steps 1000, es_steps 850, walk from 849); on a strided walk it is not
 *   (100 steps, stride 10: x_T at 99, first evaluated at 990, far less noisy than that).
 * - The last step (t_0 = 0 -> abar = 1) has c1 = 0, so no eps can carry the posterior there and
 *   the official decoder ends at the model's x0Hat(x_{t_0}): the rebuilt image is exact only
 *   up to that last estimate (the shipped MNIST U-Net, 100 steps: max abs error 4e-2, mean
 *   squared 8e-5, on images in [-1, 1]; with the residual 2e-9). By default z also holds
 *   r = (x0 - x0Hat) / s with s = sqrt(1 - abar_0) / sqrt(abar_0), the noise scale of that
 *   estimate (so r is O(1), like the eps), and decoding adds s r back: the rebuilt image then
 *   matches to float error. `residual: false` gives the official behaviour.
 * - The encoder continues from x_next as the decoder will rebuild it, mu + c1 eps with eps
 *   rounded to float32 as stored, not from the float64 posterior draw (they differ by about
 *   1e-8): decoding with the same model then retraces the encoder's states exactly.
 * - The official es_steps (keep the first es_steps timesteps of the walk) is t0 here: for a
 *   stride-1 walk, es_steps E is t0 = E - 1 with steps = E (the AFHQ configs: t0 849, 850
 *   steps). Not supported: the DDPM-variance variant (sample_type 'ddpm').
 *
 * How normal z is: with the exact denoiser of a Gaussian (dpm-encoder.test.ts) the stored eps
 * of a step is N(0, I + (kappa / c1)^2 Cov(x0 | x_t)), kappa = sqrt(abar_next) - c2
 * sqrt(abar_t / (1 - abar_t)), which tends to N(0, I) only for steps small against the noise
 * level. The last steps to t = 0 are not: their eps have variance 2.2 (step 998 of 1000, eta 1)
 * up to ~1500 (the last of 100, eta 0.1). Decoding does not care; priors on z should.
 *
 * Layout of z: `xT` [B, ...], `eps` [B, K, ...] (eps[:, k] is the draw of walk step k, from the
 * noisiest), `residual` [B, ...] or null. Concatenated along axis 1 they are the paper's z per
 * image, [B, K + 2, C, H, W] (K + 1 without the residual; K = steps - 1).
 *
 * Timesteps as the official code: with `steps` S and start t0, seq = range(0, t0 + 1,
 * (t0 + 1) / S) when S divides t0 + 1, else floor(linspace(0, 1, S) * t0); the walk is seq
 * reversed. The model time handed to the denoiser is the training step index t.
 */
import { throwIfAborted, evaluate, type Batch, type Denoiser, type NoiseSource } from
  '../diffusion/denoiser.js';
import { numpyLinspace } from '../diffusion/diffusers/numerics.js';
import { toEps, toX0 } from '../diffusion/predictions.js';
import { invertDdim, sampleDdim } from '../diffusion/samplers/ddim.js';
import { makeSchedule, type Schedule } from '../diffusion/schedule.js';

// ---- the walk ----

/**
 * The timesteps t_K > ... > t_0 = 0 the official code walks for `steps` steps from `t0`
 * (seq reversed; see the header). Throws unless 1 <= steps <= t0 + 1 (each step needs a
 * timestep of its own).
 */
export function encoderTimesteps(steps: number, t0: number): Int32Array {
  if (!Number.isInteger(t0) || t0 < 0) {
    throw new RangeError(`DPM-Encoder: t0 must be an integer >= 0, got ${t0}`);
  }
  if (!Number.isInteger(steps) || steps < 1 || steps > t0 + 1) {
    throw new RangeError(`DPM-Encoder: steps must be an integer from 1 to t0 + 1 = ${t0 + 1} ` +
      `(one timestep per step), got ${steps}`);
  }
  const seq = (t0 + 1) % steps === 0
    ? Array.from({ length: steps }, (_, i) => (i * (t0 + 1)) / steps)
    : Array.from(numpyLinspace(0, 1, steps), (v) => Math.floor(v * t0));
  return Int32Array.from(seq.reverse());
}

/** The walk on a model's noise schedule: its timesteps and alpha-bar at each point. */
export interface EncoderWalk {
  /** [K + 1] training steps t_K .. t_0 = 0, descending. */
  readonly timesteps: Int32Array;
  /** [K + 2] alphas_cumprod at each timestep, then 1 (the official "t = -1", the image). */
  readonly alphaBars: Float64Array;
}

/** The walk of `steps` steps from `t0` (default T - 1) on a DDPM alphas_cumprod table [T]. */
export function encoderWalk(alphasCumprod: ArrayLike<number>, steps: number,
  t0: number = alphasCumprod.length - 1): EncoderWalk {
  const T = alphasCumprod.length;
  if (Number.isInteger(t0) && t0 > T - 1) {
    throw new RangeError(`DPM-Encoder: t0 must be at most T - 1 = ${T - 1} (the model's last ` +
      `training step), got ${t0}`);
  }
  const timesteps = encoderTimesteps(steps, t0);
  const alphaBars = new Float64Array(timesteps.length + 1);
  timesteps.forEach((t, i) => (alphaBars[i] = alphasCumprod[t]!));
  alphaBars[timesteps.length] = 1;
  if (!(alphaBars[0]! > 0) || alphaBars.some((a) => !(a <= 1))) {
    throw new RangeError(`DPM-Encoder: alphas_cumprod must lie in (0, 1] on the walk; it is ` +
      `${alphaBars[0]} at t = ${t0} (a zero-terminal-SNR schedule: start below T - 1 with t0)`);
  }
  return { timesteps, alphaBars };
}

/**
 * The walk as a Schedule for the DDIM sampler and its inversion. `end: 'image'` keeps the last
 * step to abar = 1 (K + 1 steps: sampling ends at a clean image; SDEdit); `end: 'last-timestep'`
 * stops at t_0 (K steps, endTime t_0: where invertDdim starts from an image taken as x_{t_0},
 * as the DDIM paper and diffusers' DDIMInverseScheduler do).
 */
export function walkSchedule(walk: EncoderWalk, end: 'image' | 'last-timestep'): Schedule {
  const K = walk.timesteps.length - 1;
  const points = end === 'image' ? K + 2 : K + 1;
  const alphaBars = walk.alphaBars.slice(0, points);
  const alphas = alphaBars.map(Math.sqrt);
  const sigmas = alphaBars.map((a) => Math.sqrt(1 - a));
  return makeSchedule({
    process: 'vp',
    timesteps: Float64Array.from(walk.timesteps.subarray(0, points - 1)),
    alphas, sigmas, alphaBars,
    levels: alphas.map((a, i) => sigmas[i]! / a),
    ...(end === 'last-timestep' ? { endTime: walk.timesteps[K]! } : {}),
  });
}

// ---- shared step maths ----

/** DDIM eq. 12's weights for a step from alpha-bar `a` to `aNext`: the noise scale c1 and the
 *  eps direction's c2 (clamped at 0 against round-off at eta = 1). */
export function ddimWeights(a: number, aNext: number, eta: number): { c1: number; c2: number } {
  const c1 = eta * Math.sqrt((1 - a / aNext) * (1 - aNext) / (1 - a));
  return { c1, c2: Math.sqrt(Math.max(0, 1 - aNext - c1 * c1)) };
}

/** The model's x0 and eps estimates at x (float64) and alpha-bar `a`. */
async function estimates(denoiser: Denoiser, x: Float64Array, shape: readonly number[],
  t: number, a: number, condition: unknown): Promise<{ x0: Float64Array; eps: Float64Array }> {
  const p = await evaluate(denoiser, { data: x, shape }, t, condition);
  const [alpha, sigma] = [Math.sqrt(a), Math.sqrt(1 - a)];
  return { x0: toX0(denoiser.prediction, x, p, alpha, sigma) as Float64Array,
    eps: toEps(denoiser.prediction, x, p, alpha, sigma) as Float64Array };
}

/** Scale of the last estimate's error: x0Hat(x_{t_0}) - x0 ~ s * (eps error). */
const residualScale = (a: number): number => Math.sqrt(1 - a) / Math.sqrt(a);

function requireVp(denoiser: Denoiser, what: string): void {
  if (denoiser.prediction === 'flow') {
    throw new TypeError(`${what}: needs a DDPM-family (VP) model predicting eps, x0 or v; this ` +
      `denoiser predicts 'flow' (a rectified-flow model)`);
  }
}

/** Rows and values per row of a batch [B, ...] (at least 2 axes). */
function rowsOf(shape: readonly number[], length: number, what: string): [number, number] {
  const rows = shape[0] ?? 0;
  const per = shape.slice(1).reduce((m, d) => m * d, 1);
  if (shape.length < 2 || rows < 1 || rows * per !== length) {
    throw new RangeError(`${what}: expected a batch [B, ...] with B >= 1 matching its ` +
      `${length} values, got shape [${shape.join(', ')}]`);
  }
  return [rows, per];
}

// ---- DPM-Encoder ----

/** What a code was made with; decoding walks the same timesteps with the same eta. */
export interface DpmEncoderSettings {
  readonly steps: number;
  readonly t0: number;
  /** DDIM's eta in (0, 1] (the official configs use 0.1). */
  readonly eta: number;
}

/** A batch of codes z (layout in the header). */
export interface DpmLatents {
  readonly settings: DpmEncoderSettings;
  /** Shape of the encoded batch, [B, ...] (the shape of x0). */
  readonly shape: readonly number[];
  /** [B, ...] */
  readonly xT: Float32Array;
  /** [B, K, ...], K = steps - 1. */
  readonly eps: Float32Array;
  /** [B, ...], or null when encoded without it (the official z). */
  readonly residual: Float32Array | null;
}

export interface DpmRunOptions {
  /** Class labels or another condition, passed to every model call unchanged. */
  condition?: unknown;
  /** After each model call: calls done and the run's total (steps). */
  onStep?: (done: number, total: number) => void;
  signal?: AbortSignal;
}

export interface DpmEncodeOptions extends DpmEncoderSettings, DpmRunOptions {
  /** Store the last step's residual (default true; false: the official z, decoded to x0Hat). */
  residual?: boolean;
  /** Step -1 draws x_T's noise, step k the posterior draw of walk step k. */
  noise: NoiseSource;
}

function checkEta(eta: number, what: string): void {
  if (!(eta > 0 && eta <= 1)) {
    throw new RangeError(`${what}: eta must be in (0, 1] (the stochastic encoder needs noise; ` +
      `eta = 0 is DDIM inversion, ddimInvert), got ${eta}`);
  }
}

function draw(noise: NoiseSource, n: number, step: number): Float32Array {
  const z = noise(n, step);
  if (z.length !== n) throw new RangeError(`noise source gave ${z.length} values, expected ${n}`);
  return z;
}

/**
 * Encodes images x0 [B, ...] (in the model's data range, [-1, 1] for images) into codes z with
 * a DDPM-family denoiser on its alphas_cumprod table (DPM-Encoder, Algorithm 1). One model call
 * per step on the whole batch; noise from `o.noise`.
 */
export async function dpmEncode(denoiser: Denoiser, alphasCumprod: ArrayLike<number>,
  x0: Batch, o: DpmEncodeOptions): Promise<DpmLatents> {
  requireVp(denoiser, 'dpmEncode');
  checkEta(o.eta, 'dpmEncode');
  const walk = encoderWalk(alphasCumprod, o.steps, o.t0);
  const [rows, per] = rowsOf(x0.shape, x0.data.length, 'dpmEncode x0');
  const n = rows * per;
  const K = walk.timesteps.length - 1;
  const image = Float64Array.from(x0.data);
  const ab = walk.alphaBars;
  const start = draw(o.noise, n, -1);
  let x = image.map((v, i) => Math.sqrt(ab[0]!) * v + Math.sqrt(1 - ab[0]!) * start[i]!);
  const xT = Float32Array.from(x);
  x = Float64Array.from(xT); // the decoder starts from the stored float32 x_T
  const eps = new Float32Array(n * K);
  for (let k = 0; k < K; k++) {
    throwIfAborted(o.signal);
    const [a, aNext] = [ab[k]!, ab[k + 1]!];
    const { c1, c2 } = ddimWeights(a, aNext, o.eta);
    const est = await estimates(denoiser, x, x0.shape, walk.timesteps[k]!, a, o.condition);
    const z = draw(o.noise, n, k);
    for (let i = 0; i < n; i++) {
      const ePost = (x[i]! - Math.sqrt(a) * image[i]!) / Math.sqrt(1 - a);
      const next = Math.sqrt(aNext) * image[i]! + c2 * ePost + c1 * z[i]!;
      const mu = Math.sqrt(aNext) * est.x0[i]! + c2 * est.eps[i]!;
      const e = Math.fround((next - mu) / c1);
      eps[(Math.floor(i / per) * K + k) * per + (i % per)] = e;
      x[i] = mu + c1 * e; // as the decoder will rebuild it (header)
    }
    o.onStep?.(k + 1, K + 1);
  }
  let residual: Float32Array | null = null;
  if (o.residual ?? true) {
    const a = ab[K]!;
    const est = await estimates(denoiser, x, x0.shape, walk.timesteps[K]!, a, o.condition);
    const s = residualScale(a);
    residual = Float32Array.from(est.x0, (v, i) => (image[i]! - v) / s);
  }
  o.onStep?.(K + 1, K + 1);
  return { settings: { steps: o.steps, t0: o.t0, eta: o.eta }, shape: x0.shape,
    xT, eps, residual };
}

/** Checks a code's arrays against its own settings and shape. */
export function checkLatents(z: DpmLatents, alphasCumprod: ArrayLike<number>): EncoderWalk {
  checkEta(z.settings.eta, 'DPM-Encoder code');
  const walk = encoderWalk(alphasCumprod, z.settings.steps, z.settings.t0);
  const [rows, per] = rowsOf(z.shape, z.xT.length, 'DPM-Encoder code x_T');
  const K = walk.timesteps.length - 1;
  if (z.eps.length !== rows * K * per) {
    throw new RangeError(`DPM-Encoder code: eps has ${z.eps.length} values; ${z.settings.steps} ` +
      `steps from t0 = ${z.settings.t0} need [${rows}, ${K}, ${z.shape.slice(1).join(', ')}] = ` +
      `${rows * K * per}`);
  }
  if (z.residual && z.residual.length !== rows * per) {
    throw new RangeError(`DPM-Encoder code: residual has ${z.residual.length} values, x_T ` +
      `${rows * per}`);
  }
  return walk;
}

/**
 * Decodes codes z with a DDPM-family denoiser (the same model rebuilds the encoded images;
 * another model with the same noise schedule translates them: CycleDiffusion). Returns x0
 * [B, ...] in float64, not clamped. `useResidual: false` ignores a stored residual (ends at the
 * model's x0 estimate, as the official code).
 */
export async function dpmDecode(denoiser: Denoiser, alphasCumprod: ArrayLike<number>,
  z: DpmLatents, o: DpmRunOptions & { useResidual?: boolean } = {}): Promise<Batch> {
  requireVp(denoiser, 'dpmDecode');
  const walk = checkLatents(z, alphasCumprod);
  const [rows, per] = rowsOf(z.shape, z.xT.length, 'dpmDecode');
  const n = rows * per;
  const K = walk.timesteps.length - 1;
  const ab = walk.alphaBars;
  const x = Float64Array.from(z.xT);
  for (let k = 0; k < K; k++) {
    throwIfAborted(o.signal);
    const [a, aNext] = [ab[k]!, ab[k + 1]!];
    const { c1, c2 } = ddimWeights(a, aNext, z.settings.eta);
    const est = await estimates(denoiser, x, z.shape, walk.timesteps[k]!, a, o.condition);
    for (let i = 0; i < n; i++) {
      const e = z.eps[(Math.floor(i / per) * K + k) * per + (i % per)]!;
      x[i] = Math.sqrt(aNext) * est.x0[i]! + c2 * est.eps[i]! + c1 * e;
    }
    o.onStep?.(k + 1, K + 1);
  }
  const a = ab[K]!;
  const { x0 } = await estimates(denoiser, x, z.shape, walk.timesteps[K]!, a, o.condition);
  if (z.residual && (o.useResidual ?? true)) {
    const s = residualScale(a);
    for (let i = 0; i < n; i++) x0[i] = x0[i]! + s * z.residual[i]!;
  }
  o.onStep?.(K + 1, K + 1);
  return { data: x0, shape: z.shape };
}

// ---- DDIM inversion and SDEdit on the same walk ----

export interface WalkOptions extends DpmRunOptions {
  steps: number;
  /** Start timestep (default T - 1). */
  t0?: number;
}

/** The sampler options of a walk run: condition, abort signal and progress. */
function samplerOptions(o: DpmRunOptions) {
  return {
    ...(o.condition !== undefined ? { condition: o.condition } : {}),
    ...(o.signal ? { signal: o.signal } : {}),
    ...(o.onStep ? { onStep: (r: { index: number; total: number }) =>
      o.onStep!(r.index + 1, r.total) } : {}),
  };
}

/**
 * Deterministic DDIM inversion (eta = 0) of images x0 to x_T along the walk: the image is taken
 * as x_{t_0}, so there are steps - 1 model calls. Not exact: reconstruction carries the
 * inversion's first-order error.
 */
export async function ddimInvert(denoiser: Denoiser, alphasCumprod: ArrayLike<number>,
  x0: Batch, o: WalkOptions): Promise<Batch> {
  requireVp(denoiser, 'ddimInvert');
  const walk = encoderWalk(alphasCumprod, o.steps, o.t0);
  return invertDdim(denoiser, x0, walkSchedule(walk, 'last-timestep'), samplerOptions(o));
}

/** DDIM (eta = 0) from x_T back to x_{t_0} along the same walk: ddimInvert's inverse. */
export async function ddimReconstruct(denoiser: Denoiser, alphasCumprod: ArrayLike<number>,
  xT: Batch, o: WalkOptions): Promise<Batch> {
  requireVp(denoiser, 'ddimReconstruct');
  const walk = encoderWalk(alphasCumprod, o.steps, o.t0);
  return sampleDdim(denoiser, xT, walkSchedule(walk, 'last-timestep'),
    { ...samplerOptions(o), eta: 0 });
}

/** SDEdit's start timestep for strength s in (0, 1] on a table of T steps: round(s T) - 1, at
 *  least 0 (s = 1: T - 1, pure noise on the usual tables). */
export function strengthTimestep(strength: number, T: number): number {
  if (!(strength > 0 && strength <= 1)) {
    throw new RangeError(`SDEdit: strength must be in (0, 1], got ${strength}`);
  }
  return Math.max(0, Math.round(strength * T) - 1);
}

/**
 * SDEdit (Meng et al. 2022, "SDEdit: Guided Image Synthesis and Editing with Stochastic
 * Differential Equations", sec. 3): noise x0 to the walk's first timestep t0, x = sqrt(abar)
 * x0 + sqrt(1 - abar) n with n = noise(-1), then sample back with DDIM (eta = 0) to an image.
 * A smaller t0 keeps more of the input.
 */
export async function sdedit(denoiser: Denoiser, alphasCumprod: ArrayLike<number>, x0: Batch,
  o: WalkOptions & { noise: NoiseSource }): Promise<Batch> {
  requireVp(denoiser, 'sdedit');
  const walk = encoderWalk(alphasCumprod, o.steps, o.t0);
  const [rows, per] = rowsOf(x0.shape, x0.data.length, 'sdedit x0');
  const a = walk.alphaBars[0]!;
  const n = draw(o.noise, rows * per, -1);
  const x = Float64Array.from(x0.data, (v, i) => Math.sqrt(a) * v + Math.sqrt(1 - a) * n[i]!);
  return sampleDdim(denoiser, { data: x, shape: x0.shape }, walkSchedule(walk, 'image'),
    { ...samplerOptions(o), eta: 0 });
}
