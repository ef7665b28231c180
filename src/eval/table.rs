//! The evaluation table: every attribution method's LDS against a built ground truth, on the
//! held-out and the generated queries of one half, with bootstrap intervals and the cost per
//! query. `retrace eval lds` prints it; the viewer's Evaluation tab reads the file it writes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::benchmark::{QueryHalf, QueryKind};
use super::build::{BENCHMARK_FILE, GROUND_TRUTH_FILE, partial_ground_truth};
use super::ground_truth::GroundTruth;
use super::lds::{Interval, bootstrap, query_lds, random_scores};
use crate::attribution::registry::{self, Parameters};
use crate::attribution::{Method, Parameter};
use crate::attribution::{MethodSettings, Query, attribute};
use crate::data::Dataset;
use crate::diffusion::images::bytes_to_unit;
use crate::diffusion::{Measurement, ModelDir};
use crate::index::IndexSettings;
use crate::jobs::JobContext;
use crate::stats::{TopKSpread, top_k, top_k_spread};

/// A built benchmark opened for scoring: its ground truth, full-data model and training data.
pub struct Benchmark {
    /// Its directory (`assets/lds` for the bundled one).
    pub root: PathBuf,
    /// The ground truth.
    pub truth: GroundTruth,
    /// The full-data model the methods attribute.
    pub model: ModelDir,
    /// The training data.
    pub data: Dataset,
    /// How the methods featurise images: [`IndexSettings::standard`] unless the caller sets
    /// other settings; [`Self::index_settings`] picks the query's draws per row.
    pub features: IndexSettings,
    subsets: Vec<Vec<usize>>,
}

impl Benchmark {
    /// The bundled benchmark's directory.
    pub fn bundled_dir() -> PathBuf {
        crate::data::bundled_dir().join("lds")
    }

    /// Opens the benchmark in `root` (`ground-truth.json` and the full-data model in `full/`)
    /// and loads its training data, checking it is the data the ground truth was built on. A
    /// build still in progress (no `ground-truth.json` yet) opens with the subsets measured so
    /// far ([`partial_ground_truth`]); [`Self::is_partial`] says so.
    pub fn open(root: &Path) -> Result<Self, String> {
        let file = root.join(GROUND_TRUTH_FILE);
        let truth = if file.is_file() {
            GroundTruth::load(&file)?
        } else {
            partial_ground_truth(root)?
        };
        let model = ModelDir::open(&root.join("full")).map_err(|e| e.to_string())?;
        if model.info.data_hash != truth.spec.data_hash {
            return Err(format!(
                "{} was not trained on the benchmark's data ({})",
                model.root.display(),
                truth.spec.data
            ));
        }
        let data = super::build::load_spec(&truth.spec.data)?;
        truth.spec.check_data(&data)?;
        let subsets = truth.subsets()?;
        Ok(Self {
            root: root.to_owned(),
            truth,
            features: IndexSettings::standard(&model),
            model,
            data,
            subsets,
        })
    }

    /// True when the ground truth holds fewer subsets than its benchmark asks for (a build in
    /// progress).
    pub fn is_partial(&self) -> Result<bool, String> {
        let spec: Option<super::BenchmarkSpec> = super::build::read_json(&self.root.join(BENCHMARK_FILE))?;
        Ok(spec.is_some_and(|s| s.subsets > self.truth.spec.subsets))
    }

    /// Query `q` in the model's format.
    pub fn query(&self, q: usize) -> Query {
        let cfg = &self.model.info.unet;
        let query = &self.truth.queries[q];
        Query::image(
            bytes_to_unit(&query.pixels),
            [cfg.image_channels, cfg.sample_size, cfg.sample_size],
            query.describe(),
        )
    }

    /// Query `q` with its sampling trajectory when it is a generated one (sampled again from its
    /// seed with the benchmark's sampler; the pixels stay the stored ones). `Ok(None)` when
    /// cancelled.
    pub fn query_with_trajectory(
        &self,
        q: usize,
        device: &burn::tensor::Device,
        job: &JobContext,
    ) -> Result<Option<Query>, String> {
        let mut query = self.query(q);
        let stored = &self.truth.queries[q];
        if stored.kind == QueryKind::Generated {
            let config = crate::diffusion::SamplerConfig {
                kind: crate::diffusion::SamplerKind::Ddim,
                steps: self.truth.spec.sampler_steps,
            };
            let Some(sampled) = crate::attribution::query::generate_query(
                &self.model,
                stored.source,
                &config,
                device,
                job,
                |_, _, _| {},
            )?
            else {
                return Ok(None);
            };
            query.trajectory = sampled.trajectory;
        }
        Ok(Some(query))
    }

    /// The total score of every training image (dataset order) for query `q` under `row`.
    /// `Ok(None)` when cancelled.
    pub fn scores(
        &self,
        row: &EvalRow,
        q: usize,
        device: &burn::tensor::Device,
        job: &JobContext,
    ) -> Result<Option<Vec<f64>>, String> {
        let method = match &row.method {
            RowMethod::Random => return Ok(Some(random_scores(self.data.len(), q))),
            RowMethod::Attribution(m) => m.clone(),
        };
        let request = MethodSettings {
            methods: vec![method],
            parameters: row.parameters.clone(),
        };
        let index = self.index_settings(row.shared_noise)?;
        let query = if registry::lookup(&request.methods[0])?.needs().trajectory {
            let Some(query) = self.query_with_trajectory(q, device, job)? else {
                return Ok(None);
            };
            query
        } else {
            self.query(q)
        };
        let Some(mut result) = attribute(&self.model, &self.data, &query, &request, &index, device, job)? else {
            return Ok(None);
        };
        Ok(Some(result.pop().ok_or("a method returned no scores")?.totals()))
    }

    /// LDS of scores (dataset order) for query `q`.
    pub fn lds(&self, scores: &[f64], q: usize) -> f64 {
        query_lds(scores, &self.subsets, &self.truth.mean_losses(q))
    }

    /// The index settings the evaluation uses: [`Self::features`], with the query's (t, ε)
    /// draws shared with the training images or not.
    pub fn index_settings(&self, shared_noise: bool) -> Result<IndexSettings, String> {
        let mut settings = self.features.clone();
        settings.plan.shared_noise = shared_noise;
        settings.relocated()
    }
}

/// What a row of the table scores with.
#[derive(Clone, Debug, PartialEq)]
pub enum RowMethod {
    /// A method of the registry, by name.
    Attribution(String),
    /// Independent random scores: the chance level.
    Random,
}

/// One row of the table: a method with its settings.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalRow {
    /// What scores.
    pub method: RowMethod,
    /// The methods' parameters (the measurement among them).
    pub parameters: Parameters,
    /// Whether the query shares the training images' (t, ε) draws.
    pub shared_noise: bool,
}

/// Row-name suffixes of the measurements other than the loss.
const MEASUREMENT_SUFFIXES: [(&str, Measurement); 2] =
    [("-elbo", Measurement::ElboLoss), ("-sqnorm", Measurement::SquareNorm)];

/// Whether the method reads the `measurement` parameter.
fn takes_measurement(method: &dyn Method) -> bool {
    method.parameters().iter().any(|p| p.key == "measurement")
}

impl EvalRow {
    /// The row's name: `kfac`, `kfac-elbo`, `retrac`, … with the method's other parameters
    /// that differ from their defaults in brackets (`mucs[mucs-batch=16;mucs-max-steps=100]`)
    /// and `+shared` when the query shares the training images' draws (for methods that use the
    /// index).
    pub fn label(&self) -> String {
        let name = match &self.method {
            RowMethod::Random => return "random".into(),
            RowMethod::Attribution(m) => m,
        };
        let Ok(method) = registry::lookup(name) else {
            return name.clone();
        };
        let measurement = self
            .parameters
            .values()
            .choice::<Measurement>("measurement")
            .unwrap_or(Measurement::Loss);
        let suffix = MEASUREMENT_SUFFIXES
            .iter()
            .find(|(_, m)| *m == measurement && takes_measurement(method.as_ref()))
            .map_or("", |(s, _)| s);
        let draws = if self.shared_noise && method.needs().index {
            "+shared"
        } else {
            ""
        };
        // Other parameters away from their defaults, so rows of one method stay apart.
        let others: Vec<Parameter> = method
            .parameters()
            .into_iter()
            .filter(|p| p.key != "measurement")
            .collect();
        let changed = self.parameters.changed(&others);
        let settings = if changed.is_empty() {
            String::new()
        } else {
            format!("[{}]", changed.join(";"))
        };
        format!("{name}{suffix}{settings}{draws}")
    }

    /// Whether the row scores queries of `kind`: a method that attributes sampling trajectories
    /// (Journey-TRAK) takes generated queries only.
    pub fn takes(&self, kind: QueryKind) -> bool {
        match &self.method {
            RowMethod::Attribution(m) => {
                kind == QueryKind::Generated || registry::lookup(m).is_ok_and(|m| !m.needs().trajectory)
            }
            RowMethod::Random => true,
        }
    }

    /// Parses a row name as [`Self::label`] writes it, on top of `parameters`.
    pub fn parse(name: &str, parameters: &Parameters) -> Result<Self, String> {
        let (name, shared_noise) = match name.trim().strip_suffix("+shared") {
            Some(rest) => (rest, true),
            None => (name.trim(), false),
        };
        let mut parameters = parameters.clone();
        let name = match name.strip_suffix(']').and_then(|rest| rest.split_once('[')) {
            Some((base, pairs)) => {
                for pair in pairs.split(';') {
                    parameters.set_pair(pair)?;
                }
                base
            }
            None => name,
        };
        if name == "random" {
            return Ok(Self {
                method: RowMethod::Random,
                parameters,
                shared_noise,
            });
        }
        let (base, measurement) = match registry::lookup(name) {
            Ok(_) => (name, None),
            Err(unknown) => MEASUREMENT_SUFFIXES
                .iter()
                .find_map(|(suffix, m)| name.strip_suffix(suffix).map(|base| (base, Some(*m))))
                .ok_or(unknown)?,
        };
        let method = registry::lookup(base)?;
        if let Some(m) = measurement {
            if !takes_measurement(method.as_ref()) {
                return Err(format!("{name}: {base} takes no other measurement than the loss"));
            }
            parameters.set_choice("measurement", m)?;
        }
        Ok(Self {
            method: RowMethod::Attribution(base.to_owned()),
            parameters,
            shared_noise,
        })
    }
}

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
    pub remove_top_k: Option<super::remove_topk::RemovalReport>,
    /// One entry per row.
    pub methods: Vec<RowResult>,
}

impl EvalReport {
    /// A report on `bench`'s `half` with no row yet.
    pub fn new(bench: &Benchmark, half: QueryHalf) -> Result<Self, String> {
        Ok(Self {
            benchmark: bench.root.display().to_string(),
            half,
            ceiling: bench.truth.quality.seed_spearman,
            ceiling_by_kind: bench.truth.quality.seed_spearman_by_kind.clone(),
            subsets: bench.truth.spec.subsets,
            complete: !bench.is_partial()?,
            index: bench.features.slug(),
            remove_top_k: None,
            methods: Vec::new(),
        })
    }

    /// Reads the results file `path`, saying why it cannot.
    pub fn load(path: &Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is not a results file of retrace eval lds: {e}", path.display()))
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

/// Where [`evaluate_row`] keeps the per-query results of the row `label` under `parts`.
pub fn row_parts_dir(parts: &Path, label: &str) -> PathBuf {
    parts.join(file_safe(label))
}

/// A row label as a file name: `+`, brackets, `;` and `=` become `_`.
pub fn file_safe(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Scores `row` on the queries of `half`. `Ok(None)` when cancelled. With `parts`, every
/// query's result is kept in a file under it as soon as it is known, and a run that was stopped
/// resumes from them.
pub fn evaluate_row(
    bench: &Benchmark,
    row: &EvalRow,
    half: QueryHalf,
    parts: Option<&Path>,
    device: &burn::tensor::Device,
    job: &JobContext,
) -> Result<Option<RowResult>, String> {
    let queries: Vec<usize> = QueryKind::ALL
        .iter()
        .filter(|&&kind| row.takes(kind))
        .flat_map(|&kind| bench.truth.query_indices(kind, half))
        .collect();
    if queries.is_empty() {
        return Err("the benchmark has no query in this half".into());
    }
    let label = row.label();
    let part_path = |q: usize| parts.map(|dir| row_parts_dir(dir, &label).join(format!("q{q:03}.json")));
    let mut results: Vec<QueryPart> = Vec::with_capacity(queries.len());
    let mut first_in_run = true;
    for (done, &q) in queries.iter().enumerate() {
        job.report(
            &label,
            done as u64,
            queries.len() as u64,
            bench.truth.queries[q].describe(),
        );
        let path = part_path(q);
        if let Some(part) = match &path {
            Some(p) => super::build::read_json::<QueryPart>(p)?,
            None => None,
        } {
            results.push(part);
            continue;
        }
        let started = Instant::now();
        let Some(scores) = bench.scores(row, q, device, job)? else {
            return Ok(None);
        };
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
    Ok(Some(RowResult {
        method: label,
        held_out: bootstrap(&of_kind(QueryKind::HeldOut), 1),
        generated: bootstrap(&of_kind(QueryKind::Generated), 2),
        seconds_per_query,
        per_query: results.iter().map(|r| r.lds).collect(),
        generally_influential: top_k_spread(&generated_top, SPREAD_K),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_names_round_trip() {
        let influence = Parameters::default();
        for name in [
            "tracin",
            "retrac+shared",
            "kfac-elbo",
            "ekfac-sqnorm+shared",
            "pixel",
            "random",
            "kfac",
            "ensemble:retrac+kfac+shared",
            "mucs[mucs-batch=16;mucs-max-steps=100]",
            "trak[trak-damping=0.01]+shared",
        ] {
            assert_eq!(EvalRow::parse(name, &influence).unwrap().label(), name);
        }
        assert!(EvalRow::parse("tracin-elbo", &influence).is_err());
        assert!(EvalRow::parse("nope", &influence).is_err());
    }
}
