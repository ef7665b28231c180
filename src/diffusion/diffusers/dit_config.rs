//! diffusers' `config.json` of a `DiTTransformer2DModel`, read into retrace's [`DiTConfig`] and
//! written back from it. Field names and defaults are those of
//! `DiTTransformer2DModel.__init__` (diffusers 0.42); every option retrace's [`crate::diffusion::dit::DiT`]
//! does not implement is refused by name.

use serde::{Deserialize, Serialize};

use super::config::{DIFFUSERS_VERSION, require};
use super::defaults;
use crate::diffusion::dit::{DiTConfig, FeedForwardActivation};
use crate::diffusion::error::ConfigError;

/// The class name diffusers writes for a DiT.
pub const DIT_CLASS: &str = "DiTTransformer2DModel";

/// A `DiTTransformer2DModel` config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiTTransformer2DModelConfig {
    /// The model class.
    #[serde(rename = "_class_name", default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// The diffusers version that wrote the file.
    #[serde(rename = "_diffusers_version", default, skip_serializing_if = "Option::is_none")]
    pub diffusers_version: Option<String>,
    /// Heads.
    #[serde(default = "sixteen")]
    pub num_attention_heads: usize,
    /// Channels per head.
    #[serde(default = "seventy_two")]
    pub attention_head_dim: usize,
    /// Input channels.
    #[serde(default = "defaults::four")]
    pub in_channels: usize,
    /// Output channels (`in_channels` when null).
    #[serde(default)]
    pub out_channels: Option<usize>,
    /// Blocks.
    #[serde(default = "twenty_eight")]
    pub num_layers: usize,
    /// Dropout (not used at inference; retrace trains without).
    #[serde(default)]
    pub dropout: f64,
    /// GroupNorm groups (unused by the DiT's forward pass).
    #[serde(default)]
    pub norm_num_groups: Option<usize>,
    /// Whether the attention projections have biases.
    #[serde(default = "defaults::yes")]
    pub attention_bias: bool,
    /// Input side.
    #[serde(default = "defaults::thirty_two")]
    pub sample_size: usize,
    /// Patch side.
    #[serde(default = "defaults::two")]
    pub patch_size: usize,
    /// Feed-forward nonlinearity.
    #[serde(default = "gelu_approximate")]
    pub activation_fn: String,
    /// Classes.
    #[serde(default = "thousand")]
    pub num_embeds_ada_norm: Option<usize>,
    /// Attention in f32 under half precision (no effect in f32).
    #[serde(default)]
    pub upcast_attention: bool,
    /// The block norm.
    #[serde(default = "ada_norm_zero")]
    pub norm_type: String,
    /// Whether the LayerNorms have weights.
    #[serde(default)]
    pub norm_elementwise_affine: bool,
    /// ε of the feed-forward LayerNorm.
    #[serde(default = "defaults::norm_eps")]
    pub norm_eps: f64,
}

fn sixteen() -> usize {
    16
}
fn seventy_two() -> usize {
    72
}
fn twenty_eight() -> usize {
    28
}
fn gelu_approximate() -> String {
    "gelu-approximate".into()
}
fn thousand() -> Option<usize> {
    Some(1000)
}
fn ada_norm_zero() -> String {
    "ada_norm_zero".into()
}

impl DiTTransformer2DModelConfig {
    /// retrace's architecture for this config, or the first option retrace does not implement.
    pub fn to_dit(&self) -> Result<DiTConfig, ConfigError> {
        if let Some(class) = &self.class_name {
            require(class == DIT_CLASS, "model class", class, DIT_CLASS)?;
        }
        require(
            self.norm_type == "ada_norm_zero",
            "norm_type",
            &self.norm_type,
            "\"ada_norm_zero\" (DiT's adaLN-Zero)",
        )?;
        require(
            !self.norm_elementwise_affine,
            "norm_elementwise_affine",
            self.norm_elementwise_affine,
            "false (DiT's LayerNorms have no weights)",
        )?;
        require(self.attention_bias, "attention_bias", self.attention_bias, "true")?;
        let activation = match self.activation_fn.as_str() {
            "gelu-approximate" => FeedForwardActivation::GeluApproximate,
            "gelu" => FeedForwardActivation::Gelu,
            other => {
                return Err(ConfigError(format!(
                    "unsupported activation_fn {other:?}: retrace supports \"gelu-approximate\" and \"gelu\""
                )));
            }
        };
        let num_classes = self.num_embeds_ada_norm.ok_or_else(|| {
            ConfigError("num_embeds_ada_norm null: a DiT needs its class count (adaLN-Zero's label embedding)".into())
        })?;
        let config = DiTConfig {
            in_channels: self.in_channels,
            out_channels: self.out_channels.unwrap_or(self.in_channels),
            sample_size: self.sample_size,
            patch_size: self.patch_size,
            num_layers: self.num_layers,
            num_attention_heads: self.num_attention_heads,
            attention_head_dim: self.attention_head_dim,
            num_classes,
            norm_eps: self.norm_eps,
            activation,
        };
        config.validate()?;
        Ok(config)
    }

    /// The config diffusers needs to build the same network as `dit`.
    pub fn from_dit(dit: &DiTConfig) -> Self {
        Self {
            class_name: Some(DIT_CLASS.into()),
            diffusers_version: Some(DIFFUSERS_VERSION.into()),
            num_attention_heads: dit.num_attention_heads,
            attention_head_dim: dit.attention_head_dim,
            in_channels: dit.in_channels,
            out_channels: Some(dit.out_channels),
            num_layers: dit.num_layers,
            dropout: 0.0,
            norm_num_groups: Some(32),
            attention_bias: true,
            sample_size: dit.sample_size,
            patch_size: dit.patch_size,
            activation_fn: match dit.activation {
                FeedForwardActivation::GeluApproximate => "gelu-approximate",
                FeedForwardActivation::Gelu => "gelu",
            }
            .into(),
            num_embeds_ada_norm: Some(dit.num_classes),
            upcast_attention: false,
            norm_type: ada_norm_zero(),
            norm_elementwise_affine: false,
            norm_eps: dit.norm_eps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dit_configs_round_trip_and_unsupported_options_are_refused_by_name() {
        let json = serde_json::json!({"num_attention_heads": 2, "attention_head_dim": 8, "in_channels": 4,
            "out_channels": 8, "num_layers": 2, "sample_size": 8, "patch_size": 2, "num_embeds_ada_norm": 5});
        let config: DiTTransformer2DModelConfig = serde_json::from_value(json.clone()).unwrap();
        let dit = config.to_dit().unwrap();
        assert_eq!(DiTTransformer2DModelConfig::from_dit(&dit).to_dit().unwrap(), dit);
        for (key, value, named) in [
            ("norm_type", serde_json::json!("ada_norm_single"), "norm_type"),
            ("activation_fn", serde_json::json!("geglu"), "activation_fn"),
            ("num_embeds_ada_norm", serde_json::Value::Null, "num_embeds_ada_norm"),
            ("out_channels", serde_json::json!(5), "out_channels"),
            ("patch_size", serde_json::json!(3), "patch_size"),
            (
                "norm_elementwise_affine",
                serde_json::json!(true),
                "norm_elementwise_affine",
            ),
        ] {
            let mut edited = json.clone();
            edited[key] = value;
            let config: DiTTransformer2DModelConfig = serde_json::from_value(edited).unwrap();
            let message = config.to_dit().unwrap_err().0;
            assert!(message.contains(named), "{key}: {message}");
        }
    }
}
