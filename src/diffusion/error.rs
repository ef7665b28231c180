//! The diffusion layer's errors below a model directory: a setting retrace cannot use, data
//! that does not fit the model, weights that do not fit the architecture. A model directory's
//! own failures (files, their content) are [`super::CheckpointError`]s.

use crate::device::DeviceError;

/// A model, schedule or sampler setting retrace cannot use (the message names the field).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Why a model could not be built, loaded, saved, or its output read.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A setting retrace cannot use.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data does not fit the model (image shape, or not the data it was trained on).
    #[error("{0}")]
    DataMismatch(String),
    /// Weights that cannot be read, written, or do not fit the architecture.
    #[error("{0}")]
    Weights(String),
    /// A tensor could not be read back from the device.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

impl crate::jobs::Cancellable for ConfigError {}
impl crate::jobs::Cancellable for ModelError {}
