//! What is differentiated: the per-example quantity whose gradient a method uses. Training
//! examples always use the training loss; a query may use another measurement (Mlodozeniec et
//! al. 2024, §4: loss, ELBO-weighted loss, or the square norm of the predicted noise as in
//! D-TRAK).

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::Schedule;

/// A per-example measurement of the model at a noised input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Measurement {
    /// The training loss: mean over pixels of ‖ε − ε_θ(x_t, t)‖².
    #[default]
    Loss,
    /// The loss weighted by its ELBO weight at t, normalised so the weights average 1 over t.
    #[value(name = "elbo", alias = "elbo-loss")]
    ElboLoss,
    /// Mean over pixels of ‖ε_θ(x_t, t)‖² (D-TRAK's output function).
    #[value(alias = "sqnorm")]
    SquareNorm,
    /// Mean over pixels of ε_θ(x_t, t) itself (DAS's output function, Lin et al. 2025: the
    /// change of the noise predictor, not of the loss).
    MeanOutput,
}

impl Measurement {
    /// The measurement of every example: `prediction` and `noise` are [B, C, H, W], `ts` the
    /// examples' steps. Returns [B].
    pub fn evaluate(self, schedule: &Schedule, prediction: Tensor<4>, noise: Tensor<4>, ts: &[usize]) -> Tensor<1> {
        self.evaluate_in(schedule, prediction, noise, ts, None)
    }

    /// [`Self::evaluate`] restricted to a region: `region` holds H×W pixel weights (a [H, W]
    /// tensor on the prediction's device), and the mean over pixels becomes the weighted mean
    /// Σ m·v / (C·Σ m) — the whole-image measurement when every weight is 1.
    pub fn evaluate_in(
        self,
        schedule: &Schedule,
        prediction: Tensor<4>,
        noise: Tensor<4>,
        ts: &[usize],
        region: Option<&Tensor<2>>,
    ) -> Tensor<1> {
        let [b, c, h, w] = prediction.dims();
        let per_pixel = match self {
            Measurement::Loss | Measurement::ElboLoss => (prediction - noise).powi_scalar(2),
            Measurement::SquareNorm => prediction.powi_scalar(2),
            Measurement::MeanOutput => prediction,
        };
        let per_example = match region {
            None => per_pixel.reshape([b, c * h * w]).mean_dim(1).reshape([b]),
            Some(m) => {
                let weight = m.clone().sum().reshape([1]) * c as f64;
                let weighted = per_pixel * m.clone().reshape([1, 1, h, w]);
                weighted.reshape([b, c * h * w]).sum_dim(1).reshape([b]) / weight.clamp_min(1e-12)
            }
        };
        if self != Measurement::ElboLoss {
            return per_example;
        }
        let mean_weight = (0..schedule.len()).map(|t| schedule.elbo_weight(t)).sum::<f64>() / schedule.len() as f64;
        let weights: Vec<f32> = ts
            .iter()
            .map(|&t| (schedule.elbo_weight(t) / mean_weight) as f32)
            .collect();
        let device = per_example.device();
        per_example * Tensor::<1>::from_floats(weights.as_slice(), &device)
    }
}
