//! K-FAC and EK-FAC influence functions for diffusion models (Mlodozeniec et al. 2024):
//! τ(q, i) = ∇m(q)ᵀ (G + λI)⁻¹ ∇ℓ(i), with G the K-FAC (or EK-FAC) approximation of the GGN of
//! the training loss at the final checkpoint, m the query's measurement (loss, ELBO-weighted
//! loss or square norm) and ℓ the training loss. A positive score means that removing image i
//! is predicted to raise the query's measurement: i is a proponent.
//!
//! The query is preconditioned, not the training set: its exact per-bucket gradients are
//! multiplied by (G + λI)⁻¹ layer by layer ([`crate::curvature::Preconditioner`]), projected
//! with the index's projection, and dotted with the indexed training features. Both gradients
//! are means over the diffusion steps; bucket b's score is the share of the query's bucket-b
//! gradient: S[i, b] = 1/B · q̃_bᵀ φ̄_i, where φ̄_i is the training image's mean feature over
//! buckets, so Σ_b S[i, b] is the influence on the whole measurement.

use burn::tensor::{Tensor, TensorData};

use super::{GradientInputs, Method, Scores};
use crate::device::read_back;
use crate::grad::Features;

/// An influence-function method with an already preconditioned, projected query.
pub struct KfacInfluence {
    /// "kfac" or "ekfac".
    pub name: &'static str,
    /// The preconditioned query's projected features [1, B, D] at the last indexed checkpoint.
    pub query: Features,
    /// Settings to record with the scores (curvature, damping, measurement, …).
    pub parameters: serde_json::Value,
}

impl Method for KfacInfluence {
    fn name(&self) -> &'static str {
        self.name
    }

    fn score(&self, inputs: &GradientInputs) -> Result<Scores, String> {
        let last = inputs
            .checkpoints
            .last()
            .ok_or("influence functions need an indexed checkpoint")?;
        let (_, b, d) = last.train.shape();
        if self.query.buckets != b || self.query.dim != d {
            return Err(format!(
                "the preconditioned query has {}×{} features but the index {b}×{d}",
                self.query.buckets, self.query.dim
            ));
        }
        let device = &inputs.device;
        let query = Tensor::<2>::from_data(TensorData::new(self.query.values.clone(), [b, d]), device).transpose();
        let scores = last.train.map_blocks(device, |train| {
            let rows = train.dims()[0];
            let mean_train = train.mean_dim(1).reshape([rows, d]);
            Ok(mean_train.matmul(query.clone()) / b as f64)
        })?;
        let mut result = inputs.scores(self.name, read_back(scores)?);
        if let (Some(map), Some(extra)) = (result.parameters.as_object_mut(), self.parameters.as_object()) {
            map.extend(extra.clone());
            map.insert("checkpoints".into(), serde_json::json!([last.step]));
        }
        Ok(result)
    }
}
