"""The peer of `npm run bench -- --only unet`, measured on this machine: diffusers' UNet2DModel
with ../shared/BASELINE.md's config on PyTorch's CPU backend, timed as BASELINE.md times it
(forward under no_grad at batch 1/16/64; a whole training step at batch 64 - noise, random t,
add_noise, forward, MSE on eps, backward, AdamW; DDIM-50 sampling of 64 images).

BASELINE.md's table was measured on a machine with AVX-512; a VM without it runs both PyTorch
and ONNX Runtime slower, so Diffuse's ratios are only comparable with a peer timed on the same
machine. Run it through bench/peer/run.sh, which sets the "tuned" allocator environment.

Needs python3-torch (Debian: 1.13) and diffusers v0.31.0 on PYTHONPATH. Prints one JSON line.
"""
import json
import sys
import time

import torch
from diffusers import DDIMScheduler, UNet2DModel

torch.set_num_threads(2)
torch.set_num_interop_threads(1)
torch.manual_seed(0)

reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
model = UNet2DModel(
    sample_size=32, in_channels=1, out_channels=1, block_out_channels=[32, 64, 128], layers_per_block=2,
    down_block_types=['DownBlock2D', 'AttnDownBlock2D', 'AttnDownBlock2D'],
    up_block_types=['AttnUpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'], norm_num_groups=8)
params = sum(p.numel() for p in model.parameters())


def median(xs):
    return sorted(xs)[len(xs) // 2]


def timed(fn, n, warmup=2):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return median(out)


result = {'params': params, 'torch': torch.__version__, 'threads': torch.get_num_threads()}
model.eval()
with torch.no_grad():
    for b in (1, 16, 64):
        x = torch.randn(b, 1, 32, 32)
        t = torch.randint(0, 1000, (b,))
        result[f'fwd_bs{b}_ms'] = 1e3 * timed(lambda: model(x, t), reps if b > 1 else 4 * reps)

scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule='linear')
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)


def train_step():
    x0 = torch.randn(64, 1, 32, 32)
    noise = torch.randn_like(x0)
    t = torch.randint(0, 1000, (64,))
    pred = model(scheduler.add_noise(x0, noise, t), t).sample
    loss = torch.nn.functional.mse_loss(pred, noise)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


result['train_step_bs64_s'] = timed(train_step, reps)
result['train_img_per_s'] = 64 / result['train_step_bs64_s']

model.eval()


def ddim50():
    scheduler.set_timesteps(50)
    x = torch.randn(64, 1, 32, 32)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, t).sample, t, x).prev_sample


result['ddim50_x64_s'] = timed(ddim50, max(1, reps // 2), warmup=0)
print(json.dumps(result))
