//! Why an evaluation (building a ground truth, scoring a table, retraining without the top-k)
//! stopped: the evaluation layer's one error type, with the layers below it and cancellation
//! as a value.

use std::path::PathBuf;

use crate::attribution::AttributionError;
use crate::classifier::ClassifierError;
use crate::data::DataError;
use crate::device::DeviceError;
use crate::diffusion::train::TrainError;
use crate::diffusion::{CheckpointError, ConfigError, ModelError};
use crate::files::FileError;
use crate::index::IndexError;

/// Why an evaluation stopped.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The job was cancelled (what is finished stays, and the next run resumes from it).
    #[error("cancelled")]
    Cancelled,
    /// The benchmark, its directory or the request do not fit together.
    #[error("{0}")]
    Invalid(String),
    /// A file of the evaluation is not the JSON it should be.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        #[source]
        source: serde_json::Error,
    },
    /// Attribution failed.
    #[error(transparent)]
    Attribution(AttributionError),
    /// An index could not be built or opened.
    #[error(transparent)]
    Index(IndexError),
    /// Training failed.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// The classifier that judges samples cannot be trained or used.
    #[error(transparent)]
    Classifier(ClassifierError),
    /// A model directory cannot be read or written.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A model cannot be used.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A setting of the model, schedule or sampler cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data cannot be read.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A file cannot be read or written.
    #[error(transparent)]
    File(#[from] FileError),
    /// A tensor could not be read back from the device.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

crate::jobs::cancellable_error!(EvalError {
    Attribution(AttributionError),
    Classifier(ClassifierError),
    Index(IndexError),
});
