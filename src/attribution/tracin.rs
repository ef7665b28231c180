//! Diffusion-TracIn (Xie et al. 2024, after Pruthi et al. 2020): the learning-rate-weighted sum
//! over checkpoints of gradient inner products, bucket by bucket:
//! S[i, b] = Σ_c η_c ⟨∇ℓ_b(θ_c; q), ∇ℓ_b(θ_c; i)⟩, with projected gradients.

use super::{GradientInputs, Method, Scores, bucket_dot_products};

/// Plain TracIn.
pub struct TracIn;

impl Method for TracIn {
    fn name(&self) -> &'static str {
        "tracin"
    }

    fn score(&self, inputs: &GradientInputs) -> Result<Scores, String> {
        Ok(inputs.scores(self.name(), bucket_dot_products(inputs, false)?))
    }
}
