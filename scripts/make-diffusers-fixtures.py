#!/usr/bin/env python3
"""Writes the diffusers fixtures under tests/fixtures/diffusers/: tiny UNet2DModels with random
weights, saved by diffusers itself, plus inputs and PyTorch's outputs for them.

Run once (the outputs are committed); it needs torch and diffusers:
    python3 -m venv /tmp/py && /tmp/py/bin/pip install torch diffusers safetensors
    /tmp/py/bin/python scripts/make-diffusers-fixtures.py

Fixtures:
- ddpm-pipeline/: a DDPMPipeline directory (model_index.json, unet/, scheduler/) whose U-Net
  has the options of Ho et al.'s CIFAR-10 model (google/ddpm-cifar10-32): sin-first timestep
  features with frequency shift 1, downsample padding 0, GroupNorm eps 1e-6, one-head
  attention at the second level, two residual blocks per level. Its attention weights are
  renamed to the pre-0.12 names (query/key/value/proj_attn) that checkpoint ships with.
- options-unet/: a bare UNet2DModel directory with scheduler_config.json beside it,
  exercising the other supported options: mish, head dim 4, centred input, no bottleneck
  attention, a bottleneck scale factor, a custom embedding width, a cosine schedule, and
  weights saved in float16.
- class-unet/: a class-conditional UNet2DModel (num_class_embeds 5: an nn.Embedding table
  added to the time embedding), as a bare directory with scheduler_config.json.
- class-timestep-unet/: class_embed_type "timestep" (the label's sinusoidal features through a
  second TimestepEmbedding), with a custom embedding width.
- dit/: a DiTTransformer2DModel (2 blocks, 2 heads of 8, patch 2 on 4×8×8 inputs, 5 classes,
  learned variance: 8 output channels), bare, with scheduler_config.json.
- vae/: an AutoencoderKL (widths 8/16, 1 image channel, 4 latent channels, scaling factor
  0.3), with vae-io.safetensors: image [2, 1, 16, 16], PyTorch's latent mean and log-variance
  for it, a latent [2, 4, 8, 8] and its decoding (the decoder input is latent / scaling_factor).
- ldm-pipeline/: a latent diffusion pipeline directory as the K-FAC paper's ArtBench model is
  laid out (unet/, vae/, scheduler/; no model_index.json, as diffusers has no pipeline class
  for an unconditional UNet2DModel on AutoencoderKL latents): a tiny UNet2DModel on 4×14×14
  latents, an AutoencoderKL for 1×28×28 images (scaling factor 1.5: unit-scale latents, as
  Stable Diffusion chose 0.18215 for its autoencoder) and a scaled_linear
  0.00085–0.012 scheduler. Like a trained autoencoder's, its posterior is narrow: after
  randomising, the log-variance half of quant_conv gets weights ×0.05 and bias −9 (σ ≈ 0.01),
  its mean half weights ×4. ldm-io.safetensors holds image [2, 1, 28, 28] with PyTorch's
  latent mean and log-variance, and a latent [2, 4, 14, 14] with its decoding.
- each fixture's io.safetensors: sample [2, C, H, W], timesteps [2], output [2, C, H, W]
  (PyTorch's prediction, float32 on the CPU), and class_labels [2] for the conditional ones.

Run with fixture names (e.g. `class-unet class-timestep-unet`) to write only those: the
others stay byte for byte as committed.
"""
import json
import pathlib

import diffusers
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from safetensors.torch import load_file, save_file

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "diffusers"


def randomise(model, seed):
    """Replaces every parameter with N(0, 0.2²) noise, so that no layer is left at an
    initialisation (zeros, ones) that would hide a wrong mapping."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def write_io(model, channels, size, directory, seed, class_labels=None):
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, channels, size, size, generator=gen)
    timesteps = torch.tensor([3, 777], dtype=torch.int64)
    with torch.no_grad():
        output = model(sample, timestep=timesteps, class_labels=class_labels).sample
    tensors = {"sample": sample.contiguous(), "timesteps": timesteps.float(), "output": output.contiguous()}
    if class_labels is not None:
        tensors["class_labels"] = class_labels.float()
    save_file(
        tensors,
        str(directory / "io.safetensors"),
        metadata={"torch": torch.__version__, "diffusers": diffusers.__version__},
    )


def ddpm_pipeline():
    out = ROOT / "ddpm-pipeline"
    unet = UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        attention_head_dim=None,
        norm_num_groups=4,
        norm_eps=1e-6,
        flip_sin_to_cos=False,
        freq_shift=1,
        downsample_padding=0,
    ).eval()
    randomise(unet, 1)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(str(out))
    weights_path = out / "unet" / "diffusion_pytorch_model.safetensors"
    weights = load_file(str(weights_path))
    old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for key, value in weights.items():
        for new, old in old_names.items():
            key = key.replace(f".{new}.", f".{old}.")
        renamed[key] = value
    assert any(".query." in k for k in renamed)
    save_file(renamed, str(weights_path), metadata={"format": "pt"})
    # diffusers reads the old names back: the fixture stays loadable by PyTorch.
    reloaded = UNet2DModel.from_pretrained(str(out / "unet")).eval()
    write_io(reloaded, 3, 8, out, 2)


def options_unet():
    out = ROOT / "options-unet"
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        down_block_types=("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D"),
        layers_per_block=1,
        attention_head_dim=4,
        norm_num_groups=4,
        act_fn="mish",
        center_input_sample=True,
        add_attention=False,
        mid_block_scale_factor=1.4142135623730951,
        time_embedding_dim=24,
    ).eval()
    randomise(unet, 3)
    unet = unet.half().float()  # weights exactly representable in float16
    unet.half().save_pretrained(str(out))
    DDPMScheduler(num_train_timesteps=500, beta_schedule="squaredcos_cap_v2", clip_sample=False).save_config(str(out))
    reloaded = UNet2DModel.from_pretrained(str(out), torch_dtype=torch.float32).eval()
    write_io(reloaded, 1, 8, out, 4)


def class_unet(name, seed, **options):
    out = ROOT / name
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        attention_head_dim=8,
        norm_num_groups=4,
        **options,
    ).eval()
    randomise(unet, seed)
    unet.save_pretrained(str(out))
    DDPMScheduler(num_train_timesteps=1000).save_config(str(out))
    reloaded = UNet2DModel.from_pretrained(str(out)).eval()
    write_io(reloaded, 1, 8, out, seed + 1, class_labels=torch.tensor([3, 1], dtype=torch.int64))


def dit():
    from diffusers import DiTTransformer2DModel

    out = ROOT / "dit"
    model = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=5,
    ).eval()
    randomise(model, 9)
    model.save_pretrained(str(out))
    DDPMScheduler(num_train_timesteps=1000).save_config(str(out))
    reloaded = DiTTransformer2DModel.from_pretrained(str(out)).eval()
    # The null class (5) is a label like the others.
    write_io(reloaded, 4, 8, out, 10, class_labels=torch.tensor([2, 5], dtype=torch.int64))


def tiny_vae(sample_size, scaling_factor, seed):
    """A randomised AutoencoderKL for 1-channel images: widths 8/16, 4 latent channels."""
    from diffusers import AutoencoderKL

    model = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=sample_size,
        scaling_factor=scaling_factor,
    ).eval()
    randomise(model, seed)
    return model


def write_vae_io(vae, path, seed, size):
    """An image [2, 1, size, size] with PyTorch's latent mean and log-variance, and a latent
    [2, 4, size/2, size/2] with its decoding."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(2, 1, size, size, generator=gen) * 2 - 1
    latent = torch.randn(2, 4, size // 2, size // 2, generator=gen)
    with torch.no_grad():
        dist = vae.encode(image).latent_dist
        decoded = vae.decode(latent / vae.config.scaling_factor).sample
    save_file(
        {
            "image": image.contiguous(),
            "mean": dist.mean.contiguous(),
            "log_variance": dist.logvar.contiguous(),
            "latent": latent.contiguous(),
            "decoded": decoded.contiguous(),
        },
        str(path),
        metadata={"torch": torch.__version__, "diffusers": diffusers.__version__},
    )


def vae():
    from diffusers import AutoencoderKL

    out = ROOT / "vae"
    tiny_vae(16, 0.3, 11).save_pretrained(str(out))
    reloaded = AutoencoderKL.from_pretrained(str(out)).eval()
    write_vae_io(reloaded, out / "vae-io.safetensors", 12, 16)


def ldm_pipeline():
    from diffusers import AutoencoderKL

    out = ROOT / "ldm-pipeline"
    unet = UNet2DModel(
        sample_size=14,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        attention_head_dim=8,
        norm_num_groups=4,
    ).eval()
    randomise(unet, 13)
    vae = tiny_vae(28, 1.5, 14)
    with torch.no_grad():
        quant = vae.quant_conv
        quant.weight[:4] *= 4.0
        quant.weight[4:] *= 0.05
        quant.bias[4:] = -9.0
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    )
    unet.save_pretrained(str(out / "unet"))
    vae.save_pretrained(str(out / "vae"))
    scheduler.save_pretrained(str(out / "scheduler"))
    unet = UNet2DModel.from_pretrained(str(out / "unet")).eval()
    vae = AutoencoderKL.from_pretrained(str(out / "vae")).eval()
    write_io(unet, 4, 14, out, 15)
    write_vae_io(vae, out / "ldm-io.safetensors", 16, 28)


FIXTURES = {
    "vae": vae,
    "ldm-pipeline": ldm_pipeline,
    "ddpm-pipeline": ddpm_pipeline,
    "options-unet": options_unet,
    "class-unet": lambda: class_unet("class-unet", 5, num_class_embeds=5),
    "dit": dit,
    "class-timestep-unet": lambda: class_unet(
        "class-timestep-unet", 7, class_embed_type="timestep", time_embedding_dim=24
    ),
}


def ddpm_cifar10_parameters():
    """The parameter count of the DDPM CIFAR-10 architecture, which the Rust preset test checks."""
    config = {
        "sample_size": 32,
        "block_out_channels": (128, 256, 256, 256),
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        "layers_per_block": 2,
        "attention_head_dim": None,
        "norm_eps": 1e-6,
        "flip_sin_to_cos": False,
        "freq_shift": 1,
        "downsample_padding": 0,
    }
    return sum(p.numel() for p in UNet2DModel(**config).parameters())


if __name__ == "__main__":
    import sys

    torch.manual_seed(0)
    ROOT.mkdir(parents=True, exist_ok=True)
    chosen = sys.argv[1:] or list(FIXTURES)
    for name in chosen:
        FIXTURES[name]()
    if sys.argv[1:]:
        print(f"wrote {', '.join(chosen)} under {ROOT}")
        sys.exit(0)
    count = ddpm_cifar10_parameters()
    (ROOT / "ddpm-cifar10-parameters.json").write_text(json.dumps({"parameters": count}) + "\n")
    print(f"wrote {ROOT}; DDPM CIFAR-10 architecture: {count} parameters")
