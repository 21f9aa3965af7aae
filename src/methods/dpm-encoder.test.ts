/**
 * DPM-Encoder / CycleDiffusion against a plain transcription of the official code
 * (ChenWu98/cycle-diffusion, model/gan_wrapper/ddpm_ddim_wrapper.py: sample_xt, sample_xt_next,
 * compute_eps, denoising_step_with_eps), on small float64 batches: the walk, the codes, exact
 * reconstruction, the residual, and the eps of an exact denoiser being standard normal.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { RngKey } from '../engine/random/philox.js';
import { GaussianMixture } from '../data/analytic/mixture.js';
import { seededRandom } from '../data/analytic/random.js';
import type { Batch, Denoiser, NoiseSource } from '../diffusion/denoiser.js';
import { alphasCumprod, makeBetas, type Process } from '../diffusion/process.js';
import {
  ddimInvert, ddimReconstruct, dpmDecode, dpmEncode, encoderTimesteps, encoderWalk, sdedit,
  walkSchedule, type DpmLatents,
} from './dpm-encoder.js';

/** DDPM's linear table, 1e-4 .. 0.02 over 1000 steps (the shipped MNIST U-Net's). */
const ACP = alphasCumprod(makeBetas({ numTrainTimesteps: 1000, betaStart: 1e-4, betaEnd: 0.02,
  betaSchedule: 'linear' }));
const T = ACP.length;
const abar = (t: number) => (t === -1 ? 1 : ACP[t]!);

/** A closed-form eps model: per row, eps = w(t) x + 0.2 roll(x) + b (linear, not the oracle). */
function linearEps(x: ArrayLike<number>, t: number, D: number): number[] {
  const w = 0.3 + (0.5 * t) / T;
  return Array.from(x, (v, i) => {
    const j = Math.floor(i / D) * D + ((i % D) + 1) % D;
    return w * v + 0.2 * x[j]! + 0.05 * Math.sin(i % D);
  });
}

const D = 5;
const linearDenoiser: Denoiser = {
  prediction: 'eps',
  predict: async (x: Batch, t: Float64Array) => {
    const per = x.data.length / x.shape[0]!;
    const out = new Float64Array(x.data.length);
    for (let b = 0; b < x.shape[0]!; b++) {
      out.set(linearEps(x.data.subarray(b * per, (b + 1) * per), t[b]!, D), b * per);
    }
    return { data: out, shape: x.shape };
  },
};

/** The same model predicting v = alpha eps - sigma x0 (exercises the conversions). */
const linearV: Denoiser = {
  prediction: 'v',
  predict: async (x: Batch, t: Float64Array) => {
    const e = (await linearDenoiser.predict(x, t)).data;
    const [al, si] = [Math.sqrt(abar(t[0]!)), Math.sqrt(1 - abar(t[0]!))];
    return { data: Float64Array.from(x.data, (v, i) => al * e[i]! - si * (v - si * e[i]!) / al),
      shape: x.shape };
  },
};

const keyNoise = (seed: number): NoiseSource => {
  const key = RngKey.fromSeed(seed);
  return (n, k) => key.fold(k + 1).normal(n);
};

function images(rows: number, seed = 1): Batch {
  const r = seededRandom(seed);
  return { data: Float64Array.from(r.uniform(rows * D), (u) => 2 * u - 1), shape: [rows, D] };
}

const maxAbs = (a: ArrayLike<number>, b: ArrayLike<number>) =>
  Array.from(a).reduce((m, v, i) => Math.max(m, Math.abs(v - b[i]!)), 0);

// ---- the official code, transcribed per value ----

/** seq_inv of DDPMDDIMWrapper.encode / generate, reversed: range(...) or floor(np.linspace). */
function officialWalk(t0: number, S: number): number[] {
  const seq: number[] = [];
  if ((t0 + 1) % S === 0) {
    for (let t = 0; t < t0 + 1; t += (t0 + 1) / S) seq.push(t);
  } else {
    const step = 1 / (S - 1); // numpy: arange(S) * step + 0, the last set to 1
    for (let i = 0; i < S; i++) seq.push(Math.floor((i === S - 1 ? 1 : i * step) * t0));
  }
  return seq.reverse();
}

/** sample_xt, then sample_xt_next + compute_eps per step ('ddim'), per row; x_T at the walk's
 *  first timestep (the fixed quirk) and, as ours, the last residual r. */
function officialEncode(x0: number[], S: number, t0: number, eta: number,
  noise: (k: number) => number[]): { z: number[][]; r: number[] } {
  const walk = officialWalk(t0, S);
  const a0 = abar(walk[0]!);
  const n0 = noise(-1);
  let x = x0.map((v, i) => Math.sqrt(a0) * v + Math.sqrt(1 - a0) * n0[i]!);
  const z = [x];
  for (let k = 0; k + 1 < walk.length; k++) {
    const [at, an] = [abar(walk[k]!), abar(walk[k + 1]!)];
    const et = x.map((v, i) => (v - Math.sqrt(at) * x0[i]!) / Math.sqrt(1 - at));
    const c1 = eta * Math.sqrt((1 - at / an) * (1 - an) / (1 - at));
    const c2 = Math.sqrt(1 - an - c1 ** 2);
    const n = noise(k);
    const next = x0.map((v, i) => Math.sqrt(an) * v + c2 * et[i]! + c1 * n[i]!);
    const e = linearEps(x, walk[k]!, D);
    const x0t = x.map((v, i) => (v - e[i]! * Math.sqrt(1 - at)) / Math.sqrt(at));
    z.push(next.map((v, i) => (v - Math.sqrt(an) * x0t[i]! - c2 * e[i]!) / c1));
    x = next;
  }
  const a = abar(0);
  const e = linearEps(x, 0, D);
  const r = x0.map((v, i) => (v - (x[i]! - e[i]! * Math.sqrt(1 - a)) / Math.sqrt(a)) /
    (Math.sqrt(1 - a) / Math.sqrt(a)));
  return { z, r };
}

/** denoising_step_with_eps over the code, then denoising_step's last step (c1 = 0: x0_t). */
function officialDecode(z: number[][], S: number, t0: number, eta: number): number[] {
  const walk = [...officialWalk(t0, S), -1];
  let x = z[0]!;
  for (let k = 0; k + 1 < walk.length; k++) {
    const [at, an] = [abar(walk[k]!), abar(walk[k + 1]!)];
    const e = linearEps(x, walk[k]!, D);
    const x0t = x.map((v, i) => (v - e[i]! * Math.sqrt(1 - at)) / Math.sqrt(at));
    const c1 = eta * Math.sqrt((1 - at / an) * (1 - an) / (1 - at));
    const c2 = Math.sqrt(1 - an - c1 ** 2);
    const eps = z[k + 1] ?? x.map(() => 0);
    x = x0t.map((v, i) => Math.sqrt(an) * v + c2 * e[i]! + c1 * eps[i]!);
  }
  return x;
}

/** Row b's entry k of a code (0: x_T, 1..K: eps). */
function codeRow(z: DpmLatents, b: number, k: number): number[] {
  const per = z.xT.length / z.shape[0]!;
  const K = z.eps.length / z.xT.length;
  return k === 0 ? Array.from(z.xT.subarray(b * per, (b + 1) * per))
    : Array.from(z.eps.subarray((b * K + k - 1) * per, (b * K + k) * per));
}

// ---- tests ----

describe('the walk', () => {
  it('matches the official formula (numpy values where linspace rounds)', () => {
    for (const [t0, S] of [[999, 1000], [999, 100], [599, 50], [999, 30], [500, 7], [999, 19],
      [999, 333], [0, 1], [10, 1]] as const) {
      assert.deepEqual(Array.from(encoderTimesteps(S, t0)), officialWalk(t0, S), `${t0}, ${S}`);
    }
    // np.linspace(0, 1, 19) * 999 floors 777 to 776 at i = 14: copied from numpy 2.4.
    assert.deepEqual(Array.from(encoderTimesteps(19, 999)), [999, 943, 888, 832, 776, 721, 666,
      610, 555, 499, 444, 388, 333, 277, 222, 166, 111, 55, 0]);
    assert.deepEqual(Array.from(encoderTimesteps(7, 500)), [500, 416, 333, 250, 166, 83, 0]);
    const w = encoderTimesteps(100, 999);
    assert.deepEqual([w[0], w[1], w[98], w[99], w.length], [990, 980, 10, 0, 100]);
    const w333 = Array.from(encoderTimesteps(333, 999)); // numpy: sum 166168
    assert.equal(w333.reduce((s, v) => s + v, 0), 166168);
    assert.equal(Array.from(encoderTimesteps(1000, 999)).join(),
      Array.from({ length: 1000 }, (_, i) => 999 - i).join());
  });

  it('has alpha-bar 1 after t_0, and schedules for DDIM with and without the last step', () => {
    const walk = encoderWalk(ACP, 4, 599);
    assert.deepEqual(Array.from(walk.timesteps), [450, 300, 150, 0]);
    assert.deepEqual(Array.from(walk.alphaBars), [ACP[450], ACP[300], ACP[150], ACP[0], 1]);
    const image = walkSchedule(walk, 'image');
    assert.equal(image.timesteps.length, 4);
    assert.equal(image.sigmas[4], 0);
    const inv = walkSchedule(walk, 'last-timestep');
    assert.equal(inv.timesteps.length, 3);
    assert.equal(inv.endTime, 0);
  });

  it('refuses steps beyond t0 + 1, t0 beyond T - 1, and alpha-bar 0', () => {
    assert.throws(() => encoderTimesteps(601, 599),
      /steps must be an integer from 1 to t0 \+ 1 = 600/);
    assert.throws(() => encoderTimesteps(0, 599), /steps must be/);
    assert.throws(() => encoderTimesteps(10, -1), /t0 must be an integer >= 0/);
    assert.throws(() => encoderWalk(ACP, 10, 1000), /t0 must be at most T - 1 = 999/);
    const zeroSnr = Float32Array.from(ACP);
    zeroSnr[999] = 0;
    assert.throws(() => encoderWalk(zeroSnr, 7, 999), /zero-terminal-SNR/);
  });
});

describe('dpmEncode / dpmDecode', () => {
  const settings = { steps: 20, t0: 999, eta: 0.3 };

  it('gives the official z (x_T at the walk\'s first timestep) and decodes like it', async () => {
    const x0 = images(3);
    const noise = keyNoise(5);
    const z = await dpmEncode(linearDenoiser, ACP, x0, { ...settings, noise });
    assert.equal(z.eps.length, 3 * 19 * D);
    for (let b = 0; b < 3; b++) {
      const row = (a: ArrayLike<number>) => Array.from(a).slice(b * D, (b + 1) * D);
      const ref = officialEncode(row(x0.data), settings.steps, settings.t0, settings.eta,
        (k) => row(noise(3 * D, k)));
      for (let k = 0; k < ref.z.length; k++) {
        const err = maxAbs(codeRow(z, b, k), ref.z[k]!);
        assert.ok(err < 1e-5, `row ${b}, entry ${k}: ${err}`);
      }
      assert.ok(maxAbs(row(z.residual!), ref.r) < 1e-4);
      // the official decoder on our z ends at x0_t; ours adds s r on top
      const official = officialDecode(ref.z.map((_, k) => codeRow(z, b, k)), settings.steps,
        settings.t0, settings.eta);
      const plain = await dpmDecode(linearDenoiser, ACP, z, { useResidual: false });
      assert.ok(maxAbs(row(plain.data), official) < 1e-9);
    }
  });

  it('rebuilds the images to float error, for eps and v models alike', async (t) => {
    for (const den of [linearDenoiser, linearV]) {
      for (const s of [settings, { steps: 100, t0: 999, eta: 0.1 },
        { steps: 7, t0: 500, eta: 1 }]) {
        const x0 = images(4, 2);
        const z = await dpmEncode(den, ACP, x0, { ...s, noise: keyNoise(9) });
        const back = await dpmDecode(den, ACP, z);
        const err = maxAbs(back.data, x0.data);
        t.diagnostic(`${den.prediction} ${JSON.stringify(s)}: max |decode(encode(x)) - x| = ` +
          err.toExponential(2));
        assert.ok(err < 1e-6, `${err}`);
      }
    }
  });

  it('without the residual, ends at the model\'s x0 estimate (the official code)', async () => {
    const x0 = images(2, 3);
    const noise = keyNoise(1);
    const withR = await dpmEncode(linearDenoiser, ACP, x0, { ...settings, noise });
    const without = await dpmEncode(linearDenoiser, ACP, x0, { ...settings, noise,
      residual: false });
    assert.equal(without.residual, null);
    assert.deepEqual(without.eps, withR.eps);
    assert.deepEqual(without.xT, withR.xT);
    const full = await dpmDecode(linearDenoiser, ACP, withR);
    const plain = await dpmDecode(linearDenoiser, ACP, without);
    const s = Math.sqrt(1 - ACP[0]!) / Math.sqrt(ACP[0]!);
    const expected = Array.from(full.data, (v, i) => v - s * withR.residual![i]!);
    assert.ok(maxAbs(plain.data, expected) < 1e-12);
    // exact only up to the last estimate: off by s r, about 1e-2, not 1e-6
    const err = maxAbs(plain.data, x0.data);
    assert.ok(err > 1e-3 && err < 0.1, `${err}`);
  });

  it('another model decodes the same code to another image (CycleDiffusion)', async () => {
    const x0 = images(2, 4);
    const z = await dpmEncode(linearDenoiser, ACP, x0, { ...settings, noise: keyNoise(2) });
    const other: Denoiser = { prediction: 'eps', predict: async (x, t) => {
      const e = await linearDenoiser.predict(x, t);
      return { data: e.data.map((v) => v + 0.1), shape: x.shape };
    } };
    const moved = await dpmDecode(other, ACP, z);
    assert.ok(maxAbs(moved.data, x0.data) > 0.05);
  });

  it('stores eps that are standard normal when the model is the exact denoiser', async (t) => {
    // One full-rank Gaussian in 3-D, whose E[x0 | x_t] is closed-form (data/analytic/mixture.ts)
    // on the linear table. Then x0 | x_t is Gaussian with a covariance C_t that does not depend
    // on x_t, and the stored eps = n + kappa (x0 - x0Hat) / c1, kappa = sqrt(abar_next) - c2
    // sqrt(abar_t / (1 - abar_t)), is exactly N(0, I + (kappa / c1)^2 C_t): standard normal
    // where kappa^2 / c1^2 -> 0, that is for small steps at high noise. The last few steps to
    // t = 0 do not shrink relative to the noise level, and there the variance grows (step
    // 998 of 1000 at eta 1: var 2.2; the last of 100 at eta 0.1: var ~1500).
    const gauss = GaussianMixture.full([1], [[0.5, -0.3, 0.2]],
      [[0.3, 0.1, 0, 0.1, 0.5, 0, 0, 0, 0.2]]);
    const lambdas = Array.from(gauss.components[0]!.variances);
    const table: Process = { kind: 'vp', tMin: 0, tMax: T - 1,
      at: (s) => ({ alpha: Math.sqrt(abar(s)), sigma: Math.sqrt(1 - abar(s)) }),
      derivative: () => { throw new Error('unused'); },
      timeAtLevel: () => { throw new Error('unused'); } };
    const rows = 2000;
    const x0 = { data: gauss.sample(rows, seededRandom(11)).x, shape: [rows, 3] };
    for (const s of [{ steps: 1000, t0: 999, eta: 1 }, { steps: 100, t0: 999, eta: 0.1 }]) {
      const z = await dpmEncode(gauss.denoiser(table, 'eps'), ACP, x0,
        { ...s, noise: keyNoise(3) });
      const walk = [...officialWalk(s.t0, s.steps), -1];
      const K = s.steps - 1;
      const stats = (get: (b: number, i: number) => number) => {
        let [m, m2] = [0, 0];
        for (let b = 0; b < rows; b++) {
          for (let i = 0; i < 3; i++) {
            const v = get(b, i);
            m += v;
            m2 += v * v;
          }
        }
        return { mean: m / (rows * 3), meanSquare: m2 / (rows * 3) };
      };
      let [worstMean, worstRatio, unit, unitWorst] = [0, 1, 0, 0];
      for (let k = 0; k < K; k++) {
        const [a, an] = [abar(walk[k]!), abar(walk[k + 1]!)];
        const c1 = s.eta * Math.sqrt((1 - a / an) * (1 - an) / (1 - a));
        const c2 = Math.sqrt(1 - an - c1 ** 2);
        const kappa = Math.sqrt(an) - c2 * Math.sqrt(a / (1 - a));
        const trC = lambdas.reduce((acc, l) => acc + (l * (1 - a)) / (a * l + 1 - a), 0);
        const predicted = 1 + ((kappa / c1) ** 2 * trC) / 3;
        const st = stats((b, i) => z.eps[(b * K + k) * 3 + i]!);
        worstMean = Math.max(worstMean, Math.abs(st.mean) / Math.sqrt(predicted));
        const ratio = st.meanSquare / predicted;
        if (Math.abs(ratio - 1) > Math.abs(worstRatio - 1)) worstRatio = ratio;
        if (predicted < 1.02) {
          unit++;
          unitWorst = Math.max(unitWorst, Math.abs(st.meanSquare - 1));
        }
      }
      const xT = stats((b, i) => z.xT[b * 3 + i]!);
      t.diagnostic(`${JSON.stringify(s)}: worst step |mean| / sd ${worstMean.toFixed(3)}, ` +
        `worst E[eps^2] / predicted ${worstRatio.toFixed(3)}; ${unit} of ${K} steps predicted ` +
        `within 2% of N(0, 1), measured within ${unitWorst.toFixed(3)}; x_T E[x^2] ` +
        `${xT.meanSquare.toFixed(3)}`);
      // 6,000 values a step: the standard error of a mean is 0.013 sd, of a mean square 0.018;
      // the worst of 1,000 steps lies near 3.3 standard errors.
      assert.ok(worstMean < 0.07, `mean ${worstMean}`);
      assert.ok(Math.abs(worstRatio - 1) < 0.09, `E[eps^2] / predicted ${worstRatio}`);
      assert.ok(unitWorst < 0.09, `${unitWorst}`);
      assert.ok(Math.abs(xT.meanSquare - 1) < 0.06);
      if (s.steps === 1000) assert.ok(unit > 0.9 * K, `${unit} of ${K}`);
    }
  });

  it('refuses eta outside (0, 1], codes that do not fit, flow models and wrong outputs',
    async () => {
      const x0 = images(2);
      const noise = keyNoise(0);
      for (const eta of [0, -0.1, 1.5, NaN]) {
        await assert.rejects(dpmEncode(linearDenoiser, ACP, x0, { ...settings, eta, noise }),
          /eta must be in \(0, 1\]/);
      }
      const z = await dpmEncode(linearDenoiser, ACP, x0, { ...settings, noise });
      await assert.rejects(dpmDecode(linearDenoiser, ACP, { ...z, settings: { ...z.settings,
        steps: 10 } }), /eps has 190 values; 10 steps from t0 = 999 need \[2, 9, 5\] = 90/);
      await assert.rejects(dpmDecode(linearDenoiser, ACP, { ...z, shape: [2, 4] }),
        /x_T: expected a batch/);
      await assert.rejects(dpmDecode(linearDenoiser, ACP, { ...z,
        residual: new Float32Array(3) }), /residual has 3 values/);
      await assert.rejects(dpmDecode(linearDenoiser, ACP.subarray(0, 500), z),
        /t0 must be at most T - 1 = 499/);
      await assert.rejects(dpmEncode({ ...linearDenoiser, prediction: 'flow' }, ACP, x0,
        { ...settings, noise }), /predicts 'flow'/);
      const short: Denoiser = { prediction: 'eps',
        predict: async (x) => ({ data: new Float64Array(D), shape: [1, D] }) };
      await assert.rejects(dpmDecode(short, ACP, z),
        /denoiser returned shape \[1, 5\] for input \[2, 5\]/);
    });
});

describe('DDIM inversion and SDEdit on the walk', () => {
  it('inversion round-trips, and SDEdit from t0 = 0 barely moves the image', async () => {
    const gauss = GaussianMixture.full([1], [[0, 0.2, -0.1, 0.3, 0]],
      [[0.2, 0, 0, 0, 0, 0, 0.3, 0, 0, 0, 0, 0, 0.25, 0, 0, 0, 0, 0, 0.2, 0, 0, 0, 0, 0, 0.3]]);
    const table: Process = { kind: 'vp', tMin: 0, tMax: T - 1,
      at: (s) => ({ alpha: Math.sqrt(abar(s)), sigma: Math.sqrt(1 - abar(s)) }),
      derivative: () => { throw new Error('unused'); },
      timeAtLevel: () => { throw new Error('unused'); } };
    const den = gauss.denoiser(table, 'eps');
    const x0 = { data: gauss.sample(64, seededRandom(2)).x, shape: [64, D] };
    const errors: number[] = [];
    for (const steps of [10, 100]) {
      const xT = await ddimInvert(den, ACP, x0, { steps });
      const back = await ddimReconstruct(den, ACP, xT, { steps });
      errors.push(maxAbs(back.data, x0.data));
    }
    // first order in the step (samplers/inversion.test.ts); its largest part is the last step
    assert.ok(errors[1]! < errors[0]! / 4 && errors[1]! < 0.15, `${errors}`);
    const edited = await sdedit(den, ACP, x0, { steps: 1, t0: 0, noise: keyNoise(4) });
    const moved = maxAbs(edited.data, x0.data);
    assert.ok(moved > 0 && moved < 0.05, `${moved}`);
    const far = await sdedit(den, ACP, x0, { steps: 20, t0: 999, noise: keyNoise(4) });
    assert.ok(maxAbs(far.data, x0.data) > 0.5);
  });
});
