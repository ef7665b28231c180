//! The bundled default: the first 1,000 training and first 200 test images of Fashion-MNIST
//! (Xiao et al. 2017, MIT licence), stored as idx.gz under `assets/data/fashion-mnist-subset/`.
//! Because they are a prefix of the original files, a bundled image's id is its index in the
//! full Fashion-MNIST split. `assets/data/README.md` holds the provenance and licence.

use std::path::PathBuf;

use super::{DataError, Dataset, Split};

/// Environment variable that points retrace at another `assets/` directory.
pub const BUNDLED_DIR_ENV: &str = "RETRACE_ASSETS";

/// The `assets/` directory: `$RETRACE_ASSETS` if set, else the one in the source tree.
pub fn bundled_dir() -> PathBuf {
    std::env::var_os(BUNDLED_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets"))
}

/// The bundled default model directory (`assets/model/`), trained on the bundled data.
pub fn bundled_model_dir() -> PathBuf {
    bundled_dir().join("model")
}

/// The bundled Fashion-MNIST classifier that judges samples (`retrace eval classes`).
pub fn bundled_classifier_dir() -> PathBuf {
    bundled_dir().join("classifier")
}

/// Loads a split of the bundled subset.
pub(crate) fn load(split: Split) -> Result<Dataset, DataError> {
    let dir = bundled_dir().join("data").join("fashion-mnist-subset");
    let mut ds = super::idx::load_dir(&dir, split, true)?;
    ds.name = "bundled".to_owned();
    Ok(ds)
}
