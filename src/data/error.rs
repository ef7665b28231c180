use std::path::PathBuf;

/// Why a dataset could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or directory is missing or unreadable.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file's bytes do not follow its format.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The spec string could not be parsed.
    #[error("bad dataset spec {spec:?}: {reason}")]
    Spec {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The selection holds no image.
    #[error("the dataset {0} selects no image (check the classes and subset options)")]
    Empty(String),
    /// Any other inconsistency, described.
    #[error("{0}")]
    Invalid(String),
}

/// Bytes that do not follow a file format (the parsers see bytes, not files: the caller names
/// the file in a [`DataError::Corrupt`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(pub String);

impl crate::jobs::Cancellable for DataError {}

impl DataError {
    /// Shorthand for a [`DataError::Corrupt`].
    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// Reads a whole file, naming it in the error.
pub(crate) fn read_file(path: &std::path::Path) -> Result<Vec<u8>, DataError> {
    crate::files::read(path).map_err(|e| DataError::Io {
        path: e.path,
        source: e.source,
    })
}
