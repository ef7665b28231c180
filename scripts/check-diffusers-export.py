#!/usr/bin/env python3
"""Loads a `retrace export --format diffusers` directory in PyTorch and records what PyTorch
saw, for tests/diffusers.rs to check retrace against.

    retrace export --out /tmp/bundled-export          # the bundled model
    python3 scripts/check-diffusers-export.py /tmp/bundled-export tests/fixtures/diffusers/bundled-export

It loads the pipeline with DDPMPipeline.from_pretrained and its parts with
UNet2DModel.from_pretrained / DDPMScheduler.from_pretrained, fails if any weight is missing or
unexpected, runs the pipeline for a few steps (an unconditional model: DDPMPipeline passes no
class labels), and writes to the output directory:
- keys.json: every parameter name and shape PyTorch loaded;
- io.safetensors: sample, timesteps and PyTorch's output for them (float32, CPU), plus the
  class_labels of a class-conditional model.
"""
import json
import pathlib
import sys

import diffusers
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from safetensors.torch import save_file


def main(export_dir, out_dir):
    export_dir, out_dir = pathlib.Path(export_dir), pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (export_dir / "transformer").is_dir():
        return check_transformer(export_dir, out_dir)
    unet, info = UNet2DModel.from_pretrained(str(export_dir), subfolder="unet", output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    if problems:
        sys.exit(f"PyTorch did not load the export cleanly: {problems}")
    scheduler = DDPMScheduler.from_pretrained(str(export_dir), subfolder="scheduler")
    conditional = unet.config.num_class_embeds is not None or unet.config.class_embed_type is not None
    if not conditional:
        pipeline = DDPMPipeline.from_pretrained(str(export_dir))
        generator = torch.Generator().manual_seed(0)
        images = pipeline(batch_size=1, num_inference_steps=5, generator=generator, output_type="np").images
        assert images.shape[0] == 1 and images.min() >= 0 and images.max() <= 1
    unet.eval()
    keys = {name: list(p.shape) for name, p in unet.state_dict().items()}
    (out_dir / "keys.json").write_text(json.dumps(keys, indent=1, sort_keys=True) + "\n")
    size, channels = unet.config.sample_size, unet.config.in_channels
    gen = torch.Generator().manual_seed(5)
    sample = torch.randn(2, channels, size, size, generator=gen)
    timesteps = torch.tensor([25, scheduler.config.num_train_timesteps - 1], dtype=torch.int64)
    class_labels = torch.tensor([1, 0], dtype=torch.int64) if conditional else None
    with torch.no_grad():
        output = unet(sample, timesteps, class_labels=class_labels).sample
    tensors = {"sample": sample.contiguous(), "timesteps": timesteps.float(), "output": output.contiguous()}
    if conditional:
        tensors["class_labels"] = class_labels.float()
    save_file(
        tensors,
        str(out_dir / "io.safetensors"),
        metadata={"torch": torch.__version__, "diffusers": diffusers.__version__},
    )
    print(f"PyTorch loaded {len(keys)} tensors from {export_dir}; wrote {out_dir}")


def check_transformer(export_dir, out_dir):
    """A DiT export (`transformer/`, `scheduler/`): loaded with DiTTransformer2DModel."""
    from diffusers import DiTTransformer2DModel

    model, info = DiTTransformer2DModel.from_pretrained(
        str(export_dir), subfolder="transformer", output_loading_info=True
    )
    problems = {k: v for k, v in info.items() if v}
    if problems:
        sys.exit(f"PyTorch did not load the export cleanly: {problems}")
    DDPMScheduler.from_pretrained(str(export_dir), subfolder="scheduler")
    model.eval()
    keys = {name: list(p.shape) for name, p in model.state_dict().items()}
    (out_dir / "keys.json").write_text(json.dumps(keys, indent=1, sort_keys=True) + "\n")
    size, channels = model.config.sample_size, model.config.in_channels
    gen = torch.Generator().manual_seed(5)
    sample = torch.randn(2, channels, size, size, generator=gen)
    timesteps = torch.tensor([25, 999], dtype=torch.int64)
    class_labels = torch.tensor([1, 0], dtype=torch.int64)
    with torch.no_grad():
        output = model(sample, timestep=timesteps, class_labels=class_labels).sample
    save_file(
        {
            "sample": sample.contiguous(),
            "timesteps": timesteps.float(),
            "class_labels": class_labels.float(),
            "output": output.contiguous(),
        },
        str(out_dir / "io.safetensors"),
        metadata={"torch": torch.__version__, "diffusers": diffusers.__version__},
    )
    print(f"PyTorch loaded {len(keys)} tensors from {export_dir}; wrote {out_dir}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
