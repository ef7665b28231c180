//! Why a curvature (K-FAC or EK-FAC) could not be fitted, stored or applied.

use std::path::PathBuf;

use crate::device::DeviceError;
use crate::files::FileError;
use crate::grad::GradError;

/// Why a curvature could not be fitted, stored, read back or applied.
#[derive(Debug, thiserror::Error)]
pub enum CurvatureError {
    /// The job was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// A file could not be read or written.
    #[error(transparent)]
    File(#[from] FileError),
    /// A stored curvature is damaged or belongs to another key.
    #[error("{path}: {reason}; delete the file to refit the curvature")]
    Damaged {
        /// The curvature file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The fit or its use does not fit together (no points, layers that differ, EK-FAC without
    /// its correction, …).
    #[error("{0}")]
    Invalid(String),
    /// The curvature holds NaN or infinity: the model has diverged.
    #[error("{0}")]
    NonFinite(String),
    /// The gradients could not be taken.
    #[error(transparent)]
    Grad(GradError),
    /// A condition the model cannot read.
    #[error(transparent)]
    Config(#[from] crate::diffusion::ConfigError),
    /// A tensor could not be read back from the device.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

crate::jobs::cancellable_error!(CurvatureError { Grad(GradError) });
