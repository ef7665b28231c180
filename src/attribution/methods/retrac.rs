//! Diffusion-ReTrac (Xie et al. 2024, "Data Attribution for Diffusion Models: Timestep-induced
//! Bias in Influence Estimation"): TracIn with renormalised gradients, which removes the bias
//! towards training images and timesteps whose gradients have large norms.
//!
//! [`ReTrac`] is the estimator of their code (`txie1/diffusion-ReTrac`, `diffusion_tracin.py`,
//! `diffusion_tracin(retrac=True)`): the query's gradient at each timestep (averaged over its
//! noise draws) is normalised to unit norm and the normalised gradients are averaged over
//! timesteps; each training image's gradient — there one draw at a random timestep — is
//! normalised once; the score is their inner product, summed over checkpoints with TracIn's
//! weights. retrace's training features hold one gradient per timestep bucket, so the training
//! side here is the mean over buckets of the unit-normalised bucket gradients: the expectation,
//! over the random timestep, of the paper's normalised single-draw gradient, without its
//! sampling noise:
//!
//! S[i, b] = Σ_c η_c ⟨q_{c,b}/‖q_{c,b}‖, (1/B) Σ_{b'} φ_{c,i,b'}/‖φ_{c,i,b'}‖⟩ / B.
//!
//! Departures from their code: the loss is the training loss (mean squared error), where their
//! code differentiates an L1 loss; gradients are LoGra-projected.
//!
//! [`ReTracBucket`] is a variant, not the paper's estimator: both sides normalised per bucket
//! and matched bucket by bucket, S[i, b] = Σ_c η_c ⟨q̂_{c,b}, φ̂_{c,i,b}⟩.

use crate::attribution::context::Context;
use crate::attribution::error::AttributionError;
use crate::attribution::inputs::{GradientInputs, bucket_dot_products};
use crate::attribution::method::{Method, Needs};
use crate::attribution::scores::Scores;
use crate::index::SummaryPart;

/// What both ReTrac variants need: the index.
const NEEDS: Needs = Needs {
    index: true,
    curvature: false,
    model_copy: false,
    trajectory: false,
};

/// Diffusion-ReTrac as Xie et al. compute it.
pub struct ReTrac;

impl Method for ReTrac {
    fn name(&self) -> String {
        "retrac".into()
    }

    fn summary(&self) -> &'static str {
        "Diffusion-ReTrac: TracIn with unit-normalised gradients, free of the timestep norm bias (Xie et al. 2024)"
    }

    fn needs(&self) -> Needs {
        NEEDS
    }

    fn score(&self, context: &mut Context<'_>) -> Result<Scores, AttributionError> {
        let inputs = context.gradient_inputs()?;
        Ok(inputs.scores("retrac", retrac_scores(&inputs)?))
    }
}

/// ReTrac's flat [N × B] scores for `inputs`, read from the index's compact block: per
/// checkpoint, every training image's mean unit-normalised feature ū_i against the query's
/// unit-normalised bucket features divided by B.
pub fn retrac_scores(inputs: &GradientInputs) -> Result<Vec<f32>, AttributionError> {
    let (n, b) = (inputs.ids.len(), inputs.plan.buckets);
    let mut total = vec![0f32; n * b];
    for c in &inputs.checkpoints {
        let mut queries = c.query.values.clone();
        for q in queries.chunks_mut(c.query.dim) {
            let norm = q.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            let scale = if norm > 0.0 {
                (1.0 / (norm * b as f64)) as f32
            } else {
                0.0
            };
            q.iter_mut().for_each(|v| *v *= scale);
        }
        let dots = c
            .train
            .summary_products(SummaryPart::UnitMean, &queries, b, &inputs.device)?;
        for (t, v) in total.iter_mut().zip(dots) {
            *t += v * c.weight as f32;
        }
    }
    Ok(total)
}

/// The bucket-matched cosine variant of ReTrac.
pub struct ReTracBucket;

impl Method for ReTracBucket {
    fn name(&self) -> String {
        "retrac-bucket".into()
    }

    fn summary(&self) -> &'static str {
        "ReTrac variant: both sides unit-normalised and matched timestep bucket by bucket"
    }

    fn needs(&self) -> Needs {
        NEEDS
    }

    fn score(&self, context: &mut Context<'_>) -> Result<Scores, AttributionError> {
        let inputs = context.gradient_inputs()?;
        Ok(inputs.scores("retrac-bucket", bucket_dot_products(&inputs, true)?))
    }
}
