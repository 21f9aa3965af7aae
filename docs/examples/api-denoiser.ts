// One layer down: a sampler sees a model only as a Denoiser, an object with a prediction type
// and predict(x, t). This one is exact for data x0 ~ N(2, 0.5^2) in every coordinate, so no
// network is needed; `sample` runs any named sampler over the process of a scheduler spec.
import { HostArray, RngKey } from 'diffuse';
import {
  parseScheduler, pointsAt, sample, withData, type Denoiser, type SchedulerSpec,
} from 'diffuse/diffusion';

// DDPM's linear betas over 1,000 steps, eps-prediction: the scheduler_config.json of the
// shipped U-Net, as a JSON object.
const ddpm = parseScheduler({
  _class_name: 'DDPMScheduler', num_train_timesteps: 1000, beta_schedule: 'linear',
  beta_start: 0.0001, beta_end: 0.02, prediction_type: 'epsilon', clip_sample: false,
});

export async function denoiserTour(spec: SchedulerSpec = ddpm, sampler = 'dpm++2m') {
  const [mean, std] = [2, 0.5];
  const exact: Denoiser = {
    prediction: 'eps',
    async predict(x, t) {
      // x_t = alpha x0 + sigma eps at each row's model time t (here a training step index).
      const { alpha, sigma } = pointsAt(spec, t);
      const per = x.data.length / t.length;
      return withData(x, x.data.map((xt, i) => {
        const [a, s] = [alpha[Math.floor(i / per)]!, sigma[Math.floor(i / per)]!];
        // E[x0 | x_t] for a Gaussian, then the noise that goes with it.
        const x0 = mean + (a * std * std * (xt - a * mean)) / (a * a * std * std + s * s);
        return (xt - a * x0) / s;
      }));
    },
  };
  // Start from unit noise [1000, 4]; stochastic samplers (ddpm, euler-a) also need `noise`.
  const key = RngKey.fromSeed(0);
  const xT = new HostArray(key.normal(4000), [1000, 4], 'float32');
  const x0 = await sample(exact, xT, spec, {
    sampler, steps: 20, noise: (n, step) => key.fold(step + 1).normal(n),
  });
  const xs = Array.from(x0.data);
  const m = xs.reduce((acc, v) => acc + v, 0) / xs.length;
  const v = xs.reduce((acc, x) => acc + (x - m) ** 2, 0) / xs.length;
  return { shape: x0.shape, mean: m, std: Math.sqrt(v) };
}
