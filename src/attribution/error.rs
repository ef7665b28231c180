//! Why an attribution request produced no scores: the one error type of the attribution layer,
//! with the errors of the layers below it and cancellation as a value.

use crate::classifier::ClassifierError;
use crate::curvature::CurvatureError;
use crate::data::DataError;
use crate::device::DeviceError;
use crate::diffusion::latent::LatentError;
use crate::diffusion::{CheckpointError, ConfigError, ModelError};
use crate::files::{FileError, ImageFileError};
use crate::grad::GradError;
use crate::index::IndexError;

/// Why an attribution request (or one of its products) failed.
#[derive(Debug, thiserror::Error)]
pub enum AttributionError {
    /// The job was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// The request cannot be served as asked: an unknown method or parameter, a value out of
    /// range, a query or region that does not fit the model, a method that does not apply.
    #[error("{0}")]
    Request(String),
    /// The inputs do not fit together (an index and a model that disagree, …).
    #[error("{0}")]
    Invalid(String),
    /// A score, gradient or loss is NaN or infinite: the model has diverged.
    #[error("{0}")]
    NonFinite(String),
    /// The index could not be built or opened.
    #[error(transparent)]
    Index(IndexError),
    /// The curvature could not be fitted, loaded or applied.
    #[error(transparent)]
    Curvature(CurvatureError),
    /// Gradients could not be taken.
    #[error(transparent)]
    Grad(GradError),
    /// The model cannot be used.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A setting of the model, schedule or sampler cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The model directory cannot be read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The data cannot be read.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A file cannot be read or written.
    #[error(transparent)]
    File(#[from] FileError),
    /// An image file (a query, a region mask) cannot be read.
    #[error(transparent)]
    Image(#[from] ImageFileError),
    /// A tensor could not be read back from the device.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A latent model's training latents could not be encoded or read.
    #[error(transparent)]
    Latent(LatentError),
    /// The image classifier a feature-space method reads cannot be used.
    #[error(transparent)]
    Classifier(ClassifierError),
}

crate::jobs::cancellable_error!(AttributionError {
    Index(IndexError),
    Curvature(CurvatureError),
    Grad(GradError),
    Latent(LatentError),
    Classifier(ClassifierError),
});
