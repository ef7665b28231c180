//! The variational autoencoder of latent diffusion (Rombach et al. 2022) with the structure and
//! parameter names of diffusers' `AutoencoderKL` (the Stable Diffusion 1 and 2 VAE and smaller
//! ones of the same shape): an encoder of `DownEncoderBlock2D`s (residual blocks without a time
//! embedding, stride-2 downsampling padded at the bottom and right), a bottleneck with one-head
//! self-attention, and a `quant_conv` to the mean and log-variance of the latent; a decoder of
//! `UpDecoderBlock2D`s after a `post_quant_conv`. Latents are `z · scaling_factor` with
//! z = μ + σ·ε; a latent is decoded as `decode(latent / scaling_factor)`.
//!
//! The autoencoder is fixed while a latent diffusion model trains and is attributed: its layers
//! go through the [`Tape`] like every other (so a capture could see them) but no method takes
//! its gradient.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::error::ConfigError;
use super::unet::{Activation, Attention, NoTape, Resample, ResidualPath, Tape, conv, upsample_nearest2x};

/// ε of every GroupNorm of the autoencoder (fixed in diffusers' `Encoder`/`Decoder`).
const VAE_NORM_EPS: f64 = 1e-6;
/// diffusers clamps the log-variance to this range before σ = exp(½·log σ²).
const LOGVAR_RANGE: (f64, f64) = (-30.0, 20.0);

/// Architecture of an [`AutoencoderKL`], mirroring diffusers' config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VaeConfig {
    /// Image channels in.
    pub in_channels: usize,
    /// Image channels out.
    pub out_channels: usize,
    /// Width of each level, finest first.
    pub block_out_channels: Vec<usize>,
    /// Residual blocks per encoder level (decoder levels have one more).
    pub layers_per_block: usize,
    /// Channels of the latent.
    pub latent_channels: usize,
    /// GroupNorm groups.
    pub norm_groups: usize,
    /// Nonlinearity.
    #[serde(default)]
    pub activation: Activation,
    /// Latents are z · this (Stable Diffusion: 0.18215).
    pub scaling_factor: f64,
    /// Whether the bottlenecks carry self-attention.
    #[serde(default = "yes")]
    pub mid_attention: bool,
    /// Whether the 1×1 `quant_conv` on the moments exists.
    #[serde(default = "yes")]
    pub quant_conv: bool,
    /// Whether the 1×1 `post_quant_conv` before the decoder exists.
    #[serde(default = "yes")]
    pub post_quant_conv: bool,
}

fn yes() -> bool {
    true
}

impl VaeConfig {
    /// Latent side for images of side `size`: halved once per level but the last.
    pub fn latent_size(&self, size: usize) -> usize {
        size >> self.block_out_channels.len().saturating_sub(1)
    }

    /// Factor between the image side and the latent side (2 per level but the last).
    pub fn downsampling(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    /// Checks the sizes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let levels = self.block_out_channels.len();
        if levels == 0 || levels > super::unet::MAX_LEVELS {
            return Err(ConfigError(format!(
                "{levels} autoencoder levels: retrace handles 1 to {}",
                super::unet::MAX_LEVELS
            )));
        }
        let sizes = [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
            ("norm_num_groups", self.norm_groups),
            ("layers_per_block", self.layers_per_block),
        ];
        if let Some((what, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError(format!("{what} 0: it must be at least 1")));
        }
        if let Some((what, v)) = sizes.iter().find(|(_, v)| *v > 4096) {
            return Err(ConfigError(format!("{what} {v}: retrace handles at most 4096")));
        }
        if let Some(w) = self
            .block_out_channels
            .iter()
            .find(|&&w| w == 0 || w > 16_384 || !w.is_multiple_of(self.norm_groups))
        {
            return Err(ConfigError(format!(
                "autoencoder width {w}: it must be 1 to 16384 and divisible by {} norm groups",
                self.norm_groups
            )));
        }
        if !(self.scaling_factor > 0.0 && self.scaling_factor.is_finite()) {
            return Err(ConfigError(format!(
                "scaling_factor {} must be positive",
                self.scaling_factor
            )));
        }
        Ok(())
    }

    /// Builds the autoencoder with fresh weights (call [`Self::validate`] first).
    pub fn init(&self, device: &Device) -> AutoencoderKL {
        crate::device::drawing(device, None, || super::unet::materialised(self.build(device)))
    }

    fn build(&self, device: &Device) -> AutoencoderKL {
        let widths = &self.block_out_channels;
        let levels = widths.len();
        let norm = |c: usize| {
            GroupNormConfig::new(self.norm_groups, c)
                .with_epsilon(VAE_NORM_EPS)
                .init(device)
        };
        let conv3 = |a: usize, b: usize| {
            Conv2dConfig::new([a, b], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        let block = |cin: usize, cout: usize| VaeResnetBlock {
            norm1: norm(cin),
            conv1: conv3(cin, cout),
            norm2: norm(cout),
            conv2: conv3(cout, cout),
            conv_shortcut: (cin != cout).then(|| Conv2dConfig::new([cin, cout], [1, 1]).init(device)),
        };
        let last = widths[levels - 1];
        let mid = || VaeMidBlock {
            resnets: vec![block(last, last), block(last, last)],
            attentions: if self.mid_attention {
                vec![Attention::new(last, norm(last), 1, device)]
            } else {
                Vec::new()
            },
        };
        let mut down_blocks = Vec::new();
        let mut cin = widths[0];
        for (level, &cout) in widths.iter().enumerate() {
            let resnets = (0..self.layers_per_block)
                .map(|i| block(if i == 0 { cin } else { cout }, cout))
                .collect();
            let resamplers = if level + 1 < levels {
                vec![Resample::down(cout, 0, device)]
            } else {
                Vec::new()
            };
            down_blocks.push(VaeBlock { resnets, resamplers });
            cin = cout;
        }
        let mut up_blocks = Vec::new();
        let mut cin = last;
        for (i, &cout) in widths.iter().rev().enumerate() {
            let resnets = (0..=self.layers_per_block)
                .map(|k| block(if k == 0 { cin } else { cout }, cout))
                .collect();
            let resamplers = if i + 1 < levels {
                vec![Resample::up(cout, device)]
            } else {
                Vec::new()
            };
            up_blocks.push(VaeBlock { resnets, resamplers });
            cin = cout;
        }
        let one_by_one = |c: usize| Conv2dConfig::new([c, c], [1, 1]).init(device);
        AutoencoderKL {
            encoder: Encoder {
                conv_in: conv3(self.in_channels, widths[0]),
                down_blocks,
                mid_block: mid(),
                conv_norm_out: norm(last),
                conv_out: conv3(last, 2 * self.latent_channels),
            },
            decoder: Decoder {
                conv_in: conv3(self.latent_channels, last),
                mid_block: mid(),
                up_blocks,
                conv_norm_out: norm(widths[0]),
                conv_out: conv3(widths[0], self.out_channels),
            },
            quant_conv: self.quant_conv.then(|| one_by_one(2 * self.latent_channels)),
            post_quant_conv: self.post_quant_conv.then(|| one_by_one(self.latent_channels)),
            activation: self.activation,
            scaling_factor: self.scaling_factor,
        }
    }
}

/// diffusers' `AutoencoderKL`.
#[derive(Module, Debug)]
pub struct AutoencoderKL {
    /// Image → latent moments.
    pub encoder: Encoder,
    /// Latent → image.
    pub decoder: Decoder,
    /// 1×1 convolution on the moments.
    pub quant_conv: Option<Conv2d>,
    /// 1×1 convolution on the latent before decoding.
    pub post_quant_conv: Option<Conv2d>,
    /// Nonlinearity.
    #[module(skip)]
    pub activation: Activation,
    /// Latents are z · this.
    #[module(skip)]
    pub scaling_factor: f64,
}

/// The encoder.
#[derive(Module, Debug)]
pub struct Encoder {
    /// First convolution.
    pub conv_in: Conv2d,
    /// `DownEncoderBlock2D`s.
    pub down_blocks: Vec<VaeBlock>,
    /// Bottleneck.
    pub mid_block: VaeMidBlock,
    /// Final norm.
    pub conv_norm_out: GroupNorm,
    /// To 2 × latent channels (mean and log-variance).
    pub conv_out: Conv2d,
}

/// The decoder.
#[derive(Module, Debug)]
pub struct Decoder {
    /// First convolution.
    pub conv_in: Conv2d,
    /// Bottleneck.
    pub mid_block: VaeMidBlock,
    /// `UpDecoderBlock2D`s, coarsest first.
    pub up_blocks: Vec<VaeBlock>,
    /// Final norm.
    pub conv_norm_out: GroupNorm,
    /// To image channels.
    pub conv_out: Conv2d,
}

/// One level: residual blocks and a resampler.
#[derive(Module, Debug)]
pub struct VaeBlock {
    /// Residual blocks.
    pub resnets: Vec<VaeResnetBlock>,
    /// Zero or one down- or upsampler.
    pub resamplers: Vec<Resample>,
}

/// The bottleneck: resnet, attention, resnet.
#[derive(Module, Debug)]
pub struct VaeMidBlock {
    /// Two residual blocks.
    pub resnets: Vec<VaeResnetBlock>,
    /// One one-head attention, or none.
    pub attentions: Vec<Attention>,
}

/// diffusers' `ResnetBlock2D` without a time embedding.
#[derive(Module, Debug)]
pub struct VaeResnetBlock {
    /// Norm before the first convolution.
    pub norm1: GroupNorm,
    /// First convolution.
    pub conv1: Conv2d,
    /// Norm before the second convolution.
    pub norm2: GroupNorm,
    /// Second convolution.
    pub conv2: Conv2d,
    /// 1×1 shortcut when the width changes.
    pub conv_shortcut: Option<Conv2d>,
}

impl VaeResnetBlock {
    fn forward(&self, x: Tensor<4>, act: Activation, tape: &mut impl Tape) -> Tensor<4> {
        let path = ResidualPath {
            norm1: &self.norm1,
            conv1: &self.conv1,
            time_emb_proj: None,
            norm2: &self.norm2,
            conv2: &self.conv2,
            shortcut: self.conv_shortcut.as_ref(),
        };
        path.forward(x, None, act, 1.0, tape)
    }
}

impl VaeMidBlock {
    fn forward(&self, x: Tensor<4>, act: Activation, tape: &mut impl Tape) -> Tensor<4> {
        let mut h = self.resnets[0].forward(x, act, tape);
        if let Some(attention) = self.attentions.first() {
            h = attention.forward(h, 1.0, tape);
        }
        self.resnets[1].forward(h, act, tape)
    }
}

/// The latent distribution of a batch of images: mean and log-variance, [batch, latent
/// channels, h, w] each.
pub struct LatentMoments {
    /// μ.
    pub mean: Tensor<4>,
    /// log σ², clamped to diffusers' range.
    pub log_variance: Tensor<4>,
}

impl AutoencoderKL {
    /// The latent moments of images in [−1, 1] ([batch, C, H, W]).
    pub fn encode(&self, x: Tensor<4>) -> LatentMoments {
        let tape = &mut NoTape;
        let act = self.activation;
        let e = &self.encoder;
        let mut h = conv(&e.conv_in, x, tape);
        for block in &e.down_blocks {
            for resnet in &block.resnets {
                h = resnet.forward(h, act, tape);
            }
            for down in &block.resamplers {
                h = down.forward(h, tape);
            }
        }
        h = e.mid_block.forward(h, act, tape);
        h = conv(&e.conv_out, act.apply(e.conv_norm_out.forward(h)), tape);
        if let Some(quant) = &self.quant_conv {
            h = conv(quant, h, tape);
        }
        let latent = h.dims()[1] / 2;
        LatentMoments {
            mean: h.clone().narrow(1, 0, latent),
            log_variance: h.narrow(1, latent, latent).clamp(LOGVAR_RANGE.0, LOGVAR_RANGE.1),
        }
    }

    /// The diffusion model's latents for moments and standard-normal `noise`:
    /// (μ + σ·noise) · scaling_factor.
    pub fn latents(&self, moments: &LatentMoments, noise: Tensor<4>) -> Tensor<4> {
        let std = (moments.log_variance.clone() * 0.5).exp();
        (moments.mean.clone() + std * noise) * self.scaling_factor
    }

    /// Images (in [−1, 1] when the autoencoder is good) of the diffusion model's latents.
    pub fn decode(&self, latents: Tensor<4>) -> Tensor<4> {
        let tape = &mut NoTape;
        let act = self.activation;
        let d = &self.decoder;
        let mut h = latents / self.scaling_factor;
        if let Some(post) = &self.post_quant_conv {
            h = conv(post, h, tape);
        }
        h = conv(&d.conv_in, h, tape);
        h = d.mid_block.forward(h, act, tape);
        for block in &d.up_blocks {
            for resnet in &block.resnets {
                h = resnet.forward(h, act, tape);
            }
            for up in &block.resamplers {
                h = up.forward(upsample_nearest2x(h), tape);
            }
        }
        conv(&d.conv_out, act.apply(d.conv_norm_out.forward(h)), tape)
    }
}
