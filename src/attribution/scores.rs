//! Attribution results: a score for every training image in every timestep bucket.

use super::error::AttributionError;

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

    /// An error naming the method, the training image and the timestep bucket of the first
    /// score that is NaN or infinite: such a score has no place in a ranking (it would sort
    /// first or last by accident), so it is reported instead of ranked.
    pub fn check_finite(&self) -> Result<(), AttributionError> {
        let buckets = self.buckets.len().max(1);
        let Some(at) = self.per_bucket.iter().position(|v| !v.is_finite()) else {
            return Ok(());
        };
        let (image, bucket) = (at / buckets, at % buckets);
        let steps = self
            .buckets
            .get(bucket)
            .map_or(String::new(), |[a, b]| format!(", timesteps {a}..{b}"));
        Err(AttributionError::NonFinite(format!(
            "{} scored training image #{image} (id {}) {}{steps}: its gradients or the query's overflowed \
             or are undefined, so no ranking is given (an f16 index cannot hold them: rebuild it as f32; \
             a model whose loss is NaN needs retraining)",
            self.method,
            self.ids.get(image).map_or("?".to_owned(), u64::to_string),
            self.per_bucket[at]
        )))
    }

    /// The per-bucket scores of training image `i`.
    pub fn bucket_scores(&self, i: usize) -> &[f32] {
        let b = self.buckets.len();
        &self.per_bucket[i * b..(i + 1) * b]
    }

    /// (bucket midpoint step, score) of training image `i`, for per-timestep plots.
    pub fn bucket_curve(&self, i: usize) -> Vec<[f64; 2]> {
        self.buckets
            .iter()
            .zip(self.bucket_scores(i))
            .map(|([s, e], &v)| [(s + e) as f64 / 2.0, v as f64])
            .collect()
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
        crate::stats::top_k(&totals, totals.len())
    }
}

/// One training image's line in an output file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RankedEntry {
    /// 1-based rank by total score.
    pub rank: usize,
    /// Stable id.
    pub id: u64,
    /// Label.
    pub label: u32,
    /// Class name.
    pub class: String,
    /// Σ over buckets.
    pub total: f64,
    /// Per-bucket scores.
    pub per_bucket: Vec<f32>,
}

/// One method's results in an output file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MethodResult {
    /// Method name.
    pub method: String,
    /// Its parameters (plan, projection, checkpoints, …).
    pub parameters: serde_json::Value,
    /// Step range of every bucket.
    pub buckets: Vec<[usize; 2]>,
    /// Every training image, most influential first.
    pub ranking: Vec<RankedEntry>,
}

/// The file `retrace attribute` writes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttributionFile {
    /// retrace version.
    pub retrace_version: String,
    /// Model directory.
    pub model: String,
    /// Training data spec.
    pub data: String,
    /// The query and how it was made.
    pub query: serde_json::Value,
    /// Compute device.
    pub device: String,
    /// One entry per method.
    pub methods: Vec<MethodResult>,
}

impl MethodResult {
    /// Ranks `scores`, naming classes with `class_names`.
    pub fn from_scores(scores: &Scores, class_names: &[String]) -> Self {
        let totals = scores.totals();
        let ranking = scores
            .ranking()
            .into_iter()
            .enumerate()
            .map(|(r, i)| RankedEntry {
                rank: r + 1,
                id: scores.ids[i],
                label: scores.labels[i],
                class: class_names.get(scores.labels[i] as usize).cloned().unwrap_or_default(),
                total: totals[i],
                per_bucket: scores.bucket_scores(i).to_vec(),
            })
            .collect();
        Self {
            method: scores.method.clone(),
            parameters: scores.parameters.clone(),
            buckets: scores.buckets.clone(),
            ranking,
        }
    }
}

impl MethodResult {
    /// The scores back in the dataset's order, for reports. Fails when an id of the file is not
    /// in `data` (the scores were computed on other data).
    pub fn to_scores(&self, data: &crate::data::Dataset) -> Result<Scores, AttributionError> {
        let position: std::collections::HashMap<u64, usize> =
            data.ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
        let b = self.buckets.len();
        let mut per_bucket = vec![0.0f32; data.len() * b];
        let mut seen = vec![false; data.len()];
        for e in &self.ranking {
            let &i = position.get(&e.id).ok_or_else(|| {
                AttributionError::Invalid(format!(
                    "{}: training image id {} is not in {}; the scores were computed on other data",
                    self.method, e.id, data.name
                ))
            })?;
            if e.per_bucket.len() != b {
                return Err(AttributionError::Invalid(format!(
                    "{}: image {} has {} bucket scores, not {b}",
                    self.method,
                    e.id,
                    e.per_bucket.len()
                )));
            }
            per_bucket[i * b..(i + 1) * b].copy_from_slice(&e.per_bucket);
            seen[i] = true;
        }
        if let Some(missing) = seen.iter().position(|s| !s) {
            return Err(AttributionError::Invalid(format!(
                "{}: the file has no score for training image id {} of {}",
                self.method, data.ids[missing], data.name
            )));
        }
        Ok(Scores {
            method: self.method.clone(),
            parameters: self.parameters.clone(),
            buckets: self.buckets.clone(),
            ids: data.ids.clone(),
            labels: data.labels.clone(),
            per_bucket,
        })
    }
}

impl AttributionFile {
    /// CSV with one row per (method, training image): method, rank, id, label, class, total, and
    /// the per-bucket scores separated by spaces.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("method,rank,id,label,class,total,per_bucket\n");
        for m in &self.methods {
            for e in &m.ranking {
                let buckets: Vec<String> = e.per_bucket.iter().map(|v| format!("{v:e}")).collect();
                out.push_str(&format!(
                    "{},{},{},{},\"{}\",{:e},{}\n",
                    m.method,
                    e.rank,
                    e.id,
                    e.label,
                    e.class.replace('"', "'"),
                    e.total,
                    buckets.join(" ")
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nan_score_is_an_error_naming_the_method_image_and_bucket() {
        let mut scores = Scores {
            method: "tracin".into(),
            parameters: serde_json::json!({}),
            buckets: vec![[0, 500], [500, 1000]],
            ids: vec![10, 11, 12],
            labels: vec![0; 3],
            per_bucket: vec![0.1; 6],
        };
        assert!(scores.check_finite().is_ok());
        scores.per_bucket[5] = f32::NAN;
        let message = scores.check_finite().unwrap_err().to_string();
        assert!(
            message.starts_with("tracin scored training image #2 (id 12) NaN, timesteps 500..1000"),
            "{message}"
        );
    }
}
