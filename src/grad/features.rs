//! Projected gradient features of a set of examples under a timestep plan: for every example
//! and bucket, the mean over the bucket's draws of the projected gradient of a measurement.
//! Work is flattened over (example, point) pairs and batched, so the result does not depend on
//! the batch size: every pair's t and noise come from the plan, keyed by the example's id.

use burn::tensor::{Device, Tensor, TensorData};

use super::GradError;
use super::{PlanPoint, Projector, TimestepPlan, capture_layers};
use crate::diffusion::latent::{LatentDistributions, draw_latent};
use crate::diffusion::train::NoisyBatch;
use crate::diffusion::train::noise_images;
use crate::diffusion::{Condition, ConditionEncoding, ConfigError, Measurement, Network, Schedule};
use crate::jobs::{Cancelled, JobContext};

/// Examples to featurise: ids (which key their plan) and the clean inputs x₀ the network is
/// trained to denoise — pixels in [−1, 1], or a latent model's latents.
#[derive(Clone, Debug)]
pub struct Examples {
    /// Stable id of every example.
    pub ids: Vec<u64>,
    /// C×H×W of every input (for a latent model, of its latent).
    pub shape: [usize; 3],
    /// Inputs, example-major: pixels, a latent, or (with `log_variance`) a latent
    /// distribution's mean.
    pub values: Vec<f32>,
    /// For examples given as latent distributions (training images of a latent model, a loaded
    /// query image): log σ² of every value. Every plan point then draws its own
    /// x₀ = values + σ·ε_z, ε_z keyed like the point's noise ([`TimestepPlan::latent_noise`]).
    pub log_variance: Option<Vec<f32>>,
    /// H×W weights (on the inputs' grid) of the region every example's measurement is
    /// restricted to (a region query); `None` for the whole image.
    pub region: Option<Vec<f32>>,
    /// The condition of every example (a training image's label, the class a query was
    /// generated for); an unconditional model ignores them.
    pub conditions: Vec<Condition>,
}

impl Examples {
    /// Images `indices` of `data`, keyed by their dataset ids: their pixels in [−1, 1], or for
    /// a latent model their latent distributions (`latents`, every image of `data`).
    pub fn from_dataset(data: &crate::data::Dataset, latents: Option<&LatentDistributions>, indices: &[usize]) -> Self {
        let (shape, values, log_variance) = match latents {
            None => (
                [data.channels, data.height, data.width],
                indices
                    .iter()
                    .flat_map(|&i| crate::data::pixels::bytes_to_unit(data.image(i)))
                    .collect(),
                None,
            ),
            Some(latents) => {
                let chosen = latents.select(indices);
                (chosen.shape, chosen.mean, Some(chosen.log_variance))
            }
        };
        Self {
            ids: indices.iter().map(|&i| data.ids[i]).collect(),
            shape,
            values,
            log_variance,
            region: None,
            conditions: crate::diffusion::train::label_conditions(data, indices),
        }
    }

    /// The region as a [H, W] tensor on `device`, checked against the image size.
    pub fn region_tensor(&self, device: &Device) -> Result<Option<Tensor<2>>, GradError> {
        let Some(weights) = &self.region else { return Ok(None) };
        let [_, h, w] = self.shape;
        if weights.len() != h * w {
            return Err(GradError::Invalid(format!(
                "the region has {} weights but the inputs {h}×{w} values",
                weights.len()
            )));
        }
        Ok(Some(Tensor::from_data(
            TensorData::new(weights.clone(), [h, w]),
            device,
        )))
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    /// True when there is no example.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    /// Example `i`'s clean input at plan point `p`: its values, or a draw from its latent
    /// distribution keyed by the point.
    fn clean(&self, plan: &TimestepPlan, i: usize, p: &PlanPoint) -> Vec<f32> {
        let n = self.shape.iter().product::<usize>();
        let values = &self.values[i * n..(i + 1) * n];
        match &self.log_variance {
            None => values.to_vec(),
            Some(log_variance) => draw_latent(
                values,
                &log_variance[i * n..(i + 1) * n],
                &plan.latent_noise(self.ids[i], p, n),
            ),
        }
    }
}

/// Features [examples, buckets, dim] as a flat host vector, with their dimensions.
#[derive(Clone, Debug, PartialEq)]
pub struct Features {
    /// Examples × buckets × dim values, row-major.
    pub values: Vec<f32>,
    /// Number of examples.
    pub examples: usize,
    /// Number of buckets.
    pub buckets: usize,
    /// Feature width.
    pub dim: usize,
}

impl Features {
    /// The feature vector of example `e` in bucket `b`.
    pub fn row(&self, e: usize, b: usize) -> &[f32] {
        let start = (e * self.buckets + b) * self.dim;
        &self.values[start..start + self.dim]
    }
}

/// Settings of a featurisation run.
pub struct FeatureRun<'a> {
    /// The model (any device; it is moved to `device`'s autodiff twin without parameter grads).
    pub model: &'a Network,
    /// The model's noise schedule.
    pub schedule: &'a Schedule,
    /// Which (t, ε) pairs to use.
    pub plan: &'a TimestepPlan,
    /// The projection.
    pub projector: &'a Projector,
    /// What to differentiate.
    pub measurement: Measurement,
    /// (example, point) pairs per batch.
    pub batch_size: usize,
    /// Compute device (without autodiff).
    pub device: &'a Device,
}

/// One batch of (example, plan point) pairs, noised on the autodiff device.
pub struct PlanBatch<'p> {
    /// The (example index, point) pairs of the batch, in order.
    pub pairs: &'p [(usize, PlanPoint)],
    /// The pairs' diffusion steps.
    pub ts: Vec<usize>,
    /// Noised images, steps and noise.
    pub noisy: NoisyBatch,
}

/// A walk over every (example, point) pair of some examples under a plan, in batches.
pub struct PlanWalk<'a> {
    /// The examples.
    pub examples: &'a Examples,
    /// Their (t, ε) points.
    pub plan: &'a TimestepPlan,
    /// The noise schedule.
    pub schedule: &'a Schedule,
    /// Pairs per batch.
    pub batch_size: usize,
    /// Where batches are noised (an autodiff device for gradient work).
    pub device: &'a Device,
    /// How the model reads the examples' conditions.
    pub encoding: ConditionEncoding,
}

impl PlanWalk<'_> {
    /// Noises every batch on the walk's device (with its examples' condition rows) and hands it
    /// to `visit`, reporting progress to `job` under `stage`; stops with the visitor's error,
    /// its cancellation when `job` is cancelled, or a condition the model cannot read.
    pub fn run<E: From<Cancelled> + From<ConfigError>>(
        &self,
        job: &JobContext,
        stage: &str,
        mut visit: impl FnMut(PlanBatch<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let (examples, plan, schedule, device) = (self.examples, self.plan, self.schedule, self.device);
        let pixels = examples.shape.iter().product::<usize>();
        let pairs: Vec<(usize, PlanPoint)> = (0..examples.len())
            .flat_map(|e| plan.points(examples.ids[e]).into_iter().map(move |p| (e, p)))
            .collect();
        if examples.conditions.len() != examples.len() {
            return Err(ConfigError(format!(
                "{} conditions for {} examples",
                examples.conditions.len(),
                examples.len()
            ))
            .into());
        }
        for condition in &examples.conditions {
            self.encoding.check(condition)?;
        }
        let total = pairs.len() as u64;
        let batch_size = self.batch_size.max(1);
        for (done, chunk) in pairs.chunks(batch_size).enumerate() {
            job.stop_if_cancelled()?;
            let mut x0 = Vec::with_capacity(chunk.len() * pixels);
            let mut noise = Vec::with_capacity(chunk.len() * pixels);
            for (e, p) in chunk {
                x0.extend(examples.clean(plan, *e, p));
                noise.extend(plan.noise(examples.ids[*e], p, pixels));
            }
            let [c, h, w] = examples.shape;
            let ts: Vec<usize> = chunk.iter().map(|(_, p)| p.t).collect();
            let x0 = Tensor::<4>::from_data(TensorData::new(x0, [chunk.len(), c, h, w]), device);
            let conditions: Vec<Condition> = chunk.iter().map(|(e, _)| examples.conditions[*e]).collect();
            let noisy = noise_images(schedule, x0, &ts, noise).conditioned(&self.encoding, &conditions)?;
            visit(PlanBatch {
                pairs: chunk,
                ts,
                noisy,
            })?;
            let finished = ((done + 1) * batch_size).min(pairs.len()) as u64;
            job.report(stage, finished, total, "");
        }
        Ok(())
    }
}

impl FeatureRun<'_> {
    fn walk<'w>(&'w self, examples: &'w Examples, device: &'w Device) -> PlanWalk<'w> {
        PlanWalk {
            examples,
            plan: self.plan,
            schedule: self.schedule,
            batch_size: self.batch_size,
            device,
            encoding: self.model.condition_encoding(),
        }
    }

    /// The model on the autodiff twin of the run's device, parameters frozen.
    fn frozen_model(&self) -> (Network, Device) {
        super::frozen_on_autodiff(self.model, self.device)
    }

    /// Featurises `examples`, reporting progress to `job`.
    pub fn run(&self, examples: &Examples, job: &JobContext) -> Result<Features, GradError> {
        let (model, ad) = self.frozen_model();
        let dim = self.projector.dim();
        let buckets = self.plan.buckets;
        let mut values = vec![0.0f32; examples.len() * buckets * dim];
        let scale = 1.0 / self.plan.draws as f32;
        let region = examples.region_tensor(&ad)?;
        self.walk(examples, &ad).run(job, "gradients", |batch| {
            let noise = batch.noisy.noise;
            let (layers, _) = capture_layers(&model, batch.noisy.x_t, batch.noisy.t, batch.noisy.condition, |pred| {
                self.measurement
                    .evaluate_in(self.schedule, pred, noise, &batch.ts, region.as_ref())
            });
            let projected = crate::device::read_back(self.projector.project(&layers))?;
            if let Some(bad) = projected.iter().position(|v| !v.is_finite()) {
                let (e, p) = &batch.pairs[bad / dim];
                return Err(GradError::NonFinite(format!(
                    "non-finite gradient for example {} at t = {} (is the model diverged?)",
                    examples.ids[*e], p.t
                )));
            }
            for (k, (e, p)) in batch.pairs.iter().enumerate() {
                let dst = &mut values[(e * buckets + p.bucket) * dim..][..dim];
                for (d, s) in dst.iter_mut().zip(&projected[k * dim..(k + 1) * dim]) {
                    *d += s * scale;
                }
            }
            Ok(())
        })?;
        Ok(Features {
            values,
            examples: examples.len(),
            buckets,
            dim,
        })
    }

    /// Exact (unprojected) gradients of the measurement for ONE example, per bucket: for every
    /// captured layer, [B, d_out, d_in(+1)], the mean over the bucket's draws. Used for queries
    /// that are preconditioned before projection (K-FAC).
    pub fn bucket_gradients(&self, example: &Examples, job: &JobContext) -> Result<Vec<Tensor<3>>, GradError> {
        if example.len() != 1 {
            return Err(GradError::Invalid(format!(
                "bucket gradients take one example, not {}",
                example.len()
            )));
        }
        let (model, ad) = self.frozen_model();
        let buckets = self.plan.buckets;
        let region = example.region_tensor(&ad)?;
        let mut sums: Vec<Tensor<3>> = Vec::new();
        self.walk(example, &ad).run(job, "query gradients", |batch| {
            let noise = batch.noisy.noise;
            let (layers, _) = capture_layers(&model, batch.noisy.x_t, batch.noisy.t, batch.noisy.condition, |pred| {
                self.measurement
                    .evaluate_in(self.schedule, pred, noise, &batch.ts, region.as_ref())
            });
            // Scatter each point's gradient into its bucket: a [B, points] one-hot times
            // the [points, d_out·d_in] per-point gradients.
            let n = batch.pairs.len();
            let mut onehot = vec![0.0f32; buckets * n];
            for (k, (_, p)) in batch.pairs.iter().enumerate() {
                onehot[p.bucket * n + k] = 1.0 / self.plan.draws as f32;
            }
            let onehot = Tensor::<2>::from_data(TensorData::new(onehot, [buckets, n]), self.device);
            for (l, layer) in layers.iter().enumerate() {
                let g = layer.per_example();
                let [_, o, i] = g.dims();
                let per_bucket = onehot.clone().matmul(g.reshape([n, o * i])).reshape([buckets, o, i]);
                if sums.len() <= l {
                    sums.push(per_bucket);
                } else {
                    sums[l] = sums[l].clone() + per_bucket;
                }
            }
            Ok::<(), GradError>(())
        })?;
        for g in &sums {
            let size = crate::device::read_back(g.clone().abs().sum())?;
            if !size.iter().all(|v| v.is_finite()) {
                return Err(GradError::NonFinite(
                    "non-finite query gradient (is the model diverged?)".into(),
                ));
            }
        }
        Ok(sums)
    }
}
