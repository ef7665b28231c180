//! Diffusion-TracIn (Xie et al. 2024, after Pruthi et al. 2020): the weighted sum over
//! checkpoints of gradient inner products, bucket by bucket:
//! S[i, b] = Σ_c η_c ⟨∇ℓ_b(θ_c; q), ∇ℓ_b(θ_c; i)⟩, with projected gradients, where η_c is the
//! learning rate × the training steps since the previous checkpoint (their code weights each
//! checkpoint by lr × batch size × checkpoint interval / dataset size: the same up to a
//! constant); the weights are [`crate::attribution::products::checkpoint_weights`].

use crate::attribution::context::Context;
use crate::attribution::error::AttributionError;
use crate::attribution::inputs::bucket_dot_products;
use crate::attribution::method::{Method, Needs};
use crate::attribution::scores::Scores;

/// Plain TracIn.
pub struct TracIn;

impl Method for TracIn {
    fn name(&self) -> String {
        "tracin".into()
    }

    fn summary(&self) -> &'static str {
        "Diffusion-TracIn: gradient dot products summed over checkpoints and timesteps (Xie et al. 2024)"
    }

    fn needs(&self) -> Needs {
        Needs {
            index: true,
            ..Needs::default()
        }
    }

    fn score(&self, context: &mut Context<'_>) -> Result<Scores, AttributionError> {
        let inputs = context.gradient_inputs()?;
        Ok(inputs.scores("tracin", bucket_dot_products(&inputs, false)?))
    }
}
