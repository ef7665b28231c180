//! diffusers' `config.json` of a `UNet2DModel` and `scheduler_config.json` of a DDPM-family
//! scheduler, read into retrace's [`UNetConfig`] and [`ScheduleConfig`] and written back from
//! them. Every option retrace's network does not implement is refused by name, before any
//! weight is read. Field names and defaults are those of diffusers' `UNet2DModel.__init__` and
//! `DDPMScheduler.__init__` (diffusers 0.42), so a config that omits a field means what it
//! means to diffusers.

use serde::{Deserialize, Serialize};

use super::defaults;
use crate::diffusion::error::ConfigError;
use crate::diffusion::schedule::BetaSchedule;
use crate::diffusion::unet::{Activation, ClassEmbedType};
use crate::diffusion::{ScheduleConfig, UNetConfig};

/// The diffusers version retrace's exported configs claim to be written by.
pub const DIFFUSERS_VERSION: &str = "0.30.0";
const DOWN_PLAIN: &str = "DownBlock2D";
const DOWN_ATTENTION: &str = "AttnDownBlock2D";
const UP_PLAIN: &str = "UpBlock2D";
const UP_ATTENTION: &str = "AttnUpBlock2D";

/// `sample_size`: one side, or (height, width).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    /// Square images of this side.
    Square(usize),
    /// (height, width).
    Pair(Vec<usize>),
}

/// A `UNet2DModel`'s `config.json`, with diffusers' defaults for absent fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UNet2DModelConfig {
    /// The model class; `UNet2DModel` when present.
    #[serde(rename = "_class_name", default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// The diffusers version that wrote the file.
    #[serde(rename = "_diffusers_version", default, skip_serializing_if = "Option::is_none")]
    pub diffusers_version: Option<String>,
    /// Image side (or sides).
    #[serde(default)]
    pub sample_size: Option<SampleSize>,
    /// Input channels.
    #[serde(default = "defaults::three")]
    pub in_channels: usize,
    /// Output channels.
    #[serde(default = "defaults::three")]
    pub out_channels: usize,
    /// Map inputs x ↦ 2x − 1 first.
    #[serde(default)]
    pub center_input_sample: bool,
    /// `positional`, `fourier` or `learned`.
    #[serde(default = "positional")]
    pub time_embedding_type: String,
    /// Width of the timestep embedding (4× the first level when absent).
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    /// Frequency shift of the sinusoidal timestep features.
    #[serde(default)]
    pub freq_shift: f64,
    /// Cosines before sines in the timestep features.
    #[serde(default = "defaults::yes")]
    pub flip_sin_to_cos: bool,
    /// Encoder block types, finest first.
    #[serde(default = "default_down_blocks")]
    pub down_block_types: Vec<String>,
    /// Bottleneck block type (`UNetMidBlock2D`, or none).
    #[serde(default = "mid_block")]
    pub mid_block_type: Option<String>,
    /// Decoder block types, coarsest first.
    #[serde(default = "default_up_blocks")]
    pub up_block_types: Vec<String>,
    /// Output channels per level, finest first.
    #[serde(default = "default_widths")]
    pub block_out_channels: Vec<usize>,
    /// Residual blocks per encoder level.
    #[serde(default = "defaults::two")]
    pub layers_per_block: usize,
    /// Divisor of the bottleneck's outputs.
    #[serde(default = "one_f")]
    pub mid_block_scale_factor: f64,
    /// Padding of the downsampling convolutions.
    #[serde(default = "defaults::one")]
    pub downsample_padding: usize,
    /// `conv` or `resnet`.
    #[serde(default = "conv")]
    pub downsample_type: String,
    /// `conv` or `resnet`.
    #[serde(default = "conv")]
    pub upsample_type: String,
    /// Dropout probability in the residual blocks (training only).
    #[serde(default)]
    pub dropout: f64,
    /// Nonlinearity of the residual blocks.
    #[serde(default = "defaults::silu")]
    pub act_fn: String,
    /// Channels per attention head; null gives one head per layer.
    #[serde(default = "eight")]
    pub attention_head_dim: Option<usize>,
    /// GroupNorm groups.
    #[serde(default = "thirty_two_groups")]
    pub norm_num_groups: Option<usize>,
    /// GroupNorm groups of the attention layers (the same as the others when absent).
    #[serde(default)]
    pub attn_norm_num_groups: Option<usize>,
    /// GroupNorm ε.
    #[serde(default = "defaults::norm_eps")]
    pub norm_eps: f64,
    /// `default` (the embedding is added) or `scale_shift`.
    #[serde(default = "default_word")]
    pub resnet_time_scale_shift: String,
    /// Whether the bottleneck has attention.
    #[serde(default = "defaults::yes")]
    pub add_attention: bool,
    /// Class conditioning type.
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// Number of class embeddings.
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    /// retrace's note of the label that stands for "no class" (classifier-free guidance);
    /// diffusers drops keys that start with an underscore, so the file still loads there.
    #[serde(rename = "_retrace_null_class", default, skip_serializing_if = "Option::is_none")]
    pub null_class: Option<u32>,
    /// Steps of a learned time embedding.
    #[serde(default)]
    pub num_train_timesteps: Option<usize>,
}

fn one_f() -> f64 {
    1.0
}
fn eight() -> Option<usize> {
    Some(8)
}
fn thirty_two_groups() -> Option<usize> {
    Some(32)
}
fn positional() -> String {
    "positional".into()
}
fn conv() -> String {
    "conv".into()
}
fn default_word() -> String {
    "default".into()
}
fn mid_block() -> Option<String> {
    Some("UNetMidBlock2D".into())
}
fn default_down_blocks() -> Vec<String> {
    [DOWN_PLAIN, DOWN_ATTENTION, DOWN_ATTENTION, DOWN_ATTENTION]
        .map(String::from)
        .to_vec()
}
fn default_up_blocks() -> Vec<String> {
    [UP_ATTENTION, UP_ATTENTION, UP_ATTENTION, UP_PLAIN]
        .map(String::from)
        .to_vec()
}
fn default_widths() -> Vec<usize> {
    vec![224, 448, 672, 896]
}

/// Refuses `value` of option `name` unless `ok`.
pub(super) fn require(ok: bool, name: &str, value: impl std::fmt::Debug, supported: &str) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "unsupported {name} {value:?}: retrace supports {supported}"
        )))
    }
}

impl UNet2DModelConfig {
    /// retrace's architecture for this config, or the first option retrace does not implement.
    pub fn to_unet(&self) -> Result<UNetConfig, ConfigError> {
        if let Some(class) = &self.class_name {
            require(class == "UNet2DModel", "model class", class, "UNet2DModel")?;
        }
        let size = match &self.sample_size {
            Some(SampleSize::Square(s)) => *s,
            Some(SampleSize::Pair(p)) if p.len() == 2 && p[0] == p[1] => p[0],
            Some(SampleSize::Pair(p)) => {
                return Err(ConfigError(format!(
                    "unsupported sample_size {p:?}: retrace supports square images"
                )));
            }
            None => {
                return Err(ConfigError(
                    "config.json gives no sample_size: retrace needs the image size".into(),
                ));
            }
        };
        require(
            self.out_channels == self.in_channels,
            "out_channels",
            self.out_channels,
            "models that predict the noise ε, with as many output channels as input channels (in_channels)",
        )?;
        require(
            self.time_embedding_type == "positional",
            "time_embedding_type",
            &self.time_embedding_type,
            "\"positional\"",
        )?;
        require(
            self.mid_block_type.as_deref() == Some("UNetMidBlock2D"),
            "mid_block_type",
            &self.mid_block_type,
            "\"UNetMidBlock2D\"",
        )?;
        require(
            self.downsample_type == "conv",
            "downsample_type",
            &self.downsample_type,
            "\"conv\"",
        )?;
        require(
            self.upsample_type == "conv",
            "upsample_type",
            &self.upsample_type,
            "\"conv\"",
        )?;
        require(
            self.resnet_time_scale_shift == "default",
            "resnet_time_scale_shift",
            &self.resnet_time_scale_shift,
            "\"default\"",
        )?;
        let class_embed_type = match self.class_embed_type.as_deref() {
            None => None,
            Some("timestep") => Some(ClassEmbedType::Timestep),
            Some(other) => {
                return Err(ConfigError(format!(
                    "unsupported class_embed_type {other:?}: retrace supports null (a table of \
                     num_class_embeds class embeddings) and \"timestep\"{}",
                    if other == "identity" {
                        "; \"identity\" takes embedding vectors, not class labels, and is not supported yet"
                    } else {
                        ""
                    }
                )));
            }
        };
        let activation = match self.act_fn.as_str() {
            "silu" | "swish" => Activation::Silu,
            "mish" => Activation::Mish,
            "gelu" => Activation::Gelu,
            other => {
                return Err(ConfigError(format!(
                    "unsupported act_fn {other:?}: retrace supports \"silu\", \"swish\", \"mish\" and \"gelu\""
                )));
            }
        };
        let groups = self.norm_num_groups.ok_or_else(|| {
            ConfigError("norm_num_groups null: retrace needs an explicit GroupNorm group count".into())
        })?;
        if let Some(g) = self.attn_norm_num_groups {
            require(
                g == groups,
                "attn_norm_num_groups",
                g,
                "the same group count as norm_num_groups",
            )?;
        }
        let levels = self.block_out_channels.len();
        if self.down_block_types.len() != levels || self.up_block_types.len() != levels {
            return Err(ConfigError(format!(
                "{} block_out_channels, {} down_block_types and {} up_block_types: need one of each per level",
                levels,
                self.down_block_types.len(),
                self.up_block_types.len()
            )));
        }
        let mut attention = Vec::with_capacity(levels);
        for (level, down) in self.down_block_types.iter().enumerate() {
            let up = &self.up_block_types[levels - 1 - level];
            let down_attn = match down.as_str() {
                DOWN_PLAIN => false,
                DOWN_ATTENTION => true,
                other => {
                    return Err(ConfigError(format!(
                        "unsupported down block type {other:?}: retrace supports {DOWN_PLAIN} and {DOWN_ATTENTION}"
                    )));
                }
            };
            let up_attn = match up.as_str() {
                UP_PLAIN => false,
                UP_ATTENTION => true,
                other => {
                    return Err(ConfigError(format!(
                        "unsupported up block type {other:?}: retrace supports {UP_PLAIN} and {UP_ATTENTION}"
                    )));
                }
            };
            if down_attn != up_attn {
                return Err(ConfigError(format!(
                    "down block {level} is {down} but its mirror up block is {up}: retrace supports attention on both or neither"
                )));
            }
            attention.push(down_attn);
        }
        let config = UNetConfig {
            layers_per_block: self.layers_per_block,
            norm_groups: groups,
            attention_head_dim: self.attention_head_dim,
            norm_eps: self.norm_eps,
            activation,
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
            downsample_padding: self.downsample_padding,
            mid_block_scale_factor: self.mid_block_scale_factor,
            center_input_sample: self.center_input_sample,
            mid_attention: self.add_attention,
            time_embedding_dim: self.time_embedding_dim,
            num_class_embeds: self.num_class_embeds,
            class_embed_type,
            null_class: self.null_class,
            ..UNetConfig::new(self.in_channels, size, self.block_out_channels.clone(), attention)
        };
        config.validate()?;
        Ok(config)
    }

    /// The config diffusers needs to build the same network as `unet`.
    pub fn from_unet(unet: &UNetConfig) -> Self {
        let levels = unet.block_out_channels.len();
        let block = |attn: bool, plain: &str, with: &str| if attn { with } else { plain }.to_string();
        Self {
            class_name: Some("UNet2DModel".into()),
            diffusers_version: Some(DIFFUSERS_VERSION.into()),
            sample_size: Some(SampleSize::Square(unet.sample_size)),
            in_channels: unet.image_channels,
            out_channels: unet.image_channels,
            center_input_sample: unet.center_input_sample,
            time_embedding_type: positional(),
            time_embedding_dim: unet.time_embedding_dim,
            freq_shift: unet.freq_shift,
            flip_sin_to_cos: unet.flip_sin_to_cos,
            down_block_types: unet
                .attention
                .iter()
                .map(|&a| block(a, DOWN_PLAIN, DOWN_ATTENTION))
                .collect(),
            mid_block_type: mid_block(),
            up_block_types: (0..levels)
                .rev()
                .map(|l| block(unet.attention[l], UP_PLAIN, UP_ATTENTION))
                .collect(),
            block_out_channels: unet.block_out_channels.clone(),
            layers_per_block: unet.layers_per_block,
            mid_block_scale_factor: unet.mid_block_scale_factor,
            downsample_padding: unet.downsample_padding,
            downsample_type: conv(),
            upsample_type: conv(),
            dropout: 0.0,
            act_fn: match unet.activation {
                Activation::Silu => "silu",
                Activation::Mish => "mish",
                Activation::Gelu => "gelu",
            }
            .into(),
            attention_head_dim: unet.attention_head_dim,
            norm_num_groups: Some(unet.norm_groups),
            attn_norm_num_groups: None,
            norm_eps: unet.norm_eps,
            resnet_time_scale_shift: default_word(),
            add_attention: unet.mid_attention,
            class_embed_type: unet.class_embed_type.map(|ClassEmbedType::Timestep| "timestep".into()),
            num_class_embeds: unet.num_class_embeds,
            null_class: unet.null_class,
            num_train_timesteps: None,
        }
    }
}

/// A DDPM-family scheduler's `scheduler_config.json`, with `DDPMScheduler`'s defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    /// The scheduler class (any DDPM-family class: only the training schedule is read).
    #[serde(rename = "_class_name", default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// The diffusers version that wrote the file.
    #[serde(rename = "_diffusers_version", default, skip_serializing_if = "Option::is_none")]
    pub diffusers_version: Option<String>,
    /// T.
    #[serde(default = "thousand")]
    pub num_train_timesteps: usize,
    /// First β.
    #[serde(default = "beta_start")]
    pub beta_start: f64,
    /// Last β.
    #[serde(default = "beta_end")]
    pub beta_end: f64,
    /// `linear`, `scaled_linear`, `squaredcos_cap_v2`, …
    #[serde(default = "linear")]
    pub beta_schedule: String,
    /// Explicit βs.
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    /// The sampler's variance.
    #[serde(default = "fixed_small")]
    pub variance_type: String,
    /// Clip x̂₀ while sampling.
    #[serde(default = "defaults::yes")]
    pub clip_sample: bool,
    /// What the network predicts.
    #[serde(default = "epsilon")]
    pub prediction_type: String,
    /// Dynamic thresholding while sampling.
    #[serde(default)]
    pub thresholding: bool,
    /// The clipping range.
    #[serde(default = "one_f")]
    pub clip_sample_range: f64,
    /// Zero terminal SNR rescaling.
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
}

fn thousand() -> usize {
    1000
}
fn beta_start() -> f64 {
    1e-4
}
fn beta_end() -> f64 {
    0.02
}
fn linear() -> String {
    "linear".into()
}
fn fixed_small() -> String {
    "fixed_small".into()
}
fn epsilon() -> String {
    "epsilon".into()
}

impl SchedulerConfig {
    /// retrace's schedule for this config, or the first option retrace does not implement.
    pub fn to_schedule(&self) -> Result<ScheduleConfig, ConfigError> {
        let beta_schedule = match self.beta_schedule.as_str() {
            "linear" => BetaSchedule::Linear,
            "scaled_linear" => BetaSchedule::ScaledLinear,
            "squaredcos_cap_v2" => BetaSchedule::SquaredcosCapV2,
            other => {
                return Err(ConfigError(format!(
                    "unsupported beta_schedule {other:?}: retrace supports \"linear\", \"scaled_linear\" and \"squaredcos_cap_v2\""
                )));
            }
        };
        require(
            self.trained_betas.is_none(),
            "trained_betas",
            "(a list)",
            "schedules given by beta_schedule (null)",
        )?;
        require(
            self.prediction_type == "epsilon",
            "prediction_type",
            &self.prediction_type,
            "\"epsilon\"",
        )?;
        require(
            self.variance_type == "fixed_small",
            "variance_type",
            &self.variance_type,
            "\"fixed_small\" (the posterior variance, which retrace's sampler uses)",
        )?;
        require(!self.thresholding, "thresholding", self.thresholding, "false")?;
        require(
            !self.rescale_betas_zero_snr,
            "rescale_betas_zero_snr",
            self.rescale_betas_zero_snr,
            "false",
        )?;
        if self.clip_sample {
            require(
                self.clip_sample_range == 1.0,
                "clip_sample_range",
                self.clip_sample_range,
                "1.0",
            )?;
        }
        if self.num_train_timesteps == 0 {
            return Err(ConfigError(
                "num_train_timesteps 0: a schedule needs at least one step".into(),
            ));
        }
        Ok(ScheduleConfig {
            steps: self.num_train_timesteps,
            beta_start: self.beta_start,
            beta_end: self.beta_end,
            beta_schedule,
            clip_sample: self.clip_sample,
        })
    }

    /// The `DDPMScheduler` config of `schedule`.
    pub fn from_schedule(schedule: &ScheduleConfig) -> Self {
        Self {
            class_name: Some("DDPMScheduler".into()),
            diffusers_version: Some(DIFFUSERS_VERSION.into()),
            num_train_timesteps: schedule.steps,
            beta_start: schedule.beta_start,
            beta_end: schedule.beta_end,
            beta_schedule: match schedule.beta_schedule {
                BetaSchedule::Linear => "linear",
                BetaSchedule::ScaledLinear => "scaled_linear",
                BetaSchedule::SquaredcosCapV2 => "squaredcos_cap_v2",
            }
            .into(),
            trained_betas: None,
            variance_type: fixed_small(),
            clip_sample: schedule.clip_sample,
            prediction_type: epsilon(),
            thresholding: false,
            clip_sample_range: 1.0,
            rescale_betas_zero_snr: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddpm_cifar10_config_maps_onto_the_named_preset() {
        // The fields of google/ddpm-cifar10-32's config.json.
        let json = r#"{"_class_name": "UNet2DModel", "act_fn": "silu", "attention_head_dim": null,
            "block_out_channels": [128, 256, 256, 256], "center_input_sample": false,
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
            "downsample_padding": 0, "flip_sin_to_cos": false, "freq_shift": 1, "in_channels": 3,
            "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32,
            "out_channels": 3, "sample_size": 32, "time_embedding_type": "positional",
            "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]}"#;
        let config: UNet2DModelConfig = serde_json::from_str(json).unwrap();
        let unet = config.to_unet().unwrap();
        assert_eq!(unet, UNetConfig::named("ddpm-cifar10", 3, 32).unwrap());
        assert_eq!(UNet2DModelConfig::from_unet(&unet).to_unet().unwrap(), unet);
    }

    #[test]
    fn unsupported_options_are_refused_by_name() {
        let base: serde_json::Value = serde_json::json!({"sample_size": 8, "block_out_channels": [8, 16],
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
            "norm_num_groups": 4});
        let refusal = |key: &str, value: serde_json::Value| {
            let mut json = base.clone();
            json[key] = value;
            let config: UNet2DModelConfig = serde_json::from_value(json).unwrap();
            config.to_unet().unwrap_err().0
        };
        assert!(
            serde_json::from_value::<UNet2DModelConfig>(base.clone())
                .unwrap()
                .to_unet()
                .is_ok()
        );
        for (key, value, named) in [
            (
                "time_embedding_type",
                serde_json::json!("fourier"),
                "time_embedding_type",
            ),
            ("act_fn", serde_json::json!("relu"), "act_fn"),
            ("out_channels", serde_json::json!(6), "out_channels"),
            (
                "resnet_time_scale_shift",
                serde_json::json!("scale_shift"),
                "resnet_time_scale_shift",
            ),
            (
                "down_block_types",
                serde_json::json!(["SkipDownBlock2D", "AttnDownBlock2D"]),
                "SkipDownBlock2D",
            ),
            (
                "up_block_types",
                serde_json::json!(["UpBlock2D", "UpBlock2D"]),
                "mirror",
            ),
            ("class_embed_type", serde_json::json!("identity"), "identity"),
            ("class_embed_type", serde_json::json!("projection"), "class_embed_type"),
            ("num_class_embeds", serde_json::json!(0), "class embeddings"),
            ("sample_size", serde_json::json!([8, 16]), "square"),
            ("norm_num_groups", serde_json::json!(0), "norm groups 0"),
            ("block_out_channels", serde_json::json!([8, 0]), "block width of 0"),
        ] {
            let message = refusal(key, value);
            assert!(message.contains(named), "{key}: {message}");
        }
        let scheduler =
            |json: serde_json::Value| serde_json::from_value::<SchedulerConfig>(json).unwrap().to_schedule();
        assert_eq!(scheduler(serde_json::json!({})).unwrap(), ScheduleConfig::default());
        let v = scheduler(serde_json::json!({"prediction_type": "v_prediction"})).unwrap_err();
        assert!(v.0.contains("prediction_type"), "{v}");
        let s = scheduler(serde_json::json!({"beta_schedule": "sigmoid"})).unwrap_err();
        assert!(s.0.contains("beta_schedule"), "{s}");
    }
}
