//! The ground truth of an LDS benchmark: for every retrained (subset, seed) model, the loss of
//! every query under the benchmark's fixed (t, ε) draws, with the subsets, the queries and two
//! quality figures — the measurement noise and the seed-to-seed Spearman correlation of
//! per-subset losses (the ceiling any attribution method's LDS can reach).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::benchmark::{BenchmarkQuery, BenchmarkSpec, ModelKey, QueryHalf, QueryKind};
use super::error::EvalError;
use crate::files::to_hex;
use crate::stats::{pearson, spearman};

/// What measuring one model gave: every query's mean loss over the draws, and the mean over
/// the even-numbered draws alone (the split that estimates measurement noise).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelResult {
    /// The subset and seed (`None` for the full-data model).
    pub key: Option<ModelKey>,
    /// Mean loss of every query over all draws.
    pub losses: Vec<f64>,
    /// Mean loss of every query over the even-numbered draws.
    pub even_losses: Vec<f64>,
    /// The model's training loss at its last checkpoint.
    pub final_train_loss: f64,
    /// Seconds spent training (this invocation; 0 when the model was cached).
    pub train_seconds: f64,
    /// Seconds spent measuring.
    pub measure_seconds: f64,
}

/// Quality of a ground truth.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroundTruthQuality {
    /// Mean over queries and seed pairs of the Spearman correlation, over subsets, between the
    /// losses of two seeds: the ceiling of any method's LDS (against a single seed; the mean over
    /// seeds that LDS uses is somewhat less noisy).
    pub seed_spearman: f64,
    /// The same, per query kind, in [`QueryKind::ALL`] order.
    pub seed_spearman_by_kind: Vec<f64>,
    /// Mean over queries of the Spearman correlation, over models, between the losses measured
    /// on the even and on the odd draws: how reproducible the measurement itself is.
    pub split_draw_spearman: f64,
    /// Mean over queries of the share of the across-model loss variance that is measurement
    /// noise: Var((L_even − L_odd)/2) / Var(L), over models.
    pub noise_share: f64,
    /// Mean over the queries of each kind ([`QueryKind::ALL`] order) of the consistency
    /// intraclass correlation ICC(3,1) of a query's losses, subsets by seeds: the share of the
    /// loss variance between models that the subset explains beyond each seed's constant shift.
    /// For normal losses the expected seed-to-seed Pearson correlation is this share, and its
    /// estimate pools over queries, so a build's first few subsets already give it (0 with one
    /// seed; absent from files written before it existed).
    #[serde(default)]
    pub seed_icc_by_kind: Vec<f64>,
}

/// A complete ground truth: `ground-truth.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroundTruth {
    /// The benchmark it measures.
    pub spec: BenchmarkSpec,
    /// The commands that built it, in order.
    pub commands: Vec<String>,
    /// The queries.
    pub queries: Vec<BenchmarkQuery>,
    /// Every subset as a bitmap over the training set (hex, bit i of byte i/8 = image i).
    pub masks: Vec<String>,
    /// The full-data model's measurement.
    pub full: ModelResult,
    /// Every subset model's measurement, subset-major then seed.
    pub models: Vec<ModelResult>,
    /// Quality figures.
    pub quality: GroundTruthQuality,
    /// Sum over models of training and measuring seconds (the cost of the build).
    pub compute_seconds: f64,
}

/// A subset as a hex bitmap over `n` images.
pub fn mask_hex(indices: &[usize], n: usize) -> String {
    let mut bytes = vec![0u8; n.div_ceil(8)];
    for &i in indices {
        bytes[i / 8] |= 1 << (i % 8);
    }
    to_hex(&bytes)
}

/// The indices a hex bitmap over `n` images holds.
pub fn mask_indices(hex: &str, n: usize) -> Result<Vec<usize>, EvalError> {
    if hex.len() != n.div_ceil(8) * 2 {
        return Err(EvalError::Invalid(format!(
            "a mask over {n} images has {} hex digits, not {}",
            n.div_ceil(8) * 2,
            hex.len()
        )));
    }
    let mut out = Vec::new();
    for (byte_index, pair) in hex.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).map_err(|_| EvalError::Invalid("a mask is not hex".to_string()))?;
        let byte =
            u8::from_str_radix(text, 16).map_err(|_| EvalError::Invalid(format!("{text:?} in a mask is not hex")))?;
        for bit in 0..8 {
            let i = byte_index * 8 + bit;
            if byte & (1 << bit) != 0 {
                if i >= n {
                    return Err(EvalError::Invalid(format!("a mask names image {i} of {n}")));
                }
                out.push(i);
            }
        }
    }
    Ok(out)
}

impl GroundTruth {
    /// Assembles a ground truth from its parts, checking that every model was measured once
    /// and on every query, and computes its quality.
    pub fn assemble(
        spec: BenchmarkSpec,
        commands: Vec<String>,
        queries: Vec<BenchmarkQuery>,
        full: ModelResult,
        mut models: Vec<ModelResult>,
    ) -> Result<Self, EvalError> {
        models.sort_by_key(|m| m.key);
        let keys: Vec<Option<ModelKey>> = models.iter().map(|m| m.key).collect();
        let expected: Vec<Option<ModelKey>> = spec.models().into_iter().map(Some).collect();
        if keys != expected {
            return Err(EvalError::Invalid(format!(
                "{} of the benchmark's {} models are measured",
                keys.iter().filter(|k| expected.contains(k)).count(),
                expected.len()
            )));
        }
        for m in models.iter().chain([&full]) {
            if m.losses.len() != queries.len() || m.even_losses.len() != queries.len() {
                return Err(EvalError::Invalid(format!(
                    "a model was measured on {} queries, not {}",
                    m.losses.len(),
                    queries.len()
                )));
            }
            if m.losses.iter().chain(&m.even_losses).any(|v| !v.is_finite()) {
                return Err(EvalError::Invalid(format!(
                    "model {:?} has a non-finite query loss",
                    m.key
                )));
            }
        }
        let masks = (0..spec.subsets)
            .map(|m| mask_hex(&spec.subset(m), spec.data_len))
            .collect();
        let compute_seconds = models
            .iter()
            .chain([&full])
            .map(|m| m.train_seconds + m.measure_seconds)
            .sum();
        let mut truth = Self {
            spec,
            commands,
            queries,
            masks,
            full,
            models,
            quality: GroundTruthQuality {
                seed_spearman: 0.0,
                seed_spearman_by_kind: Vec::new(),
                split_draw_spearman: 0.0,
                noise_share: 0.0,
                seed_icc_by_kind: Vec::new(),
            },
            compute_seconds,
        };
        truth.quality = truth.measure_quality();
        Ok(truth)
    }

    /// Reads and checks a ground-truth file.
    pub fn load(path: &Path) -> Result<Self, EvalError> {
        let bytes = crate::files::read(path)?;
        let truth: Self = serde_json::from_slice(&bytes)
            .map_err(|e| EvalError::Invalid(format!("{} is not an LDS ground truth: {e}", path.display())))?;
        truth
            .spec
            .validate()
            .map_err(|e| EvalError::Invalid(format!("{}: {e}", path.display())))?;
        let again = Self::assemble(
            truth.spec.clone(),
            truth.commands.clone(),
            truth.queries.clone(),
            truth.full.clone(),
            truth.models.clone(),
        )
        .map_err(|e| EvalError::Invalid(format!("{}: {e}", path.display())))?;
        if again.masks != truth.masks {
            return Err(EvalError::Invalid(format!(
                "{}: its masks are not the ones its seeds give",
                path.display()
            )));
        }
        let mut truth = truth;
        if truth.quality.seed_icc_by_kind.is_empty() {
            truth.quality.seed_icc_by_kind = again.quality.seed_icc_by_kind;
        }
        Ok(truth)
    }

    /// The sorted training-set indices of every subset.
    pub fn subsets(&self) -> Result<Vec<Vec<usize>>, EvalError> {
        self.masks.iter().map(|m| mask_indices(m, self.spec.data_len)).collect()
    }

    /// Indices of the queries of one kind and half.
    pub fn query_indices(&self, kind: QueryKind, half: QueryHalf) -> Vec<usize> {
        (0..self.queries.len())
            .filter(|&q| self.queries[q].kind == kind && self.queries[q].half == half)
            .collect()
    }

    /// Losses of query `q` per subset under one seed (`seed` indexes `spec.seeds`).
    pub fn losses_for_seed(&self, q: usize, seed: usize) -> Vec<f64> {
        let seeds = self.spec.seeds.len();
        (0..self.spec.subsets)
            .map(|m| self.models[m * seeds + seed].losses[q])
            .collect()
    }

    /// Losses of query `q` per subset, averaged over seeds: what LDS correlates with.
    pub fn mean_losses(&self, q: usize) -> Vec<f64> {
        let seeds = self.spec.seeds.len();
        (0..self.spec.subsets)
            .map(|m| (0..seeds).map(|s| self.models[m * seeds + s].losses[q]).sum::<f64>() / seeds as f64)
            .collect()
    }

    /// Seed-to-seed Spearman of query `q`: the mean over seed pairs (0 with one seed).
    pub fn seed_spearman(&self, q: usize) -> f64 {
        let seeds = self.spec.seeds.len();
        let mut values = Vec::new();
        for a in 0..seeds {
            for b in a + 1..seeds {
                values.push(spearman(&self.losses_for_seed(q, a), &self.losses_for_seed(q, b)));
            }
        }
        mean(&values)
    }

    /// The consistency ICC of query `q`'s losses, subsets by seeds
    /// ([`crate::stats::icc_consistency`]; 0 with fewer than 2 seeds or subsets).
    pub fn seed_icc(&self, q: usize) -> f64 {
        let (m, k) = (self.spec.subsets, self.spec.seeds.len());
        let groups: Vec<Vec<f64>> = (0..m)
            .map(|subset| (0..k).map(|s| self.models[subset * k + s].losses[q]).collect())
            .collect();
        crate::stats::icc_consistency(&groups)
    }

    /// The mean of `per_query` over the queries of each kind, in [`QueryKind::ALL`] order.
    fn mean_by_kind(&self, per_query: impl Fn(usize) -> f64) -> Vec<f64> {
        QueryKind::ALL
            .iter()
            .map(|&kind| {
                let of_kind: Vec<f64> = (0..self.queries.len())
                    .filter(|&q| self.queries[q].kind == kind)
                    .map(&per_query)
                    .collect();
                mean(&of_kind)
            })
            .collect()
    }

    fn measure_quality(&self) -> GroundTruthQuality {
        let queries: Vec<usize> = (0..self.queries.len()).collect();
        let seed_spearman = mean(&queries.iter().map(|&q| self.seed_spearman(q)).collect::<Vec<_>>());
        let seed_spearman_by_kind = self.mean_by_kind(|q| self.seed_spearman(q));
        let (mut split, mut noise) = (Vec::new(), Vec::new());
        for &q in &queries {
            let all: Vec<f64> = self.models.iter().map(|m| m.losses[q]).collect();
            let even: Vec<f64> = self.models.iter().map(|m| m.even_losses[q]).collect();
            let odd: Vec<f64> = all.iter().zip(&even).map(|(a, e)| 2.0 * a - e).collect();
            split.push(spearman(&even, &odd));
            let half_difference: Vec<f64> = even.iter().zip(&odd).map(|(e, o)| (e - o) / 2.0).collect();
            let total = variance(&all);
            noise.push(if total > 0.0 {
                variance(&half_difference) / total
            } else {
                1.0
            });
        }
        let seed_icc_by_kind = self.mean_by_kind(|q| self.seed_icc(q));
        GroundTruthQuality {
            seed_spearman,
            seed_spearman_by_kind,
            split_draw_spearman: mean(&split),
            noise_share: mean(&noise),
            seed_icc_by_kind,
        }
    }

    /// Pearson correlation between the full-data model's query losses and the mean subset
    /// model's: a sanity figure (the subset models should find the same queries hard).
    pub fn full_vs_subset_pearson(&self) -> f64 {
        let n = self.models.len() as f64;
        let mean_subset: Vec<f64> = (0..self.queries.len())
            .map(|q| self.models.iter().map(|m| m.losses[q]).sum::<f64>() / n)
            .collect();
        pearson(&self.full.losses, &mean_subset)
    }
}

/// Arithmetic mean (0 for none).
pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

fn variance(values: &[f64]) -> f64 {
    let m = mean(values);
    mean(&values.iter().map(|v| (v - m).powi(2)).collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_round_trip_through_hex() {
        let idx = vec![0, 3, 8, 9, 12];
        let hex = mask_hex(&idx, 13);
        assert_eq!(hex.len(), 4);
        assert_eq!(mask_indices(&hex, 13).unwrap(), idx);
        assert!(mask_indices(&hex, 30).is_err());
        assert!(mask_indices("zz00", 13).is_err());
        assert!(mask_indices("0040", 13).is_err(), "bit 14 lies outside 13 images");
    }
}
