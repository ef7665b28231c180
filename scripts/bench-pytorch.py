#!/usr/bin/env python3
"""PyTorch's side of `retrace bench`: plain forward+backward throughput of the diffusion loss on
the same architecture, batch and thread count, for the ratio the performance issue asks for.

    retrace export --out /tmp/bundled-export                 # the bundled model as diffusers
    python3 scripts/bench-pytorch.py /tmp/bundled-export --batch 32 --iterations 5 --threads 2
    retrace --device cpu bench --batch 32 --iterations 5 --fit-images 0 --synthetic-images 0

It loads the exported U-Net with UNet2DModel.from_pretrained (so both sides run the same
weights and architecture), draws x₀, t and ε, and times loss = mean((ε − ε_θ(x_t, t))²) with its
backward, as retrace's bench does, after one warm-up batch. Prints example·timesteps per second;
with --json FILE also writes {"plain_fwd_bwd": x, "threads": n, "torch": version}.
"""
import argparse
import json
import time

import torch
from diffusers import DDPMScheduler, UNet2DModel


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", help="a diffusers pipeline directory (retrace export writes one)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    unet = UNet2DModel.from_pretrained(args.pipeline, subfolder="unet").train()
    scheduler = DDPMScheduler.from_pretrained(args.pipeline, subfolder="scheduler")
    alpha_bars = scheduler.alphas_cumprod
    c, s = unet.config.in_channels, unet.config.sample_size
    params = [p for p in unet.parameters()]

    def step():
        x0 = torch.rand(args.batch, c, s, s) * 2 - 1
        t = torch.randint(0, len(alpha_bars), (args.batch,))
        eps = torch.randn_like(x0)
        ab = alpha_bars[t].view(-1, 1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        loss = ((eps - unet(xt, t).sample) ** 2).mean()
        grads = torch.autograd.grad(loss, params)
        return sum(g.sum() for g in grads).item()

    step()
    start = time.perf_counter()
    for _ in range(args.iterations):
        step()
    seconds = time.perf_counter() - start
    rate = args.batch * args.iterations / seconds
    print(f"PyTorch {torch.__version__}, {args.threads} threads: forward+backward {rate:.1f} example·timesteps/s at batch {args.batch}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"plain_fwd_bwd": rate, "threads": args.threads, "torch": torch.__version__}, f, indent=2)


if __name__ == "__main__":
    main()
