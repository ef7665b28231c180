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

/// A training step's batch plan (images, steps, noise of `pixels` values each, conditions)
/// without the images in `excluded` (ascending dataset indices): the kept positions keep their
/// steps, noise and conditions, so a run that excludes some images draws everything else as the
/// run that keeps them does.
pub fn without_excluded(
    excluded: &[usize],
    indices: Vec<usize>,
    ts: Vec<usize>,
    noise: Vec<f32>,
    conditions: Vec<Condition>,
    pixels: usize,
) -> (Vec<usize>, Vec<usize>, Vec<f32>, Vec<Condition>) {
    if excluded.is_empty() {
        return (indices, ts, noise, conditions);
    }
    let kept: Vec<usize> = (0..indices.len())
        .filter(|&p| excluded.binary_search(&indices[p]).is_err())
        .collect();
    (
        kept.iter().map(|&p| indices[p]).collect(),
        kept.iter().map(|&p| ts[p]).collect(),
        kept.iter()
            .flat_map(|&p| noise[p * pixels..(p + 1) * pixels].iter().copied())
            .collect(),
        kept.iter().map(|&p| conditions[p]).collect(),
    )
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
    let excluded = &recipe.excluded;
    if !excluded.windows(2).all(|w| w[0] < w[1]) || excluded.last().is_some_and(|&i| i >= data.len()) {
        return Err(TrainError::Mismatch(format!(
            "{}: the images excluded from training must be ascending indices below {}",
            dir.root.display(),
            data.len()
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
        let planned = indices.len();
        let (indices, ts, noise, conditions) =
            without_excluded(&recipe.excluded, indices, ts, noise, conditions, input_len);
        // A batch whose every image is excluded passes without an update: the learning rate and
        // every later draw stay where the run that keeps them has them.
        if !indices.is_empty() {
            let x0 = inputs.batch(&indices, "train-latent", &[recipe.seed, step as u64], &ad);
            let batch = noise_images(&schedule, x0, &ts, noise).conditioned(&encoding, &conditions)?;
            let loss = diffusion_loss(&model, &batch);
            let loss_value: f64 = loss.clone().into_scalar::<f32>() as f64;
            if !loss_value.is_finite() {
                return Err(TrainError::Diverged { step, loss: loss_value });
            }
            // Every kept image weighs what it weighs in the full batch (the sum over the kept
            // images ÷ the planned batch size), so that only the excluded images' terms are gone.
            let loss = loss.mul_scalar(indices.len() as f32 / planned as f32);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let lr = learning_rate(recipe, step, total);
            model = optim.step(lr, model, grads);
            window_loss += loss_value;
            window_n += 1;
        }
        step += 1;
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
    fn excluded_images_leave_with_their_draws_and_the_rest_keep_theirs() {
        let (indices, ts) = (vec![4, 9, 1, 7], vec![10, 20, 30, 40]);
        let noise: Vec<f32> = (0..8).map(|v| v as f32).collect();
        let conditions: Vec<Condition> = (0..4u32).map(Condition::Class).collect();
        let kept = without_excluded(&[1, 4, 5], indices, ts, noise, conditions, 2);
        assert_eq!(kept.0, vec![9, 7]);
        assert_eq!(kept.1, vec![20, 40]);
        assert_eq!(kept.2, vec![2.0, 3.0, 6.0, 7.0]);
        assert_eq!(kept.3, vec![Condition::Class(1), Condition::Class(3)]);
    }

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
            excluded: Vec::new(),
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
