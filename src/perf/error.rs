//! Why a performance measurement could not be made.

use crate::attribution::AttributionError;
use crate::curvature::CurvatureError;
use crate::device::DeviceError;
use crate::files::FileError;
use crate::grad::GradError;
use crate::index::IndexError;

/// Why a measurement of `retrace bench` failed.
#[derive(Debug, thiserror::Error)]
pub enum PerfError {
    /// The measured computation gave a wrong answer, or the setting cannot be measured.
    #[error("{0}")]
    Invalid(String),
    /// A synthetic index could not be written or opened.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// A scoring pass failed.
    #[error(transparent)]
    Attribution(#[from] AttributionError),
    /// A timestep plan or gradient could not be made.
    #[error(transparent)]
    Grad(#[from] GradError),
    /// The curvature fit failed.
    #[error(transparent)]
    Curvature(#[from] CurvatureError),
    /// A file could not be read.
    #[error(transparent)]
    File(#[from] FileError),
    /// A tensor could not be read back.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

impl crate::jobs::Cancellable for PerfError {}
