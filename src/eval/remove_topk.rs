//! The counterfactual check the papers pair with LDS (Xie et al. 2024; Georgiev et al. 2023;
//! Serrà et al. 2026, who evaluate MUCS this way): retrain the full-data model without a
//! query's k most influential training images and measure how much the query's loss rises,
//! against retraining without k random images. A method whose proponents matter raises the loss
//! more than chance.
//!
//! Every retrained model uses the benchmark's recipe (the full-data model's epochs on the N − k
//! remaining images) and seed s; the reference is the full-data model trained with the same
//! seed, and the query's loss is measured with the benchmark's fixed draws. Work lives in a
//! directory of its own, one result file per (query, method, seed), so a killed run resumes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::build::{LdsBuild, measure_losses, model_info, read_json, write_json};
use super::lds::{Interval, bootstrap};
use super::stats::top_k;
use super::table::{Benchmark, EvalRow};
use crate::diffusion::noise::{permutation, stream};
use crate::jobs::JobContext;

/// What to retrain.
#[derive(Clone, Debug)]
pub struct RemovalPlan {
    /// Training images removed per query.
    pub k: usize,
    /// Queries (indices into the ground truth's queries).
    pub queries: Vec<usize>,
    /// Training seeds.
    pub seeds: Vec<u64>,
    /// The methods whose top-k are removed (a `random` row removes k random images).
    pub rows: Vec<EvalRow>,
}

/// One retrained model's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemovalResult {
    /// The query.
    pub query: usize,
    /// The method ([`EvalRow::label`]).
    pub method: String,
    /// The training seed.
    pub seed: u64,
    /// The removed training images (dataset indices).
    pub removed: Vec<usize>,
    /// The query's loss after retraining without them.
    pub loss: f64,
    /// The query's loss under the full-data model of the same seed.
    pub reference_loss: f64,
}

/// One method's row of the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemovalRow {
    /// The method.
    pub method: String,
    /// Mean over queries and seeds of the loss increase (retrained − reference), with a
    /// bootstrap 95% interval.
    pub increase: Interval,
    /// The same, relative to the reference loss.
    pub relative_increase: f64,
}

/// The report `retrace eval remove-topk` prints and writes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemovalReport {
    /// Images removed per query.
    pub k: usize,
    /// Queries retrained for.
    pub queries: Vec<usize>,
    /// Seeds.
    pub seeds: Vec<u64>,
    /// One row per method.
    pub rows: Vec<RemovalRow>,
    /// Every retrained model.
    pub results: Vec<RemovalResult>,
}

/// Runs (or resumes) the plan in the work directory `dir`. `Ok(None)` when cancelled.
pub fn remove_top_k(
    bench: &Benchmark,
    plan: &RemovalPlan,
    dir: &Path,
    device: &burn::tensor::Device,
    job: &JobContext,
) -> Result<Option<RemovalReport>, String> {
    let spec = &bench.truth.spec;
    if plan.k == 0 || plan.k >= bench.data.len() {
        return Err(format!("k must lie in 1..{}", bench.data.len()));
    }
    let builder = LdsBuild {
        dir: dir.to_owned(),
        device,
        job,
        keep_models: false,
    };
    let all: Vec<usize> = (0..bench.truth.queries.len()).collect();
    // The reference: the full-data model of every seed, measured on every query.
    let mut reference = Vec::new();
    for &seed in &plan.seeds {
        let path = dir.join(format!("reference-s{seed}.json"));
        let losses = match read_json::<Vec<f64>>(&path)? {
            Some(l) => l,
            None => {
                let root = dir.join("models").join(format!("reference-s{seed}"));
                let info = model_info(spec, &bench.data, seed, "full-data model");
                let Some((net, _, _)) =
                    builder.train_model(&root, info, &bench.data, spec.training.full_epochs, "reference")?
                else {
                    return Ok(None);
                };
                let Some((losses, _)) = measure_losses(spec, &net, &bench.truth.queries, &all, device, job)? else {
                    return Ok(None);
                };
                write_json(&path, &losses)?;
                let _ = std::fs::remove_dir_all(&root);
                losses
            }
        };
        reference.push(losses);
    }
    let mut results = Vec::new();
    for &q in &plan.queries {
        for row in &plan.rows {
            let Some(scores) = bench.scores(row, q, device, job)? else {
                return Ok(None);
            };
            for (s, &seed) in plan.seeds.iter().enumerate() {
                let stem = format!("q{q:03}-{}-s{seed}", row.label().replace('+', "_"));
                let path: PathBuf = dir.join("results").join(format!("{stem}.json"));
                if let Some(done) = read_json::<RemovalResult>(&path)? {
                    results.push(done);
                    continue;
                }
                let removed = if matches!(row.method, super::table::RowMethod::Random) {
                    let mut r = permutation(&mut stream("remove-random", &[q as u64, seed]), bench.data.len());
                    r.truncate(plan.k);
                    r
                } else {
                    top_k(&scores, plan.k)
                };
                let keep: Vec<usize> = (0..bench.data.len()).filter(|i| !removed.contains(i)).collect();
                let data = bench.data.select(&keep);
                let root = dir.join("models").join(&stem);
                let info = model_info(spec, &data, seed, &format!("without the top {} of query {q}", plan.k));
                job.report("remove top-k", results.len() as u64, total(plan) as u64, stem.clone());
                let Some((net, _, _)) = builder.train_model(&root, info, &data, spec.training.full_epochs, &stem)?
                else {
                    return Ok(None);
                };
                let Some((loss, _)) = measure_losses(spec, &net, &bench.truth.queries, &[q], device, job)? else {
                    return Ok(None);
                };
                let result = RemovalResult {
                    query: q,
                    method: row.label(),
                    seed,
                    removed,
                    loss: loss[0],
                    reference_loss: reference[s][q],
                };
                write_json(&path, &result)?;
                let _ = std::fs::remove_dir_all(&root);
                results.push(result);
            }
        }
    }
    let rows = plan
        .rows
        .iter()
        .map(|row| {
            let of_row: Vec<&RemovalResult> = results.iter().filter(|r| r.method == row.label()).collect();
            let increases: Vec<f64> = of_row.iter().map(|r| r.loss - r.reference_loss).collect();
            let relative: Vec<f64> = of_row
                .iter()
                .map(|r| (r.loss - r.reference_loss) / r.reference_loss)
                .collect();
            RemovalRow {
                method: row.label(),
                increase: bootstrap(&increases, 3),
                relative_increase: super::ground_truth::mean(&relative),
            }
        })
        .collect();
    Ok(Some(RemovalReport {
        k: plan.k,
        queries: plan.queries.clone(),
        seeds: plan.seeds.clone(),
        rows,
        results,
    }))
}

fn total(plan: &RemovalPlan) -> usize {
    plan.queries.len() * plan.rows.len() * plan.seeds.len()
}
