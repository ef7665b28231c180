//! Why a report or a scores file could not be written or read.

use crate::attribution::AttributionError;
use crate::files::FileError;

/// Why a report or a scores file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The report cannot be made as asked (a format this build does not write, an extension
    /// that names no format, …).
    #[error("{0}")]
    Unsupported(String),
    /// A scores file is damaged or does not fit the training data.
    #[error("{0}")]
    Invalid(String),
    /// The scores in the file do not fit the data.
    #[error(transparent)]
    Scores(#[from] AttributionError),
    /// Rendering the PDF failed.
    #[error("{0}")]
    Pdf(String),
    /// A file could not be written.
    #[error(transparent)]
    File(#[from] FileError),
}

impl crate::jobs::Cancellable for ReportError {}
