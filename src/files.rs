//! Files every layer writes and checks: atomic writes (a killed process never leaves a torn
//! file behind) and content hashes. The ground floor: the checkpoints, the index, the curvature
//! store, the evaluation, the reports, the viewer and the CLI all stand on it.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// An I/O failure on a file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct FileError {
    /// The file involved.
    pub path: PathBuf,
    /// What the system said.
    #[source]
    pub source: std::io::Error,
}

fn at(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError {
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` to `path` atomically: a temporary sibling, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp).map_err(at(&tmp))?;
    file.write_all(bytes).and_then(|_| file.sync_all()).map_err(at(&tmp))?;
    std::fs::rename(&tmp, path).map_err(at(path))
}

/// SHA-256 of bytes as lowercase hex.
pub fn sha256(bytes: &[u8]) -> String {
    to_hex(&Sha256::digest(bytes))
}

/// Lowercase hex of a byte string.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
