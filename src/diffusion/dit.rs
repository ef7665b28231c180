//! A diffusion transformer with the structure and parameter names of diffusers'
//! `DiTTransformer2DModel` (Peebles & Xie 2023): the image cut into p×p patches by a strided
//! convolution, fixed 2-D sine-cosine positions added, transformer blocks conditioned by
//! adaLN-Zero on the timestep and the class, and a modulated read-out back to patches.
//!
//! As in diffusers, every block's `norm1` carries its own timestep and class embedding
//! (`norm1.emb`: sinusoidal features of 256 channels with frequency shift 1 through a
//! `TimestepEmbedding`, plus a label table with one extra row, the null class), and the final
//! layer reads the first block's. The output has `out_channels` channels; with learned variance
//! (DiT's `2 × in_channels`) the first `in_channels` are the noise prediction ε and the rest the
//! variance interpolation, which retrace's samplers (fixed variances) do not read.
//!
//! Every Linear and Conv2d goes through the [`Tape`], the class tables included (one-hot rows
//! through bias-free Linears), so gradient capture and K-FAC see the whole network.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::condition::ConditionEncoding;
use super::error::ConfigError;
use super::unet::{Tape, TimestepEmbedding, conv, dense, timestep_features};

/// Channels of the timestep features inside `norm1.emb` (diffusers' `CombinedTimestepLabelEmbeddings`).
const TIME_FEATURES: usize = 256;
/// ε of the adaLN LayerNorms (`norm1.norm`, `norm_out`), fixed in diffusers.
const ADA_NORM_EPS: f64 = 1e-6;

/// The feed-forward nonlinearity (diffusers' `activation_fn`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FeedForwardActivation {
    /// GELU with the tanh approximation (`gelu-approximate`, DiT's).
    #[default]
    GeluApproximate,
    /// The exact (erf) GELU (`gelu`).
    Gelu,
}

/// Architecture of a [`DiT`], mirroring diffusers' `DiTTransformer2DModel` config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiTConfig {
    /// Channels of the input images (or latents).
    pub in_channels: usize,
    /// Channels of the output: `in_channels`, or twice that with learned variance.
    pub out_channels: usize,
    /// Height and width of the (square) input.
    pub sample_size: usize,
    /// Side of the square patches.
    pub patch_size: usize,
    /// Transformer blocks.
    pub num_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Channels per head (the width is heads × this).
    pub attention_head_dim: usize,
    /// Classes (diffusers' `num_embeds_ada_norm`); the label tables have one more row, the
    /// null class.
    pub num_classes: usize,
    /// ε of the feed-forward LayerNorm (`norm3`; diffusers' `norm_eps`).
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// Feed-forward nonlinearity.
    #[serde(default)]
    pub activation: FeedForwardActivation,
}

fn default_norm_eps() -> f64 {
    1e-5
}

/// Most transformer blocks.
pub const MAX_LAYERS: usize = 256;

/// Names of the presets [`DiTConfig::named`] knows.
pub const DIT_CONFIG_NAMES: [&str; 2] = ["dit-tiny", "dit-small"];

impl DiTConfig {
    /// A named preset for `classes` classes of `channels`×`size`×`size` images, patch 4 where
    /// the side allows (2 otherwise), ε prediction with learned variance as DiT's: `dit-tiny`
    /// (tests; 2 blocks of 2 heads × 16) or `dit-small` (6 blocks of 4 heads × 32).
    pub fn named(name: &str, channels: usize, size: usize, classes: usize) -> Option<Self> {
        let (num_layers, num_attention_heads, attention_head_dim) = match name {
            "dit-tiny" => (2, 2, 16),
            "dit-small" => (6, 4, 32),
            _ => return None,
        };
        Some(Self {
            in_channels: channels,
            out_channels: 2 * channels,
            sample_size: size,
            patch_size: if size.is_multiple_of(4) { 4 } else { 2 },
            num_layers,
            num_attention_heads,
            attention_head_dim,
            num_classes: classes,
            norm_eps: default_norm_eps(),
            activation: FeedForwardActivation::GeluApproximate,
        })
    }

    /// Width of the tokens (saturating, so that absurd sizes from a file fail validation instead
    /// of wrapping around).
    pub fn width(&self) -> usize {
        self.num_attention_heads.saturating_mul(self.attention_head_dim)
    }

    /// Checks the sizes against each other and retrace's caps.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let sizes = [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("sample_size", self.sample_size),
            ("patch_size", self.patch_size),
            ("num_layers", self.num_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("attention_head_dim", self.attention_head_dim),
            ("num_embeds_ada_norm", self.num_classes),
        ];
        if let Some((what, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError(format!("{what} 0: it must be at least 1")));
        }
        let caps = [
            ("in_channels", self.in_channels, super::unet::MAX_IMAGE_CHANNELS),
            ("sample_size", self.sample_size, super::unet::MAX_SAMPLE_SIZE),
            ("num_layers", self.num_layers, MAX_LAYERS),
            ("num_embeds_ada_norm", self.num_classes, super::unet::MAX_CLASS_EMBEDS),
            ("num_attention_heads", self.num_attention_heads, 65_536),
            ("attention_head_dim", self.attention_head_dim, 65_536),
            ("width", self.width(), 65_536),
        ];
        if let Some((what, value, cap)) = caps.iter().find(|(_, value, cap)| value > cap) {
            return Err(ConfigError(format!("{what} {value}: retrace handles at most {cap}")));
        }
        if self.out_channels != self.in_channels && self.out_channels != 2 * self.in_channels {
            return Err(ConfigError(format!(
                "out_channels {} with in_channels {}: retrace supports ε prediction (as many) or ε with learned \
                 variance (twice as many)",
                self.out_channels, self.in_channels
            )));
        }
        if !self.sample_size.is_multiple_of(self.patch_size) {
            return Err(ConfigError(format!(
                "sample_size {} is not divisible by patch_size {}",
                self.sample_size, self.patch_size
            )));
        }
        if !self.width().is_multiple_of(4) {
            return Err(ConfigError(format!(
                "width {} (heads × head dim): the 2-D sine-cosine positions need a multiple of 4",
                self.width()
            )));
        }
        if !(self.norm_eps > 0.0 && self.norm_eps.is_finite()) {
            return Err(ConfigError(format!("norm_eps {} must be positive", self.norm_eps)));
        }
        let parameters = self.estimated_parameters();
        if parameters > super::unet::MAX_PARAMETERS {
            return Err(ConfigError(format!(
                "about {parameters:.1e} parameters: retrace handles at most {:.0e}",
                super::unet::MAX_PARAMETERS
            )));
        }
        Ok(())
    }

    /// The parameter count, from the sizes alone.
    pub fn estimated_parameters(&self) -> f64 {
        let d = self.width() as f64;
        let p = (self.patch_size * self.patch_size) as f64;
        let per_block = (TIME_FEATURES as f64 + 1.0) * d
            + (d + 1.0) * d
            + (self.num_classes as f64 + 1.0) * d
            + (d + 1.0) * 6.0 * d
            + 4.0 * (d + 1.0) * d
            + 2.0 * 4.0 * d * d
            + 5.0 * d;
        p * self.in_channels as f64 * d
            + d
            + self.num_layers as f64 * per_block
            + (d + 1.0) * 2.0 * d
            + (d + 1.0) * p * self.out_channels as f64
    }

    /// How the network reads conditions: one-hot rows over the classes and the null class.
    pub fn condition_encoding(&self) -> ConditionEncoding {
        ConditionEncoding::OneHot {
            classes: self.num_classes + 1,
            null_class: Some(self.num_classes as u32),
        }
    }

    /// Builds the network with freshly initialised weights (call [`Self::validate`] first).
    pub fn build(&self, device: &Device) -> DiT {
        let d = self.width();
        let p = self.patch_size;
        let block = || DiTBlock {
            norm1: AdaLayerNormZero {
                emb: TimestepLabelEmbedding {
                    timestep_embedder: TimestepEmbedding::new(TIME_FEATURES, d, device),
                    class_embedder: LinearConfig::new(self.num_classes + 1, d).with_bias(false).init(device),
                },
                linear: LinearConfig::new(d, 6 * d).init(device),
            },
            attn1: SelfAttention {
                to_q: LinearConfig::new(d, d).init(device),
                to_k: LinearConfig::new(d, d).init(device),
                to_v: LinearConfig::new(d, d).init(device),
                to_out: LinearConfig::new(d, d).init(device),
                heads: self.num_attention_heads,
            },
            ff: FeedForward {
                proj_in: LinearConfig::new(d, 4 * d).init(device),
                proj_out: LinearConfig::new(4 * d, d).init(device),
            },
        };
        DiT {
            patch_embed: Conv2dConfig::new([self.in_channels, d], [p, p])
                .with_stride([p, p])
                .init(device),
            transformer_blocks: (0..self.num_layers).map(|_| block()).collect(),
            proj_out_1: LinearConfig::new(d, 2 * d).init(device),
            proj_out_2: LinearConfig::new(d, p * p * self.out_channels).init(device),
            options: DiTOptions {
                patch_size: p,
                grid: self.sample_size / p,
                in_channels: self.in_channels,
                out_channels: self.out_channels,
                norm_eps: self.norm_eps,
                activation: self.activation,
                classes: self.num_classes,
            },
        }
    }
}

/// The weight-free choices the forward pass reads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DiTOptions {
    /// Patch side.
    pub patch_size: usize,
    /// Patches per side.
    pub grid: usize,
    /// Input channels (the ε half of the output).
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// ε of `norm3`.
    pub norm_eps: f64,
    /// Feed-forward nonlinearity.
    pub activation: FeedForwardActivation,
    /// Classes (the tables have one more row, the null class).
    pub classes: usize,
}

/// The diffusion transformer ε_θ(x_t, t, y).
#[derive(Module, Debug)]
pub struct DiT {
    /// Patch embedding (diffusers' `pos_embed.proj`).
    pub patch_embed: Conv2d,
    /// The blocks.
    pub transformer_blocks: Vec<DiTBlock>,
    /// Shift and scale of the read-out from the first block's conditioning.
    pub proj_out_1: Linear,
    /// Tokens → patches.
    pub proj_out_2: Linear,
    /// The architecture's weight-free choices.
    #[module(skip)]
    pub options: DiTOptions,
}

/// One transformer block with adaLN-Zero.
#[derive(Module, Debug)]
pub struct DiTBlock {
    /// Conditioning → shift, scale and gate of attention and feed-forward.
    pub norm1: AdaLayerNormZero,
    /// Self-attention.
    pub attn1: SelfAttention,
    /// Feed-forward.
    pub ff: FeedForward,
}

/// diffusers' `AdaLayerNormZero` with its embedding.
#[derive(Module, Debug)]
pub struct AdaLayerNormZero {
    /// The block's timestep and class embedding.
    pub emb: TimestepLabelEmbedding,
    /// SiLU(conditioning) → six modulations.
    pub linear: Linear,
}

/// diffusers' `CombinedTimestepLabelEmbeddings`: timestep MLP plus class table.
#[derive(Module, Debug)]
pub struct TimestepLabelEmbedding {
    /// MLP on the 256 sinusoidal timestep features.
    pub timestep_embedder: TimestepEmbedding,
    /// Class table ([classes + 1, width]; diffusers' `class_embedder.embedding_table`).
    pub class_embedder: Linear,
}

/// Multi-head self-attention without norm or residual (diffusers' `Attention` in a
/// `BasicTransformerBlock`).
#[derive(Module, Debug)]
pub struct SelfAttention {
    /// Query projection.
    pub to_q: Linear,
    /// Key projection.
    pub to_k: Linear,
    /// Value projection.
    pub to_v: Linear,
    /// Output projection (`to_out.0`).
    pub to_out: Linear,
    /// Heads.
    pub heads: usize,
}

/// The feed-forward: Linear, GELU, Linear (diffusers' `ff.net.0.proj`, `ff.net.2`).
#[derive(Module, Debug)]
pub struct FeedForward {
    /// width → 4·width.
    pub proj_in: Linear,
    /// 4·width → width.
    pub proj_out: Linear,
}

impl DiT {
    /// How the network reads conditions: one-hot rows over the classes and the null class.
    pub fn condition_encoding(&self) -> ConditionEncoding {
        ConditionEncoding::OneHot {
            classes: self.options.classes + 1,
            null_class: Some(self.options.classes as u32),
        }
    }

    /// Predicts the noise in `x` ([batch, C, H, W]) at steps `t` ([batch]) under the one-hot
    /// class rows `condition` ([batch, classes + 1]); returns the ε half of the output.
    pub fn forward_with(&self, x: Tensor<4>, t: Tensor<1>, condition: Tensor<2>, tape: &mut impl Tape) -> Tensor<4> {
        let o = self.options;
        let [b, _, h, w] = x.dims();
        let tokens = conv(&self.patch_embed, x, tape);
        let [_, d, gh, gw] = tokens.dims();
        let mut hidden =
            tokens.reshape([b, d, gh * gw]).swap_dims(1, 2) + positions(d, o.grid, &t.device()).unsqueeze_dim(0);
        let features = timestep_features(t, TIME_FEATURES, true, 1.0);
        let mut first_conditioning = None;
        for block in &self.transformer_blocks {
            let conditioning = block.norm1.emb.forward(features.clone(), condition.clone(), tape);
            hidden = block.forward(hidden, conditioning.clone(), o, tape);
            first_conditioning.get_or_insert(conditioning);
        }
        let conditioning = first_conditioning.expect("a DiT has at least one block (validate)");
        let modulation = dense(&self.proj_out_1, silu(conditioning).unsqueeze_dim(1), tape);
        let (shift, scale) = halves(modulation);
        let hidden = layer_norm(hidden, ADA_NORM_EPS) * (scale + 1.0) + shift;
        let patches = dense(&self.proj_out_2, hidden, tape);
        let (p, c) = (o.patch_size, o.out_channels);
        let out = patches
            .reshape([b, gh, gw, p, p, c])
            .permute([0, 5, 1, 3, 2, 4])
            .reshape([b, c, h, w]);
        if c == o.in_channels {
            out
        } else {
            out.narrow(1, 0, o.in_channels)
        }
    }
}

impl TimestepLabelEmbedding {
    fn forward(&self, features: Tensor<2>, condition: Tensor<2>, tape: &mut impl Tape) -> Tensor<2> {
        let time = self.timestep_embedder.forward(features, tape);
        let class = dense(&self.class_embedder, condition.unsqueeze_dim(1), tape).squeeze_dim(1);
        time + class
    }
}

impl DiTBlock {
    fn forward(&self, x: Tensor<3>, conditioning: Tensor<2>, o: DiTOptions, tape: &mut impl Tape) -> Tensor<3> {
        let modulation = dense(&self.norm1.linear, silu(conditioning).unsqueeze_dim(1), tape);
        let [b, _, six] = modulation.dims();
        let d = six / 6;
        let part = |i: usize| modulation.clone().narrow(2, i * d, d).reshape([b, 1, d]);
        let (shift_msa, scale_msa, gate_msa) = (part(0), part(1), part(2));
        let (shift_mlp, scale_mlp, gate_mlp) = (part(3), part(4), part(5));
        let normed = layer_norm(x.clone(), ADA_NORM_EPS) * (scale_msa + 1.0) + shift_msa;
        let x = x + self.attn1.forward(normed, tape) * gate_msa;
        let normed = layer_norm(x.clone(), o.norm_eps) * (scale_mlp + 1.0) + shift_mlp;
        let hidden = dense(&self.ff.proj_in, normed, tape);
        let hidden = match o.activation {
            FeedForwardActivation::GeluApproximate => gelu_tanh(hidden),
            FeedForwardActivation::Gelu => burn::tensor::activation::gelu(hidden),
        };
        x + dense(&self.ff.proj_out, hidden, tape) * gate_mlp
    }
}

impl SelfAttention {
    fn forward(&self, x: Tensor<3>, tape: &mut impl Tape) -> Tensor<3> {
        let [b, n, d] = x.dims();
        let (heads, hd) = (self.heads, d / self.heads);
        let split = |t: Tensor<3>| t.reshape([b, n, heads, hd]).swap_dims(1, 2);
        let q = split(dense(&self.to_q, x.clone(), tape));
        let k = split(dense(&self.to_k, x.clone(), tape));
        let v = split(dense(&self.to_v, x, tape));
        let weights = softmax(q.matmul(k.swap_dims(2, 3)).mul_scalar(1.0 / (hd as f64).sqrt()), 3);
        let mixed = weights.matmul(v).swap_dims(1, 2).reshape([b, n, d]);
        dense(&self.to_out, mixed, tape)
    }
}

/// The two halves of `x` ([b, 1, 2d]) along the last axis.
fn halves(x: Tensor<3>) -> (Tensor<3>, Tensor<3>) {
    let d = x.dims()[2] / 2;
    (x.clone().narrow(2, 0, d), x.narrow(2, d, d))
}

/// LayerNorm over the last axis without an affine map.
fn layer_norm(x: Tensor<3>, eps: f64) -> Tensor<3> {
    let mean = x.clone().mean_dim(2);
    let centred = x - mean;
    let variance = centred.clone().powi_scalar(2).mean_dim(2);
    centred / (variance + eps).sqrt()
}

/// GELU with the tanh approximation: ½x(1 + tanh(√(2/π)(x + 0.044715x³))).
fn gelu_tanh(x: Tensor<3>) -> Tensor<3> {
    let inner = (x.clone() + x.clone().powi_scalar(3) * 0.044715) * (2.0 / std::f64::consts::PI).sqrt();
    x * (inner.tanh() + 1.0) * 0.5
}

/// The fixed 2-D sine-cosine positions of a `grid`×`grid` patch grid ([grid², width]), as
/// diffusers' `get_2d_sincos_pos_embed`: for the patch in row i, column j, the first half holds
/// the features of j and the second those of i, each [sin(p·ω_k), cos(p·ω_k)] with
/// ω_k = 10000^(−k/(width/4)).
pub fn positions(width: usize, grid: usize, device: &Device) -> Tensor<2> {
    let quarter = width / 4;
    let omega: Vec<f64> = (0..quarter)
        .map(|k| 1.0 / 10000f64.powf(k as f64 / quarter as f64))
        .collect();
    let features = |p: f64| -> Vec<f32> {
        let sines = omega.iter().map(|w| (p * w).sin() as f32);
        let cosines = omega.iter().map(|w| (p * w).cos() as f32);
        sines.chain(cosines).collect()
    };
    let mut values = Vec::with_capacity(grid * grid * width);
    for i in 0..grid {
        for j in 0..grid {
            values.extend(features(j as f64));
            values.extend(features(i as f64));
        }
    }
    Tensor::from_data(TensorData::new(values, [grid * grid, width]), device)
}
