//! A U-Net with the structure and parameter names of diffusers' `UNet2DModel` (Ho et al. 2020;
//! von Platen et al., diffusers): residual blocks with GroupNorm and SiLU, a sinusoidal timestep
//! embedding, optional self-attention per resolution, nearest-neighbour upsampling and strided
//! convolution downsampling. Module paths (`down_blocks.0.resnets.0.conv1.weight`, …) follow
//! diffusers so PyTorch checkpoints can be mapped onto it.
//!
//! Every Linear and Conv2d call goes through a [`Tape`], so that gradient capture can read
//! layer inputs and attach probes to layer outputs without a second copy of the model code.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::{gelu, mish, silu, softmax};
use burn::tensor::ops::PadMode;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::condition::ConditionEncoding;
use super::error::ConfigError;

/// `model` with ids derived from its parameters' paths and every parameter made now. burn makes
/// a parameter's initial value lazily, at its first use; a seeded initialisation must draw all
/// its numbers while it holds the generator ([`crate::device::drawing`]), or another thread's
/// draws interleave with them and the same seed gives other weights (two trainings in one
/// process, a viewer job beside another).
pub(crate) fn materialised<M: Module>(model: M) -> M {
    struct MakeNow;
    impl burn::module::ModuleVisitor for MakeNow {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            let _ = param.val();
        }
    }
    let model = super::checkpoint::with_path_ids(model);
    model.visit(&mut MakeNow);
    model
}

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
    /// Predicts the noise in `x` ([batch, C, H, W]) at the integer steps `t` ([batch]) under
    /// the condition rows `condition` ([`ConditionEncoding::rows`]), reporting every Linear and
    /// Conv2d to `tape`.
    fn predict_with(&self, x: Tensor<4>, t: Tensor<1>, condition: Option<Tensor<2>>, tape: &mut impl Tape)
    -> Tensor<4>;

    /// How the network reads conditions (unconditional unless it says otherwise).
    fn condition_encoding(&self) -> ConditionEncoding {
        ConditionEncoding::Unconditional
    }
}

impl Denoiser for UNet {
    fn predict_with(
        &self,
        x: Tensor<4>,
        t: Tensor<1>,
        condition: Option<Tensor<2>>,
        tape: &mut impl Tape,
    ) -> Tensor<4> {
        self.forward_with(x, t, condition, tape)
    }

    fn condition_encoding(&self) -> ConditionEncoding {
        self.options.condition_encoding
    }
}

/// A tape that records nothing: the plain forward pass.
pub struct NoTape;
impl Tape for NoTape {}

/// `layer` on `x`, reported to `tape`.
pub(crate) fn conv(layer: &Conv2d, x: Tensor<4>, tape: &mut impl Tape) -> Tensor<4> {
    let y = layer.forward(x.clone());
    tape.conv(layer, &x, y)
}

/// `layer` on `x`, reported to `tape`.
pub(crate) fn dense(layer: &Linear, x: Tensor<3>, tape: &mut impl Tape) -> Tensor<3> {
    let y = layer.forward(x.clone());
    tape.dense(layer, &x, y)
}

/// The nonlinearity of the residual blocks (diffusers' `act_fn`; as in diffusers, the timestep
/// MLP and the output keep SiLU whatever it is).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// x·σ(x) (diffusers' `silu`, also called `swish`).
    #[default]
    Silu,
    /// x·tanh(softplus(x)).
    Mish,
    /// x·Φ(x), the exact (erf) form.
    Gelu,
}

impl Activation {
    /// Applies the nonlinearity elementwise.
    pub fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Self::Silu => silu(x),
            Self::Mish => mish(x),
            Self::Gelu => gelu(x),
        }
    }
}

/// Architecture of a [`UNet`]; named presets come from [`UNetConfig::named`]. Every option
/// after `attention_head_dim` mirrors a field of diffusers' `UNet2DModel` config, with
/// retrace's historical choice as its default ([`UNetConfig::new`]), which is also what older
/// `model.json` files that lack it mean.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    pub layers_per_block: usize,
    /// GroupNorm groups.
    pub norm_groups: usize,
    /// Channels per attention head; `None` gives every attention layer a single head as wide as
    /// its level (diffusers' `attention_head_dim: null`, as in DDPM's CIFAR-10 model).
    pub attention_head_dim: Option<usize>,
    /// GroupNorm ε (diffusers' `norm_eps`).
    #[serde(default = "defaults::norm_eps")]
    pub norm_eps: f64,
    /// Nonlinearity of the residual blocks (diffusers' `act_fn`).
    #[serde(default)]
    pub activation: Activation,
    /// Timestep features ordered [cos, sin] (true) or [sin, cos] (diffusers' `flip_sin_to_cos`).
    #[serde(default = "defaults::yes")]
    pub flip_sin_to_cos: bool,
    /// Frequency shift s of the timestep features, f_k = 10000^(−k/(dim/2 − s)) (diffusers'
    /// `freq_shift`; DDPM's models use 1).
    #[serde(default)]
    pub freq_shift: f64,
    /// Padding of the stride-2 downsampling convolutions: 1 on every side, or 0 after one row
    /// and one column of zeros are added at the bottom and right (diffusers'
    /// `downsample_padding`; DDPM's CIFAR-10 model uses 0).
    #[serde(default = "defaults::one")]
    pub downsample_padding: usize,
    /// The bottleneck's residual and attention outputs are divided by this (diffusers'
    /// `mid_block_scale_factor`).
    #[serde(default = "defaults::one_f")]
    pub mid_block_scale_factor: f64,
    /// Whether inputs are mapped x ↦ 2x − 1 first (diffusers' `center_input_sample`).
    #[serde(default)]
    pub center_input_sample: bool,
    /// Whether the bottleneck carries self-attention (diffusers' `add_attention`).
    #[serde(default = "defaults::yes")]
    pub mid_attention: bool,
    /// Width of the timestep embedding; `None` is 4× the first level (diffusers'
    /// `time_embedding_dim`).
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    /// Rows of the class-embedding table of a class-conditional model (diffusers'
    /// `num_class_embeds`); `None` for an unconditional one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_class_embeds: Option<usize>,
    /// How class labels are embedded: a table (`None`, with `num_class_embeds`) or sinusoidal
    /// features and an MLP (diffusers' `class_embed_type: "timestep"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_embed_type: Option<ClassEmbedType>,
    /// The label that means "no class" (classifier-free guidance, label dropout): retrace's
    /// `train --conditional` adds one row for it after the data's classes; a model from outside
    /// may have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub null_class: Option<u32>,
}

/// diffusers' `class_embed_type` values retrace builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassEmbedType {
    /// The label's sinusoidal features (as the timestep's) through a `TimestepEmbedding` MLP.
    Timestep,
}

/// Most rows of a class-embedding table.
pub const MAX_CLASS_EMBEDS: usize = 1 << 20;

/// Defaults of the options older `model.json` files lack.
mod defaults {
    pub fn norm_eps() -> f64 {
        1e-5
    }
    pub fn yes() -> bool {
        true
    }
    pub fn one() -> usize {
        1
    }
    pub fn one_f() -> f64 {
        1.0
    }
}

/// Most resolution levels a U-Net may have.
pub const MAX_LEVELS: usize = 8;
/// Most residual blocks per level.
pub const MAX_LAYERS_PER_BLOCK: usize = 16;
/// Most image channels.
pub const MAX_IMAGE_CHANNELS: usize = 64;
/// Largest image side.
pub const MAX_SAMPLE_SIZE: usize = 4096;
/// Most parameters (about 8 GB of f32 weights).
pub const MAX_PARAMETERS: f64 = 2e9;

/// Names of the presets [`UNetConfig::named`] knows.
pub const CONFIG_NAMES: [&str; 3] = ["tiny", "base", "ddpm-cifar10"];

impl UNetConfig {
    /// A U-Net with retrace's historical choices for everything but the image shape and the
    /// levels: one residual block per level, 8 norm groups, 8 channels per head, and diffusers'
    /// `UNet2DModel` defaults for the rest.
    pub fn new(
        image_channels: usize,
        sample_size: usize,
        block_out_channels: Vec<usize>,
        attention: Vec<bool>,
    ) -> Self {
        Self {
            image_channels,
            sample_size,
            block_out_channels,
            attention,
            layers_per_block: 1,
            norm_groups: 8,
            attention_head_dim: Some(8),
            norm_eps: defaults::norm_eps(),
            activation: Activation::Silu,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            center_input_sample: false,
            mid_attention: true,
            time_embedding_dim: None,
            num_class_embeds: None,
            class_embed_type: None,
            null_class: None,
        }
    }

    /// This architecture made class-conditional over `classes` labels plus a null class
    /// (label `classes`), with a table embedding: what `retrace train --conditional` builds.
    pub fn with_classes(self, classes: usize) -> Self {
        Self {
            num_class_embeds: Some(classes + 1),
            class_embed_type: None,
            null_class: Some(classes as u32),
            ..self
        }
    }

    /// How the network reads conditions.
    pub fn condition_encoding(&self) -> ConditionEncoding {
        match (self.class_embed_type, self.num_class_embeds) {
            (Some(ClassEmbedType::Timestep), _) => ConditionEncoding::Label {
                null_class: self.null_class,
            },
            (None, Some(classes)) => ConditionEncoding::OneHot {
                classes,
                null_class: self.null_class,
            },
            (None, None) => ConditionEncoding::Unconditional,
        }
    }

    /// A named preset for `channels`×`size`×`size` images: `tiny` (tests; seconds on a CPU),
    /// `base` (the bundled default model) or `ddpm-cifar10`, the architecture of Ho et al.'s
    /// CIFAR-10 model as diffusers' `google/ddpm-cifar10-32` configures it (widths
    /// 128/256/256/256, two residual blocks per level, one-head attention at 16×16, 35.7M
    /// parameters at 3×32×32), which the attribution papers train on CIFAR-2 and CIFAR-10.
    pub fn named(name: &str, channels: usize, size: usize) -> Option<Self> {
        Some(match name {
            "tiny" => Self {
                norm_groups: 4,
                ..Self::new(channels, size, vec![8, 16], vec![false, true])
            },
            "base" => Self::new(channels, size, vec![32, 64, 64], vec![false, false, true]),
            "ddpm-cifar10" => Self {
                layers_per_block: 2,
                norm_groups: 32,
                attention_head_dim: None,
                norm_eps: 1e-6,
                flip_sin_to_cos: false,
                freq_shift: 1.0,
                downsample_padding: 0,
                ..Self::new(
                    channels,
                    size,
                    vec![128, 256, 256, 256],
                    vec![false, true, false, false],
                )
            },
            _ => return None,
        })
    }

    /// Number of attention heads of a layer `channels` wide.
    pub fn attention_heads(&self, channels: usize) -> usize {
        self.attention_head_dim.map_or(1, |d| (channels / d).max(1))
    }

    /// Checks that the levels, groups and image size fit together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let levels = self.block_out_channels.len();
        if levels == 0 || self.attention.len() != levels {
            return Err(ConfigError(format!(
                "{} block widths and {} attention flags: need one of each per level",
                levels,
                self.attention.len()
            )));
        }
        // A config.json from outside may hold zeros; each would divide by zero or build an
        // empty layer further on.
        let sizes = [
            ("image channels", self.image_channels),
            ("image size", self.sample_size),
            ("norm groups", self.norm_groups),
            ("time embedding width", self.time_embed_dim()),
        ];
        if let Some((what, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError(format!("{what} 0: it must be at least 1")));
        }
        if self.block_out_channels.contains(&0) {
            return Err(ConfigError("a block width of 0: every level needs channels".into()));
        }
        // A config from outside may also name a network no machine can hold; refuse it here,
        // before anything allocates it (the caps are far beyond any model retrace attributes).
        let caps = [
            ("resolution levels", levels, MAX_LEVELS),
            ("resnets per level", self.layers_per_block, MAX_LAYERS_PER_BLOCK),
            ("image channels", self.image_channels, MAX_IMAGE_CHANNELS),
            ("image size", self.sample_size, MAX_SAMPLE_SIZE),
        ];
        if let Some((what, value, cap)) = caps.iter().find(|(_, value, cap)| value > cap) {
            return Err(ConfigError(format!("{what} {value}: retrace handles at most {cap}")));
        }
        let parameters = self.estimated_parameters();
        if parameters > MAX_PARAMETERS {
            return Err(ConfigError(format!(
                "about {parameters:.1e} parameters ({:.0} GB as f32): retrace handles at most {MAX_PARAMETERS:.0e}",
                parameters * 4e-9
            )));
        }
        if let Some(w) = self.block_out_channels.iter().find(|&&w| w % self.norm_groups != 0) {
            return Err(ConfigError(format!(
                "block width {w} is not divisible by {} norm groups",
                self.norm_groups
            )));
        }
        let last = self.block_out_channels[levels - 1];
        let attended = self
            .block_out_channels
            .iter()
            .zip(&self.attention)
            .filter_map(|(w, a)| a.then_some(*w))
            .chain(self.mid_attention.then_some(last));
        if let Some(head_dim) = self.attention_head_dim {
            if head_dim == 0 {
                return Err(ConfigError(
                    "attention head dim 0: heads need at least one channel".into(),
                ));
            }
            if let Some(w) = attended.into_iter().find(|w| w % head_dim != 0) {
                return Err(ConfigError(format!(
                    "attention width {w} is not divisible by head dim {head_dim}"
                )));
            }
        }
        if let Some(classes) = self.num_class_embeds
            && !(1..=MAX_CLASS_EMBEDS).contains(&classes)
        {
            return Err(ConfigError(format!(
                "{classes} class embeddings (diffusers' num_class_embeds): retrace handles 1 to {MAX_CLASS_EMBEDS}"
            )));
        }
        match (self.null_class, self.condition_encoding()) {
            (Some(_), ConditionEncoding::Unconditional) => {
                return Err(ConfigError("a null class on an unconditional model".into()));
            }
            (Some(null), ConditionEncoding::OneHot { classes, .. }) if null as usize >= classes => {
                return Err(ConfigError(format!(
                    "null class {null} is outside the {classes} class embeddings"
                )));
            }
            _ => {}
        }
        if self.downsample_padding > 1 {
            return Err(ConfigError(format!(
                "downsample padding {} (diffusers' downsample_padding): only 0 and 1 are supported",
                self.downsample_padding
            )));
        }
        if !(self.norm_eps > 0.0 && self.norm_eps.is_finite()) {
            return Err(ConfigError(format!("norm ε {} must be positive", self.norm_eps)));
        }
        if !(self.mid_block_scale_factor > 0.0 && self.mid_block_scale_factor.is_finite()) {
            return Err(ConfigError(format!(
                "mid-block scale factor {} must be positive",
                self.mid_block_scale_factor
            )));
        }
        let half = self.block_out_channels[0] / 2;
        if half == 0 || self.freq_shift >= half as f64 {
            return Err(ConfigError(format!(
                "frequency shift {} leaves no timestep frequencies for a first level {} wide",
                self.freq_shift, self.block_out_channels[0]
            )));
        }
        let factor = 1usize << (levels - 1);
        if !self.sample_size.is_multiple_of(factor) {
            return Err(ConfigError(format!(
                "image size {} is not divisible by {factor}, which {levels} resolution levels need",
                self.sample_size
            )));
        }
        Ok(())
    }

    /// Width of the timestep embedding (4× the first level unless set, as in diffusers).
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or(self.block_out_channels.first().map_or(0, |w| w.saturating_mul(4)))
    }

    /// An upper estimate of the parameter count, computed without building anything: each
    /// level's residual blocks (down, and up with the skip concatenated) as two 3×3
    /// convolutions as wide as twice the level, their time projections, and the time MLP.
    pub fn estimated_parameters(&self) -> f64 {
        let time = self.time_embed_dim() as f64;
        let blocks = (2 * self.layers_per_block.min(MAX_LAYERS_PER_BLOCK) + 1) as f64;
        let levels: f64 = self
            .block_out_channels
            .iter()
            .map(|&w| {
                let w = w as f64;
                blocks * (2.0 * 9.0 * 4.0 * w * w + time * w)
            })
            .sum();
        let classes = match self.condition_encoding() {
            ConditionEncoding::OneHot { classes, .. } => classes as f64 * time,
            ConditionEncoding::Label { .. } => 2.0 * time * time,
            ConditionEncoding::Unconditional => 0.0,
        };
        levels + 2.0 * time * time + classes
    }

    /// Builds the network with freshly initialised weights. Call [`Self::validate`] first.
    /// The weights come from burn's generator, which one process shares: the draws are made
    /// under [`crate::device::drawing`], so no other initialisation interleaves with them.
    pub fn init(&self, device: &Device) -> UNet {
        crate::device::drawing(device, None, || materialised(self.build(device)))
    }

    /// [`Self::init`] from the generator seeded with `seed`: the same weights for the same
    /// seed, whatever else the process initialises at the same time.
    pub fn init_seeded(&self, device: &Device, seed: u64) -> UNet {
        crate::device::drawing(device, Some(seed), || materialised(self.build(device)))
    }

    fn build(&self, device: &Device) -> UNet {
        let widths = &self.block_out_channels;
        let temb = self.time_embed_dim();
        let norm = |c: usize| {
            GroupNormConfig::new(self.norm_groups, c)
                .with_epsilon(self.norm_eps)
                .init(device)
        };
        let block = |cin: usize, cout: usize| ResnetBlock::new(cin, cout, temb, norm, device);
        let attn = |c: usize| Attention::new(c, norm(c), self.attention_heads(c), device);
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
                downsamplers.push(Resample::down(cout, self.downsample_padding, device));
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
            attentions: if self.mid_attention {
                vec![attn(last)]
            } else {
                Vec::new()
            },
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
                upsamplers.push(Resample::up(cout, device));
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
            time_embedding: TimestepEmbedding::new(widths[0], temb, device),
            class_embedding: match self.condition_encoding() {
                ConditionEncoding::OneHot { classes, .. } => {
                    Some(LinearConfig::new(classes, temb).with_bias(false).init(device))
                }
                _ => None,
            },
            class_timestep_embedding: matches!(self.condition_encoding(), ConditionEncoding::Label { .. })
                .then(|| TimestepEmbedding::new(widths[0], temb, device)),
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: norm(widths[0]),
            conv_out: conv3(widths[0], self.image_channels),
            time_proj_dim: widths[0],
            options: ForwardOptions {
                activation: self.activation,
                flip_sin_to_cos: self.flip_sin_to_cos,
                freq_shift: self.freq_shift,
                mid_block_scale_factor: self.mid_block_scale_factor,
                center_input_sample: self.center_input_sample,
                condition_encoding: self.condition_encoding(),
            },
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
    /// Class-embedding table of a class-conditional model: a bias-free Linear on one-hot rows
    /// (diffusers' `class_embedding`, an `nn.Embedding` of the same [classes, dim] weights).
    pub class_embedding: Option<Linear>,
    /// MLP on the labels' sinusoidal features (diffusers' `class_embedding` when
    /// `class_embed_type` is `"timestep"`).
    pub class_timestep_embedding: Option<TimestepEmbedding>,
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
    /// The architecture's weight-free choices.
    #[module(skip)]
    pub options: ForwardOptions,
}

/// The weight-free parts of the architecture that the forward pass reads (from [`UNetConfig`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ForwardOptions {
    /// Nonlinearity.
    pub activation: Activation,
    /// Timestep features ordered [cos, sin] rather than [sin, cos].
    pub flip_sin_to_cos: bool,
    /// Frequency shift of the timestep features.
    pub freq_shift: f64,
    /// Divisor of the bottleneck's residual and attention outputs.
    pub mid_block_scale_factor: f64,
    /// Whether inputs are mapped x ↦ 2x − 1 first.
    pub center_input_sample: bool,
    /// How conditions are read.
    pub condition_encoding: ConditionEncoding,
}

impl UNet {
    /// Predicts the noise in `x` ([batch, C, H, W]) at the integer steps `t` ([batch]) under
    /// the condition rows `condition` ([`ConditionEncoding::rows`]; `None` for an
    /// unconditional model).
    pub fn forward(&self, x: Tensor<4>, t: Tensor<1>, condition: Option<Tensor<2>>) -> Tensor<4> {
        self.forward_with(x, t, condition, &mut NoTape)
    }

    /// How the network reads conditions.
    pub fn condition_encoding(&self) -> ConditionEncoding {
        self.options.condition_encoding
    }

    /// [`Self::forward`], reporting every Linear and Conv2d to `tape`.
    ///
    /// # Panics
    /// When a class-conditional network gets no condition rows: [`ConditionEncoding::rows`]
    /// makes them for every condition it accepts.
    pub fn forward_with(
        &self,
        x: Tensor<4>,
        t: Tensor<1>,
        condition: Option<Tensor<2>>,
        tape: &mut impl Tape,
    ) -> Tensor<4> {
        let o = self.options;
        let act = o.activation;
        let x = if o.center_input_sample { x * 2.0 - 1.0 } else { x };
        let features = timestep_features(t, self.time_proj_dim, o.flip_sin_to_cos, o.freq_shift);
        let mut temb = self.time_embedding.forward(features, tape);
        if o.condition_encoding.is_conditional() {
            let rows = condition.expect("a class-conditional U-Net needs condition rows");
            temb = temb + self.class_embed(rows, tape);
        }
        let mut h = conv(&self.conv_in, x, tape);
        let mut skips = vec![h.clone()];
        for block in &self.down_blocks {
            for (i, resnet) in block.resnets.iter().enumerate() {
                h = resnet.forward(h, &temb, act, 1.0, tape);
                if let Some(attn) = block.attentions.get(i) {
                    h = attn.forward(h, 1.0, tape);
                }
                skips.push(h.clone());
            }
            for down in &block.resamplers {
                h = down.forward(h, tape);
                skips.push(h.clone());
            }
        }
        let scale = o.mid_block_scale_factor;
        h = self.mid_block.resnets[0].forward(h, &temb, act, scale, tape);
        if let Some(attn) = self.mid_block.attentions.first() {
            h = attn.forward(h, scale, tape);
        }
        h = self.mid_block.resnets[1].forward(h, &temb, act, scale, tape);
        for block in &self.up_blocks {
            for (i, resnet) in block.resnets.iter().enumerate() {
                let skip = skips.pop().expect("the decoder consumes exactly the encoder's skips");
                h = resnet.forward(Tensor::cat(vec![h, skip], 1), &temb, act, 1.0, tape);
                if let Some(attn) = block.attentions.get(i) {
                    h = attn.forward(h, 1.0, tape);
                }
            }
            for up in &block.resamplers {
                h = up.forward(upsample_nearest2x(h), tape);
            }
        }
        let h = silu(self.conv_norm_out.forward(h));
        conv(&self.conv_out, h, tape)
    }

    /// The class embedding of condition rows ([batch, time embedding width]), added to the
    /// time embedding as diffusers' `UNet2DModel` does.
    fn class_embed(&self, rows: Tensor<2>, tape: &mut impl Tape) -> Tensor<2> {
        if let Some(table) = &self.class_embedding {
            return dense(table, rows.unsqueeze_dim(1), tape).squeeze_dim(1);
        }
        let o = self.options;
        let mlp = self
            .class_timestep_embedding
            .as_ref()
            .expect("a conditional U-Net has a class embedding");
        let [batch, _] = rows.dims();
        let features = timestep_features(
            rows.reshape([batch]),
            self.time_proj_dim,
            o.flip_sin_to_cos,
            o.freq_shift,
        );
        mlp.forward(features, tape)
    }
}

/// Sinusoidal features of the timesteps ([batch] → [batch, dim]) as diffusers' `Timesteps`:
/// sin(t·f_k) and cos(t·f_k) with f_k = 10000^(−k/(dim/2 − shift)), cosines first when
/// `flip_sin_to_cos`, and a zero column when `dim` is odd.
pub fn timestep_features(t: Tensor<1>, dim: usize, flip_sin_to_cos: bool, shift: f64) -> Tensor<2> {
    let half = dim / 2;
    let device = t.device();
    let freqs: Vec<f32> = (0..half)
        .map(|k| (-(10000f64.ln()) * k as f64 / (half as f64 - shift)).exp() as f32)
        .collect();
    let freqs = Tensor::<1>::from_floats(freqs.as_slice(), &device).unsqueeze_dim::<2>(0);
    let args = t.unsqueeze_dim::<2>(1).matmul(freqs);
    let (sin, cos) = (args.clone().sin(), args.cos());
    let features = if flip_sin_to_cos {
        Tensor::cat(vec![cos, sin], 1)
    } else {
        Tensor::cat(vec![sin, cos], 1)
    };
    if dim % 2 == 1 {
        features.pad([(0, 1)], PadMode::Constant(0.0))
    } else {
        features
    }
}

/// Nearest-neighbour ×2 upsampling of [batch, C, H, W].
pub(crate) fn upsample_nearest2x(x: Tensor<4>) -> Tensor<4> {
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
    pub(crate) fn new(features: usize, width: usize, device: &Device) -> Self {
        Self {
            linear_1: LinearConfig::new(features, width).init(device),
            linear_2: LinearConfig::new(width, width).init(device),
        }
    }

    pub(crate) fn forward(&self, features: Tensor<2>, tape: &mut impl Tape) -> Tensor<2> {
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
    /// Whether a row and a column of zeros are added at the bottom and right before an
    /// unpadded convolution (diffusers' `Downsample2D` with padding 0).
    pub pad_bottom_right: bool,
}

impl Resample {
    /// The stride-2 downsampler with diffusers' `downsample_padding` (0 or 1).
    pub(crate) fn down(channels: usize, padding: usize, device: &Device) -> Self {
        let conv = Conv2dConfig::new([channels, channels], [3, 3])
            .with_stride([2, 2])
            .with_padding(if padding == 0 {
                PaddingConfig2d::Valid
            } else {
                PaddingConfig2d::Explicit(padding, padding, padding, padding)
            })
            .init(device);
        Self {
            conv,
            pad_bottom_right: padding == 0,
        }
    }

    /// The convolution after nearest-neighbour upsampling.
    pub(crate) fn up(channels: usize, device: &Device) -> Self {
        let conv = Conv2dConfig::new([channels, channels], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(device);
        Self {
            conv,
            pad_bottom_right: false,
        }
    }

    pub(crate) fn forward(&self, x: Tensor<4>, tape: &mut impl Tape) -> Tensor<4> {
        let x = if self.pad_bottom_right {
            x.pad([(0, 1), (0, 1)], PadMode::Constant(0.0))
        } else {
            x
        };
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
    fn new(cin: usize, cout: usize, temb: usize, norm: impl Fn(usize) -> GroupNorm, device: &Device) -> Self {
        let conv3 = |a: usize, b: usize| {
            Conv2dConfig::new([a, b], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        Self {
            norm1: norm(cin),
            conv1: conv3(cin, cout),
            time_emb_proj: LinearConfig::new(temb, cout).init(device),
            norm2: norm(cout),
            conv2: conv3(cout, cout),
            conv_shortcut: (cin != cout).then(|| Conv2dConfig::new([cin, cout], [1, 1]).init(device)),
        }
    }

    /// The block on `x` with time embedding `temb`; the sum with the shortcut is divided by
    /// `scale` (diffusers' `output_scale_factor`).
    fn forward(&self, x: Tensor<4>, temb: &Tensor<2>, act: Activation, scale: f64, tape: &mut impl Tape) -> Tensor<4> {
        let parts = ResidualPath {
            norm1: &self.norm1,
            conv1: &self.conv1,
            time_emb_proj: Some(&self.time_emb_proj),
            norm2: &self.norm2,
            conv2: &self.conv2,
            shortcut: self.conv_shortcut.as_ref(),
        };
        parts.forward(x, Some(temb), act, scale, tape)
    }
}

/// The layers of diffusers' `ResnetBlock2D`: GroupNorm, activation, conv, a per-channel shift
/// projected from the time embedding (when the block has one), GroupNorm, activation, conv,
/// plus the (1×1-projected) shortcut. The U-Net's blocks add the time embedding; the
/// autoencoder's (`temb_channels=None`) do not. Layers reach the tape in this order.
pub(crate) struct ResidualPath<'a> {
    /// Norm before the first convolution.
    pub norm1: &'a GroupNorm,
    /// First convolution.
    pub conv1: &'a Conv2d,
    /// Projection of the time embedding to the shift.
    pub time_emb_proj: Option<&'a Linear>,
    /// Norm before the second convolution.
    pub norm2: &'a GroupNorm,
    /// Second convolution.
    pub conv2: &'a Conv2d,
    /// Shortcut projection, when the width changes.
    pub shortcut: Option<&'a Conv2d>,
}

impl ResidualPath<'_> {
    /// The block on `x` with the time embedding `temb` ([batch, width]; read only by a block
    /// with a time projection); the sum with the shortcut is divided by `scale` (diffusers'
    /// `output_scale_factor`).
    pub(crate) fn forward(
        &self,
        x: Tensor<4>,
        temb: Option<&Tensor<2>>,
        act: Activation,
        scale: f64,
        tape: &mut impl Tape,
    ) -> Tensor<4> {
        let mut h = conv(self.conv1, act.apply(self.norm1.forward(x.clone())), tape);
        if let (Some(projection), Some(temb)) = (self.time_emb_proj, temb) {
            let shift = dense(projection, act.apply(temb.clone()).unsqueeze_dim(1), tape);
            let [b, _, c] = shift.dims();
            h = h + shift.reshape([b, c, 1, 1]);
        }
        let h = conv(self.conv2, act.apply(self.norm2.forward(h)), tape);
        let shortcut = match self.shortcut {
            Some(s) => conv(s, x, tape),
            None => x,
        };
        rescale(shortcut + h, scale)
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
    pub(crate) fn new(channels: usize, group_norm: GroupNorm, heads: usize, device: &Device) -> Self {
        let lin = || LinearConfig::new(channels, channels).init(device);
        Self {
            group_norm,
            to_q: lin(),
            to_k: lin(),
            to_v: lin(),
            to_out: lin(),
            heads: heads.max(1),
        }
    }

    /// Attention with its residual, divided by `scale` (diffusers' `rescale_output_factor`).
    pub(crate) fn forward(&self, x: Tensor<4>, scale: f64, tape: &mut impl Tape) -> Tensor<4> {
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
        rescale(x + out.swap_dims(1, 2).reshape([b, c, h, w]), scale)
    }
}

/// `x / scale`, skipped for the common scale of 1.
fn rescale(x: Tensor<4>, scale: f64) -> Tensor<4> {
    if scale == 1.0 { x } else { x / scale }
}
