//! Ancestral DDPM (Ho et al. 2020) and deterministic DDIM (Song et al. 2021) sampling, both as
//! the generalised DDIM update with stochasticity η (η = 1 on every step of 0..T is DDPM with
//! the posterior variance β̃_t; η = 0 is DDIM). All noise comes from the host stream keyed by
//! the seed, so a seed gives the same image on every backend.

use burn::tensor::{Device, Tensor, TensorData};

use super::error::ConfigError;
use super::noise::{gaussian, stream};
use super::{Condition, ConditionEncoding, Network, Schedule};

/// Which sampler to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    /// Ancestral sampling (η = 1).
    Ddpm,
    /// Deterministic DDIM (η = 0).
    Ddim,
}

/// Sampler settings.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplerConfig {
    /// DDPM or DDIM.
    pub kind: SamplerKind,
    /// Number of denoising steps (at most T).
    pub steps: usize,
    /// Classifier-free guidance scale w (Ho & Salimans 2022): ε = ε(∅) + w·(ε(c) − ε(∅)).
    /// 1 samples the conditional model as it is (one pass per step), 0 the unconditional one;
    /// above 1 needs a class-conditional model with a null class.
    #[serde(default = "no_guidance")]
    pub guidance_scale: f64,
}

fn no_guidance() -> f64 {
    1.0
}

/// The guidance scale a model with a null class is sampled with unless the user says otherwise
/// (Serrà et al. sample their class-conditional DiTs at 2).
pub const DEFAULT_GUIDANCE_SCALE: f64 = 2.0;

/// Largest guidance scale accepted (far beyond the 1–10 used in practice).
pub const MAX_GUIDANCE_SCALE: f64 = 100.0;

impl SamplerConfig {
    /// `kind` with `steps` denoising steps and no guidance.
    pub fn new(kind: SamplerKind, steps: usize) -> Self {
        Self {
            kind,
            steps,
            guidance_scale: no_guidance(),
        }
    }

    /// `kind` with `steps` steps and the default guidance for a model reading `encoding`:
    /// [`DEFAULT_GUIDANCE_SCALE`] when it has a null class to guide against, none otherwise.
    pub fn for_model(kind: SamplerKind, steps: usize, encoding: &ConditionEncoding) -> Self {
        Self {
            guidance_scale: if encoding.null_class().is_some() {
                DEFAULT_GUIDANCE_SCALE
            } else {
                no_guidance()
            },
            ..Self::new(kind, steps)
        }
    }

    /// Checks the step count against a schedule of `t_total` steps (1 to T) and the guidance
    /// scale (0 to [`MAX_GUIDANCE_SCALE`]).
    pub fn validate(&self, t_total: usize) -> Result<(), ConfigError> {
        if self.steps == 0 || self.steps > t_total {
            return Err(ConfigError(format!(
                "{} denoising steps: the model's schedule allows 1 to {t_total}",
                self.steps
            )));
        }
        if !(0.0..=MAX_GUIDANCE_SCALE).contains(&self.guidance_scale) {
            return Err(ConfigError(format!(
                "guidance scale {}: use 0 to {MAX_GUIDANCE_SCALE} (1 is no guidance)",
                self.guidance_scale
            )));
        }
        Ok(())
    }

    /// Whether sampling mixes a conditional and an unconditional prediction.
    pub fn is_guided(&self) -> bool {
        self.guidance_scale != 1.0
    }

    /// Checks that a model reading `encoding` can be sampled with these settings under
    /// `condition`: guidance needs a class-conditional model with a null class.
    pub fn check_model(&self, encoding: &ConditionEncoding, condition: &Condition) -> Result<(), ConfigError> {
        encoding.check(condition)?;
        if self.is_guided() {
            if !encoding.is_conditional() {
                return Err(ConfigError(format!(
                    "guidance scale {}: classifier-free guidance needs a class-conditional model, and \
                     this one is unconditional (use 1)",
                    self.guidance_scale
                )));
            }
            encoding.check(&Condition::Unconditional).map_err(|_| {
                ConfigError(format!(
                    "guidance scale {}: the model has no null class to guide against (use 1)",
                    self.guidance_scale
                ))
            })?;
        }
        Ok(())
    }
}

/// The timesteps visited, from noisiest to cleanest: `steps` evenly spaced values of 0..T.
pub fn timesteps(t_total: usize, steps: usize) -> Vec<usize> {
    let steps = steps.clamp(1, t_total);
    (0..steps).rev().map(|i| i * t_total / steps).collect()
}

/// What [`sample`] shows its observer after each denoising step.
pub struct SampleStep<'a> {
    /// Steps done so far (1 after the first).
    pub done: usize,
    /// Steps in all.
    pub total: usize,
    /// The diffusion step t this sampling step evaluated the model at.
    pub t: usize,
    /// The model's current estimate of the clean images x̂₀, clipped to [−1, 1]: what a live
    /// preview shows, as it sharpens from the first step on.
    pub predicted_clean: &'a Tensor<4>,
}

/// Generates one image per seed under the condition of the same position ([seeds, C, H, W] in
/// [−1, 1]), with classifier-free guidance when `config` asks for it. `observe` is called after
/// every denoising step ([`SampleStep`]); returning false stops early (`Ok(None)`). Refused
/// when the model cannot read a condition or be guided ([`SamplerConfig::check_model`]).
#[allow(clippy::too_many_arguments)]
pub fn sample(
    model: &Network,
    schedule: &Schedule,
    config: &SamplerConfig,
    [c, h, w]: [usize; 3],
    seeds: &[u64],
    conditions: &[Condition],
    device: &Device,
    mut observe: impl FnMut(SampleStep<'_>) -> bool,
) -> Result<Option<Tensor<4>>, ConfigError> {
    let n = seeds.len();
    let encoding = model.condition_encoding();
    if conditions.len() != n {
        return Err(ConfigError(format!("{} conditions for {n} seeds", conditions.len())));
    }
    for condition in conditions {
        config.check_model(&encoding, condition)?;
    }
    let rows = if config.is_guided() {
        let mut both = conditions.to_vec();
        both.extend(std::iter::repeat_n(Condition::Unconditional, n));
        encoding.rows(&both, device)?
    } else {
        encoding.rows(conditions, device)?
    };
    let pixels = c * h * w;
    let mut rngs: Vec<_> = seeds.iter().map(|&s| stream("sample", &[s])).collect();
    let draw = |rngs: &mut Vec<_>| {
        let values: Vec<f32> = rngs.iter_mut().flat_map(|r| gaussian(r, pixels)).collect();
        Tensor::<4>::from_data(TensorData::new(values, [n, c, h, w]), device)
    };
    let mut x = draw(&mut rngs);
    let eta = match config.kind {
        SamplerKind::Ddpm => 1.0,
        SamplerKind::Ddim => 0.0,
    };
    let ts = timesteps(schedule.len(), config.steps);
    for (i, &t) in ts.iter().enumerate() {
        let ab_t = schedule.alpha_bars[t];
        let ab_s = ts.get(i + 1).map_or(1.0, |&s| schedule.alpha_bars[s]);
        // Guided: the conditional and the unconditional prediction in one batch.
        let x_in = if config.is_guided() {
            Tensor::cat(vec![x.clone(), x.clone()], 0)
        } else {
            x.clone()
        };
        let t_in = Tensor::<1>::from_floats(vec![t as f32; x_in.dims()[0]].as_slice(), device);
        let eps = model.forward(x_in, t_in, rows.clone());
        let eps = if config.is_guided() {
            let (conditional, unconditional) = (eps.clone().slice(0..n), eps.slice(n..2 * n));
            unconditional.clone() + (conditional - unconditional) * config.guidance_scale
        } else {
            eps
        };
        let estimate = (x.clone() - eps.clone() * (1.0 - ab_t).sqrt()) / ab_t.sqrt();
        let x0 = estimate.clone().clamp(-1.0, 1.0);
        let (eps, x0_used) = if schedule.clip_sample {
            // Recompute ε from the clipped x₀ so the update stays consistent with it.
            ((x - x0.clone() * ab_t.sqrt()) / (1.0 - ab_t).sqrt(), x0.clone())
        } else {
            (eps, estimate)
        };
        let sigma = eta * ((1.0 - ab_s) / (1.0 - ab_t)).sqrt() * (1.0 - ab_t / ab_s).max(0.0).sqrt();
        let dir = (1.0 - ab_s - sigma * sigma).max(0.0).sqrt();
        x = x0_used * ab_s.sqrt() + eps * dir;
        if sigma > 0.0 && i + 1 < ts.len() {
            x = x + draw(&mut rngs) * sigma;
        }
        // A sync boundary per step: burn 0.22's fused wgpu backend returns wrong values for
        // long chains of lazily fused steps (tracel-ai/burn#5563); flex is unaffected.
        if let Err(e) = device.sync() {
            log_sync_failure(&e);
            return Ok(None);
        }
        let step = SampleStep {
            done: i + 1,
            total: ts.len(),
            t,
            predicted_clean: &x0,
        };
        if !observe(step) {
            return Ok(None);
        }
    }
    Ok(Some(x))
}

fn log_sync_failure(e: &impl std::fmt::Debug) {
    eprintln!("sampling stopped: the compute device failed: {e:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timesteps_run_from_noisy_to_clean() {
        assert_eq!(timesteps(1000, 4), vec![750, 500, 250, 0]);
        assert_eq!(timesteps(10, 100).len(), 10);
        assert_eq!(*timesteps(1000, 1000).first().unwrap(), 999);
    }
}
