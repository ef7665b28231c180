//! Diffusion-TracIn (Xie et al. 2024, after Pruthi et al. 2020): the weighted sum over
//! checkpoints of gradient inner products, bucket by bucket:
//! S[i, b] = Σ_c η_c ⟨∇ℓ_b(θ_c; q), ∇ℓ_b(θ_c; i)⟩, with projected gradients, where η_c is the
//! learning rate × the training steps since the previous checkpoint (their code weights each
//! checkpoint by lr × batch size × checkpoint interval / dataset size: the same up to a
//! constant).

use super::context::Context;
use super::registry::{Method, Needs};
use super::{Scores, bucket_dot_products};

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

    fn score(&self, context: &mut Context<'_>) -> Result<Option<Scores>, String> {
        let Some(inputs) = context.gradient_inputs()? else {
            return Ok(None);
        };
        Ok(Some(inputs.scores("tracin", bucket_dot_products(&inputs, false)?)))
    }
}

/// TracIn's checkpoint weights η_c = learning rate_c × (step_c − step_{c−1}) for checkpoints
/// given as (step, learning rate), oldest first; the first checkpoint counts from step 0. A run
/// that was stopped and resumed leaves unevenly spaced checkpoints; each is weighted by the
/// stretch of training it stands for.
pub fn checkpoint_weights(checkpoints: &[(usize, f64)]) -> Vec<f64> {
    let mut previous = 0;
    checkpoints
        .iter()
        .map(|&(step, lr)| {
            let weight = lr * step.saturating_sub(previous) as f64;
            previous = step;
            weight
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uneven_checkpoints_are_weighted_by_their_stretch_of_training() {
        // A run stopped at step 777 and resumed, checkpointing every 1000 steps.
        let w = checkpoint_weights(&[(777, 1e-3), (1000, 1e-3), (2000, 5e-4)]);
        let expected = [0.777, 0.223, 0.5];
        for (a, b) in w.iter().zip(expected) {
            assert!((a - b).abs() < 1e-12, "{w:?}");
        }
    }
}
