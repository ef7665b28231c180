//! Diffusion-ReTrac (Xie et al. 2024): TracIn with every training gradient normalised to unit
//! norm and the query's gradient normalised per timestep bucket, which removes the bias towards
//! training images and timesteps with large gradient norms:
//! S[i, b] = Σ_c η_c ⟨∇ℓ_b(θ_c; q)/‖·‖, ∇ℓ_b(θ_c; i)/‖·‖⟩.

use super::{GradientInputs, Method, Scores, bucket_dot_products};

/// Renormalised TracIn.
pub struct ReTrac;

impl Method for ReTrac {
    fn name(&self) -> &'static str {
        "retrac"
    }

    fn score(&self, inputs: &GradientInputs) -> Result<Scores, String> {
        Ok(inputs.scores(self.name(), bucket_dot_products(inputs, true)?))
    }
}
