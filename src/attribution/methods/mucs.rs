//! MUCS (Serrà et al. 2026, "mirrored unlearning and noise-consistent skew"), as their code
//! computes it (`attribution/mucs.py`; notes with line numbers in `docs/research/mucs.md`):
//!
//! 1. **Unlearn** the query from a copy of the model with bounded mirrored gradient ascent:
//!    minimise L_retain − λ·L_forget, where L_retain is the training loss of a batch of training
//!    images and L_forget = mean over copies of min(ℓ(query copy), L_null) on the query repeated
//!    as many times as the retain batch is long, each copy with its own (t, ε) (λ = 0.2,
//!    `mucs.py:36,284-286`). The clamp at L_null — the loss of an untrained model — bounds the
//!    ascent: a clamped copy passes no gradient. A fresh AdamW (the training recipe's weight
//!    decay, no gradient clipping, no schedule) at a tenth of the training learning rate
//!    (`:35,74,250`) updates only the parameters the paper leaves trainable. Unlearning stops,
//!    checked before each update on that step's batch, once the clamped forget loss reaches
//!    (1 − 0.05)·L_null (`:38,289-292`).
//! 2. **Score** every training image by the noise-consistent skew
//!    S_i = mean_j (L_u(i, j) − L_o(i, j)) / (L_u(i, j) + L_o(i, j) + δ), δ = 10⁻³, over one fixed
//!    set of 100 (t_j, ε_j) draws shared by every image and by the unlearned (u) and original (o)
//!    models (`:204-245,300-312`). A high score is a proponent: unlearning the query raised the
//!    image's loss.
//!
//! Values from their code: λ = 0.2, tolerance 0.05, learning rate ÷ 10, retain batch 100 (=
//! the number of draws), 100 scoring draws, δ = 10⁻³; their scoring σ's are the first (noisiest)
//! 100 of 142 points of the sampler's schedule (`t_sched_infer = 0.7`, `:340-352`).
//!
//! Departures, each for a reason:
//! - **Trainable parameters.** Their pattern list (`:40-56`) freezes everything in a DiT but the
//!   block MLPs' weights (and the class embedder's). retrace's U-Net has no MLP blocks; the
//!   closest are the residual blocks' two convolutions, so exactly their weights train, and the
//!   input and output convolutions, the timestep embedding, the per-block timestep projections
//!   (the adaLN adapters' role), attention, norms, resamplers, shortcuts and every bias stay
//!   frozen.
//! - **L_null** is the mean training loss of a freshly initialised model of the same
//!   configuration, as theirs, over `mucs-null-images` training images with one training draw
//!   each (theirs: 200 batches of 100).
//! - **Timesteps.** retrace's models are DDPM ε-predictors; the scoring draws take the noisiest
//!   70 % of the sampling range the same way theirs do: 142 evenly spaced steps from T−1 down
//!   to 0, the first 100 kept (t from 999 to about 300 for T = 1000). The retain and forget
//!   copies draw t uniformly, the training distribution, as theirs draw σ from the training
//!   log-normal.
//! - **A step cap.** Their default loop has no cap (`max_steps=None`); retrace stops at
//!   `mucs-max-steps` too and reports in the scores whether the bound or the cap ended it.
//! - **Precision.** Losses are f32 (theirs: bf16 autocast at scoring).
//! - **Region queries.** With a region, the forget loss is the loss inside it
//!   ([`crate::diffusion::Measurement::evaluate_in`]): only that part of the query is unlearned;
//!   the retain loss and the scoring stay whole-image.
//! - **Conditioning.** A class-conditional model unlearns the query under the class it was
//!   generated for (or the one given with a loaded image) and keeps every training image's own
//!   label in the retain batches, L_null and the scoring, as their class-conditional DiTs do.
//! - **Timestep buckets.** Each draw's skew is credited to the timestep bucket of its t, so the
//!   per-timestep views show where the skew comes from; the buckets sum to S_i.
//! - **Latent models.** Training images enter as latents drawn from their cached latent
//!   distributions ([`crate::diffusion::latent`]): a fresh draw per retain batch, per L_null
//!   image and per scoring draw (keyed, so the original and unlearned models' losses see the
//!   same latents). A generated query is its exact latent; a loaded image is unlearned at its
//!   posterior mean μ·s (the forget loss is a bound on a fixed input, as for pixels), and a
//!   region is averaged onto the latent grid.

use burn::module::{Module, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};

use crate::attribution::context::Context;
use crate::attribution::error::AttributionError;
use crate::attribution::method::{Method, Needs};
use crate::attribution::parameter::{Parameter, ParameterValues, Range};
use crate::attribution::products::losses::{ScoringDraws, loss_matrix};
use crate::attribution::scores::Scores;
use crate::diffusion::images::TrainingInputs;
use crate::diffusion::noise::{below, gaussian, permutation, stream};
use crate::diffusion::train::{label_conditions, noise_images};
use crate::diffusion::{Condition, Measurement, Network, Schedule};
use crate::jobs::JobContext;

/// δ of the normalised skew (`mucs.py:64`).
pub const SKEW_DELTA: f64 = 1e-3;

/// The MUCS method.
pub struct Mucs;

/// MUCS's parameters, with their values from the reference code.
pub const PARAMETERS: [Parameter; 7] = [
    Parameter {
        key: "mucs-forget-weight",
        doc: "λ of L_retain − λ·L_forget (paper: 0.2)",
        default: "0.2",
        range: Range::Number {
            min: 1e-4,
            max: 100.0,
            log: true,
        },
    },
    Parameter {
        key: "mucs-tolerance",
        doc: "unlearning stops when the clamped forget loss reaches (1 − tolerance)·L_null (paper: 0.05)",
        default: "0.05",
        range: Range::Number {
            min: 0.0,
            max: 0.99,
            log: false,
        },
    },
    Parameter {
        key: "mucs-lr-divisor",
        doc: "unlearning learning rate = the training learning rate ÷ this (paper: 10)",
        default: "10",
        range: Range::Number {
            min: 0.01,
            max: 1e6,
            log: true,
        },
    },
    Parameter {
        key: "mucs-batch",
        doc: "training images per retain batch, and query copies per forget batch (paper: 100)",
        default: "100",
        range: Range::Integer { min: 1, max: 4096 },
    },
    Parameter {
        key: "mucs-max-steps",
        doc: "step cap of the unlearning (the paper has none; reported when reached)",
        default: "300",
        range: Range::Integer { min: 0, max: 1_000_000 },
    },
    Parameter {
        key: "mucs-draws",
        doc: "fixed (t, ε) draws of the scoring, shared by every image and both models (paper: 100)",
        default: "100",
        range: Range::Integer { min: 1, max: 10_000 },
    },
    Parameter {
        key: "mucs-null-images",
        doc: "training images L_null is estimated on, one draw each, with a fresh model",
        default: "1000",
        range: Range::Integer {
            min: 1,
            max: 10_000_000,
        },
    },
];

/// The settings of one MUCS run, read from the parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct MucsSettings {
    /// λ.
    pub forget_weight: f64,
    /// Stop at (1 − tolerance)·L_null.
    pub tolerance: f64,
    /// Training learning rate ÷ this.
    pub lr_divisor: f64,
    /// Retain batch and forget copies.
    pub batch: usize,
    /// Step cap.
    pub max_steps: usize,
    /// Scoring draws.
    pub draws: usize,
    /// Images L_null is estimated on.
    pub null_images: usize,
}

impl MucsSettings {
    /// The settings in `parameters` (defaults where not set).
    pub fn from_parameters(p: &ParameterValues) -> Result<Self, AttributionError> {
        Ok(Self {
            forget_weight: p.number("mucs-forget-weight")?,
            tolerance: p.number("mucs-tolerance")?,
            lr_divisor: p.number("mucs-lr-divisor")?,
            batch: p.integer("mucs-batch")?,
            max_steps: p.integer("mucs-max-steps")?,
            draws: p.integer("mucs-draws")?,
            null_images: p.integer("mucs-null-images")?,
        })
    }
}

/// What the unlearning did.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Unlearning {
    /// Updates made.
    pub steps: usize,
    /// True when the step cap, not the bound, ended it.
    pub capped: bool,
    /// The untrained model's loss L_null.
    pub null_loss: f64,
    /// The clamped forget loss at the first and the last check.
    pub forget_loss: [f64; 2],
    /// The retain batch's loss at the first and the last check.
    pub retain_loss: [f64; 2],
}

/// The normalised skew of every image, credited to the timestep bucket of each draw: the flat
/// [N × B] scores (B = `buckets.len()`, bucket ranges [start, end) of steps), whose sum over
/// buckets is mean_j (L_u − L_o)/(L_u + L_o + δ).
pub fn skew_scores(unlearned: &[f32], original: &[f32], draws: &ScoringDraws, buckets: &[[usize; 2]]) -> Vec<f32> {
    let j = draws.len().max(1);
    let bucket_of: Vec<usize> = draws
        .steps
        .iter()
        .map(|&t| buckets.iter().position(|&[s, e]| (s..e).contains(&t)).unwrap_or(0))
        .collect();
    let n = original.len() / j;
    let mut out = vec![0.0f32; n * buckets.len()];
    for i in 0..n {
        for (k, &b) in bucket_of.iter().enumerate() {
            let (u, o) = (unlearned[i * j + k] as f64, original[i * j + k] as f64);
            out[i * buckets.len() + b] += ((u - o) / (u + o + SKEW_DELTA) / j as f64) as f32;
        }
    }
    out
}

/// The parameters MUCS unlearns with. A DiT: every block's MLP weights and class tables, as
/// their pattern list has it. A U-Net: the weights of every residual block's two convolutions
/// (the closest to a DiT's block MLPs) and a class-conditional model's class table.
pub fn trainable_parameters(net: &Network) -> Vec<ParamId> {
    match net {
        Network::UNet(net) => {
            let blocks = net
                .down_blocks
                .iter()
                .chain(&net.up_blocks)
                .flat_map(|b| &b.resnets)
                .chain(&net.mid_block.resnets);
            blocks
                .flat_map(|r| [r.conv1.weight.id, r.conv2.weight.id])
                .chain(net.class_embedding.iter().map(|table| table.weight.id))
                .collect()
        }
        Network::DiT(net) => net
            .transformer_blocks
            .iter()
            .flat_map(|b| {
                [
                    b.ff.proj_in.weight.id,
                    b.ff.proj_out.weight.id,
                    b.norm1.emb.class_embedder.weight.id,
                ]
            })
            .collect(),
    }
}

/// L_null: the mean training loss of a freshly initialised model of `net`'s configuration over
/// the first `images` of a seeded permutation of the training set, one training draw each.
pub fn null_loss(
    config: &crate::diffusion::Architecture,
    schedule: &Schedule,
    inputs: TrainingInputs<'_>,
    images: usize,
    device: &Device,
    job: &JobContext,
) -> Result<f64, AttributionError> {
    let data = inputs.data;
    // A fixed initialisation, so L_null reproduces (every other draw of a request comes from
    // keyed streams).
    let fresh = config.init_seeded(device, 0x6d75_6373);
    let mut chosen = permutation(&mut stream("mucs-null-images", &[]), data.len());
    chosen.truncate(images.clamp(1, data.len().max(1)));
    let mut rng = stream("mucs-null-draws", &[]);
    let mut sum = 0.0f64;
    for part in chosen.chunks(128) {
        job.stop_if_cancelled()?;
        let ts: Vec<usize> = part.iter().map(|_| below(&mut rng, schedule.len())).collect();
        let noise = gaussian(&mut rng, part.len() * inputs.input_len());
        let conditions = label_conditions(data, part);
        let x0 = inputs.batch(part, "mucs-null-latent", &[], device);
        let batch = noise_images(schedule, x0, &ts, noise).conditioned(&config.condition_encoding(), &conditions)?;
        let prediction = batch.predict(&fresh);
        let losses = Measurement::Loss.evaluate(schedule, prediction, batch.noise, &ts);
        sum += crate::device::read_back(losses)?.iter().map(|&v| v as f64).sum::<f64>();
    }
    Ok(sum / chosen.len().max(1) as f64)
}

/// Everything an unlearning run reads.
pub struct UnlearnRequest<'a> {
    /// The model to unlearn from (it is copied; the original is untouched).
    pub net: &'a Network,
    /// Its noise schedule.
    pub schedule: &'a Schedule,
    /// The training images (retain batches).
    pub inputs: TrainingInputs<'a>,
    /// The query in the network's space (C×H×W pixels in [−1, 1], or a latent).
    pub query: &'a [f32],
    /// The condition the query is unlearned under (the class it was generated for).
    pub query_condition: Condition,
    /// The query's region (H×W weights on the network's grid): the forget loss is measured
    /// there only.
    pub region: Option<&'a [f32]>,
    /// The settings.
    pub settings: &'a MucsSettings,
    /// The training recipe's peak learning rate.
    pub learning_rate: f64,
    /// The training recipe's weight decay.
    pub weight_decay: f64,
    /// L_null.
    pub null_loss: f64,
    /// Where to compute (its autodiff twin is used).
    pub device: &'a Device,
}

impl UnlearnRequest<'_> {
    /// Unlearns the query; returns the unlearned model (on `device`, without autodiff) and what
    /// happened.
    pub fn run(&self, job: &JobContext) -> Result<(Network, Unlearning), AttributionError> {
        let s = self.settings;
        let ad = self.device.clone().autodiff();
        let mut net = self.net.clone().to_device(&ad).train();
        let trainable = trainable_parameters(&net);
        let mut optim: ModuleOptimizer = AdamWConfig::new().with_weight_decay(self.weight_decay as f32).init();
        let lr = self.learning_rate / s.lr_divisor;
        let data = self.inputs.data;
        let batch = s.batch.min(data.len()).max(1);
        let per_epoch = (data.len() / batch).max(1);
        let input_len = self.inputs.input_len();
        let [c, h, w] = self.inputs.shape();
        let query = Tensor::<4>::from_data(TensorData::new(self.query.repeat(batch), [batch, c, h, w]), &ad);
        let threshold = (1.0 - s.tolerance) * self.null_loss;
        let region = self
            .region
            .map(|weights| Tensor::<2>::from_data(TensorData::new(weights.to_vec(), [h, w]), &ad));
        let mut report = Unlearning {
            steps: 0,
            capped: false,
            null_loss: self.null_loss,
            forget_loss: [f64::NAN; 2],
            retain_loss: [f64::NAN; 2],
        };
        let mut rng = stream("mucs-unlearn", &[]);
        let encoding = self.net.condition_encoding();
        for step in 0.. {
            job.stop_if_cancelled()?;
            // A shuffled pass over the training set, whole batches only (drop_last).
            let (epoch, within) = (step / per_epoch, step % per_epoch);
            let order = permutation(&mut stream("mucs-retain-order", &[epoch as u64]), data.len());
            let retain_ids = &order[within * batch..(within + 1) * batch];
            let ts: Vec<usize> = (0..2 * batch).map(|_| below(&mut rng, self.schedule.len())).collect();
            let noise = gaussian(&mut rng, 2 * batch * input_len);
            let retain_x0 = self.inputs.batch(retain_ids, "mucs-retain-latent", &[step as u64], &ad);
            let x0 = Tensor::cat(vec![retain_x0, query.clone()], 0);
            let mut conditions = label_conditions(data, retain_ids);
            conditions.resize(2 * batch, self.query_condition);
            let noisy = noise_images(self.schedule, x0, &ts, noise).conditioned(&encoding, &conditions)?;
            let prediction = noisy.predict(&net);
            let retain = Measurement::Loss
                .evaluate(
                    self.schedule,
                    prediction.clone().slice(0..batch),
                    noisy.noise.clone().slice(0..batch),
                    &ts[..batch],
                )
                .mean();
            let forget = Measurement::Loss
                .evaluate_in(
                    self.schedule,
                    prediction.slice(batch..2 * batch),
                    noisy.noise.slice(batch..2 * batch),
                    &ts[batch..],
                    region.as_ref(),
                )
                .clamp_max(self.null_loss)
                .mean();
            let values = crate::device::read_back(Tensor::cat(vec![retain.clone(), forget.clone()], 0))?;
            let (retain_value, forget_value) = (values[0] as f64, values[1] as f64);
            if !(retain_value.is_finite() && forget_value.is_finite()) {
                return Err(AttributionError::NonFinite(format!(
                    "unlearning diverged at step {step} (non-finite loss)"
                )));
            }
            if step == 0 {
                report.retain_loss[0] = retain_value;
                report.forget_loss[0] = forget_value;
            }
            report.retain_loss[1] = retain_value;
            report.forget_loss[1] = forget_value;
            job.report(
                "unlearning the query",
                step as u64,
                s.max_steps as u64,
                format!("forget loss {forget_value:.4} of {threshold:.4}"),
            );
            if forget_value >= threshold {
                break;
            }
            if step >= s.max_steps {
                report.capped = true;
                break;
            }
            let objective = retain - forget * s.forget_weight;
            let mut grads = objective.backward();
            let grads = GradientsParams::from_params(&mut grads, &net, &trainable);
            if grads.is_empty() {
                return Err(AttributionError::Invalid(
                    "MUCS found no trainable parameter to unlearn with".into(),
                ));
            }
            net = optim.step(lr, net, grads);
            report.steps = step + 1;
        }
        Ok((net.valid(), report))
    }
}

impl Method for Mucs {
    fn name(&self) -> String {
        "mucs".into()
    }

    fn summary(&self) -> &'static str {
        "MUCS: unlearn the query by bounded mirrored gradient ascent, score the normalised loss skew (Serrà et al. 2026)"
    }

    fn parameters(&self) -> Vec<Parameter> {
        PARAMETERS.to_vec()
    }

    fn needs(&self) -> Needs {
        Needs {
            model_copy: true,
            ..Needs::default()
        }
    }

    fn score(&self, context: &mut Context<'_>) -> Result<Scores, AttributionError> {
        let settings = MucsSettings::from_parameters(context.parameters)?;
        let model = context.final_model()?;
        let (entry, net) = (&model.0, &model.1);
        let schedule = context.schedule();
        let latents = context.training_latents()?;
        let query = context.query_example()?;
        let (data, device, job) = (context.data, context.device, context.job);
        let inputs = TrainingInputs {
            data,
            latents: latents.as_deref(),
        };
        let info = &context.model.info;
        let draws = ScoringDraws::new(settings.draws, schedule.len(), inputs.input_len());
        let original = context.original_losses(&draws, "mucs-original-losses")?;
        let null = null_loss(&info.architecture, &schedule, inputs, settings.null_images, device, job)?;
        let request = UnlearnRequest {
            net,
            schedule: &schedule,
            inputs,
            query: &query.values,
            query_condition: context.query.condition,
            region: query.region.as_deref(),
            settings: &settings,
            learning_rate: info.train.learning_rate,
            weight_decay: info.train.weight_decay,
            null_loss: null,
            device,
        };
        let (unlearned, report) = request.run(job)?;
        let after = loss_matrix(
            &unlearned,
            &schedule,
            inputs,
            &draws,
            device,
            job,
            "scoring the unlearned model",
        )?;
        let plan = &context.index_settings.plan;
        let buckets: Vec<[usize; 2]> = (0..plan.buckets)
            .map(|b| {
                let (s, e) = plan.bucket_range(b);
                [s, e]
            })
            .collect();
        let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64;
        Ok(Scores {
            method: self.name(),
            parameters: serde_json::json!({
                "checkpoint": entry.state.step,
                "settings": context.parameters.to_json(&self.parameters()),
                "unlearning": report,
                "training_loss_over_draws": [mean(&original), mean(&after)],
                "query": context.query.description,
            }),
            per_bucket: skew_scores(&after, &original, &draws, &buckets),
            buckets,
            ids: data.ids.clone(),
            labels: data.labels.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_is_zero_for_equal_losses_and_signed_by_the_change() {
        let draws = ScoringDraws {
            steps: vec![900, 100],
            noise: vec![],
        };
        let buckets = [[0, 500], [500, 1000]];
        let original = [1.0, 2.0, 1.0, 2.0];
        assert!(
            skew_scores(&original, &original, &draws, &buckets)
                .iter()
                .all(|&v| v == 0.0)
        );
        let raised = [3.0, 2.0, 1.0, 1.0];
        let s = skew_scores(&raised, &original, &draws, &buckets);
        // Image 0: draw 0 (t = 900, bucket 1) rose 1 → 3; image 1: draw 1 (t = 100, bucket 0) fell.
        assert!((s[1] as f64 - 0.5 * 2.0 / (4.0 + SKEW_DELTA)).abs() < 1e-6, "{s:?}");
        assert_eq!(s[0], 0.0);
        assert!(s[2] < 0.0 && s[3] == 0.0, "{s:?}");
    }
}
