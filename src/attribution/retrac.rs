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

use burn::tensor::Tensor;

use super::{GradientInputs, Method, Scores, bucket_dot_products, features_tensor, unit_rows};
use crate::device::read_back;

/// Diffusion-ReTrac as Xie et al. compute it.
pub struct ReTrac;

impl Method for ReTrac {
    fn name(&self) -> &'static str {
        "retrac"
    }

    fn score(&self, inputs: &GradientInputs) -> Result<Scores, String> {
        let (n, b) = (inputs.ids.len(), inputs.plan.buckets);
        let mut total = Tensor::<2>::zeros([n, b], &inputs.device);
        for c in &inputs.checkpoints {
            let d = c.query.dim;
            // [D, B]: the query's unit-normalised bucket gradients as columns, divided by B so
            // the columns sum to the mean over buckets.
            let query = unit_rows(features_tensor(&c.query, &inputs.device))
                .reshape([b, d])
                .transpose()
                / b as f64;
            let dots = c.train.map_blocks(&inputs.device, |train| {
                let rows = train.dims()[0];
                let mean_unit = unit_rows(train).mean_dim(1).reshape([rows, d]);
                Ok(mean_unit.matmul(query.clone()))
            })?;
            total = total + dots * c.weight;
        }
        Ok(inputs.scores(self.name(), read_back(total)?))
    }
}

/// The bucket-matched cosine variant of ReTrac.
pub struct ReTracBucket;

impl Method for ReTracBucket {
    fn name(&self) -> &'static str {
        "retrac-bucket"
    }

    fn score(&self, inputs: &GradientInputs) -> Result<Scores, String> {
        Ok(inputs.scores(self.name(), bucket_dot_products(inputs, true)?))
    }
}
