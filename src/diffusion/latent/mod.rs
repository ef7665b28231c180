//! Latent diffusion: the denoiser works on the latents of an autoencoder (`AutoencoderKL`, in
//! the model's `vae/` directory) instead of pixels, as in Rombach et al. (2022) and the K-FAC
//! paper's ArtBench model (Mlodozeniec et al. 2024, BrunoKM/diffusion-influence).
//!
//! A training image enters as its latent *distribution*: diffusers trains on
//! `latent_dist.sample() · scaling_factor`, i.e. z = (μ + σ·ε_z)·s with a fresh ε_z per step.
//! retrace keeps every image's μ and log σ² (in model units: μ·s and log σ² + 2 log s) in a
//! cache keyed by the data's and the autoencoder's hashes ([`cache`]), and draws ε_z from its
//! keyed noise streams: one draw per training step and image when training, one per (t, ε) plan
//! point when taking gradients, so every method averages over the posterior as training did.
//! Generated queries are latents already (used as they are, σ = 0); a loaded image is encoded.
//! What a person sees stays in pixels: samples and x̂₀ are decoded, painted regions are
//! averaged onto the latent grid ([`LatentSpace::region_to_latent`]).

pub mod cache;

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};

use super::error::ModelError;
use super::vae::{AutoencoderKL, VaeConfig};
use crate::device::DeviceError;

pub use cache::{LatentError, training_latents};

/// The directory of a latent model's autoencoder, beside `unet/` in a diffusers pipeline and
/// inside a retrace model directory alike (a diffusers `AutoencoderKL` directory either way).
pub const VAE_DIR: &str = "vae";

/// Images encoded per batch.
const ENCODE_BATCH: usize = 16;

/// A latent diffusion model's autoencoder, loaded, with the hash of its weights (which keys
/// every latent cache made with it).
pub struct LatentSpace {
    /// The autoencoder's architecture.
    pub config: VaeConfig,
    /// The autoencoder.
    pub vae: AutoencoderKL,
    /// SHA-256 of its weights file.
    pub sha256: String,
    /// Its directory.
    pub dir: PathBuf,
}

impl std::fmt::Debug for LatentSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatentSpace")
            .field("dir", &self.dir)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of the weights of the autoencoder in `dir`.
pub fn vae_sha256(dir: &Path) -> Result<String, ModelError> {
    let weights = super::diffusers::weights_file(dir).map_err(|e| ModelError::Weights(e.to_string()))?;
    super::diffusers::weights_hash(&weights).map_err(|e| ModelError::Weights(e.to_string()))
}

/// The architecture of the diffusers `AutoencoderKL` in `dir` (its `config.json`), checked.
pub fn read_vae_config(dir: &Path) -> Result<VaeConfig, ModelError> {
    let path = dir.join(super::diffusers::CONFIG_FILE);
    let bytes =
        std::fs::read(&path).map_err(|e| ModelError::Weights(format!("cannot read {}: {e}", path.display())))?;
    let config: super::diffusers::vae::AutoencoderKLConfig = serde_json::from_slice(&bytes)
        .map_err(|e| ModelError::Weights(format!("{}: unreadable AutoencoderKL config: {e}", path.display())))?;
    config
        .to_vae()
        .map_err(|e| ModelError::Config(super::ConfigError(format!("{}: {e}", path.display()))))
}

/// Copies the autoencoder in `from` (a diffusers `AutoencoderKL` directory) into the model
/// directory `model_root` as its `vae/`, each file written atomically, after checking that it
/// loads; returns its architecture.
pub fn install_vae(from: &Path, model_root: &Path) -> Result<VaeConfig, ModelError> {
    let config = read_vae_config(from)?;
    let weights = super::diffusers::weights_file(from).map_err(|e| ModelError::Weights(e.to_string()))?;
    let bytes =
        std::fs::read(&weights).map_err(|e| ModelError::Weights(format!("cannot read {}: {e}", weights.display())))?;
    super::diffusers::weights::load_vae_weights(bytes.clone(), &config, &Device::flex())
        .map_err(|e| ModelError::Weights(format!("{}: {e}", weights.display())))?;
    let to = model_root.join(VAE_DIR);
    let copy = |name: &str, bytes: &[u8]| -> Result<(), ModelError> {
        crate::files::create_dir_all(&to)
            .and_then(|()| crate::files::write_atomic(&to.join(name), bytes))
            .map_err(|e| ModelError::Weights(e.to_string()))
    };
    let config_path = from.join(super::diffusers::CONFIG_FILE);
    let config_bytes = std::fs::read(&config_path)
        .map_err(|e| ModelError::Weights(format!("cannot read {}: {e}", config_path.display())))?;
    copy(super::diffusers::CONFIG_FILE, &config_bytes)?;
    copy(super::diffusers::WEIGHTS_FILE, &bytes)?;
    Ok(config)
}

impl LatentSpace {
    /// Loads the autoencoder in `dir` onto `device`.
    pub fn open(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        let (config, vae) = super::diffusers::vae::load_vae(dir, device)?;
        Ok(Self {
            config,
            vae,
            sha256: vae_sha256(dir)?,
            dir: dir.to_owned(),
        })
    }

    /// Factor between the image side and the latent side.
    pub fn downsampling(&self) -> usize {
        self.config.downsampling()
    }

    /// The latent distributions (model units) of `images` (C×H×W each, in [−1, 1],
    /// image-major), encoded in batches on `device`.
    pub fn encode(
        &self,
        images: &[f32],
        shape: [usize; 3],
        device: &Device,
    ) -> Result<LatentDistributions, ModelError> {
        let [c, h, w] = shape;
        let per_image = c * h * w;
        if c != self.config.in_channels || per_image == 0 || !images.len().is_multiple_of(per_image) {
            return Err(ModelError::DataMismatch(format!(
                "{c}×{h}×{w} images, but the autoencoder in {} takes {} channels",
                self.dir.display(),
                self.config.in_channels
            )));
        }
        let f = self.downsampling();
        if !h.is_multiple_of(f) || !w.is_multiple_of(f) {
            return Err(ModelError::DataMismatch(format!(
                "{h}×{w} images do not divide into the autoencoder's {f}×{f} latent cells"
            )));
        }
        let latent_shape = [self.config.latent_channels, h / f, w / f];
        let mut out = LatentDistributions::empty(&self.sha256, latent_shape);
        let scale = self.config.scaling_factor;
        let log_scale = 2.0 * scale.ln();
        for batch in images.chunks(ENCODE_BATCH * per_image) {
            let n = batch.len() / per_image;
            let x = Tensor::<4>::from_data(TensorData::new(batch.to_vec(), [n, c, h, w]), device);
            let moments = self.vae.encode(x);
            let mean = crate::device::read_back(moments.mean * scale)?;
            let log_variance = crate::device::read_back(moments.log_variance + log_scale)?;
            out.mean.extend(mean);
            out.log_variance.extend(log_variance);
        }
        if let Some(bad) = out.mean.iter().chain(&out.log_variance).position(|v| !v.is_finite()) {
            return Err(ModelError::Weights(format!(
                "the autoencoder in {} gives a non-finite latent for image {} (are its weights damaged?)",
                self.dir.display(),
                (bad % out.mean.len().max(1)) / out.latent_len().max(1)
            )));
        }
        Ok(out)
    }

    /// Images in [−1, 1] of latents in model units ([n, C, h, w] → [n, C, H, W]).
    pub fn decode(&self, latents: Tensor<4>) -> Tensor<4> {
        self.vae.decode(latents).clamp(-1.0, 1.0)
    }

    /// Decodes host latents (`shape` each, image-major) to host images in [−1, 1].
    pub fn decode_host(&self, latents: &[f32], shape: [usize; 3], device: &Device) -> Result<Vec<f32>, DeviceError> {
        let n = latents.len() / shape.iter().product::<usize>().max(1);
        let [c, h, w] = shape;
        let x = Tensor::<4>::from_data(TensorData::new(latents.to_vec(), [n, c, h, w]), device);
        crate::device::read_back(self.decode(x))
    }

    /// A painted region (H×W weights in [0, 1]) on the latent grid: every latent cell takes the
    /// mean weight of the f×f pixels it encodes (f = [`Self::downsampling`]).
    pub fn region_to_latent(&self, region: &[f32], height: usize, width: usize) -> Vec<f32> {
        region_to_grid(region, height, width, self.downsampling())
    }
}

/// The images of the network's outputs `x`: decoded by a latent model's autoencoder, `x` itself
/// for a pixel-space model (`space` `None`).
pub fn to_images(space: Option<&LatentSpace>, x: Tensor<4>) -> Tensor<4> {
    match space {
        Some(space) => space.decode(x),
        None => x,
    }
}

/// A region's H×W weights averaged over f×f cells (H and W multiples of f).
pub fn region_to_grid(region: &[f32], height: usize, width: usize, f: usize) -> Vec<f32> {
    let f = f.max(1);
    let (h, w) = (height / f, width / f);
    let share = 1.0 / (f * f) as f32;
    let mut out = vec![0f32; h * w];
    for (y, row) in region.chunks(width).take(h * f).enumerate() {
        for (x, &v) in row.iter().take(w * f).enumerate() {
            out[(y / f) * w + x / f] += v * share;
        }
    }
    out
}

/// Latent distributions of some images, in model units (the denoiser's inputs): z = μ + σ·ε
/// with σ = exp(½·log σ²), every image `shape`, image-major.
#[derive(Clone, Debug, PartialEq)]
pub struct LatentDistributions {
    /// SHA-256 of the autoencoder's weights that encoded them.
    pub vae_sha256: String,
    /// C, h, w of every latent.
    pub shape: [usize; 3],
    /// μ·s of every image.
    pub mean: Vec<f32>,
    /// log σ² + 2·log s of every image.
    pub log_variance: Vec<f32>,
}

impl LatentDistributions {
    /// No image yet, from the autoencoder `vae_sha256`.
    pub fn empty(vae_sha256: &str, shape: [usize; 3]) -> Self {
        Self {
            vae_sha256: vae_sha256.to_owned(),
            shape,
            mean: Vec::new(),
            log_variance: Vec::new(),
        }
    }

    /// Values per latent.
    pub fn latent_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.mean.len() / self.latent_len().max(1)
    }

    /// True when there is no image.
    pub fn is_empty(&self) -> bool {
        self.mean.is_empty()
    }

    /// The images `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Self {
        let n = self.latent_len();
        let pick = |values: &[f32]| {
            indices
                .iter()
                .flat_map(|&i| values[i * n..(i + 1) * n].iter().copied())
                .collect()
        };
        Self {
            vae_sha256: self.vae_sha256.clone(),
            shape: self.shape,
            mean: pick(&self.mean),
            log_variance: pick(&self.log_variance),
        }
    }

    /// Appends `other`'s images (of the same shape).
    pub fn extend(&mut self, other: Self) {
        debug_assert_eq!(self.shape, other.shape);
        self.mean.extend(other.mean);
        self.log_variance.extend(other.log_variance);
    }

    /// Image `i`'s latent for standard-normal `noise`: μ + σ·noise.
    pub fn draw(&self, i: usize, noise: &[f32]) -> Vec<f32> {
        let n = self.latent_len();
        draw_latent(
            &self.mean[i * n..(i + 1) * n],
            &self.log_variance[i * n..(i + 1) * n],
            noise,
        )
    }
}

/// μ + exp(½·log σ²)·noise, element by element.
pub fn draw_latent(mean: &[f32], log_variance: &[f32], noise: &[f32]) -> Vec<f32> {
    mean.iter()
        .zip(log_variance)
        .zip(noise)
        .map(|((m, lv), e)| m + (0.5 * lv).exp() * e)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_averages_onto_the_latent_grid() {
        // 4×4 pixels, f = 2: the top-left cell fully painted, the bottom-right a quarter.
        let mut region = vec![0f32; 16];
        for (y, x) in [(0, 0), (0, 1), (1, 0), (1, 1), (3, 3)] {
            region[y * 4 + x] = 1.0;
        }
        assert_eq!(region_to_grid(&region, 4, 4, 2), vec![1.0, 0.0, 0.0, 0.25]);
    }

    #[test]
    fn draws_follow_mean_and_log_variance() {
        let d = LatentDistributions {
            vae_sha256: String::new(),
            shape: [1, 1, 2],
            mean: vec![0.0, 1.0, 2.0, 3.0],
            log_variance: vec![0.0, 0.0, (4f32).ln(), f32::NEG_INFINITY],
        };
        assert_eq!(d.len(), 2);
        assert_eq!(d.draw(1, &[1.0, 5.0]), vec![4.0, 3.0]);
        assert_eq!(d.select(&[1, 0]).mean, vec![2.0, 3.0, 0.0, 1.0]);
    }
}
