//! The DDPM noise schedule (Ho et al. 2020): a linear β schedule and the quantities derived from
//! it. Steps are indexed 0..T−1 as in diffusers (index `t` is Ho et al.'s step `t + 1`).

use serde::{Deserialize, Serialize};

/// The linear-β schedule's parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleConfig {
    /// Number of diffusion steps T.
    pub steps: usize,
    /// β of the first step.
    pub beta_start: f64,
    /// β of the last step.
    pub beta_end: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            steps: 1000,
            beta_start: 1e-4,
            beta_end: 0.02,
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
}

impl Schedule {
    /// Builds the linear schedule.
    pub fn new(config: &ScheduleConfig) -> Self {
        let n = config.steps.max(1);
        let betas: Vec<f64> = (0..n)
            .map(|i| {
                let frac = if n == 1 { 0.0 } else { i as f64 / (n - 1) as f64 };
                config.beta_start + frac * (config.beta_end - config.beta_start)
            })
            .collect();
        let alpha_bars = betas
            .iter()
            .scan(1.0, |acc, b| {
                *acc *= 1.0 - b;
                Some(*acc)
            })
            .collect();
        Self { betas, alpha_bars }
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
}
