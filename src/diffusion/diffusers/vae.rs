//! A diffusers `AutoencoderKL` directory (`config.json`, `diffusion_pytorch_model.safetensors`;
//! a latent pipeline's `vae/`) read into retrace's [`AutoencoderKL`]. Options retrace's
//! autoencoder does not implement are refused by name.

use std::path::Path;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::config::require;
use super::defaults;
use super::{CONFIG_FILE, weights_file};
use crate::diffusion::error::{ConfigError, ModelError};
use crate::diffusion::unet::Activation;
use crate::diffusion::vae::{AutoencoderKL, VaeConfig};

/// The class name diffusers writes for the autoencoder.
pub const VAE_CLASS: &str = "AutoencoderKL";

/// An `AutoencoderKL` config, with diffusers' defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AutoencoderKLConfig {
    /// The model class.
    #[serde(rename = "_class_name", default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Image channels in.
    #[serde(default = "defaults::three")]
    pub in_channels: usize,
    /// Image channels out.
    #[serde(default = "defaults::three")]
    pub out_channels: usize,
    /// Encoder block types.
    #[serde(default = "down_blocks")]
    pub down_block_types: Vec<String>,
    /// Decoder block types.
    #[serde(default = "up_blocks")]
    pub up_block_types: Vec<String>,
    /// Widths per level.
    #[serde(default = "widths")]
    pub block_out_channels: Vec<usize>,
    /// Residual blocks per encoder level.
    #[serde(default = "defaults::one")]
    pub layers_per_block: usize,
    /// Nonlinearity.
    #[serde(default = "defaults::silu")]
    pub act_fn: String,
    /// Latent channels.
    #[serde(default = "defaults::four")]
    pub latent_channels: usize,
    /// GroupNorm groups.
    #[serde(default = "defaults::thirty_two")]
    pub norm_num_groups: usize,
    /// Latents are z · this.
    #[serde(default = "sd_scaling")]
    pub scaling_factor: f64,
    /// Latents are (z − shift) · scale in newer VAEs (SD3, Flux).
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// Per-channel latent statistics of newer VAEs.
    #[serde(default)]
    pub latents_mean: Option<Vec<f64>>,
    /// Per-channel latent statistics of newer VAEs.
    #[serde(default)]
    pub latents_std: Option<Vec<f64>>,
    /// Whether `quant_conv` exists.
    #[serde(default = "defaults::yes")]
    pub use_quant_conv: bool,
    /// Whether `post_quant_conv` exists.
    #[serde(default = "defaults::yes")]
    pub use_post_quant_conv: bool,
    /// Whether the bottlenecks have attention.
    #[serde(default = "defaults::yes")]
    pub mid_block_add_attention: bool,
}

fn sd_scaling() -> f64 {
    0.18215
}
fn down_blocks() -> Vec<String> {
    vec!["DownEncoderBlock2D".into()]
}
fn up_blocks() -> Vec<String> {
    vec!["UpDecoderBlock2D".into()]
}
fn widths() -> Vec<usize> {
    vec![64]
}

impl AutoencoderKLConfig {
    /// retrace's autoencoder for this config, or the first option retrace does not implement.
    pub fn to_vae(&self) -> Result<VaeConfig, ConfigError> {
        if let Some(class) = &self.class_name {
            require(class == VAE_CLASS, "model class", class, VAE_CLASS)?;
        }
        let levels = self.block_out_channels.len();
        if self.down_block_types.len() != levels || self.up_block_types.len() != levels {
            return Err(ConfigError(format!(
                "{levels} block_out_channels, {} down_block_types and {} up_block_types: need one of each per level",
                self.down_block_types.len(),
                self.up_block_types.len()
            )));
        }
        if let Some(other) = self.down_block_types.iter().find(|t| *t != "DownEncoderBlock2D") {
            return Err(ConfigError(format!(
                "unsupported down block type {other:?}: retrace supports DownEncoderBlock2D"
            )));
        }
        if let Some(other) = self.up_block_types.iter().find(|t| *t != "UpDecoderBlock2D") {
            return Err(ConfigError(format!(
                "unsupported up block type {other:?}: retrace supports UpDecoderBlock2D"
            )));
        }
        require(
            self.shift_factor.is_none(),
            "shift_factor",
            self.shift_factor,
            "null (the SD-1/SD-2 latents z · scaling_factor)",
        )?;
        require(
            self.latents_mean.is_none() && self.latents_std.is_none(),
            "latents_mean/latents_std",
            (&self.latents_mean, &self.latents_std),
            "null (no per-channel latent normalisation)",
        )?;
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
        let config = VaeConfig {
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            block_out_channels: self.block_out_channels.clone(),
            layers_per_block: self.layers_per_block,
            latent_channels: self.latent_channels,
            norm_groups: self.norm_num_groups,
            activation,
            scaling_factor: self.scaling_factor,
            mid_attention: self.mid_block_add_attention,
            quant_conv: self.use_quant_conv,
            post_quant_conv: self.use_post_quant_conv,
        };
        config.validate()?;
        Ok(config)
    }
}

/// The autoencoder in a diffusers `AutoencoderKL` directory, on `device`.
pub fn load_vae(dir: &Path, device: &Device) -> Result<(VaeConfig, AutoencoderKL), ModelError> {
    let config_path = dir.join(CONFIG_FILE);
    let bytes = std::fs::read(&config_path)
        .map_err(|e| ModelError::Weights(format!("cannot read {}: {e}", config_path.display())))?;
    let config: AutoencoderKLConfig = serde_json::from_slice(&bytes)
        .map_err(|e| ModelError::Weights(format!("{}: unreadable {VAE_CLASS} config: {e}", config_path.display())))?;
    let vae = config
        .to_vae()
        .map_err(|e| ModelError::Config(ConfigError(format!("{}: {e}", config_path.display()))))?;
    let weights_path = weights_file(dir).map_err(|e| ModelError::Weights(e.to_string()))?;
    let weights = std::fs::read(&weights_path)
        .map_err(|e| ModelError::Weights(format!("cannot read {}: {e}", weights_path.display())))?;
    let net = super::weights::load_vae_weights(weights, &vae, device)
        .map_err(|e| ModelError::Weights(format!("{}: {e}", weights_path.display())))?;
    Ok((vae, net))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_autoencoder_options_are_refused_by_name() {
        let base = serde_json::json!({"in_channels": 1, "out_channels": 1, "block_out_channels": [8, 16],
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"], "norm_num_groups": 4});
        let parse = |json: serde_json::Value| serde_json::from_value::<AutoencoderKLConfig>(json).unwrap().to_vae();
        let vae = parse(base.clone()).unwrap();
        assert_eq!(
            (vae.scaling_factor, vae.latent_channels),
            (0.18215, 4),
            "diffusers' defaults"
        );
        for (key, value, named) in [
            ("shift_factor", serde_json::json!(0.1159), "shift_factor"),
            ("latents_mean", serde_json::json!([0.0, 0.0, 0.0, 0.0]), "latents_mean"),
            ("act_fn", serde_json::json!("relu"), "act_fn"),
            ("scaling_factor", serde_json::json!(0.0), "scaling_factor"),
            ("block_out_channels", serde_json::json!([8, 10]), "norm groups"),
            (
                "down_block_types",
                serde_json::json!(["DownEncoderBlock2D", "AttnDownEncoderBlock2D"]),
                "AttnDownEncoderBlock2D",
            ),
        ] {
            let mut json = base.clone();
            json[key] = value;
            let message = parse(json).unwrap_err().0;
            assert!(message.contains(named), "{key}: {message}");
        }
    }
}
