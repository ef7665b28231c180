//! What a model is, whatever its directory layout: its description (`ModelInfo`: architecture,
//! schedule, data, training recipe), a checkpoint's recorded state and entry, and the errors of
//! reading them. Both layouts, retrace's own (`checkpoint.rs`) and diffusers' (`diffusers/`),
//! read and write these.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::ConfigError;
use super::vae::VaeConfig;
use super::{Architecture, ScheduleConfig};
use crate::files::FileError;

/// Version of the model directory layout; bumped on incompatible changes.
pub const FORMAT_VERSION: u32 = 1;

/// Why a model directory could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// File-system failure.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The directory's content is unusable.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file involved.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl CheckpointError {
    pub(crate) fn invalid(path: &Path, reason: impl ToString) -> Self {
        Self::Invalid {
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    }
}

impl From<FileError> for CheckpointError {
    fn from(e: FileError) -> Self {
        Self::Io {
            path: e.path,
            source: e.source,
        }
    }
}

/// How the learning rate moves after the warm-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// The peak learning rate to the end.
    #[default]
    Constant,
    /// A cosine decay from the peak to 0 at the last planned step (so the final weights depend
    /// less on the last batches' noise; the planned length is then part of the recipe).
    Cosine,
}

/// How the model was trained, as recorded in `model.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainRecipe {
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Linear warm-up steps.
    pub warmup_steps: usize,
    /// The learning rate after the warm-up (constant when absent, as in older files).
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Examples per step.
    pub batch_size: usize,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Seed of initialisation, shuffling and noise.
    pub seed: u64,
    /// Save a checkpoint every this many steps.
    pub checkpoint_every: usize,
    /// Probability that a training image's class is replaced by the null class (label dropout
    /// for classifier-free guidance); 0 for unconditional models.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub label_dropout: f64,
    /// The pretrained weights a fine-tune started from (absent: a seeded random initialisation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<InitFrom>,
    /// Training images (dataset indices, ascending) taken out of every batch the seed's batch
    /// plan puts them in, every other draw of the run unchanged: a counterfactual retraining
    /// matched to the run that keeps them (`retrace::eval::retraining`). Empty for ordinary
    /// training.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<usize>,
    /// The command line that trained the model.
    pub command: String,
}

/// The checkpoint a fine-tune starts from: another model directory's weights at one step,
/// pinned by their SHA-256 so that a resumed or repeated fine-tune starts from the same bits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InitFrom {
    /// The model directory: a path, or `bundled` for the bundled default model.
    pub model: String,
    /// The checkpoint's step.
    pub step: usize,
    /// SHA-256 of the checkpoint's weights file.
    pub weights_sha256: String,
}

/// Whether a recorded number is exactly 0 (serde: such fields are left out of files).
pub(crate) fn is_zero(value: &f64) -> bool {
    *value == 0.0
}

/// Everything about a model except its weights: `model.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Layout version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// Network architecture: in the file, a `unet` or a `dit` key holding the family's config.
    #[serde(flatten)]
    pub architecture: Architecture,
    /// Noise schedule.
    pub schedule: ScheduleConfig,
    /// Spec of the training data.
    pub data_spec: String,
    /// Content hash of the training data.
    pub data_hash: String,
    /// Number of training images.
    pub data_len: usize,
    /// Class names of the training data.
    pub class_names: Vec<String>,
    /// Training recipe.
    pub train: TrainRecipe,
    /// For latent diffusion, the autoencoder whose latents the network denoises (its weights
    /// in the model's `vae/`); absent for a pixel-space model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vae: Option<VaeConfig>,
}

/// Whether `hash` is a SHA-256 digest as retrace writes them: 64 lowercase hex digits.
pub fn is_sha256_hex(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl ModelInfo {
    /// C×H×W of the images the model makes and is trained on, in pixels: the network's input
    /// for a pixel-space model, the autoencoder's images of the network's latents for a latent
    /// one.
    pub fn image_shape(&self) -> [usize; 3] {
        let [c, h, w] = self.architecture.shape();
        match &self.vae {
            None => [c, h, w],
            Some(vae) => [vae.in_channels, h * vae.downsampling(), w * vae.downsampling()],
        }
    }

    /// Whether the network denoises an autoencoder's latents.
    pub fn is_latent(&self) -> bool {
        self.vae.is_some()
    }

    /// Checks every field before use: the architecture, the schedule, and a data hash that is a
    /// SHA-256 digest (or empty: not recorded), so that nothing later slices or compares a
    /// malformed one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.architecture.validate()?;
        self.schedule.validate()?;
        if let Some(vae) = &self.vae {
            vae.validate()?;
            let [c, h, w] = self.architecture.shape();
            if c != vae.latent_channels {
                return Err(ConfigError(format!(
                    "the network takes {c} channels but the autoencoder's latents have {}",
                    vae.latent_channels
                )));
            }
            if h.saturating_mul(vae.downsampling()) > 1 << 16 || w.saturating_mul(vae.downsampling()) > 1 << 16 {
                return Err(ConfigError(format!(
                    "{h}×{w} latents decode to images too large to handle"
                )));
            }
        }
        if !self.data_hash.is_empty() && !is_sha256_hex(&self.data_hash) {
            return Err(ConfigError(format!(
                "data_hash {:?} is not a SHA-256 digest (64 hex digits); `retrace info DATA` prints the \
                 data's hash",
                self.data_hash.chars().take(80).collect::<String>()
            )));
        }
        Ok(())
    }
}

impl CheckpointState {
    /// Checks the fields a checkpoint's `state.json` must have sensible values in.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !is_sha256_hex(&self.weights_sha256) {
            return Err(ConfigError(
                "weights_sha256 is not a SHA-256 digest (64 hex digits)".into(),
            ));
        }
        if self.optimizer_sha256.as_deref().is_some_and(|h| !is_sha256_hex(h)) {
            return Err(ConfigError(
                "optimizer_sha256 is not a SHA-256 digest (64 hex digits)".into(),
            ));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate >= 0.0) {
            return Err(ConfigError(format!(
                "learning_rate {} is not a finite non-negative number",
                self.learning_rate
            )));
        }
        if !(self.epoch.is_finite() && self.epoch >= 0.0) {
            return Err(ConfigError(format!(
                "epoch {} is not a finite non-negative number",
                self.epoch
            )));
        }
        Ok(())
    }
}

/// Per-checkpoint facts: `state.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Optimizer steps taken.
    pub step: usize,
    /// Epochs completed (fractional).
    pub epoch: f64,
    /// Learning rate in force at this step (TracIn weights checkpoints by it).
    pub learning_rate: f64,
    /// Mean training loss since the previous checkpoint.
    pub loss: f64,
    /// SHA-256 of `weights.bpk`.
    pub weights_sha256: String,
    /// SHA-256 of `optimizer.bpk`, when the checkpoint was saved with its optimizer state
    /// (absent in checkpoints written before retrace recorded it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer_sha256: Option<String>,
}

/// A checkpoint found in a model directory.
#[derive(Clone, Debug)]
pub struct CheckpointEntry {
    /// Its directory.
    pub dir: PathBuf,
    /// Its recorded state.
    pub state: CheckpointState,
}
