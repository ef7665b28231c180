//! DAS, the Diffusion Attribution Score (Lin, Tao, Dong, Xu, ICLR 2025, arXiv 2410.18639;
//! reference code `Jinxu-Lin/DAS`, `CIFAR2/03_grad.py`, `04_eval.py`, `07_score.py`). DAS
//! attributes the change of the noise predictor's output rather than of the loss: its
//! features differentiate f = mean over pixels of ε_θ(x_t, t) ([`Measurement::MeanOutput`]),
//! unit-normalised per timestep and averaged over timesteps (`03_grad.py`: 10 evenly spaced t,
//! `loss_function_type='mean'`), and the score of training image i for query q is
//!
//! S_qi = φ_qᵀ (ΦᵀΦ + λI)⁻¹ φ_i · e_i,
//!
//! TRAK's kernel on those features times a per-image residual e_i = mean_t √L_i(t) / ‖√L_i(·)‖₂
//! (`07_score.py`, `load_error` and the `DAS1` branch), L_i(t) the training image's loss at the
//! evenly spaced steps of `04_eval.py`. The reference sweeps λ and keeps the best LDS on the
//! evaluated queries; here λ is a parameter relative to the mean squared feature norm, chosen
//! on a benchmark's development half (README).
//!
//! Of `07_score.py`'s variants this is `DAS1`, the direct form (the README's `das` names no
//! branch of the code). Departures, named: the features are retrace's index features at the
//! last checkpoint — per-layer factored projections (LoGra) instead of a dense normal
//! projection of the whole gradient, normalised after the projection (which keeps norms
//! approximately), with t stratified per bucket and ε keyed per (image, t) instead of 10 fixed
//! steps with a batch-position noise (with the default plan of 10 buckets × 1 draw, 10 steps as
//! in the reference); the residuals use [`RESIDUAL_STEPS`] evenly spaced steps by default
//! instead of 1,000, one fixed ε per step shared by every image; a class-conditional model's
//! features and residuals are taken under each image's class (the reference is
//! unconditional).

use crate::attribution::context::Context;
use crate::attribution::error::AttributionError;
use crate::attribution::method::{Method, Needs};
use crate::attribution::parameter::{Parameter, Range};
use crate::attribution::products::losses::ScoringDraws;
use crate::attribution::products::trak_kernel::record;
use crate::attribution::scores::Scores;
use crate::diffusion::Measurement;
use crate::index::SummaryPart;

/// The Diffusion Attribution Score.
pub struct Das;

/// DAS's damping: λ of (ΦᵀΦ + λI)⁻¹ as a factor of the mean squared feature norm.
const DAMPING: Parameter = Parameter {
    key: "das-damping",
    doc: "λ of the kernel (ΦᵀΦ + λI)⁻¹ on the unit-normalised output features, as a factor of their mean squared norm",
    default: "0.1",
    range: Range::Number {
        min: 1e-8,
        max: 1e6,
        log: true,
    },
};

/// Default number of steps the training residuals are measured at (the reference: 1,000).
pub const RESIDUAL_STEPS: usize = 50;

const STEPS: Parameter = Parameter {
    key: "das-residual-steps",
    doc: "evenly spaced steps at which each training image's loss gives its residual e_i (reference: 1000)",
    default: "50",
    range: Range::Integer { min: 1, max: 100_000 },
};

impl Method for Das {
    fn name(&self) -> String {
        "das".into()
    }

    fn summary(&self) -> &'static str {
        "DAS (Lin et al.): TRAK's kernel on unit-normalised gradients of the mean predicted noise, times each image's training residual"
    }

    fn parameters(&self) -> Vec<Parameter> {
        vec![DAMPING, STEPS]
    }

    fn needs(&self) -> Needs {
        Needs {
            index: true,
            ..Needs::default()
        }
    }

    fn score(&self, context: &mut Context<'_>) -> Result<Scores, AttributionError> {
        let output = Measurement::MeanOutput;
        let damping = context.parameters.number(DAMPING.key)?;
        let steps = context.parameters.integer(STEPS.key)?;
        let query = context.projected_query(output)?;
        let normalised = unit_rows(&query.values, query.dim);
        let kernel = context.trak_kernel(output, damping, SummaryPart::UnitMean)?;
        let mut per_bucket = kernel.scores(&normalised, query.buckets, context.device)?;
        let inputs = context.last_checkpoint_inputs(output)?;
        let schedule = context.schedule();
        let input_len = context.query_example()?.shape.iter().product();
        let draws = ScoringDraws::evenly_spaced(steps, schedule.len(), input_len, "das-residual-noise");
        let losses = context.original_losses(&draws, "das-training-losses")?;
        let residuals = residuals(&losses, steps);
        for (row, e) in per_bucket.chunks_mut(query.buckets.max(1)).zip(&residuals) {
            row.iter_mut().for_each(|s| *s *= e);
        }
        let mut scores = inputs.scores("das", per_bucket);
        record(&mut scores, output, damping, &kernel);
        if let Some(map) = scores.parameters.as_object_mut() {
            map.insert("variant".into(), serde_json::json!("DAS1"));
            map.insert("residual_steps".into(), serde_json::json!(steps));
        }
        Ok(scores)
    }
}

/// Every `dim`-wide row of `values` scaled to unit norm (a zero row stays zero), as the
/// reference normalises each timestep's gradient.
fn unit_rows(values: &[f32], dim: usize) -> Vec<f32> {
    values
        .chunks(dim.max(1))
        .flat_map(|row| {
            let norm = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            let scale = if norm > 0.0 { (1.0 / (norm + 1e-8)) as f32 } else { 0.0 };
            row.iter().map(move |v| v * scale)
        })
        .collect()
}

/// The residual of every training image from its losses at `steps` steps ([N × steps]):
/// e_i = mean_t √L_i(t) / (‖√L_i(·)‖₂ + 1e-8), as `07_score.py`'s `load_error` computes it.
pub fn residuals(losses: &[f32], steps: usize) -> Vec<f32> {
    losses
        .chunks(steps.max(1))
        .map(|row| {
            let roots: Vec<f64> = row.iter().map(|&l| (l.max(0.0) as f64).sqrt()).collect();
            let norm = roots.iter().map(|r| r * r).sum::<f64>().sqrt();
            (roots.iter().map(|r| r / (norm + 1e-8)).sum::<f64>() / roots.len().max(1) as f64) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residuals_are_the_mean_of_the_normalised_root_losses() {
        // One image with a flat loss over its 4 steps, one whose loss sits at one step.
        let e = residuals(&[1.0, 1.0, 1.0, 1.0, 4.0, 0.0, 0.0, 0.0], 4);
        assert!((e[0] - 0.5).abs() < 1e-6, "{e:?}");
        assert!((e[1] - 0.25).abs() < 1e-6, "{e:?}");
        let rows = unit_rows(&[3.0, 4.0, 0.0, 0.0], 2);
        assert_eq!(rows, vec![0.6, 0.8, 0.0, 0.0]);
    }
}
