/** Prediction conversions: every pair round-trips; score and PF-ODE drift agree. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  convertPrediction,
  epsFromScore,
  fromX0Eps,
  pfOdeDrift,
  PREDICTIONS,
  scoreFromEps,
  toEps,
  toX0,
  toX0Scaled,
} from './predictions.js';
import { cosineVp } from './process.js';

const x0 = Float64Array.of(0.3, -1.2, 2.0);
const eps = Float64Array.of(-0.7, 0.4, 1.1);
const close = (a: ArrayLike<number>, b: ArrayLike<number>, tol = 1e-12): void => {
  for (let i = 0; i < a.length; i++)
    assert.ok(Math.abs(a[i]! - b[i]!) <= tol, `${a[i]} vs ${b[i]}`);
};

describe('predictions', () => {
  for (const [alpha, sigma] of [
    [0.8, 0.6],
    [1, 2.5],
    [0.3, 0.7],
  ]) {
    const x = x0.map((v, i) => alpha! * v + sigma! * eps[i]!);
    for (const p of PREDICTIONS) {
      it(`${p} at (alpha ${alpha}, sigma ${sigma}) recovers x0 and eps`, () => {
        const pred = fromX0Eps(p, x0, eps, alpha!, sigma!);
        close(toX0(p, x, pred, alpha!, sigma!), x0);
        close(toEps(p, x, pred, alpha!, sigma!), eps);
        for (const q of PREDICTIONS)
          close(
            convertPrediction(p, q, x, pred, alpha!, sigma!),
            fromX0Eps(q, x0, eps, alpha!, sigma!),
          );
      });
    }
  }
  it('v and flow have their definitions', () => {
    close(
      fromX0Eps('v', x0, eps, 0.8, 0.6),
      x0.map((v, i) => 0.8 * eps[i]! - 0.6 * v),
    );
    close(
      fromX0Eps('flow', x0, eps, 0.8, 0.6),
      x0.map((v, i) => eps[i]! - v),
    );
  });
  it('level frame: x / alpha = x0 + level eps for eps, v (VP) and flow', () => {
    const level = 1.7;
    const alpha = 1 / Math.sqrt(level * level + 1);
    const sigma = level * alpha;
    const xs = x0.map((v, i) => v + level * eps[i]!);
    for (const p of PREDICTIONS)
      close(toX0Scaled(p, xs, fromX0Eps(p, x0, eps, alpha, sigma), level, true), x0, 1e-12);
  });
  it('score = -eps / sigma', () => {
    close(epsFromScore(scoreFromEps(eps, 0.5), 0.5), eps);
  });
  it("PF-ODE drift alpha' x0 + sigma' eps equals f x - g^2 score / 2", () => {
    const proc = cosineVp();
    const t = 0.4;
    const { alpha, sigma } = proc.at(t);
    const d = proc.derivative(t);
    const x = x0.map((v, i) => alpha * v + sigma * eps[i]!);
    const f = d.alpha / alpha;
    const g2 = 2 * sigma * d.sigma - 2 * f * sigma * sigma;
    const score = scoreFromEps(eps, sigma);
    close(
      pfOdeDrift(x0, eps, d.alpha, d.sigma),
      x.map((v, i) => f * v - (g2 / 2) * score[i]!),
      1e-12,
    );
    const h = 1e-6;
    assert.ok(Math.abs((proc.at(t + h).alpha - proc.at(t - h).alpha) / (2 * h) - d.alpha) < 1e-6);
  });
  it('float32 arrays round like torch', () => {
    const x = Float32Array.of(0.1, 0.2);
    const out = toX0('eps', x, Float32Array.of(0.3, 0.4), 0.7, 0.5);
    assert.ok(out instanceof Float32Array);
    assert.equal(
      out[0],
      Math.fround(
        Math.fround(Math.fround(0.1) - Math.fround(Math.fround(0.5) * Math.fround(0.3))) /
          Math.fround(0.7),
      ),
    );
  });
});
