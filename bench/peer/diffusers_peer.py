"""The peer of `npm run bench -- --only unet|dit`, measured on this machine: diffusers' models
with ../shared/BASELINE.md's configs on PyTorch's CPU backend, timed as BASELINE.md times them
(forward under no_grad at batch 1/16/64; a whole training step at batch 64 - noise, random t,
add_noise, forward, MSE on eps, backward, AdamW; DDIM-50 sampling of 64 images; DDIM-50 of one
image, for the class-conditional DiTs with classifier-free guidance at scale 4 in one batched
call of 2, as diffusers' DiTPipeline does it).

    diffusers_peer.py [--model unet|dit-pixel|dit-latent] [--reps N] [--phase time|train|sample]

--phase time (the default) prints the timings; --phase train / sample runs only a few training
steps / one DDIM-50 x 64 and prints the process's peak resident memory, so that each phase's
peak is measured in a fresh process (peak RSS only ever grows).

BASELINE.md's table was measured on a machine with AVX-512; a VM without it runs both PyTorch
and ONNX Runtime slower, so Diffuse's ratios are only comparable with a peer timed on the same
machine. Run it through bench/peer/run.sh, which sets the "tuned" allocator environment.

Needs python3-torch (Debian: 1.13) and diffusers v0.31.0 on PYTHONPATH. Prints one JSON line.
"""
import argparse
import json
import resource
import sys
import time

import torch
from diffusers import DDIMScheduler, DiTTransformer2DModel, UNet2DModel

parser = argparse.ArgumentParser()
parser.add_argument('--model', choices=['unet', 'dit-pixel', 'dit-latent'], default='unet')
parser.add_argument('--reps', type=int, default=5)
parser.add_argument('--phase', choices=['time', 'train', 'sample'], default='time')
args = parser.parse_args()

torch.set_num_threads(2)
torch.set_num_interop_threads(1)
torch.manual_seed(0)


def build(name):
    """The model and a call (x, t, labels) -> eps, for BASELINE.md's config of `name`."""
    if name == 'unet':
        m = UNet2DModel(
            sample_size=32, in_channels=1, out_channels=1, block_out_channels=[32, 64, 128],
            layers_per_block=2, down_block_types=['DownBlock2D', 'AttnDownBlock2D', 'AttnDownBlock2D'],
            up_block_types=['AttnUpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'], norm_num_groups=8)
        return m, (1, 32, 32), lambda x, t, y: m(x, t).sample
    side, channels = (32, 1) if name == 'dit-pixel' else (16, 4)
    m = DiTTransformer2DModel(
        sample_size=side, in_channels=channels, patch_size=2, num_layers=6, num_attention_heads=4,
        attention_head_dim=32, num_embeds_ada_norm=1000, norm_type='ada_norm_zero')
    return m, (channels, side, side), lambda x, t, y: m(x, t, class_labels=y).sample


model, shape, call = build(args.model)
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


def log(what):
    # Progress on stderr: a DDIM-50 x 64 takes a minute or more on 2 cores.
    print(f'[peer {args.model}] {what}', file=sys.stderr, flush=True)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def inputs(b):
    return torch.randn(b, *shape), torch.randint(0, 1000, (b,)), torch.randint(0, 10, (b,))


scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule='linear')
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
train_labels = torch.randint(0, 10, (64,))


def train_step():
    x0 = torch.randn(64, *shape)
    noise = torch.randn_like(x0)
    t = torch.randint(0, 1000, (64,))
    loss = torch.nn.functional.mse_loss(call(scheduler.add_noise(x0, noise, t), t, train_labels), noise)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def ddim50():
    scheduler.set_timesteps(50)
    x, _, y = inputs(64)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(call(x, t.repeat(64), y), t, x).prev_sample


CFG_SCALE = 4.0  # bench/models.ts CFG_SCALE
NULL_CLASS = 1000  # the DiTs' null class (num_embeds_ada_norm)


def ddim50_one():
    scheduler.set_timesteps(50)
    x, _, y = inputs(1)
    guided = args.model != 'unet'
    null = torch.full_like(y, NULL_CLASS)
    with torch.no_grad():
        for t in scheduler.timesteps:
            if guided:
                both = call(torch.cat([x, x]), t.repeat(2), torch.cat([y, null]))
                cond, uncond = both.chunk(2)
                eps = uncond + CFG_SCALE * (cond - uncond)
            else:
                eps = call(x, t.repeat(1), y)
            x = scheduler.step(eps, t, x).prev_sample


result = {'model': args.model, 'params': params, 'torch': torch.__version__,
          'threads': torch.get_num_threads()}
if args.phase == 'train':
    model.train()
    timed(train_step, 3, warmup=0)
    result['train_peak_rss_mb'] = peak_rss_mb()
elif args.phase == 'sample':
    model.eval()
    ddim50()
    result['sample_peak_rss_mb'] = peak_rss_mb()
else:
    model.eval()
    with torch.no_grad():
        for b in (1, 16, 64):
            log(f'forward at batch {b}')
            x, t, y = inputs(b)
            result[f'fwd_bs{b}_ms'] = 1e3 * timed(lambda: call(x, t, y), args.reps if b > 1 else 4 * args.reps)
    model.train()
    log('training steps')
    result['train_step_bs64_s'] = timed(train_step, args.reps)
    result['train_img_per_s'] = 64 / result['train_step_bs64_s']
    model.eval()
    log('DDIM-50 x 64')
    result['ddim50_x64_s'] = timed(ddim50, max(1, args.reps // 2), warmup=0)
    log('DDIM-50 of one image' + ('' if args.model == 'unet' else ' with CFG'))
    result['ddim50_bs1_s'] = timed(ddim50_one, 3, warmup=1)
print(json.dumps(result))
