//! The DDPM noise schedule (Ho et al. 2020): a β schedule (linear by default, or diffusers'
//! `scaled_linear` and `squaredcos_cap_v2`) and the quantities derived from it. Steps are indexed
//! 0..T−1 as in diffusers (index `t` is Ho et al.'s step `t + 1`).

use serde::{Deserialize, Serialize};

use super::error::ConfigError;

/// How β grows over the steps (diffusers' `beta_schedule`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// β evenly spaced from `beta_start` to `beta_end` (Ho et al. 2020).
    #[default]
    Linear,
    /// √β evenly spaced from √`beta_start` to √`beta_end` (latent diffusion's schedule).
    ScaledLinear,
    /// The cosine schedule of Nichol & Dhariwal (2021): ᾱ(s) = cos²((s + 0.008)/1.008 · π/2),
    /// β capped at 0.999 (diffusers' `squaredcos_cap_v2`; `beta_start`/`beta_end` unused).
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

/// The β schedule's parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleConfig {
    /// Number of diffusion steps T.
    pub steps: usize,
    /// β of the first step.
    pub beta_start: f64,
    /// β of the last step.
    pub beta_end: f64,
    /// The shape of the schedule (linear in older files).
    #[serde(default)]
    pub beta_schedule: BetaSchedule,
    /// Whether the sampler clips its estimate of x₀ to [−1, 1] at every step (diffusers'
    /// `clip_sample`; on in older files).
    #[serde(default = "clip_by_default")]
    pub clip_sample: bool,
}

/// Most diffusion steps a schedule may have (DDPM uses 1,000).
pub const MAX_STEPS: usize = 100_000;

impl ScheduleConfig {
    /// Checks that the schedule describes a diffusion: at least one step, and every β in
    /// (0, 1) with the first no larger than the last.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.steps == 0 {
            return Err(ConfigError(
                "the noise schedule has 0 steps (schedule.steps must be at least 1)".into(),
            ));
        }
        if self.steps > MAX_STEPS {
            return Err(ConfigError(format!(
                "the noise schedule has {} steps; retrace handles at most {MAX_STEPS}",
                self.steps
            )));
        }
        let in_range = |b: f64| b.is_finite() && b > 0.0 && b < 1.0;
        if !(in_range(self.beta_start) && in_range(self.beta_end) && self.beta_start <= self.beta_end) {
            return Err(ConfigError(format!(
                "the noise schedule's β runs from {} to {}: both must lie in (0, 1), the first no larger",
                self.beta_start, self.beta_end
            )));
        }
        Ok(())
    }
}

fn clip_by_default() -> bool {
    true
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            steps: 1000,
            beta_start: 1e-4,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            clip_sample: true,
        }
    }
}

/// Per-step coefficients, computed once on the host in f64.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// β_t.
    pub betas: Vec<f64>,
    /// ᾱ_t = Π_{s≤t} (1 − β_s).
    pub alpha_bars: Vec<f64>,
    /// Whether the sampler clips x̂₀ to [−1, 1].
    pub clip_sample: bool,
}

impl Schedule {
    /// Builds the schedule a config describes.
    pub fn new(config: &ScheduleConfig) -> Self {
        let n = config.steps.max(1);
        let frac = |i: usize| if n == 1 { 0.0 } else { i as f64 / (n - 1) as f64 };
        let cosine = |s: f64| ((s + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
        let betas: Vec<f64> = (0..n)
            .map(|i| match config.beta_schedule {
                BetaSchedule::Linear => config.beta_start + frac(i) * (config.beta_end - config.beta_start),
                BetaSchedule::ScaledLinear => {
                    let (a, b) = (config.beta_start.sqrt(), config.beta_end.sqrt());
                    (a + frac(i) * (b - a)).powi(2)
                }
                BetaSchedule::SquaredcosCapV2 => {
                    (1.0 - cosine((i + 1) as f64 / n as f64) / cosine(i as f64 / n as f64)).min(0.999)
                }
            })
            .collect();
        let alpha_bars = betas
            .iter()
            .scan(1.0, |acc, b| {
                *acc *= 1.0 - b;
                Some(*acc)
            })
            .collect();
        Self {
            betas,
            alpha_bars,
            clip_sample: config.clip_sample,
        }
    }

    /// Number of steps T.
    pub fn len(&self) -> usize {
        self.betas.len()
    }

    /// Always false: a schedule has at least one step.
    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    /// (√ᾱ_t, √(1 − ᾱ_t)): the weights of x₀ and ε in x_t.
    pub fn noising_weights(&self, t: usize) -> (f64, f64) {
        let ab = self.alpha_bars[t];
        (ab.sqrt(), (1.0 - ab).sqrt())
    }

    /// ᾱ of the step before `t` (1 before the first step).
    pub fn alpha_bar_prev(&self, t: usize) -> f64 {
        if t == 0 { 1.0 } else { self.alpha_bars[t - 1] }
    }

    /// Weight of step `t`'s ε-prediction error in the ELBO (Ho et al. 2020, eq. 12 up to the
    /// constant of the data term): β_t² / (2 σ_t² α_t (1 − ᾱ_t)) with σ_t² = β̃_t, the posterior
    /// variance; the first step, whose posterior variance is zero, uses σ² = β_t.
    pub fn elbo_weight(&self, t: usize) -> f64 {
        let beta = self.betas[t];
        let ab = self.alpha_bars[t];
        let sigma2 = if t == 0 {
            beta
        } else {
            beta * (1.0 - self.alpha_bar_prev(t)) / (1.0 - ab)
        };
        beta * beta / (2.0 * sigma2 * (1.0 - beta) * (1.0 - ab))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_schedule_matches_ho_et_al() {
        let s = Schedule::new(&ScheduleConfig::default());
        assert_eq!(s.len(), 1000);
        assert!((s.betas[0] - 1e-4).abs() < 1e-15 && (s.betas[999] - 0.02).abs() < 1e-15);
        // ᾱ_T ≈ 4.04e-5 for the linear schedule (widely quoted value).
        assert!((s.alpha_bars[999] - 4.04e-5).abs() < 1e-6, "{}", s.alpha_bars[999]);
        assert!(s.alpha_bars.windows(2).all(|w| w[1] < w[0]));
        let (a, b) = s.noising_weights(500);
        assert!((a * a + b * b - 1.0).abs() < 1e-12);
        assert!(s.elbo_weight(10) > 0.0 && s.elbo_weight(10).is_finite());
    }

    #[test]
    fn other_beta_schedules_follow_diffusers_formulas() {
        let config = |beta_schedule| ScheduleConfig {
            steps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule,
            clip_sample: true,
        };
        let scaled = Schedule::new(&config(BetaSchedule::ScaledLinear));
        assert!((scaled.betas[0] - 0.00085).abs() < 1e-15 && (scaled.betas[999] - 0.012).abs() < 1e-15);
        // √β is evenly spaced: its second differences vanish.
        let roots: Vec<f64> = scaled.betas.iter().map(|b| b.sqrt()).collect();
        assert!(roots.windows(3).all(|w| (w[2] - 2.0 * w[1] + w[0]).abs() < 1e-12));
        let cosine = Schedule::new(&config(BetaSchedule::SquaredcosCapV2));
        // ᾱ follows cos² closely and β is capped at 0.999 at the end.
        let expected = |s: f64| ((s + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
        let ratio = cosine.alpha_bars[499] / (expected(0.5) / expected(0.0));
        assert!((ratio - 1.0).abs() < 1e-9, "{ratio}");
        assert_eq!(cosine.betas[999], 0.999);
    }
}
