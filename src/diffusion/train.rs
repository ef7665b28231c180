//! ε-prediction training with AdamW (Ho et al. 2020, eq. 14): sample x₀ from the data, t
//! uniformly, ε ~ N(0, I); minimise mean‖ε − ε_θ(√ᾱ_t x₀ + √(1−ᾱ_t) ε, t)‖².
//!
//! Batches, timesteps and noise are drawn from streams keyed by (seed, step), so a run that is
//! stopped and resumed from a checkpoint continues exactly as if it had not been interrupted.

use std::time::Instant;

use burn::grad_clipping::GradientClippingConfig;
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};

use super::checkpoint::{CheckpointError, CheckpointState, LrSchedule, ModelDir, TrainRecipe};
use super::images::TrainingInputs;
use super::latent::{LatentError, training_latents};
use super::noise::{below, chance, gaussian, permutation, stream};
use super::{Condition, ConditionEncoding, ConfigError, Network, Schedule};
use crate::data::Dataset;
use crate::jobs::{Cancellable, JobContext};

/// Gradients are clipped to this norm, per parameter tensor (as diffusers' examples clip at 1).
pub const GRAD_CLIP_NORM: f32 = 1.0;

/// Length of a training run.
#[derive(Clone, Debug)]
pub struct TrainLength {
    /// Epochs over the training set.
    pub epochs: usize,
}

/// What a training run did.
#[derive(Clone, Debug)]
pub struct TrainOutcome {
    /// Step this invocation started from (the resumed checkpoint's, or 0).
    pub first_step: usize,
    /// Step reached.
    pub step: usize,
    /// Total steps planned.
    pub total_steps: usize,
    /// Mean loss over the last logging window.
    pub last_loss: f64,
    /// True when the run stopped early because it was cancelled.
    pub cancelled: bool,
    /// Wall-clock seconds of this invocation.
    pub seconds: f64,
}

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Checkpoint I/O.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The data does not fit the model.
    #[error("{0}")]
    Mismatch(String),
    /// A condition the model cannot read.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A latent model's training latents could not be encoded or read.
    #[error(transparent)]
    Latent(#[from] LatentError),
    /// The loss diverged.
    #[error("training diverged at step {step}: loss is {loss}")]
    Diverged {
        /// Step at which the loss became non-finite.
        step: usize,
        /// The loss value.
        loss: f64,
    },
}

/// Learning rate of `recipe` at `step` of a run of `total` steps: linear warm-up to the peak,
/// then constant, or a cosine decay to 0 at `total` ([`LrSchedule`]).
pub fn learning_rate(recipe: &TrainRecipe, step: usize, total: usize) -> f64 {
    let (peak, warmup) = (recipe.learning_rate, recipe.warmup_steps);
    if warmup > 0 && step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    match recipe.lr_schedule {
        LrSchedule::Constant => peak,
        LrSchedule::Cosine => {
            let span = total.saturating_sub(warmup).max(1) as f64;
            let progress = (step.saturating_sub(warmup) as f64 / span).min(1.0);
            peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

/// One noisy training batch: x_t, the noise ε, the steps t and the images' conditions.
pub struct NoisyBatch {
    /// Noised images.
    pub x_t: Tensor<4>,
    /// The noise that was added (the regression target).
    pub noise: Tensor<4>,
    /// Integer steps as floats.
    pub t: Tensor<1>,
    /// The condition rows the model reads for every image ([`ConditionEncoding::rows`]);
    /// `None` for an unconditional model.
    pub condition: Option<Tensor<2>>,
}

impl NoisyBatch {
    /// The batch with the rows of `conditions` (one per image) for a model reading `encoding`.
    pub fn conditioned(self, encoding: &ConditionEncoding, conditions: &[Condition]) -> Result<Self, ConfigError> {
        let condition = encoding.rows(conditions, &self.x_t.device())?;
        Ok(Self { condition, ..self })
    }

    /// `model`'s noise prediction for the batch.
    pub fn predict(&self, model: &Network) -> Tensor<4> {
        model.forward(self.x_t.clone(), self.t.clone(), self.condition.clone())
    }
}

/// Noises the images `x0` ([n, C, H, W]) at steps `ts` with the given noise values.
pub fn noise_images(schedule: &Schedule, x0: Tensor<4>, ts: &[usize], noise: Vec<f32>) -> NoisyBatch {
    let device = x0.device();
    let dims = x0.dims();
    let (a, b): (Vec<f32>, Vec<f32>) = ts
        .iter()
        .map(|&t| {
            let (a, b) = schedule.noising_weights(t);
            (a as f32, b as f32)
        })
        .unzip();
    let col = |v: Vec<f32>| Tensor::<1>::from_floats(v.as_slice(), &device).reshape([ts.len(), 1, 1, 1]);
    let noise = Tensor::<4>::from_data(TensorData::new(noise, dims), &device);
    let x_t = x0 * col(a) + noise.clone() * col(b);
    let t = Tensor::<1>::from_floats(ts.iter().map(|&t| t as f32).collect::<Vec<_>>().as_slice(), &device);
    NoisyBatch {
        x_t,
        noise,
        t,
        condition: None,
    }
}

/// The conditions of training images `indices` at training step `step`: their labels for a
/// class-conditional model, each replaced by the null class with probability `dropout` (label
/// dropout, what classifier-free guidance needs; Ho & Salimans 2022), drawn from a stream
/// keyed by (seed, step) like the rest of the batch.
pub fn training_conditions(
    data: &Dataset,
    indices: &[usize],
    encoding: &ConditionEncoding,
    dropout: f64,
    seed: u64,
    step: usize,
) -> Vec<Condition> {
    let mut rng = stream("train-label-dropout", &[seed, step as u64]);
    let dropout = if encoding.is_conditional() { dropout } else { 0.0 };
    label_conditions(data, indices)
        .into_iter()
        .map(|condition| {
            if dropout > 0.0 && chance(&mut rng, dropout) {
                Condition::Unconditional
            } else {
                condition
            }
        })
        .collect()
}

/// The conditions of training images `indices`: their labels (the conditional training loss
/// every attribution method differentiates; an unconditional model ignores them).
pub fn label_conditions(data: &Dataset, indices: &[usize]) -> Vec<Condition> {
    indices.iter().map(|&i| Condition::Class(data.labels[i])).collect()
}

/// Indices, steps and noise of training step `step` (deterministic in `seed` and `step`).
pub fn batch_plan(
    seed: u64,
    step: usize,
    batch: usize,
    data_len: usize,
    steps_t: usize,
    pixels: usize,
) -> (Vec<usize>, Vec<usize>, Vec<f32>) {
    let per_epoch = data_len.div_ceil(batch);
    let (epoch, within) = (step / per_epoch, step % per_epoch);
    let order = permutation(&mut stream("train-order", &[seed, epoch as u64]), data_len);
    let indices: Vec<usize> = order.iter().skip(within * batch).take(batch).copied().collect();
    let mut rng = stream("train-noise", &[seed, step as u64]);
    let ts = (0..indices.len()).map(|_| below(&mut rng, steps_t)).collect();
    let noise = gaussian(&mut rng, indices.len() * pixels);
    (indices, ts, noise)
}

/// Mean squared error between the predicted and the true noise.
pub fn diffusion_loss(model: &Network, batch: &NoisyBatch) -> Tensor<1> {
    let pred = batch.predict(model);
    (pred - batch.noise.clone()).powi_scalar(2).mean()
}

/// Trains (or resumes training of) the model in `dir` on `data` until `length` epochs are done,
/// saving checkpoints along the way and when cancelled.
pub fn train(
    dir: &ModelDir,
    data: &Dataset,
    length: &TrainLength,
    resume: bool,
    device: &Device,
    job: &JobContext,
) -> Result<TrainOutcome, TrainError> {
    let info = &dir.info;
    if info.data_hash != data.content_hash() {
        return Err(TrainError::Mismatch(format!(
            "{} was created for data {} (hash {}…), not {}",
            dir.root.display(),
            info.data_spec,
            crate::files::short_hash(&info.data_hash),
            data.name
        )));
    }
    let recipe = &info.train;
    let schedule = Schedule::new(&info.schedule);
    let encoding = info.architecture.condition_encoding();
    if encoding.is_conditional()
        && let Some(&label) = data
            .labels
            .iter()
            .find(|&&l| encoding.check(&Condition::Class(l)).is_err())
    {
        return Err(TrainError::Mismatch(format!(
            "{} has class {label}, which the model's class embedding has no row for",
            data.name
        )));
    }
    let ad = device.clone().autodiff();
    let adamw = AdamWConfig::new()
        .with_weight_decay(recipe.weight_decay as f32)
        .with_grad_clipping(Some(GradientClippingConfig::Norm(GRAD_CLIP_NORM)));
    let mut optim: ModuleOptimizer = adamw.init();
    let (mut model, mut step) = match dir.latest()? {
        Some(latest) if resume => {
            let model = dir.load_model(&latest, &ad)?;
            optim = dir.load_optimizer(&latest, optim)?;
            (model, latest.state.step)
        }
        Some(latest) => {
            return Err(TrainError::Mismatch(format!(
                "{} already holds checkpoints up to step {}; pass --resume to continue, or choose a new --out",
                dir.root.display(),
                latest.state.step
            )));
        }
        // A fine-tune starts from its pinned pretrained weights, anything else from a seeded
        // random initialisation; the optimizer starts fresh either way.
        None => match &recipe.init {
            Some(init) => (init.load(&info.architecture, &ad)?, 0),
            None => (info.architecture.init_seeded(&ad, recipe.seed), 0),
        },
    };
    let per_epoch = data.len().div_ceil(recipe.batch_size);
    let total = per_epoch * length.epochs;
    let started = Instant::now();
    let latents = match training_latents(dir, data, device, job) {
        Ok(latents) => latents,
        Err(e) if e.is_cancelled() => {
            return Ok(TrainOutcome {
                first_step: step,
                step,
                total_steps: total,
                last_loss: f64::NAN,
                cancelled: true,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let inputs = TrainingInputs {
        data,
        latents: latents.as_ref(),
    };
    let input_len = inputs.input_len();
    let (mut window_loss, mut window_n, mut last_loss) = (0.0, 0usize, f64::NAN);
    let mut last_saved = step;
    let first_step = step;
    job.report("training", step as u64, total as u64, "");
    while step < total {
        if job.cancel.is_cancelled() {
            break;
        }
        let (indices, ts, noise) = batch_plan(
            recipe.seed,
            step,
            recipe.batch_size,
            data.len(),
            schedule.len(),
            input_len,
        );
        let conditions = training_conditions(data, &indices, &encoding, recipe.label_dropout, recipe.seed, step);
        let x0 = inputs.batch(&indices, "train-latent", &[recipe.seed, step as u64], &ad);
        let batch = noise_images(&schedule, x0, &ts, noise).conditioned(&encoding, &conditions)?;
        let loss = diffusion_loss(&model, &batch);
        let loss_value: f64 = loss.clone().into_scalar::<f32>() as f64;
        if !loss_value.is_finite() {
            return Err(TrainError::Diverged { step, loss: loss_value });
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let lr = learning_rate(recipe, step, total);
        model = optim.step(lr, model, grads);
        step += 1;
        window_loss += loss_value;
        window_n += 1;
        if step % 10 == 0 || step == total {
            last_loss = window_loss / window_n as f64;
            job.report(
                "training",
                step as u64,
                total as u64,
                format!("epoch {:.1} loss {last_loss:.4}", step as f64 / per_epoch as f64),
            );
        }
        if step % recipe.checkpoint_every == 0 || step == total {
            let state = checkpoint_state(
                step,
                per_epoch,
                learning_rate(recipe, step.saturating_sub(1), total),
                window_loss / window_n.max(1) as f64,
            );
            dir.save(&model.valid(), Some(&optim), state)?;
            (window_loss, window_n, last_saved) = (0.0, 0, step);
        }
    }
    let cancelled = step < total;
    if cancelled && step > last_saved {
        let state = checkpoint_state(
            step,
            per_epoch,
            learning_rate(recipe, step - 1, total),
            window_loss / window_n.max(1) as f64,
        );
        dir.save(&model.valid(), Some(&optim), state)?;
    }
    Ok(TrainOutcome {
        first_step,
        step,
        total_steps: total,
        last_loss,
        cancelled,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn checkpoint_state(step: usize, per_epoch: usize, learning_rate: f64, loss: f64) -> CheckpointState {
    CheckpointState {
        step,
        epoch: step as f64 / per_epoch as f64,
        learning_rate,
        loss,
        weights_sha256: String::new(),
        optimizer_sha256: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_rates_warm_up_then_hold_or_decay_to_zero() {
        let mut recipe = TrainRecipe {
            learning_rate: 1e-3,
            warmup_steps: 10,
            lr_schedule: LrSchedule::Constant,
            batch_size: 1,
            weight_decay: 0.0,
            seed: 0,
            checkpoint_every: 1,
            label_dropout: 0.0,
            init: None,
            command: String::new(),
        };
        assert!((learning_rate(&recipe, 0, 100) - 1e-4).abs() < 1e-15);
        assert_eq!(learning_rate(&recipe, 99, 100), 1e-3);
        recipe.lr_schedule = LrSchedule::Cosine;
        assert_eq!(learning_rate(&recipe, 10, 100), 1e-3);
        assert!((learning_rate(&recipe, 55, 100) - 5e-4).abs() < 1e-12);
        assert!(learning_rate(&recipe, 100, 100).abs() < 1e-15);
        let rates: Vec<f64> = (10..100).map(|s| learning_rate(&recipe, s, 100)).collect();
        assert!(rates.windows(2).all(|w| w[1] <= w[0]));
    }
}
