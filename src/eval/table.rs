//! The evaluation table: every attribution method's LDS against a built ground truth, on the
//! held-out and the generated queries of one half, with bootstrap intervals and the cost per
//! query. `retrace eval lds` prints it; the viewer's Evaluation tab reads the file it writes.

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::benchmark::{QueryHalf, QueryKind};
use super::built::BuiltBenchmark;
use super::error::EvalError;
use super::lds::{Interval, bootstrap};
use super::regenerate::RegenerationReport;
use super::remove_topk::RemovalReport;
use super::rows::{EvalRow, row_parts_dir};
use crate::jobs::JobContext;
use crate::stats::{TopKSpread, top_k, top_k_spread};

/// One row's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RowResult {
    /// The row's name ([`EvalRow::label`]).
    pub method: String,
    /// LDS on the held-out queries of the half.
    pub held_out: Interval,
    /// LDS on the generated queries of the half.
    pub generated: Interval,
    /// Wall-clock seconds per query (index and curvature fit excluded: they are built once).
    pub seconds_per_query: f64,
    /// LDS of every query scored, in ground-truth order of the half (held-out, then generated).
    pub per_query: Vec<f64>,
    /// Xie et al.'s generally-influential statistic over the generated queries' top-k lists.
    pub generally_influential: TopKSpread,
}

/// k of the generally-influential statistic.
pub const SPREAD_K: usize = 10;

/// The file `retrace eval lds --out` writes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// The benchmark's directory.
    pub benchmark: String,
    /// Which half of the queries was scored: `report` (the figures) or `dev` (to tune).
    pub half: QueryHalf,
    /// The seed-to-seed Spearman of the ground truth: the ceiling of any method's LDS.
    pub ceiling: f64,
    /// The same ceiling per query kind, in [`QueryKind::ALL`] order (held-out, generated).
    pub ceiling_by_kind: Vec<f64>,
    /// Subsets the ground truth held when the table was made.
    pub subsets: usize,
    /// False when the ground truth was still being built (fewer subsets than its benchmark).
    pub complete: bool,
    /// The feature settings ([`IndexSettings::slug`], with independent query draws; `+shared`
    /// rows use the same settings with shared draws).
    #[serde(default)]
    pub index: String,
    /// Retraining without each query's top-k (`retrace eval remove-topk`), once it has run.
    #[serde(default)]
    pub remove_top_k: Option<RemovalReport>,
    /// Regenerating samples after removing their top-k (`retrace eval regenerate`), once it has
    /// run.
    #[serde(default)]
    pub regenerate: Option<RegenerationReport>,
    /// One entry per row.
    pub methods: Vec<RowResult>,
}

impl EvalReport {
    /// A report on `bench`'s `half` with no row yet.
    pub fn new(bench: &BuiltBenchmark, half: QueryHalf) -> Result<Self, EvalError> {
        Ok(Self {
            benchmark: bench.root.display().to_string(),
            half,
            ceiling: bench.truth.quality.seed_spearman,
            ceiling_by_kind: bench.truth.quality.seed_spearman_by_kind.clone(),
            subsets: bench.truth.spec.subsets,
            complete: !bench.is_partial()?,
            index: bench.features.slug(),
            remove_top_k: None,
            regenerate: None,
            methods: Vec::new(),
        })
    }

    /// Reads the results file `path`, saying why it cannot.
    pub fn load(path: &Path) -> Result<Self, EvalError> {
        let bytes = crate::files::read(path)?;
        let report: Self = serde_json::from_slice(&bytes).map_err(|e| {
            EvalError::Invalid(format!(
                "{} is not a results file of retrace eval lds: {e}",
                path.display()
            ))
        })?;
        if let Some(regeneration) = &report.regenerate {
            regeneration
                .check()
                .map_err(|e| EvalError::Invalid(format!("{}: {e}", path.display())))?;
        }
        Ok(report)
    }

    /// The report in `path`, if there is a readable one.
    pub fn read(path: &Path) -> Option<Self> {
        Self::load(path).ok()
    }
}

/// One query's result of a row, kept while the row is scored so a long row (MUCS) resumes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct QueryPart {
    /// The query's LDS.
    lds: f64,
    /// Its top [`SPREAD_K`] training images.
    top: Vec<usize>,
    /// Seconds it took; `None` for the first query scored in a run, which also builds what the
    /// method builds once (index, curvature, kernel).
    seconds: Option<f64>,
}

/// Scores `row` on the queries of `half`.  With `parts`, every
/// query's result is kept in a file under it as soon as it is known, and a run that was stopped
/// resumes from them.
pub fn evaluate_row(
    bench: &BuiltBenchmark,
    row: &EvalRow,
    half: QueryHalf,
    parts: Option<&Path>,
    device: &burn::tensor::Device,
    job: &JobContext,
) -> Result<RowResult, EvalError> {
    let queries: Vec<usize> = QueryKind::ALL
        .iter()
        .filter(|&&kind| row.takes(kind))
        .flat_map(|&kind| bench.truth.query_indices(kind, half))
        .collect();
    if queries.is_empty() {
        return Err(EvalError::Invalid("the benchmark has no query in this half".into()));
    }
    let label = row.label();
    let part_path = |q: usize| parts.map(|dir| row_parts_dir(dir, &label).join(format!("q{q:03}.json")));
    let mut results: Vec<QueryPart> = Vec::with_capacity(queries.len());
    let mut first_in_run = true;
    for (done, &q) in queries.iter().enumerate() {
        job.report(&label, done as u64, queries.len() as u64, bench.describe(q));
        let path = part_path(q);
        if let Some(part) = match &path {
            Some(p) => super::build::read_json::<QueryPart>(p)?,
            None => None,
        } {
            results.push(part);
            continue;
        }
        let started = Instant::now();
        let scores = bench.scores(row, q, device, job)?;
        let part = QueryPart {
            lds: bench.lds(&scores, q),
            top: top_k(&scores, SPREAD_K),
            seconds: (!first_in_run).then(|| started.elapsed().as_secs_f64()),
        };
        first_in_run = false;
        if let Some(p) = &path {
            super::build::write_json(p, &part)?;
        }
        results.push(part);
    }
    let timed: Vec<f64> = results.iter().filter_map(|r| r.seconds).collect();
    let seconds_per_query = if timed.is_empty() {
        f64::NAN
    } else {
        timed.iter().sum::<f64>() / timed.len() as f64
    };
    let of_kind = |kind: QueryKind| -> Vec<f64> {
        queries
            .iter()
            .zip(&results)
            .filter(|(q, _)| bench.truth.queries[**q].kind == kind)
            .map(|(_, r)| r.lds)
            .collect()
    };
    let generated_top: Vec<Vec<usize>> = queries
        .iter()
        .zip(&results)
        .filter(|(q, _)| bench.truth.queries[**q].kind == QueryKind::Generated)
        .map(|(_, r)| r.top.clone())
        .collect();
    Ok(RowResult {
        method: label,
        held_out: bootstrap(&of_kind(QueryKind::HeldOut), 1),
        generated: bootstrap(&of_kind(QueryKind::Generated), 2),
        seconds_per_query,
        per_query: results.iter().map(|r| r.lds).collect(),
        generally_influential: top_k_spread(&generated_top, SPREAD_K),
    })
}
