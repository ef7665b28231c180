//! Attribution results: a score for every training image in every timestep bucket.

use serde::{Deserialize, Serialize};

/// Scores S[i, b] of every training image i in every bucket b, with what produced them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Method name ("tracin", "retrac", "pixel", …).
    pub method: String,
    /// The method's parameters, for reports and caches.
    pub parameters: serde_json::Value,
    /// Step range [start, end) of every bucket.
    pub buckets: Vec<[usize; 2]>,
    /// Stable id of every training image.
    pub ids: Vec<u64>,
    /// Label of every training image.
    pub labels: Vec<u32>,
    /// Scores, training-image-major: `per_bucket[i * buckets.len() + b]`.
    pub per_bucket: Vec<f32>,
}

impl Scores {
    /// Number of training images.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when there is no training image.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The per-bucket scores of training image `i`.
    pub fn bucket_scores(&self, i: usize) -> &[f32] {
        let b = self.buckets.len();
        &self.per_bucket[i * b..(i + 1) * b]
    }

    /// Total score of every training image (Σ over buckets).
    pub fn totals(&self) -> Vec<f64> {
        (0..self.len())
            .map(|i| self.bucket_scores(i).iter().map(|&v| v as f64).sum())
            .collect()
    }

    /// Training-image indices from most to least influential (by total).
    pub fn ranking(&self) -> Vec<usize> {
        let totals = self.totals();
        crate::eval::stats::top_k(&totals, totals.len())
    }
}
