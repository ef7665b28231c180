//! Training data: an in-memory [`Dataset`] of `u8` images with labels, stable ids and a content
//! hash, plus loaders for the formats diffusion-attribution papers use (idx / idx.gz as in MNIST
//! and Fashion-MNIST, CIFAR-10 binary batches, image folders) and the bundled default.
//!
//! A dataset is named by a [`DataSpec`] string such as
//! `fashion-mnist:/usr/share/datasets/fashion-mnist?split=test&classes=0,9&subset=500`, so that
//! the exact selection can be written into manifests and reports and loaded again.

mod bundled;
mod cifar;
mod error;
mod folder;
mod idx;
pub mod pixels;
mod spec;

pub use bundled::{BUNDLED_DIR_ENV, bundled_classifier_dir, bundled_dir, bundled_model_dir};
pub use cifar::parse_cifar_batch;
pub use error::{DataError, FormatError};
pub use idx::{IdxArray, parse_idx};
pub use spec::{DataFormat, DataSpec, Split};

use sha2::{Digest, Sha256};

/// A set of equally sized images with labels, kept as raw bytes in N×C×H×W order.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Human-readable name, normally the spec the dataset was loaded from.
    pub name: String,
    /// Channels per image (1 for grey, 3 for RGB).
    pub channels: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Pixels, `len() * channels * height * width` bytes, image-major then channel, row, column.
    pub pixels: Vec<u8>,
    /// Class index of every image.
    pub labels: Vec<u32>,
    /// Stable id of every image: its position in the source split, unchanged by filtering.
    pub ids: Vec<u64>,
    /// Name of every class index.
    pub class_names: Vec<String>,
}

impl Dataset {
    /// Builds a dataset, checking that pixels, labels and ids agree in count.
    pub fn new(
        name: impl Into<String>,
        [channels, height, width]: [usize; 3],
        pixels: Vec<u8>,
        labels: Vec<u32>,
        ids: Vec<u64>,
        class_names: Vec<String>,
    ) -> Result<Self, DataError> {
        let name = name.into();
        let per_image = channels * height * width;
        if per_image == 0 {
            return Err(DataError::Invalid(format!(
                "{name}: images of shape {channels}×{height}×{width} hold no pixels"
            )));
        }
        if pixels.len() != labels.len() * per_image || ids.len() != labels.len() {
            return Err(DataError::Invalid(format!(
                "{name}: {} pixel bytes, {} labels and {} ids do not describe the same images of \
                 {channels}×{height}×{width}",
                pixels.len(),
                labels.len(),
                ids.len()
            )));
        }
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= class_names.len()) {
            return Err(DataError::Invalid(format!(
                "{name}: label {bad} has no class name (there are {} classes)",
                class_names.len()
            )));
        }
        Ok(Self {
            name,
            channels,
            height,
            width,
            pixels,
            labels,
            ids,
            class_names,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the dataset holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image (`channels * height * width`).
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The pixels of image `i` (C×H×W).
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// Name of the class of image `i`.
    pub fn class_name(&self, i: usize) -> &str {
        &self.class_names[self.labels[i] as usize]
    }

    /// SHA-256 over shape, pixels, labels and ids, as lowercase hex: two datasets with the same
    /// hash hold the same images in the same order.
    pub fn content_hash(&self) -> String {
        let mut h = Sha256::new();
        for d in [self.channels, self.height, self.width, self.len()] {
            h.update((d as u64).to_le_bytes());
        }
        h.update(&self.pixels);
        for (&label, &id) in self.labels.iter().zip(&self.ids) {
            h.update(label.to_le_bytes());
            h.update(id.to_le_bytes());
        }
        crate::files::to_hex(&h.finalize())
    }

    /// Keeps the images whose index is in `keep` (in that order).
    pub fn select(&self, keep: &[usize]) -> Self {
        let mut pixels = Vec::with_capacity(keep.len() * self.image_len());
        for &i in keep {
            pixels.extend_from_slice(self.image(i));
        }
        Self {
            name: self.name.clone(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            pixels,
            labels: keep.iter().map(|&i| self.labels[i]).collect(),
            ids: keep.iter().map(|&i| self.ids[i]).collect(),
            class_names: self.class_names.clone(),
        }
    }

    /// Number of images of every class, indexed by class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.class_names.len()];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// Loads the dataset a spec names, applying its class filter, offset and subset size.
    pub fn load(spec: &DataSpec) -> Result<Self, DataError> {
        let full = match spec.format {
            DataFormat::Idx { fashion } => idx::load_dir(&spec.path, spec.split, fashion)?,
            DataFormat::Cifar10 => cifar::load_dir(&spec.path, spec.split)?,
            DataFormat::Folder => folder::load_dir(&spec.path)?,
            DataFormat::Bundled => bundled::load(spec.split)?,
        };
        let mut keep: Vec<usize> = (0..full.len())
            .filter(|&i| spec.classes.as_ref().is_none_or(|c| c.contains(&full.labels[i])))
            .collect();
        keep.drain(..spec.offset.unwrap_or(0).min(keep.len()));
        if let Some(n) = spec.subset {
            keep.truncate(n);
        }
        if keep.is_empty() {
            return Err(DataError::Empty(spec.to_string()));
        }
        let mut selected = full.select(&keep);
        selected.name = spec.to_string();
        Ok(selected)
    }
}
