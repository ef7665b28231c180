//! A built LDS benchmark opened for scoring ([`BuiltBenchmark`]): its ground truth, full-data
//! model and training data, the queries, and one method's scores of a query. Its
//! specification is [`super::benchmark::BenchmarkSpec`]; the throughput measurements of
//! `retrace bench` are another thing, in `crate::perf`.

use std::path::{Path, PathBuf};

use super::benchmark::QueryKind;
use super::build::{BENCHMARK_FILE, GROUND_TRUTH_FILE, measured_so_far};
use super::error::EvalError;
use super::ground_truth::GroundTruth;
use super::lds::{query_lds, random_scores};
use super::rows::{EvalRow, RowMethod};
use crate::attribution::registry;
use crate::attribution::{MethodSettings, Query, attribute};
use crate::data::Dataset;
use crate::data::pixels::bytes_to_unit;
use crate::diffusion::ModelDir;
use crate::index::IndexSettings;
use crate::jobs::JobContext;

/// A built benchmark opened for scoring: its ground truth, full-data model and training data.
pub struct BuiltBenchmark {
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
    /// Where every method's scores of a query are kept once computed (`None`: not kept), so
    /// that `eval lds`, `eval regenerate` and `eval remove-topk` score an expensive method
    /// (MUCS) once per query. Keyed by the feature settings, the row's label (its parameters)
    /// and retrace's version; deleting the directory clears it.
    pub score_cache: Option<PathBuf>,
    subsets: Vec<Vec<usize>>,
}

/// The directory, inside a benchmark's, where every scoring command keeps the methods' scores
/// of each query, read again by the others (delete it to score afresh).
pub const SCORE_CACHE: &str = "scores";

/// One query's scores under one row, as the score cache keeps them.
#[derive(serde::Serialize, serde::Deserialize)]
struct CachedScores {
    /// The retrace version that computed them.
    version: String,
    /// The SHA-256 of the full-data model's newest checkpoint they were computed with (entries
    /// of other weights, or of none recorded, are misses).
    #[serde(default)]
    weights_sha256: String,
    /// Per training image, dataset order.
    scores: Vec<f64>,
}

impl BuiltBenchmark {
    /// The bundled benchmark's directory (the first: T-shirts and ankle boots, a tiny model).
    pub fn bundled_dir() -> PathBuf {
        crate::data::bundled_dir().join("lds")
    }

    /// The bundled garment benchmark's directory (ten classes, a fine-tune of the bundled
    /// class-conditional model; `retrace eval build-lds --preset garments`).
    pub fn garments_dir() -> PathBuf {
        crate::data::bundled_dir().join("lds-garments")
    }

    /// Opens the benchmark in `root` (`ground-truth.json` and the full-data model in `full/`)
    /// and loads its training data, checking it is the data the ground truth was built on. A
    /// build still in progress (no `ground-truth.json` yet) opens with the subsets measured so
    /// far ([`super::build::partial_ground_truth`]); [`Self::is_partial`] says so.
    pub fn open(root: &Path) -> Result<Self, EvalError> {
        Self::open_with(root, 2)
    }

    /// [`Self::open`] for what needs no ground truth (`eval regenerate`): a build that is only
    /// prepared (full-data model, queries) opens too, with no subset.
    pub fn open_prepared(root: &Path) -> Result<Self, EvalError> {
        Self::open_with(root, 0)
    }

    fn open_with(root: &Path, min_subsets: usize) -> Result<Self, EvalError> {
        let file = root.join(GROUND_TRUTH_FILE);
        let truth = if file.is_file() {
            GroundTruth::load(&file)?
        } else {
            measured_so_far(root, min_subsets)?
        };
        let model = ModelDir::open(&root.join("full"))?;
        if model.info.data_hash != truth.spec.data_hash {
            return Err(EvalError::Invalid(format!(
                "{} was not trained on the benchmark's data ({})",
                model.root.display(),
                truth.spec.data
            )));
        }
        let data = super::build::load_spec(&truth.spec.data)?;
        truth.spec.check_data(&data)?;
        let subsets = truth.subsets()?;
        Ok(Self {
            root: root.to_owned(),
            truth,
            features: IndexSettings::standard(&model),
            score_cache: None,
            model,
            data,
            subsets,
        })
    }

    /// True when the ground truth holds fewer subsets than its benchmark asks for (a build in
    /// progress).
    pub fn is_partial(&self) -> Result<bool, EvalError> {
        let spec: Option<super::BenchmarkSpec> = super::build::read_json(&self.root.join(BENCHMARK_FILE))?;
        Ok(spec.is_some_and(|s| s.subsets > self.truth.spec.subsets))
    }

    /// Query `q` in the model's format, under its class in a class-conditional benchmark.
    pub fn query(&self, q: usize) -> Query {
        let query = &self.truth.queries[q];
        Query::image(
            bytes_to_unit(&query.pixels),
            self.model.info.image_shape(),
            self.describe(q),
        )
        .under(query.condition())
    }

    /// The class of query `q`: its own in a class-conditional benchmark, else the one the
    /// bundled classifier assigns it.
    pub fn query_class(&self, q: usize, device: &burn::tensor::Device) -> Result<u32, EvalError> {
        let query = &self.truth.queries[q];
        if let Some(class) = query.class {
            return Ok(class);
        }
        let (classifier, _) = crate::classifier::load_classifier(&crate::data::bundled_classifier_dir(), device)?;
        let shape = self.model.info.image_shape();
        let predicted = classifier.predict(&bytes_to_unit(&query.pixels), shape, device)?;
        predicted
            .first()
            .copied()
            .ok_or_else(|| EvalError::Invalid(format!("the classifier gave no class for query {q}")))
    }

    /// What query `q` is, with its class's name.
    pub fn describe(&self, q: usize) -> String {
        self.truth.queries[q].describe(&self.model.info.class_names)
    }

    /// Query `q` with its sampling trajectory when it is a generated one (sampled again from its
    /// seed, class and guidance with the benchmark's sampler; the pixels stay the stored ones).
    pub fn query_with_trajectory(
        &self,
        q: usize,
        device: &burn::tensor::Device,
        job: &JobContext,
    ) -> Result<Query, EvalError> {
        let mut query = self.query(q);
        let stored = &self.truth.queries[q];
        if stored.kind == QueryKind::Generated {
            let sampled = crate::attribution::query::generate_query(
                &self.model,
                stored.source,
                stored.condition(),
                &self.truth.spec.query_sampler(),
                device,
                job,
                |_, _, _| {},
            )?;
            query.trajectory = sampled.trajectory;
        }
        Ok(query)
    }

    /// The total score of every training image (dataset order) for query `q` under `row`, from
    /// the score cache when it holds them.
    pub fn scores(
        &self,
        row: &EvalRow,
        q: usize,
        device: &burn::tensor::Device,
        job: &JobContext,
    ) -> Result<Vec<f64>, EvalError> {
        let cached = self.score_cache.as_ref().map(|dir| {
            dir.join(crate::eval::rows::file_safe(&self.features.slug()))
                .join(crate::eval::rows::file_safe(&row.scorer_label()))
                .join(format!("q{q:03}.json"))
        });
        let version = env!("CARGO_PKG_VERSION");
        let weights = self.model.latest()?.map(|c| c.state.weights_sha256).unwrap_or_default();
        if let Some(path) = &cached
            // An unreadable entry (a file cut short, NaN scores written as null) is a miss.
            && let Ok(Some(kept)) = super::build::read_json::<CachedScores>(path)
            && kept.version == version
            && kept.weights_sha256 == weights
            && kept.scores.len() == self.data.len()
        {
            return Ok(kept.scores);
        }
        let scores = self.compute_scores(row, q, device, job)?;
        if let Some(path) = &cached
            && matches!(row.method, RowMethod::Attribution(_))
        {
            let kept = CachedScores {
                version: version.to_owned(),
                weights_sha256: weights,
                scores,
            };
            super::build::write_json(path, &kept)?;
            return Ok(kept.scores);
        }
        Ok(scores)
    }

    /// [`Self::scores`] computed.
    fn compute_scores(
        &self,
        row: &EvalRow,
        q: usize,
        device: &burn::tensor::Device,
        job: &JobContext,
    ) -> Result<Vec<f64>, EvalError> {
        let method = match &row.method {
            RowMethod::Random => return Ok(random_scores(self.data.len(), q)),
            RowMethod::ClassIndicator => {
                let class = self.query_class(q, device)?;
                return Ok(self
                    .data
                    .labels
                    .iter()
                    .map(|&l| f64::from(u8::from(l == class)))
                    .collect());
            }
            RowMethod::Attribution(m) => m.clone(),
        };
        let request = MethodSettings {
            methods: vec![method],
            parameters: row.parameters.clone(),
        };
        let index = self.index_settings(row.shared_noise)?;
        let query = if registry::lookup(&request.methods[0])?.needs().trajectory {
            self.query_with_trajectory(q, device, job)?
        } else {
            self.query(q)
        };
        let mut result = attribute(&self.model, &self.data, &query, &request, &index, device, job)?;
        Ok(result
            .pop()
            .ok_or_else(|| EvalError::Invalid("a method returned no scores".into()))?
            .totals())
    }

    /// LDS of scores (dataset order) for query `q`.
    pub fn lds(&self, scores: &[f64], q: usize) -> f64 {
        query_lds(scores, &self.subsets, &self.truth.mean_losses(q))
    }

    /// The index settings the evaluation uses: [`Self::features`], with the query's (t, ε)
    /// draws shared with the training images or not.
    pub fn index_settings(&self, shared_noise: bool) -> Result<IndexSettings, EvalError> {
        let mut settings = self.features.clone();
        settings.plan.shared_noise = shared_noise;
        Ok(settings.relocated()?)
    }
}
