//! A U-Net with the structure and parameter names of diffusers' `UNet2DModel` (Ho et al. 2020;
//! von Platen et al., diffusers): residual blocks with GroupNorm and SiLU, a sinusoidal timestep
//! embedding, optional self-attention per resolution, nearest-neighbour upsampling and strided
//! convolution downsampling. Module paths (`down_blocks.0.resnets.0.conv1.weight`, …) follow
//! diffusers so PyTorch checkpoints can be mapped onto it.
//!
//! Every Linear and Conv2d call goes through a [`Tape`], so that gradient capture can read
//! layer inputs and attach probes to layer outputs without a second copy of the model code.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Device, Tensor};

/// Observes every Linear and Conv2d application of a forward pass, in execution order.
///
/// The default methods return the output unchanged; gradient capture overrides them to keep
/// the layer input and to add a zero probe to the output.
pub trait Tape {
    /// Called after `conv` produced `output` from `input`.
    fn conv(&mut self, _conv: &Conv2d, _input: &Tensor<4>, output: Tensor<4>) -> Tensor<4> {
        output
    }
    /// Called after `dense` produced `output` ([batch, positions, d_out]) from `input`.
    fn dense(&mut self, _dense: &Linear, _input: &Tensor<3>, output: Tensor<3>) -> Tensor<3> {
        output
    }
}

/// A noise-prediction network whose Linear and Conv2d layers report to a [`Tape`]: what
/// gradient capture and curvature fits run on. [`UNet`] is the one retrace trains; tests plug in
/// networks small enough for exact curvature.
pub trait Denoiser: Module + Clone {
    /// Predicts the noise in `x` ([batch, C, H, W]) at the integer steps `t` ([batch]),
    /// reporting every Linear and Conv2d to `tape`.
    fn predict_with(&self, x: Tensor<4>, t: Tensor<1>, tape: &mut impl Tape) -> Tensor<4>;
}

impl Denoiser for UNet {
    fn predict_with(&self, x: Tensor<4>, t: Tensor<1>, tape: &mut impl Tape) -> Tensor<4> {
        self.forward_with(x, t, tape)
    }
}

/// A tape that records nothing: the plain forward pass.
pub struct NoTape;
impl Tape for NoTape {}

fn conv(layer: &Conv2d, x: Tensor<4>, tape: &mut impl Tape) -> Tensor<4> {
    let y = layer.forward(x.clone());
    tape.conv(layer, &x, y)
}

fn dense(layer: &Linear, x: Tensor<3>, tape: &mut impl Tape) -> Tensor<3> {
    let y = layer.forward(x.clone());
    tape.dense(layer, &x, y)
}

/// Architecture of a [`UNet`]; named presets come from [`UNetConfig::named`].
#[derive(Config, Debug, PartialEq)]
pub struct UNetConfig {
    /// Channels of the input and output images.
    pub image_channels: usize,
    /// Height and width of the (square) images.
    pub sample_size: usize,
    /// Output channels of each resolution level, finest first.
    pub block_out_channels: Vec<usize>,
    /// Whether each level's blocks carry self-attention.
    pub attention: Vec<bool>,
    /// Residual blocks per down level (up levels have one more).
    #[config(default = 1)]
    pub layers_per_block: usize,
    /// GroupNorm groups.
    #[config(default = 8)]
    pub norm_groups: usize,
    /// Channels per attention head.
    #[config(default = 8)]
    pub attention_head_dim: usize,
}

/// Names of the presets [`UNetConfig::named`] knows.
pub const CONFIG_NAMES: [&str; 2] = ["tiny", "base"];

impl UNetConfig {
    /// A named preset for `channels`×`size`×`size` images: `tiny` (tests; seconds on a CPU) or
    /// `base` (the bundled default model).
    pub fn named(name: &str, channels: usize, size: usize) -> Option<Self> {
        let (widths, attention, groups): (Vec<usize>, Vec<bool>, usize) = match name {
            "tiny" => (vec![8, 16], vec![false, true], 4),
            "base" => (vec![32, 64, 64], vec![false, false, true], 8),
            _ => return None,
        };
        Some(Self::new(channels, size, widths, attention).with_norm_groups(groups))
    }

    /// Checks that the levels, groups and image size fit together.
    pub fn validate(&self) -> Result<(), String> {
        let levels = self.block_out_channels.len();
        if levels == 0 || self.attention.len() != levels {
            return Err(format!(
                "{} block widths and {} attention flags: need one of each per level",
                levels,
                self.attention.len()
            ));
        }
        if let Some(w) = self.block_out_channels.iter().find(|&&w| w % self.norm_groups != 0) {
            return Err(format!(
                "block width {w} is not divisible by {} norm groups",
                self.norm_groups
            ));
        }
        if let Some(w) = self
            .block_out_channels
            .iter()
            .zip(&self.attention)
            .find(|(w, a)| **a && *w % self.attention_head_dim != 0)
        {
            return Err(format!(
                "attention width {} is not divisible by head dim {}",
                w.0, self.attention_head_dim
            ));
        }
        let factor = 1usize << (levels - 1);
        if !self.sample_size.is_multiple_of(factor) {
            return Err(format!(
                "image size {} is not divisible by {factor}, which {levels} resolution levels need",
                self.sample_size
            ));
        }
        Ok(())
    }

    /// Width of the timestep embedding (4× the first level, as in diffusers).
    pub fn time_embed_dim(&self) -> usize {
        self.block_out_channels[0] * 4
    }

    /// Builds the network with freshly initialised weights. Call [`Self::validate`] first.
    pub fn init(&self, device: &Device) -> UNet {
        let widths = &self.block_out_channels;
        let temb = self.time_embed_dim();
        let block = |cin: usize, cout: usize| ResnetBlock::new(cin, cout, temb, self.norm_groups, device);
        let attn = |c: usize| Attention::new(c, self.norm_groups, c / self.attention_head_dim, device);
        let levels = widths.len();

        let mut down_blocks = Vec::new();
        let mut skip_channels = vec![widths[0]];
        let mut cin = widths[0];
        for (level, &cout) in widths.iter().enumerate() {
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for _ in 0..self.layers_per_block {
                resnets.push(block(cin, cout));
                if self.attention[level] {
                    attentions.push(attn(cout));
                }
                cin = cout;
                skip_channels.push(cout);
            }
            let mut downsamplers = Vec::new();
            if level + 1 < levels {
                downsamplers.push(Resample::new(cout, 2, device));
                skip_channels.push(cout);
            }
            down_blocks.push(UNetBlock {
                resnets,
                attentions,
                resamplers: downsamplers,
            });
        }

        let last = widths[levels - 1];
        let mid_block = MidBlock {
            resnets: vec![block(last, last), block(last, last)],
            attentions: vec![attn(last)],
        };

        let mut up_blocks = Vec::new();
        let mut cin = last;
        for (i, level) in (0..levels).rev().enumerate() {
            let cout = widths[level];
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for _ in 0..=self.layers_per_block {
                let skip = skip_channels.pop().unwrap_or(cout);
                resnets.push(block(cin + skip, cout));
                if self.attention[level] {
                    attentions.push(attn(cout));
                }
                cin = cout;
            }
            let mut upsamplers = Vec::new();
            if i + 1 < levels {
                upsamplers.push(Resample::new(cout, 1, device));
            }
            up_blocks.push(UNetBlock {
                resnets,
                attentions,
                resamplers: upsamplers,
            });
        }

        let conv3 = |cin: usize, cout: usize| {
            Conv2dConfig::new([cin, cout], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        UNet {
            conv_in: conv3(self.image_channels, widths[0]),
            time_embedding: TimestepEmbedding {
                linear_1: LinearConfig::new(widths[0], temb).init(device),
                linear_2: LinearConfig::new(temb, temb).init(device),
            },
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNormConfig::new(self.norm_groups, widths[0]).init(device),
            conv_out: conv3(widths[0], self.image_channels),
            time_proj_dim: widths[0],
        }
    }
}

/// The noise-prediction network ε_θ(x_t, t).
#[derive(Module, Debug)]
pub struct UNet {
    /// First 3×3 convolution, image channels → first width.
    pub conv_in: Conv2d,
    /// MLP on the sinusoidal timestep features.
    pub time_embedding: TimestepEmbedding,
    /// Encoder levels, finest first.
    pub down_blocks: Vec<UNetBlock>,
    /// Bottleneck: resnet, attention, resnet.
    pub mid_block: MidBlock,
    /// Decoder levels, coarsest first.
    pub up_blocks: Vec<UNetBlock>,
    /// Final GroupNorm.
    pub conv_norm_out: GroupNorm,
    /// Final 3×3 convolution back to image channels.
    pub conv_out: Conv2d,
    /// Width of the sinusoidal timestep features.
    pub time_proj_dim: usize,
}

impl UNet {
    /// Predicts the noise in `x` ([batch, C, H, W]) at the integer steps `t` ([batch]).
    pub fn forward(&self, x: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
        self.forward_with(x, t, &mut NoTape)
    }

    /// [`Self::forward`], reporting every Linear and Conv2d to `tape`.
    pub fn forward_with(&self, x: Tensor<4>, t: Tensor<1>, tape: &mut impl Tape) -> Tensor<4> {
        let temb = self
            .time_embedding
            .forward(timestep_features(t, self.time_proj_dim), tape);
        let mut h = conv(&self.conv_in, x, tape);
        let mut skips = vec![h.clone()];
        for block in &self.down_blocks {
            for (i, resnet) in block.resnets.iter().enumerate() {
                h = resnet.forward(h, &temb, tape);
                if let Some(attn) = block.attentions.get(i) {
                    h = attn.forward(h, tape);
                }
                skips.push(h.clone());
            }
            for down in &block.resamplers {
                h = down.forward(h, tape);
                skips.push(h.clone());
            }
        }
        h = self.mid_block.resnets[0].forward(h, &temb, tape);
        h = self.mid_block.attentions[0].forward(h, tape);
        h = self.mid_block.resnets[1].forward(h, &temb, tape);
        for block in &self.up_blocks {
            for (i, resnet) in block.resnets.iter().enumerate() {
                let skip = skips.pop().expect("the decoder consumes exactly the encoder's skips");
                h = resnet.forward(Tensor::cat(vec![h, skip], 1), &temb, tape);
                if let Some(attn) = block.attentions.get(i) {
                    h = attn.forward(h, tape);
                }
            }
            for up in &block.resamplers {
                h = up.forward(upsample_nearest2x(h), tape);
            }
        }
        let h = silu(self.conv_norm_out.forward(h));
        conv(&self.conv_out, h, tape)
    }
}

/// Sinusoidal features of the timesteps ([batch] → [batch, dim]) as diffusers' `Timesteps`
/// with `flip_sin_to_cos = true` and no frequency shift: [cos(t·f_k), sin(t·f_k)] with
/// f_k = 10000^(−k/(dim/2)).
pub fn timestep_features(t: Tensor<1>, dim: usize) -> Tensor<2> {
    let half = dim / 2;
    let device = t.device();
    let freqs: Vec<f32> = (0..half)
        .map(|k| (-(10000f64.ln()) * k as f64 / half as f64).exp() as f32)
        .collect();
    let freqs = Tensor::<1>::from_floats(freqs.as_slice(), &device).unsqueeze_dim::<2>(0);
    let args = t.unsqueeze_dim::<2>(1).matmul(freqs);
    Tensor::cat(vec![args.clone().cos(), args.sin()], 1)
}

/// Nearest-neighbour ×2 upsampling of [batch, C, H, W].
fn upsample_nearest2x(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1])
        .expand([b, c, h, 2, w, 2])
        .reshape([b, c, 2 * h, 2 * w])
}

/// Two-layer MLP on the timestep features (diffusers' `TimestepEmbedding`).
#[derive(Module, Debug)]
pub struct TimestepEmbedding {
    /// Features → embedding.
    pub linear_1: Linear,
    /// Embedding → embedding.
    pub linear_2: Linear,
}

impl TimestepEmbedding {
    fn forward(&self, features: Tensor<2>, tape: &mut impl Tape) -> Tensor<2> {
        let h = dense(&self.linear_1, features.unsqueeze_dim(1), tape);
        dense(&self.linear_2, silu(h), tape).squeeze_dim(1)
    }
}

/// One resolution level: residual blocks, their attention layers, and a resampler.
#[derive(Module, Debug)]
pub struct UNetBlock {
    /// Residual blocks.
    pub resnets: Vec<ResnetBlock>,
    /// One attention per residual block, or none.
    pub attentions: Vec<Attention>,
    /// Zero or one down- or upsampling convolution.
    pub resamplers: Vec<Resample>,
}

/// The bottleneck block.
#[derive(Module, Debug)]
pub struct MidBlock {
    /// Two residual blocks.
    pub resnets: Vec<ResnetBlock>,
    /// One attention between them.
    pub attentions: Vec<Attention>,
}

/// A 3×3 convolution that halves the resolution (stride 2) or keeps it (after upsampling).
#[derive(Module, Debug)]
pub struct Resample {
    /// The convolution.
    pub conv: Conv2d,
}

impl Resample {
    fn new(channels: usize, stride: usize, device: &Device) -> Self {
        let conv = Conv2dConfig::new([channels, channels], [3, 3])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(device);
        Self { conv }
    }

    fn forward(&self, x: Tensor<4>, tape: &mut impl Tape) -> Tensor<4> {
        conv(&self.conv, x, tape)
    }
}

/// diffusers' `ResnetBlock2D`: GroupNorm, SiLU, conv, + projected time embedding, GroupNorm,
/// SiLU, conv, plus a (1×1-projected) shortcut.
#[derive(Module, Debug)]
pub struct ResnetBlock {
    /// Norm before the first convolution.
    pub norm1: GroupNorm,
    /// First 3×3 convolution.
    pub conv1: Conv2d,
    /// Projection of the time embedding to a per-channel shift.
    pub time_emb_proj: Linear,
    /// Norm before the second convolution.
    pub norm2: GroupNorm,
    /// Second 3×3 convolution.
    pub conv2: Conv2d,
    /// 1×1 shortcut when the width changes.
    pub conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    fn new(cin: usize, cout: usize, temb: usize, groups: usize, device: &Device) -> Self {
        let conv3 = |a: usize, b: usize| {
            Conv2dConfig::new([a, b], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        Self {
            norm1: GroupNormConfig::new(groups, cin).init(device),
            conv1: conv3(cin, cout),
            time_emb_proj: LinearConfig::new(temb, cout).init(device),
            norm2: GroupNormConfig::new(groups, cout).init(device),
            conv2: conv3(cout, cout),
            conv_shortcut: (cin != cout).then(|| Conv2dConfig::new([cin, cout], [1, 1]).init(device)),
        }
    }

    fn forward(&self, x: Tensor<4>, temb: &Tensor<2>, tape: &mut impl Tape) -> Tensor<4> {
        let h = conv(&self.conv1, silu(self.norm1.forward(x.clone())), tape);
        let shift = dense(&self.time_emb_proj, silu(temb.clone()).unsqueeze_dim(1), tape);
        let [b, c] = [shift.dims()[0], shift.dims()[2]];
        let h = h + shift.reshape([b, c, 1, 1]);
        let h = conv(&self.conv2, silu(self.norm2.forward(h)), tape);
        let shortcut = match &self.conv_shortcut {
            Some(s) => conv(s, x, tape),
            None => x,
        };
        shortcut + h
    }
}

/// Single-block self-attention with a GroupNorm and a residual (diffusers' `Attention` as used
/// by `AttnDownBlock2D`).
#[derive(Module, Debug)]
pub struct Attention {
    /// Norm of the input.
    pub group_norm: GroupNorm,
    /// Query projection.
    pub to_q: Linear,
    /// Key projection.
    pub to_k: Linear,
    /// Value projection.
    pub to_v: Linear,
    /// Output projection (diffusers' `to_out.0`).
    pub to_out: Linear,
    /// Number of heads.
    pub heads: usize,
}

impl Attention {
    fn new(channels: usize, groups: usize, heads: usize, device: &Device) -> Self {
        let lin = || LinearConfig::new(channels, channels).init(device);
        Self {
            group_norm: GroupNormConfig::new(groups, channels).init(device),
            to_q: lin(),
            to_k: lin(),
            to_v: lin(),
            to_out: lin(),
            heads: heads.max(1),
        }
    }

    fn forward(&self, x: Tensor<4>, tape: &mut impl Tape) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let (p, heads) = (h * w, self.heads);
        let hd = c / heads;
        let tokens = self.group_norm.forward(x.clone()).reshape([b, c, p]).swap_dims(1, 2);
        let split = |t: Tensor<3>| t.reshape([b, p, heads, hd]).swap_dims(1, 2);
        let q = split(dense(&self.to_q, tokens.clone(), tape));
        let k = split(dense(&self.to_k, tokens.clone(), tape));
        let v = split(dense(&self.to_v, tokens, tape));
        let weights = softmax(q.matmul(k.swap_dims(2, 3)).mul_scalar(1.0 / (hd as f64).sqrt()), 3);
        let mixed = weights.matmul(v).swap_dims(1, 2).reshape([b, p, c]);
        let out = dense(&self.to_out, mixed, tape);
        x + out.swap_dims(1, 2).reshape([b, c, h, w])
    }
}
