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

/// Names `path` in an I/O error: `.map_err(at(path))`.
pub fn at(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError {
        path: path.to_owned(),
        source,
    }
}

/// A fresh temporary sibling for this process to write `path` through: hidden, named after the
/// whole file name (so `report.html` and `report.pdf` never share one) with a number unique in
/// this process (so two writers of one path never share one either), and ending in the process
/// id, by which [`remove_stale_temporaries`] knows a dead writer's.
pub fn temporary_sibling(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    path.with_file_name(format!(
        ".{}.{n}.{TEMPORARY_MARK}{}",
        file_name(path),
        std::process::id()
    ))
}

/// The last component of `path` as text ("" for none), for names and messages.
pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// What the name of a temporary file or directory holds before its writer's process id.
const TEMPORARY_MARK: &str = "tmp-";

/// Removes the temporary files and directories a killed process left in `dir`: entries named
/// `….tmp-PID` whose process is gone (on systems with `/proc`; elsewhere nothing is removed).
/// Each directory is swept once per process, before its first atomic write, so a resumed job
/// ends with no leftovers of the run it resumes.
pub fn remove_stale_temporaries(dir: &Path) {
    static SWEPT: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let proc_fs = Path::new("/proc/self");
    if !proc_fs.exists() {
        return;
    }
    {
        let mut swept = SWEPT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if swept.iter().any(|d| d == dir) {
            return;
        }
        swept.push(dir.to_owned());
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.rsplit_once(&format!(".{TEMPORARY_MARK}")))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists() {
            let path = entry.path();
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
}

/// Writes `bytes` to `path` atomically: a temporary sibling, fsync, rename. A killed writer's
/// temporaries in the same directory are removed first ([`remove_stale_temporaries`]). On
/// failure (a full disk, say) the temporary is removed and `path` keeps its old content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    use std::io::Write;
    if let Some(parent) = path.parent() {
        remove_stale_temporaries(parent);
    }
    let tmp = temporary_sibling(path);
    // Errors name `path`, the file the caller asked for, not the temporary.
    let mut file = std::fs::File::create(&tmp).map_err(at(path))?;
    let written = file
        .write_all(bytes)
        .and_then(|_| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(at(path));
    if written.is_err() {
        // A full disk must not stay fuller for the attempt: the partial temporary goes, and
        // whatever `path` held before is untouched.
        drop(file);
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// retrace's cache directory: `$XDG_CACHE_HOME/retrace`, else `~/.cache/retrace`, else one in
/// the temporary directory. Indexes and latent caches live under it.
pub fn cache_root() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("retrace")
}

/// SHA-256 of bytes as lowercase hex.
pub fn sha256(bytes: &[u8]) -> String {
    to_hex(&Sha256::digest(bytes))
}

/// The first 12 characters of a digest, for messages; all of it when it is shorter (a damaged
/// or empty hash in a file must not make a message panic).
pub fn short_hash(hash: &str) -> &str {
    hash.char_indices().nth(12).map_or(hash, |(end, _)| &hash[..end])
}

/// Reads a whole file, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(at(path))
}

/// Creates a directory and its parents, naming it in the error.
pub fn create_dir_all(dir: &Path) -> Result<(), FileError> {
    std::fs::create_dir_all(dir).map_err(at(dir))
}

/// Lowercase hex of a byte string.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Largest image side retrace decodes: far beyond any training image, small enough that a
/// damaged header cannot make the decoder allocate gigabytes.
pub const MAX_IMAGE_SIDE: u32 = 16_384;

/// Why an image file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImageFileError {
    /// The file could not be opened.
    #[error(transparent)]
    File(#[from] FileError),
    /// The file is not an image retrace decodes (or is damaged, or too large).
    #[error("{path}: {source}")]
    Decode {
        /// The file involved.
        path: PathBuf,
        /// What the decoder said.
        #[source]
        source: image::ImageError,
    },
}

/// Decodes a PNG or JPEG file, recognising the format by its content (a JPEG named `.png`
/// reads too) and refusing sides beyond [`MAX_IMAGE_SIDE`].
pub fn read_image(path: &Path) -> Result<image::DynamicImage, ImageFileError> {
    let mut reader = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(at(path))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    reader.limits(limits);
    reader.decode().map_err(|source| ImageFileError::Decode {
        path: path.to_owned(),
        source,
    })
}

/// A safetensors file with its JSON header's keys in sorted order (the metadata's included).
/// The `safetensors` crate takes the metadata as a hash map, whose order differs between
/// processes, so the same tensors would be written as different bytes; sorted, they are not.
/// The header keeps its length, so its padding and every data offset stay valid.
pub fn canonical_safetensors(mut bytes: Vec<u8>) -> Vec<u8> {
    fn sorted(value: serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(fields) => {
                let mut entries: Vec<(String, serde_json::Value)> = fields.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
            }
            other => other,
        }
    }
    let Some(length) = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(|b| u64::from_le_bytes(b) as usize)
    else {
        return bytes;
    };
    let Some(header) = bytes.get(8..8usize.saturating_add(length)) else {
        return bytes;
    };
    let text = String::from_utf8_lossy(header);
    let trimmed = text.trim_end();
    let Ok(value) = serde_json::from_str::<serde_json::Value>(trimmed) else {
        return bytes;
    };
    let Ok(canonical) = serde_json::to_vec(&sorted(value)) else {
        return bytes;
    };
    if canonical.len() == trimmed.len() {
        bytes[8..8 + canonical.len()].copy_from_slice(&canonical);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_atomic_write_leaves_the_old_content_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        // A non-empty directory where the file should go: the final rename fails.
        let path = dir.path().join("report.html");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("kept"), b"old").unwrap();
        let error = write_atomic(&path, b"new").unwrap_err();
        assert_eq!(error.path, path, "the error names the file asked for");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["report.html"], "no temporary is left");
        assert_eq!(std::fs::read(path.join("kept")).unwrap(), b"old");
    }

    #[test]
    fn temporaries_of_one_process_never_share_a_name() {
        let a = temporary_sibling(Path::new("/x/report.html"));
        let b = temporary_sibling(Path::new("/x/report.pdf"));
        let c = temporary_sibling(Path::new("/x/report.html"));
        assert!(a != b && a != c && b != c, "{a:?} {b:?} {c:?}");
        assert!(a.to_string_lossy().ends_with(&format!(".tmp-{}", std::process::id())));
        assert_eq!(a.parent(), Some(Path::new("/x")));
    }

    #[test]
    fn a_safetensors_header_is_written_in_one_order_whatever_the_metadata_map_holds() {
        let values = [1.0f32, 2.0, 3.0];
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![3], &data).unwrap();
        let written: Vec<Vec<u8>> = (0..8)
            .map(|k| {
                // Maps filled in different orders, as different processes' hash maps iterate.
                let mut metadata = std::collections::HashMap::new();
                let mut keys = vec!["key", "payload_sha256", "version"];
                keys.rotate_left(k % 3);
                for key in keys {
                    metadata.insert(key.to_owned(), format!("value of {key}"));
                }
                canonical_safetensors(safetensors::serialize([("t", view.clone())], Some(metadata)).unwrap())
            })
            .collect();
        assert!(written.windows(2).all(|w| w[0] == w[1]));
        let read = safetensors::SafeTensors::deserialize(&written[0]).unwrap();
        assert_eq!(read.tensor("t").unwrap().data(), data.as_slice());
    }
}
