#!/usr/bin/env python3
"""PyTorch's side of `retrace bench`: plain forward+backward throughput of the diffusion loss on
the same U-Net architecture, for the ratio the performance issues ask for.

On the CPU, against the bundled model (same weights, batch and thread count on both sides):

    retrace export --out /tmp/bundled-export                 # the bundled model as diffusers
    python3 scripts/bench-pytorch.py /tmp/bundled-export --batch 32 --iterations 5 --threads 2
    retrace --device cpu bench --batch 32 --iterations 5 --fit-images 0 --synthetic-images 0

On a GPU, against google/ddpm-cifar10-32's architecture (built from its config written out below,
with fresh weights, so nothing is downloaded), in several precisions and batch sizes:

    python3 scripts/bench-pytorch.py --config ddpm-cifar10 --batch 64,128,256 \\
        --modes fp32,tf32,bf16 --iterations 20 --seconds 300 --json /tmp/pytorch-bench.json

One step draws x0 uniform in [-1, 1], t and eps on the device, and computes
loss = mean((eps - eps_theta(x_t, t))^2) and its gradient with respect to every parameter
(torch.autograd.grad), as retrace's bench does. Each (mode, batch) row runs 2 warm-up steps, then
times --iterations steps (with torch.cuda.synchronize() before starting and stopping the clock on
CUDA; the step itself never waits for the device). Modes:

    fp32  eager float32, TF32 off for both cuBLAS matmuls and cuDNN convolutions
    tf32  the same with TF32 on for both (CUDA only)
    bf16  torch.autocast(bfloat16) around forward and loss, the loss itself in float32;
          TF32 off, so autocast is the only difference from fp32

Prints one line per row in example·timesteps per second. With --json FILE also writes
{"torch", "device", "threads", "model", "parameters", "rows": [{"mode", "batch",
"plain_fwd_bwd"}], "skipped", "plain_fwd_bwd"}, the last being the best rate over the rows; the
file is rewritten after every row, so an interrupted run keeps what it measured.

Needs torch and diffusers. Where diffusers is missing and there is no network, its wheels can be
put on the path without touching the environment:
python3 -m pip install --no-index --no-deps --target DIR diffusers-*.whl; PYTHONPATH=DIR.
"""
import argparse
import contextlib
import json
import pathlib
import time

import torch

# google/ddpm-cifar10-32's unet/config.json, written out so that no hub access is needed.
DDPM_CIFAR10_UNET = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 256, 256),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    norm_num_groups=32,
    norm_eps=1e-6,
    attention_head_dim=None,
    flip_sin_to_cos=False,
    freq_shift=1,
    downsample_padding=0,
    act_fn="silu",
    center_input_sample=False,
    time_embedding_type="positional",
    resnet_time_scale_shift="default",
    mid_block_scale_factor=1,
)
DDPM_CIFAR10_PARAMETERS = 35_746_307  # the published checkpoint's parameter count
CONFIGS = {"ddpm-cifar10": DDPM_CIFAR10_UNET}

MODES = ("fp32", "tf32", "bf16")
WARMUP_STEPS = 2


def comma_list(convert):
    def parse(text):
        try:
            items = [convert(item) for item in text.split(",") if item.strip()]
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error))
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        return items

    return parse


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("pipeline", nargs="?", help="a diffusers pipeline directory (retrace export writes one)")
    model.add_argument("--config", choices=sorted(CONFIGS), help="build this architecture with fresh weights instead")
    parser.add_argument("--batch", type=comma_list(int), default=[32], help="batch sizes, comma-separated (default 32)")
    parser.add_argument("--iterations", type=int, default=5, help="timed steps per row (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default 2)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available, else cpu")
    parser.add_argument("--modes", type=comma_list(str), help="among fp32,tf32,bf16 (default fp32 on cpu, all three on cuda)")
    parser.add_argument("--seconds", type=float, help="start no further row once this many seconds of measuring have passed")
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    args = parser.parse_args()

    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    if args.modes is None:
        args.modes = list(MODES) if args.device.type == "cuda" else ["fp32"]
    for mode in args.modes:
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}: choose among {','.join(MODES)}")
        if mode == "tf32" and args.device.type != "cuda":
            parser.error("mode tf32 needs --device cuda")
    if min(args.batch) < 1 or args.iterations < 1 or args.threads < 1:
        parser.error("--batch, --iterations and --threads must be positive")
    return args


def load(args):
    """The U-Net in training mode on the device, and the scheduler's ᾱ_t there too."""
    from diffusers import DDPMScheduler, UNet2DModel

    if args.config:
        unet = UNet2DModel(**CONFIGS[args.config])
        # DDPMScheduler's defaults are google/ddpm-cifar10-32's: 1000 steps, β linear 1e-4..0.02.
        scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    elif (pathlib.Path(args.pipeline) / "transformer").is_dir():
        # A DiT export (`retrace export` of a DiT writes transformer/ and scheduler/).
        from diffusers import DiTTransformer2DModel

        unet = DiTTransformer2DModel.from_pretrained(args.pipeline, subfolder="transformer")
        scheduler = DDPMScheduler.from_pretrained(args.pipeline, subfolder="scheduler")
    else:
        unet = UNet2DModel.from_pretrained(args.pipeline, subfolder="unet")
        scheduler = DDPMScheduler.from_pretrained(args.pipeline, subfolder="scheduler")
    return unet.to(args.device).train(), scheduler.alphas_cumprod.to(args.device)


def class_rows(model):
    """The number of class labels a class-conditional model reads (its table's rows: a U-Net's
    num_class_embeds, a DiT's classes plus the null class), or None for an unconditional one."""
    config = model.config
    if getattr(config, "num_embeds_ada_norm", None) is not None:
        return config.num_embeds_ada_norm + 1
    return getattr(config, "num_class_embeds", None)


def set_mode(mode, device):
    """Set the TF32 switches for this mode; returns the context the forward pass runs in."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
        torch.backends.cudnn.allow_tf32 = mode == "tf32"
    if mode == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def make_step(unet, alpha_bars, batch, device, precision):
    """One forward+backward of the diffusion loss, with no host-device synchronisation."""
    params = [p for p in unet.parameters() if p.requires_grad]
    classes = class_rows(unet)
    size = unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else size
    shape = (batch, unet.config.in_channels, height, width)

    def step():
        x0 = torch.rand(shape, device=device) * 2 - 1
        t = torch.randint(0, len(alpha_bars), (batch,), device=device)
        eps = torch.randn_like(x0)
        ab = alpha_bars[t].view(-1, 1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        with precision():
            if classes is None:
                prediction = unet(xt, t).sample
            else:
                labels = torch.randint(0, classes, (batch,), device=device)
                prediction = unet(xt, timestep=t, class_labels=labels).sample
            # A learned-variance output's ε half, as retrace trains it.
            prediction = prediction[:, : shape[1]]
            loss = ((eps - prediction.float()) ** 2).mean()
        return torch.autograd.grad(loss, params)

    return step


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(step, iterations, device):
    """example·timesteps per second is batch × iterations over the seconds this returns."""
    for _ in range(WARMUP_STEPS):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    synchronize(device)
    return time.perf_counter() - start


def main():
    args = parse_args()
    device = args.device
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    unet, alpha_bars = load(args)
    parameters = sum(p.numel() for p in unet.parameters())
    model = args.config or args.pipeline
    print(f"{model}: {type(unet).__name__} with {parameters:,} parameters ({parameters / 1e6:.1f}M)")
    if args.config == "ddpm-cifar10" and parameters != DDPM_CIFAR10_PARAMETERS:
        print(f"warning: google/ddpm-cifar10-32 has {DDPM_CIFAR10_PARAMETERS:,} parameters; this build differs")

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report = {
        "torch": torch.__version__,
        "device": device_name,
        "threads": args.threads,
        "model": model,
        "parameters": parameters,
        "rows": [],
        "skipped": [],
        "plain_fwd_bwd": None,
    }

    def save():
        if args.json:
            rates = [row["plain_fwd_bwd"] for row in report["rows"]]
            report["plain_fwd_bwd"] = max(rates) if rates else None
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)

    # Batch outermost, so that a --seconds budget cuts the largest batches, not whole modes.
    rows = [(mode, batch) for batch in args.batch for mode in args.modes]
    began = time.perf_counter()
    for index, (mode, batch) in enumerate(rows):
        if args.seconds is not None and time.perf_counter() - began > args.seconds:
            for late_mode, late_batch in rows[index:]:
                print(f"skipped {late_mode} batch {late_batch}: past the {args.seconds:g} s budget")
                report["skipped"].append({"mode": late_mode, "batch": late_batch, "reason": "time budget"})
            break
        step = make_step(unet, alpha_bars, batch, device, set_mode(mode, device))
        try:
            seconds = measure(step, args.iterations, device)
        except torch.OutOfMemoryError:
            seconds = None  # freed below, once the traceback no longer holds the step's tensors
        if seconds is None:
            torch.cuda.empty_cache()
            print(f"skipped {mode} batch {batch}: out of device memory")
            report["skipped"].append({"mode": mode, "batch": batch, "reason": "out of memory"})
            save()
            continue
        rate = batch * args.iterations / seconds
        print(f"PyTorch {torch.__version__} {device_name} {mode} batch {batch}: forward+backward {rate:.1f} example·timesteps/s", flush=True)
        report["rows"].append({"mode": mode, "batch": batch, "plain_fwd_bwd": rate})
        save()
    save()


if __name__ == "__main__":
    main()
