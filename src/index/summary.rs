//! The compact block of an index: for every training image, one vector per ranking method
//! instead of one per timestep bucket. Beside every chunk file `ckpt-S-chunk-K.bin` ([n, B, D])
//! the build writes `ckpt-S-chunk-K.summary.bin` with, for each of the chunk's n images,
//!
//! - the bucket-mean feature φ̄_i = (1/B) Σ_b φ_{i,b} ([n, D], in the index's storage): what
//!   K-FAC/EK-FAC and TRAK score against;
//! - the mean of the unit-normalised bucket features ū_i = (1/B) Σ_b φ_{i,b}/‖φ_{i,b}‖ ([n, D],
//!   in the index's storage): what ReTrac (Xie et al.'s estimator) scores against;
//! - the norm of every bucket feature ‖φ_{i,b}‖ ([n, B], f32): the timestep-induced norm bias
//!   ReTrac removes, for plots.
//!
//! The three sections follow each other in that order, each row-major and little-endian, so a
//! method reads one contiguous section of 1/B of the index's bytes. Every score those methods
//! give, per bucket included, is a product of one of these vectors with the query's bucket
//! features, so the per-timestep decomposition comes with the ranking at no extra read.

use std::ops::Range;
use std::path::{Path, PathBuf};

use super::Storage;

/// Which per-image vector of the compact block a method scores against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SummaryPart {
    /// The bucket-mean feature φ̄.
    Mean,
    /// The mean of the unit-normalised bucket features ū.
    UnitMean,
}

/// The compact block of one chunk of training images, in f32.
#[derive(Clone, Debug, PartialEq)]
pub struct ChunkSummary {
    /// Training images in the chunk.
    pub rows: usize,
    /// φ̄, [rows, D].
    pub mean: Vec<f32>,
    /// ū, [rows, D].
    pub unit_mean: Vec<f32>,
    /// ‖φ_{i,b}‖, [rows, B].
    pub norms: Vec<f32>,
}

impl ChunkSummary {
    /// The compact block of `values` ([rows, buckets, dim], row-major). A zero bucket feature
    /// adds nothing to ū.
    pub fn of(values: &[f32], rows: usize, buckets: usize, dim: usize) -> Self {
        assert_eq!(values.len(), rows * buckets * dim, "features of the stated shape");
        let mut mean = vec![0f32; rows * dim];
        let mut unit_mean = vec![0f32; rows * dim];
        let mut norms = vec![0f32; rows * buckets];
        let share = 1.0 / buckets.max(1) as f32;
        for r in 0..rows {
            let (m, u) = (
                &mut mean[r * dim..(r + 1) * dim],
                &mut unit_mean[r * dim..(r + 1) * dim],
            );
            for b in 0..buckets {
                let x = &values[(r * buckets + b) * dim..(r * buckets + b + 1) * dim];
                let norm = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt() as f32;
                norms[r * buckets + b] = norm;
                let unit = if norm > 0.0 { share / norm } else { 0.0 };
                for ((m, u), &v) in m.iter_mut().zip(u.iter_mut()).zip(x) {
                    *m += v * share;
                    *u += v * unit;
                }
            }
        }
        Self {
            rows,
            mean,
            unit_mean,
            norms,
        }
    }

    /// The file's bytes: φ̄ and ū encoded as `storage`, then the norms as f32.
    pub fn encode(&self, storage: Storage) -> Vec<u8> {
        let mut out = super::encode(&self.mean, storage);
        out.extend(super::encode(&self.unit_mean, storage));
        out.extend(self.norms.iter().flat_map(|v| v.to_le_bytes()));
        out
    }
}

/// The byte layout of a summary file of `rows` images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SummaryLayout {
    /// Images in the file.
    pub rows: usize,
    /// Timestep buckets.
    pub buckets: usize,
    /// Feature width.
    pub dim: usize,
    /// Storage of φ̄ and ū.
    pub storage: Storage,
}

impl SummaryLayout {
    /// Bytes of one image's φ̄ (or ū).
    pub fn row_bytes(&self) -> usize {
        self.dim * self.storage.bytes()
    }

    /// Where `part` lies in the file.
    pub fn section(&self, part: SummaryPart) -> Range<usize> {
        let block = self.rows * self.row_bytes();
        match part {
            SummaryPart::Mean => 0..block,
            SummaryPart::UnitMean => block..2 * block,
        }
    }

    /// Where the norms lie in the file.
    pub fn norms(&self) -> Range<usize> {
        let start = 2 * self.rows * self.row_bytes();
        start..start + self.rows * self.buckets * 4
    }

    /// The file's length.
    pub fn len(&self) -> usize {
        self.norms().end
    }

    /// True for a file of no image.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }
}

/// The summary file of chunk `chunk` of the checkpoint at training step `step`.
pub fn summary_path(dir: &Path, step: usize, chunk: usize) -> PathBuf {
    dir.join(format!("ckpt-{step:07}-chunk-{chunk:05}.summary.bin"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn means_units_and_norms_of_a_small_block() {
        // One image, two buckets of width 2: (3, 4) and (0, 0).
        let s = ChunkSummary::of(&[3.0, 4.0, 0.0, 0.0], 1, 2, 2);
        assert_eq!(s.mean, vec![1.5, 2.0]);
        assert_eq!(s.unit_mean, vec![0.3, 0.4]);
        assert_eq!(s.norms, vec![5.0, 0.0]);
        let layout = SummaryLayout {
            rows: 1,
            buckets: 2,
            dim: 2,
            storage: Storage::F32,
        };
        let bytes = s.encode(Storage::F32);
        assert_eq!(bytes.len(), layout.len());
        assert_eq!(layout.section(SummaryPart::UnitMean), 8..16);
        assert_eq!(&bytes[layout.norms()][..4], &5.0f32.to_le_bytes());
    }
}
