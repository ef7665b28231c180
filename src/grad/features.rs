//! Projected gradient features of a set of examples under a timestep plan: for every example
//! and bucket, the mean over the bucket's draws of the projected gradient of a measurement.
//! Work is flattened over (example, point) pairs and batched, so the result does not depend on
//! the batch size: every pair's t and noise come from the plan, keyed by the example's id.

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use super::{PlanPoint, Projector, TimestepPlan, capture_layers};
use crate::diffusion::train::noise_images;
use crate::diffusion::{Measurement, Schedule, UNet};
use crate::jobs::JobContext;

/// Examples to featurise: ids (which key their plan) and pixels in [−1, 1].
#[derive(Clone, Debug)]
pub struct Examples {
    /// Stable id of every example.
    pub ids: Vec<u64>,
    /// C×H×W of every image.
    pub shape: [usize; 3],
    /// Pixels, example-major.
    pub pixels: Vec<f32>,
}

impl Examples {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    /// True when there is no example.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    fn image(&self, i: usize) -> &[f32] {
        let n = self.shape.iter().product::<usize>();
        &self.pixels[i * n..(i + 1) * n]
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
    pub model: &'a UNet,
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

impl FeatureRun<'_> {
    /// Featurises `examples`, reporting progress to `job`; `Ok(None)` when cancelled.
    pub fn run(&self, examples: &Examples, job: &JobContext) -> Result<Option<Features>, String> {
        let ad = self.device.clone().autodiff();
        let model = self.model.clone().to_device(&ad).train().no_grad();
        let dim = self.projector.dim();
        let buckets = self.plan.buckets;
        let pixels = examples.shape.iter().product::<usize>();
        let pairs: Vec<(usize, PlanPoint)> = (0..examples.len())
            .flat_map(|e| self.plan.points(examples.ids[e]).into_iter().map(move |p| (e, p)))
            .collect();
        let mut values = vec![0.0f32; examples.len() * buckets * dim];
        let scale = 1.0 / self.plan.draws as f32;
        let total = pairs.len() as u64;
        for (done, chunk) in pairs.chunks(self.batch_size.max(1)).enumerate() {
            if job.cancel.is_cancelled() {
                return Ok(None);
            }
            let mut x0 = Vec::with_capacity(chunk.len() * pixels);
            let mut noise = Vec::with_capacity(chunk.len() * pixels);
            for (e, p) in chunk {
                x0.extend_from_slice(examples.image(*e));
                noise.extend(self.plan.noise(examples.ids[*e], p, pixels));
            }
            let [c, h, w] = examples.shape;
            let ts: Vec<usize> = chunk.iter().map(|(_, p)| p.t).collect();
            let x0 = Tensor::<4>::from_data(TensorData::new(x0, [chunk.len(), c, h, w]), &ad);
            let batch = noise_images(self.schedule, x0, &ts, noise);
            let (layers, _) = capture_layers(&model, batch.x_t, batch.t, |pred| {
                self.measurement.evaluate(self.schedule, pred, batch.noise, &ts)
            });
            let projected = self
                .projector
                .project(&layers)
                .into_data()
                .try_to_vec::<f32>()
                .map_err(|e| format!("cannot read gradient features back from the device: {e:?}"))?;
            if let Some(bad) = projected.iter().position(|v| !v.is_finite()) {
                let (e, p) = &chunk[bad / dim];
                return Err(format!(
                    "non-finite gradient for example {} at t = {} (is the model diverged?)",
                    examples.ids[*e], p.t
                ));
            }
            for (k, (e, p)) in chunk.iter().enumerate() {
                let dst = &mut values[(e * buckets + p.bucket) * dim..][..dim];
                for (d, s) in dst.iter_mut().zip(&projected[k * dim..(k + 1) * dim]) {
                    *d += s * scale;
                }
            }
            let finished = ((done + 1) * self.batch_size).min(pairs.len()) as u64;
            job.report("gradients", finished, total, "");
        }
        Ok(Some(Features {
            values,
            examples: examples.len(),
            buckets,
            dim,
        }))
    }
}
