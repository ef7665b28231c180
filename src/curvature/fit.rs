//! Fitting the curvature of a diffusion model's training loss on its training set: the
//! Kronecker factors from one pass of batched captures, then (for EK-FAC) the eigenvalue
//! correction from a second pass.
//!
//! The GGN (Mlodozeniec et al. 2024, §3, the "option 1" split of the loss into the network
//! output ε_θ and the squared error): for ℓ = 1/D ‖ε − ε_θ(x_t, t)‖² the Hessian with respect to
//! the output is H = 2/D · I, so the GGN is E[Jᵀ H J]. Its Monte Carlo estimate backpropagates
//! a random output gradient s ~ N(0, H) — the objective ⟨stop-grad(s), ε_θ⟩ — whose outer
//! products have expectation Jᵀ H J. The empirical Fisher backpropagates the loss itself.

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::{CurvatureError, EigenCorrection, FactorAccumulator, LayerEigen, LayerFactors, Sharing};
use crate::diffusion::noise::{gaussian, stream};
use crate::diffusion::{Denoiser, Measurement, Network, Schedule};
use crate::grad::{Examples, LayerGrads, PlanWalk, TimestepPlan, capture_layers};
use crate::jobs::JobContext;

/// Which curvature the factors approximate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Fisher {
    /// The generalised Gauss-Newton matrix, with one Monte Carlo output gradient per point.
    Ggn,
    /// The empirical Fisher: outer products of the training-loss gradients.
    #[value(alias = "ef")]
    Empirical,
}

/// What a curvature fit depends on (besides the model and the data).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FitConfig {
    /// GGN or empirical Fisher.
    pub fisher: Fisher,
    /// Expand or reduce.
    pub sharing: Sharing,
    /// The (t, ε) points every fitted image is evaluated at.
    pub plan: TimestepPlan,
}

/// The objective whose output gradients enter S: [B] per-example values.
fn objective(
    fisher: Fisher,
    schedule: &Schedule,
    batch: &FitBatch,
    prediction: Tensor<4>,
    noise: Tensor<4>,
) -> Tensor<1> {
    match fisher {
        Fisher::Empirical => Measurement::Loss.evaluate(schedule, prediction, noise, &batch.ts),
        Fisher::Ggn => {
            let [b, c, h, w] = prediction.dims();
            let d = c * h * w;
            let scale = (2.0 / d as f32).sqrt();
            let mut values = Vec::with_capacity(b * d);
            for &(id, t, draw) in &batch.keys {
                values.extend(
                    gaussian(&mut stream("ggn-output", &[id, t, draw]), d)
                        .into_iter()
                        .map(|v| v * scale),
                );
            }
            let s = Tensor::<4>::from_data(TensorData::new(values, [b, c, h, w]), &prediction.device());
            (prediction * s).reshape([b, d]).sum_dim(1).reshape([b])
        }
    }
}

struct FitBatch {
    ts: Vec<usize>,
    keys: Vec<(u64, u64, u64)>,
}

/// Eigendecomposes every layer's factors on the host, reporting progress per layer.
pub fn eigendecompose(factors: &[LayerFactors], job: &JobContext) -> Vec<LayerEigen> {
    factors
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let e = LayerEigen::new(f);
            job.report("eigendecomposition", i as u64 + 1, factors.len() as u64, "");
            e
        })
        .collect()
}

/// A curvature fit: the model, its training examples and the fit's settings.
pub struct CurvatureFit<'a, M: Denoiser = Network> {
    /// The model (any device).
    pub model: &'a M,
    /// Its noise schedule.
    pub schedule: &'a Schedule,
    /// What to fit.
    pub config: &'a FitConfig,
    /// The training examples to fit on.
    pub examples: &'a Examples,
    /// Points per batch.
    pub batch_size: usize,
    /// Compute device (without autodiff).
    pub device: &'a Device,
}

impl<M: Denoiser> CurvatureFit<'_, M> {
    /// Runs the fit's captures over the examples, handing every batch's layers to `visit`.
    fn capture_pass(
        &self,
        job: &JobContext,
        stage: &str,
        mut visit: impl FnMut(&[LayerGrads]),
    ) -> Result<(), CurvatureError> {
        let (model, ad) = crate::grad::frozen_on_autodiff(self.model, self.device);
        let walk = PlanWalk {
            examples: self.examples,
            plan: &self.config.plan,
            schedule: self.schedule,
            batch_size: self.batch_size,
            device: &ad,
            encoding: model.condition_encoding(),
        };
        walk.run(job, stage, |batch| {
            let fit = FitBatch {
                ts: batch.ts.clone(),
                keys: batch
                    .pairs
                    .iter()
                    .map(|(e, p)| (self.examples.ids[*e], p.t as u64, p.draw as u64))
                    .collect(),
            };
            let noise = batch.noisy.noise;
            let (layers, _) = capture_layers(&model, batch.noisy.x_t, batch.noisy.t, batch.noisy.condition, |pred| {
                objective(self.config.fisher, self.schedule, &fit, pred, noise)
            });
            visit(&layers);
            Ok::<(), CurvatureError>(())
        })
    }

    /// Fits the Kronecker factors and eigendecomposes them; with `correct`, also fits EK-FAC's
    /// eigenvalues.
    pub fn run(&self, correct: bool, job: &JobContext) -> Result<Vec<LayerEigen>, CurvatureError> {
        let factors = self.factors(job)?;
        let mut layers = eigendecompose(&factors, job);
        if correct {
            self.correct(&mut layers, job)?;
        }
        Ok(layers)
    }

    /// The Kronecker factors (one pass over the examples).
    pub fn factors(&self, job: &JobContext) -> Result<Vec<LayerFactors>, CurvatureError> {
        let mut factors = FactorAccumulator::new(self.config.sharing);
        self.capture_pass(job, "curvature factors", |layers| factors.add(layers))?;
        let factors = factors.finish()?;
        if let Some(bad) = factors
            .iter()
            .position(|f| f.a.iter().chain(&f.s).any(|v| !v.is_finite()))
        {
            return Err(CurvatureError::NonFinite(format!(
                "non-finite curvature in layer {bad} (is the model diverged?)"
            )));
        }
        Ok(factors)
    }

    /// Fits EK-FAC's corrected eigenvalues into `layers` (a second pass over the examples).
    pub fn correct(&self, layers: &mut [LayerEigen], job: &JobContext) -> Result<(), CurvatureError> {
        let mut correction = EigenCorrection::new(layers, self.device);
        self.capture_pass(job, "eigenvalue correction", |l| correction.add(l))?;
        correction.finish(layers)
    }
}
