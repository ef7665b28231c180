//! The Linear Datamodeling Score (Park et al. 2023, TRAK §2; as used for diffusion models by
//! Zheng et al. 2024 and Mlodozeniec et al. 2024). Attribution scores τ_i define an additive
//! datamodel: the model trained on a subset S should do as well on the query as Σ_{i∈S} τ_i
//! predicts. For each query, LDS is the Spearman correlation over the M subsets between that
//! prediction and the measured outcome; the reported LDS is its mean over queries.
//!
//! Sign: retrace's scores are positive for proponents — training images whose presence lowers
//! the query's loss — so the outcome correlated with Σ τ is the *negated* query loss (averaged
//! over the training seeds).

use serde::{Deserialize, Serialize};

use crate::diffusion::noise::{below, gaussian, stream};
use crate::stats::spearman;

/// LDS of one query: Spearman over subsets between Σ_{i∈S_m} τ_i and −L_m.
pub fn query_lds(scores: &[f64], subsets: &[Vec<usize>], losses: &[f64]) -> f64 {
    let predicted: Vec<f64> = subsets.iter().map(|s| s.iter().map(|&i| scores[i]).sum()).collect();
    let outcome: Vec<f64> = losses.iter().map(|l| -l).collect();
    spearman(&predicted, &outcome)
}

/// A mean over queries with its bootstrap 95% interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// The mean over queries.
    pub lds: f64,
    /// Percentile-bootstrap 95% interval of the mean (queries resampled with replacement).
    pub ci95: [f64; 2],
    /// Number of queries.
    pub queries: usize,
}

/// Bootstrap resamples behind every interval.
pub const BOOTSTRAP_RESAMPLES: usize = 2000;

/// The mean of `values` with a percentile-bootstrap 95% interval (seeded, so reproducible).
pub fn bootstrap(values: &[f64], seed: u64) -> Interval {
    bootstrap_statistic(values.len(), seed, |sample| {
        sample.iter().map(|&i| values[i]).sum::<f64>() / sample.len() as f64
    })
}

/// A statistic of `n` units (queries) with its percentile-bootstrap 95% interval: `statistic`
/// takes the units of a sample (indices, with repeats) and is evaluated on all of them once and
/// on [`BOOTSTRAP_RESAMPLES`] resamples drawn with replacement (seeded, so reproducible).
/// Statistics that pair or pool several values per unit (a ratio of two methods' means over the
/// same queries, an AUC) keep each unit's values together this way.
pub fn bootstrap_statistic(n: usize, seed: u64, statistic: impl Fn(&[usize]) -> f64) -> Interval {
    if n == 0 {
        return Interval {
            lds: 0.0,
            ci95: [0.0, 0.0],
            queries: 0,
        };
    }
    let mut rng = stream("lds-bootstrap", &[seed]);
    let mut sample = vec![0; n];
    let mut values: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| {
            sample.iter_mut().for_each(|s| *s = below(&mut rng, n));
            statistic(&sample)
        })
        .collect();
    values.sort_by(f64::total_cmp);
    let at = |p: f64| values[((p * (values.len() - 1) as f64).round() as usize).min(values.len() - 1)];
    let all: Vec<usize> = (0..n).collect();
    Interval {
        lds: statistic(&all),
        ci95: [at(0.025), at(0.975)],
        queries: n,
    }
}

/// Scores of the random baseline for query `q`: independent standard normals (its LDS is 0 in
/// expectation; the table shows how far from 0 chance alone goes).
pub fn random_scores(n: usize, q: usize) -> Vec<f64> {
    gaussian(&mut stream("lds-random-scorer", &[q as u64]), n)
        .into_iter()
        .map(f64::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subsets(n: usize, m: usize) -> Vec<Vec<usize>> {
        (0..m)
            .map(|k| {
                let mut p = crate::diffusion::noise::permutation(&mut stream("t", &[k as u64]), n);
                p.truncate(n / 2);
                p
            })
            .collect()
    }

    #[test]
    fn an_exact_linear_datamodel_scores_one_and_noise_scores_zero() {
        let (n, m) = (100, 64);
        let s = subsets(n, m);
        let mut exact = Vec::new();
        let mut random = Vec::new();
        for q in 0..40 {
            let tau = random_scores(n, 1000 + q);
            // The outcome an additive datamodel with these scores predicts, plus a constant.
            let losses: Vec<f64> = s
                .iter()
                .map(|sub| 3.0 - sub.iter().map(|&i| tau[i]).sum::<f64>())
                .collect();
            exact.push(query_lds(&tau, &s, &losses));
            random.push(query_lds(&random_scores(n, q), &s, &losses));
        }
        let exact = bootstrap(&exact, 0);
        assert!((exact.lds - 1.0).abs() < 1e-9, "{exact:?}");
        let random = bootstrap(&random, 0);
        assert!(random.lds.abs() < 0.06, "{random:?}");
        assert!(random.ci95[0] < 0.0 && random.ci95[1] > 0.0, "{random:?}");
        // The wrong sign is the worst datamodel.
        let tau = random_scores(n, 7);
        let losses: Vec<f64> = s.iter().map(|sub| sub.iter().map(|&i| tau[i]).sum::<f64>()).collect();
        assert!((query_lds(&tau, &s, &losses) + 1.0).abs() < 1e-9);
    }
}
