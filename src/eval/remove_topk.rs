//! The counterfactual check the papers pair with LDS (Xie et al. 2024; Georgiev et al. 2023;
//! Serrà et al. 2026, who evaluate MUCS this way): retrain the full-data model without a
//! query's k most influential training images and measure how much the query's loss rises,
//! against retraining without k random images. A method whose proponents matter raises the loss
//! more than chance.
//!
//! Every retrained model uses the benchmark's recipe (the full-data model's epochs) and seed s
//! without the k images: by default the full-data run replayed with them masked out of its
//! batches, or, as the papers retrain, a fresh run on the N − k remaining images
//! ([`super::retraining::Retraining`]); the reference is the full-data model trained with the
//! same seed, and the query's loss is measured with the benchmark's fixed draws. Work lives in a
//! directory of its own, one result file per (query, method, seed), so a killed run resumes and
//! several processes (`--shard i/N`) can share it; the last to finish writes the report.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::QueryKind;
use super::build::{LdsBuild, Shard, measure_losses, read_json, write_json};
use super::built::BuiltBenchmark;
use super::error::EvalError;
use super::lds::{Interval, bootstrap};
use super::retraining::{Retraining, retrain_without};
use super::rows::{EvalRow, RowMethod, file_safe};
use crate::diffusion::noise::{permutation, stream};
use crate::jobs::JobContext;
use crate::stats::top_k;

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
    /// The share of the models this process trains; the others come from other processes
    /// working in the same directory.
    pub shard: Shard,
    /// How the retrained models draw their randomness.
    pub retraining: Retraining,
}

/// One retrained model's outcome, as its result file holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemovedModel {
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
    /// How the model was retrained (files without it were retrained independently).
    #[serde(default = "Retraining::recorded_before_choice")]
    pub retraining: Retraining,
}

impl RemovedModel {
    /// Whether this result was retrained without exactly `removed`, with `retraining`: one made
    /// with other settings (another projection, damping, retraining, …) is stale.
    fn made_by(&self, removed: &[usize], retraining: Retraining) -> bool {
        self.removed == removed && self.retraining == retraining
    }
}

/// A retrained model beside its reference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemovalResult {
    /// The retrained model.
    #[serde(flatten)]
    pub model: RemovedModel,
    /// The query's loss under the full-data model of the same seed.
    pub reference_loss: f64,
}

impl RemovalResult {
    /// Retrained loss − reference loss.
    pub fn increase(&self) -> f64 {
        self.model.loss - self.reference_loss
    }
}

/// One method's row of the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemovalRow {
    /// The method.
    pub method: String,
    /// Mean over queries and seeds of the loss increase (retrained − reference), with a
    /// bootstrap 95% interval.
    pub increase: Interval,
    /// The same, each increase relative to its reference loss.
    pub relative_increase: Interval,
    /// The relative increase per kind of query, in [`QueryKind::ALL`] order (held-out,
    /// generated).
    #[serde(default)]
    pub relative_by_kind: Vec<Interval>,
}

impl RemovalRow {
    /// The relative increase in per cent, with its interval: what the viewer plots.
    pub fn percent_increase(&self) -> (f64, [f64; 2]) {
        percent(&self.relative_increase)
    }

    /// The relative increase of one kind of query in per cent, with its interval; `None` when
    /// the method took no query of that kind (Journey-TRAK and held-out images) or the report
    /// has no split by kind.
    pub fn percent_increase_of(&self, kind: QueryKind) -> Option<(f64, [f64; 2])> {
        let i = QueryKind::ALL.iter().position(|&k| k == kind).unwrap_or(0);
        self.relative_by_kind.get(i).filter(|r| r.queries > 0).map(percent)
    }
}

/// A fraction and its interval in per cent.
fn percent(r: &Interval) -> (f64, [f64; 2]) {
    (100.0 * r.lds, [100.0 * r.ci95[0], 100.0 * r.ci95[1]])
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
    /// How the models were retrained.
    #[serde(default = "Retraining::recorded_before_choice")]
    pub retraining: Retraining,
    /// One row per method.
    pub rows: Vec<RemovalRow>,
    /// Every retrained model.
    pub results: Vec<RemovalResult>,
}

/// How a run of [`remove_top_k`] ended.
#[derive(Clone, Debug, PartialEq)]
pub enum RemovalOutcome {
    /// This shard's models are done; `waiting` models of other shards are not yet.
    ShardDone {
        /// Models still missing.
        waiting: usize,
    },
    /// Every model is done.
    Report(RemovalReport),
}

/// One model of the plan.
enum Unit {
    /// The full-data model of seed number `seed`.
    Reference { seed: usize },
    /// The model without the top-k of `query` under row `row`, with seed number `seed`.
    Removal { query: usize, row: usize, seed: usize },
}

impl RemovalPlan {
    /// Every model, references first, in the order shards are dealt.
    fn units(&self, bench: &BuiltBenchmark) -> Vec<Unit> {
        let references = (0..self.seeds.len()).map(|seed| Unit::Reference { seed });
        let removals = self.queries.iter().flat_map(|&query| {
            (0..self.rows.len())
                .filter(move |&row| self.takes(bench, query, row))
                .flat_map(move |row| (0..self.seeds.len()).map(move |seed| Unit::Removal { query, row, seed }))
        });
        references.chain(removals).collect()
    }

    /// Whether row `row` scores query `query` (Journey-TRAK takes generated queries only).
    fn takes(&self, bench: &BuiltBenchmark, query: usize, row: usize) -> bool {
        bench
            .truth
            .queries
            .get(query)
            .is_some_and(|q| self.rows[row].takes(q.kind))
    }
}

/// Runs (or resumes) this shard of the plan in the work directory `dir` and, once every model
/// of every shard is done, assembles the report.
pub fn remove_top_k(
    bench: &BuiltBenchmark,
    plan: &RemovalPlan,
    dir: &Path,
    device: &burn::tensor::Device,
    job: &JobContext,
) -> Result<RemovalOutcome, EvalError> {
    let spec = &bench.truth.spec;
    if plan.k == 0 || plan.k >= bench.data.len() {
        return Err(EvalError::Invalid(format!("k must lie in 1..{}", bench.data.len())));
    }
    let builder = LdsBuild {
        dir: dir.to_owned(),
        device,
        job,
        keep_models: false,
    };
    let all: Vec<usize> = (0..bench.truth.queries.len()).collect();
    let units = plan.units(bench);
    // Every method's top-k per (query, row index), computed once.
    let mut top_lists: HashMap<(usize, usize), Vec<usize>> = HashMap::new();
    // Other shards' models not done when this shard passed them: the file and what it must hold.
    let mut others: Vec<(PathBuf, Option<Vec<usize>>)> = Vec::new();
    for (position, unit) in units.iter().enumerate() {
        let owned = plan.shard.owns(position);
        job.report("remove top-k", position as u64, units.len() as u64, "");
        match *unit {
            Unit::Reference { seed } => {
                let seed = plan.seeds[seed];
                let path = reference_path(dir, seed);
                if read_json::<Vec<f64>>(&path)?.is_some() {
                    continue;
                }
                if !owned {
                    others.push((path, None));
                    continue;
                }
                let root = dir.join("models").join(format!("reference-s{seed}"));
                let net = retrain_without(&builder, bench, &root, &[], seed, plan.retraining, "")?;
                let (losses, _) = measure_losses(spec, &net, &bench.truth.queries, &all, device, job)?;
                write_json(&path, &losses)?;
                let _ = std::fs::remove_dir_all(&root);
            }
            Unit::Removal { query, row: r, seed } => {
                let (row, seed) = (&plan.rows[r], plan.seeds[seed]);
                let stem = result_stem(query, row, seed);
                let path = dir.join("results").join(format!("{stem}.json"));
                // A method's top-k does not depend on the training seed: scored once per query.
                let removed = match top_lists.get(&(query, r)) {
                    Some(top) => top.clone(),
                    None => {
                        let removed = removed_images(bench, plan, row, query, seed, device, job)?;
                        if !matches!(row.method, RowMethod::Random) {
                            top_lists.insert((query, r), removed.clone());
                        }
                        removed
                    }
                };
                // A result stands only if it removed what the method removes now: one made with
                // other settings (another projection, damping, …) is stale and made again.
                if read_json::<RemovedModel>(&path)?.is_some_and(|done| done.made_by(&removed, plan.retraining)) {
                    continue;
                }
                if !owned {
                    others.push((path, Some(removed)));
                    continue;
                }
                let root = dir.join("models").join(&stem);
                let what = format!("without the top {} of query {query}", plan.k);
                let net = retrain_without(&builder, bench, &root, &removed, seed, plan.retraining, &what)?;
                let (loss, _) = measure_losses(spec, &net, &bench.truth.queries, &[query], device, job)?;
                let model = RemovedModel {
                    query,
                    method: row.label(),
                    seed,
                    removed,
                    loss: loss[0],
                    retraining: plan.retraining,
                };
                write_json(&path, &model)?;
                let _ = std::fs::remove_dir_all(&root);
            }
        }
    }
    // Looked at again now that this shard is done: the last shard to finish finds them all.
    let mut waiting = 0;
    for (path, removed) in &others {
        let done = match removed {
            None => read_json::<Vec<f64>>(path)?.is_some(),
            Some(removed) => read_json::<RemovedModel>(path)?.is_some_and(|m| m.made_by(removed, plan.retraining)),
        };
        waiting += usize::from(!done);
    }
    if waiting > 0 {
        return Ok(RemovalOutcome::ShardDone { waiting });
    }
    assemble(plan, dir, bench).map(RemovalOutcome::Report)
}

/// The training images `row` removes for `query`: its top k, or k random ones for the random
/// row.
fn removed_images(
    bench: &BuiltBenchmark,
    plan: &RemovalPlan,
    row: &EvalRow,
    query: usize,
    seed: u64,
    device: &burn::tensor::Device,
    job: &JobContext,
) -> Result<Vec<usize>, EvalError> {
    if matches!(row.method, RowMethod::Random) {
        let mut r = permutation(&mut stream("remove-random", &[query as u64, seed]), bench.data.len());
        r.truncate(plan.k);
        return Ok(r);
    }
    Ok(top_k(&bench.scores(row, query, device, job)?, plan.k))
}

fn reference_path(dir: &Path, seed: u64) -> PathBuf {
    dir.join(format!("reference-s{seed}.json"))
}

fn result_stem(query: usize, row: &EvalRow, seed: u64) -> String {
    let label = file_safe(&row.label());
    format!("q{query:03}-{label}-s{seed}")
}

/// The report from the finished models' files.
fn assemble(plan: &RemovalPlan, dir: &Path, bench: &BuiltBenchmark) -> Result<RemovalReport, EvalError> {
    let missing = |path: &Path| EvalError::Invalid(format!("{} is missing", path.display()));
    let mut reference = Vec::new();
    for &seed in &plan.seeds {
        let path = reference_path(dir, seed);
        reference.push(read_json::<Vec<f64>>(&path)?.ok_or_else(|| missing(&path))?);
    }
    let mut results = Vec::new();
    for &query in &plan.queries {
        for (r, row) in plan.rows.iter().enumerate() {
            if !plan.takes(bench, query, r) {
                continue;
            }
            for (s, &seed) in plan.seeds.iter().enumerate() {
                let path = dir
                    .join("results")
                    .join(format!("{}.json", result_stem(query, row, seed)));
                let model = read_json::<RemovedModel>(&path)?.ok_or_else(|| missing(&path))?;
                let reference_loss = *reference[s]
                    .get(query)
                    .ok_or_else(|| EvalError::Invalid(format!("the reference losses have no query {query}")))?;
                results.push(RemovalResult { model, reference_loss });
            }
        }
    }
    let rows = plan
        .rows
        .iter()
        .map(|row| {
            let of_row: Vec<&RemovalResult> = results.iter().filter(|r| r.model.method == row.label()).collect();
            let increases: Vec<f64> = of_row.iter().map(|r| r.increase()).collect();
            let relative: Vec<f64> = of_row.iter().map(|r| r.increase() / r.reference_loss).collect();
            RemovalRow {
                method: row.label(),
                increase: bootstrap(&increases, 3),
                relative_increase: bootstrap(&relative, 4),
                relative_by_kind: QueryKind::ALL
                    .iter()
                    .map(|&kind| {
                        let of_kind: Vec<f64> = of_row
                            .iter()
                            .filter(|r| bench.truth.queries[r.model.query].kind == kind)
                            .map(|r| r.increase() / r.reference_loss)
                            .collect();
                        bootstrap(&of_kind, 5)
                    })
                    .collect(),
            }
        })
        .collect();
    Ok(RemovalReport {
        k: plan.k,
        queries: plan.queries.clone(),
        seeds: plan.seeds.clone(),
        retraining: plan.retraining,
        rows,
        results,
    })
}
