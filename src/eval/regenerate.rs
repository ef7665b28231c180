//! Counterfactual regeneration, the evaluation of Serrà et al. 2026 (MUCS; sony/mucs
//! `pipeline.py`, `eval.py`): remove the training images a method names as most influential for
//! some generated samples, retrain with the same seed, generate again with the same sampler
//! seed, class and guidance, and measure how much the images changed, against removing random
//! images. A method that found what made a sample changes it more than chance does.
//!
//! As the reference code does, one retraining per (method, training seed) removes the **union**
//! of the top k of all the target samples (`remove_selected_datapoints` removes
//! `set(top_k.flatten())`), and the random row removes the union of k random images drawn per
//! target. This departs from a per-sample retraining (D-TRAK's `run_counter.sh`), which costs
//! one retraining per target and is not affordable on a CPU: the per-target figure is the
//! limit where the plan holds one target. Control samples, which no method targeted, are
//! regenerated too: a method's change on them is what any removal of that size costs.
//!
//! Every retrained model follows the benchmark's recipe (from its pretrained weights when it
//! fine-tunes) with seed s without the removed images, by default as the full-data run of seed
//! s replayed with them masked out of its batches ([`Retraining::Matched`], a departure from the
//! reference code's fresh run, which `--retraining independent` keeps: see
//! [`super::retraining`] for why); the "before" images of seed s come from the full-data model
//! of that seed (the benchmark's own for its seed, whose samples are the queries). Changes are measured per sample: 1 − SSIM (torchmetrics' settings of
//! MUCS, [`super::image_metrics::ssim`]), pixel MSE, the cosine distance of the bundled
//! classifier's hidden features (the stand-in for MUCS's CLIP and DINO distances, whose weights
//! cannot be downloaded here) and whether the classifier's class changed; the last two only for
//! images the classifier reads. Per method: the mean change, the ratio of its mean change to
//! random's (MUCS averages sim / median(sim_random) of similarities; for distances retrace takes
//! the ratio of means, which MUCS's clamped form degenerates on), and MUCS's AUC, the chance that
//! the method's removal changes a sample more than random removal does. Intervals are bootstrap
//! 95% over targets, each target's seeds kept together. The targets' loss increase (what
//! `remove-topk` measures) comes free.
//!
//! Work lives in a directory of its own, one file per model, so a killed run resumes and several
//! processes (`--shard i/N`) share it; the last to finish writes the report.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::benchmark::base64_bytes;
use super::build::{LdsBuild, Shard, measure_losses, read_json, sample_queries, write_json};
use super::built::BuiltBenchmark;
use super::error::EvalError;
use super::image_metrics::{cosine_distance, mse, ssim};
use super::lds::{Interval, bootstrap_statistic};
use super::retraining::{Retraining, retrain_without};
use super::rows::{EvalRow, RowMethod, file_safe};
use crate::data::pixels::bytes_to_unit;
use crate::diffusion::noise::{permutation, stream};
use crate::diffusion::{Condition, Network};
use crate::jobs::JobContext;
use crate::stats::top_k;

/// What to retrain and regenerate.
#[derive(Clone, Debug)]
pub struct RegenerationPlan {
    /// Training images removed per target (the union over targets is removed).
    pub k: usize,
    /// The generated queries attributed (indices into the ground truth's queries).
    pub targets: Vec<usize>,
    /// Generated queries regenerated but never attributed.
    pub controls: Vec<usize>,
    /// Training seeds.
    pub seeds: Vec<u64>,
    /// The methods whose top-k are removed (a `random` row removes k random images per target).
    pub rows: Vec<EvalRow>,
    /// The share of the models this process trains.
    pub shard: Shard,
    /// How the retrained models draw their randomness.
    pub retraining: Retraining,
}

/// A C×H×W byte image, stored as base64.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredImage(#[serde(with = "base64_bytes")] pub Vec<u8>);

/// What one model generated: the result file of a reference or a retrained model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Regenerated {
    /// The method whose top-k were removed ([`EvalRow::label`]); `reference` for the full-data model.
    pub method: String,
    /// The training seed.
    pub seed: u64,
    /// The queries generated, targets then controls.
    pub queries: Vec<usize>,
    /// The removed training images (dataset indices, ascending).
    pub removed: Vec<usize>,
    /// The images generated for `queries`.
    pub images: Vec<StoredImage>,
    /// The targets' losses under the benchmark's draws.
    pub losses: Vec<f64>,
    /// How the model was retrained (files without it were retrained independently).
    #[serde(default = "Retraining::recorded_before_choice")]
    pub retraining: Retraining,
}

impl Regenerated {
    /// Whether this result was made after removing exactly `removed` with `retraining` and
    /// generating `queries` of `pixels` bytes each (the first `targets` measured): a file made
    /// with other settings, or damaged, is not one to read, and its model is made again.
    fn answers(
        &self,
        removed: &[usize],
        retraining: Retraining,
        queries: &[usize],
        targets: usize,
        pixels: usize,
    ) -> bool {
        self.removed == removed
            && (removed.is_empty() || self.retraining == retraining)
            && self.queries == queries
            && self.images.len() == queries.len()
            && self.images.iter().all(|i| i.0.len() == pixels)
            && self.losses.len() == targets
            && self.losses.iter().all(|l| l.is_finite() && *l > 0.0)
    }
}

/// The method name a reference model's file holds.
const REFERENCE: &str = "reference";

/// The change measures, in the report's order.
pub const CHANGE_METRICS: [&str; 4] = [
    "1 − SSIM",
    "pixel MSE",
    "classifier-feature distance",
    "classifier's class changed",
];

/// One change measure of one method on one group of samples.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeSummary {
    /// The mean change over samples and seeds.
    pub change: Interval,
    /// The mean change ÷ the random row's mean change on the same samples (absent for the
    /// random row itself and without one).
    pub ratio_to_random: Option<Interval>,
    /// P(the method's removal changes a sample more than random removal), ties counted half
    /// (MUCS's AUC; 0.5 is chance).
    pub auc: Option<Interval>,
}

/// One method's row of the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegenerationRow {
    /// The method.
    pub method: String,
    /// The number of removed training images, mean over seeds.
    pub removed: f64,
    /// Per change measure ([`RegenerationReport::metrics`]), on the targets.
    pub targets: Vec<ChangeSummary>,
    /// The same on the controls.
    pub controls: Vec<ChangeSummary>,
    /// The targets' loss increase after retraining, relative to their loss before.
    pub loss_increase: Interval,
}

/// One target before and after every method's removal: what the Evaluation tab shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegenerationExample {
    /// The query.
    pub query: usize,
    /// What it is.
    pub description: String,
    /// C×H×W of the images.
    pub shape: [usize; 3],
    /// Generated by the full-data model.
    pub before: StoredImage,
    /// Generated again after each row's removal (row label, image), first seed.
    pub after: Vec<(String, StoredImage)>,
}

/// The report `retrace eval regenerate` prints and writes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegenerationReport {
    /// Images removed per target.
    pub k: usize,
    /// The targets.
    pub targets: Vec<usize>,
    /// The controls.
    pub controls: Vec<usize>,
    /// Seeds.
    pub seeds: Vec<u64>,
    /// How the models were retrained.
    #[serde(default = "Retraining::recorded_before_choice")]
    pub retraining: Retraining,
    /// The change measures reported (names from [`CHANGE_METRICS`]).
    pub metrics: Vec<String>,
    /// Per measure, the mean change between two different samples, of one class where two
    /// targets share one (the before images, first seed): the scale of "another image"; empty
    /// with a single target.
    pub different_sample: Vec<f64>,
    /// One row per method.
    pub rows: Vec<RegenerationRow>,
    /// The first target before and after.
    pub example: RegenerationExample,
}

impl RegenerationReport {
    /// Checks what a reader indexes (the viewer shows the example's images and every row's
    /// figure per measure): a report from a file that fails is refused with the reason.
    pub fn check(&self) -> Result<(), EvalError> {
        let bad = |what: String| Err(EvalError::Invalid(format!("the regeneration section: {what}")));
        let [c, h, w] = self.example.shape;
        let pixels = c.checked_mul(h).and_then(|v| v.checked_mul(w));
        if !(c == 1 || c == 3) || h == 0 || w == 0 || h > 4096 || w > 4096 {
            return bad(format!("an example image of shape {:?}", self.example.shape));
        }
        let images = std::iter::once(&self.example.before).chain(self.example.after.iter().map(|(_, i)| i));
        if images.into_iter().any(|i| Some(i.0.len()) != pixels) {
            return bad(format!("an example image is not {c}×{h}×{w} bytes"));
        }
        if self.metrics.is_empty() || self.metrics.len() > CHANGE_METRICS.len() {
            return bad(format!("{} measures", self.metrics.len()));
        }
        for row in &self.rows {
            if row.targets.len() != self.metrics.len() || row.controls.len() != self.metrics.len() {
                return bad(format!("row {} has no figure for every measure", row.method));
            }
        }
        Ok(())
    }
}

/// How a run of [`regenerate`] ended.
#[derive(Clone, Debug, PartialEq)]
pub enum RegenerationOutcome {
    /// This shard's models are done; `waiting` models of other shards are not yet.
    ShardDone {
        /// Models still missing.
        waiting: usize,
    },
    /// Every model is done.
    Report(Box<RegenerationReport>),
}

/// One model of the plan.
#[derive(Clone, Copy)]
enum Unit {
    /// The full-data model of seed number `seed`.
    Reference { seed: usize },
    /// The model without row `row`'s union of top-k, with seed number `seed`.
    Removal { row: usize, seed: usize },
}

impl RegenerationPlan {
    /// Every model, in the order shards are dealt: references first, then the random row's
    /// (every method is read against them, so a partial run can already compare), then the
    /// other rows in the plan's order.
    fn units(&self) -> Vec<Unit> {
        let references = (0..self.seeds.len()).map(|seed| Unit::Reference { seed });
        let random = |row: &usize| matches!(self.rows[*row].method, RowMethod::Random);
        let rows = (0..self.rows.len())
            .filter(random)
            .chain((0..self.rows.len()).filter(|r| !random(r)));
        let removals = rows.flat_map(|row| (0..self.seeds.len()).map(move |seed| Unit::Removal { row, seed }));
        references.chain(removals).collect()
    }

    /// Targets then controls: the samples every model generates.
    fn generated(&self) -> Vec<usize> {
        self.targets.iter().chain(&self.controls).copied().collect()
    }

    fn check(&self, bench: &BuiltBenchmark) -> Result<(), EvalError> {
        let n = bench.data.len();
        if self.k == 0 || self.k >= n {
            return Err(EvalError::Invalid(format!("k must lie in 1..{n}")));
        }
        if self.targets.is_empty() || self.seeds.is_empty() || self.rows.is_empty() {
            return Err(EvalError::Invalid(
                "regeneration needs a target, a seed and a method".into(),
            ));
        }
        for &q in &self.generated() {
            match bench.truth.queries.get(q) {
                Some(query) if query.kind == super::QueryKind::Generated => {}
                _ => {
                    return Err(EvalError::Invalid(format!(
                        "query {q} is not a generated query of the benchmark"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Runs (or resumes) this shard of the plan in the work directory `dir` and, once every model
/// of every shard is done, assembles the report. Methods are scored through
/// [`BuiltBenchmark::scores`]: with its score cache set (as the CLI sets it) every row is
/// scored once in all, else once per shard and run.
pub fn regenerate(
    bench: &BuiltBenchmark,
    plan: &RegenerationPlan,
    dir: &Path,
    device: &burn::tensor::Device,
    job: &JobContext,
) -> Result<RegenerationOutcome, EvalError> {
    plan.check(bench)?;
    let spec = &bench.truth.spec;
    let builder = LdsBuild {
        dir: dir.to_owned(),
        device,
        job,
        keep_models: false,
    };
    let generated = plan.generated();
    let units = plan.units();
    // What a unit removes, and whether its result file holds a result made after removing
    // exactly that and generating these samples (one made with other settings is stale).
    let removal = |unit: Unit| -> Result<(String, u64, Vec<usize>), EvalError> {
        Ok(match unit {
            Unit::Reference { seed } => (REFERENCE.to_owned(), plan.seeds[seed], Vec::new()),
            Unit::Removal { row, seed } => {
                let seed = plan.seeds[seed];
                let removed = removed_union(bench, plan, &plan.rows[row], seed, device, job)?;
                (plan.rows[row].label(), seed, removed)
            }
        })
    };
    let pixels = bench.model.info.image_shape().iter().product();
    let done = |label: &str, seed: u64, removed: &[usize]| -> Result<bool, EvalError> {
        Ok(read_json::<Regenerated>(&result_path(dir, label, seed))?
            .is_some_and(|d| d.answers(removed, plan.retraining, &generated, plan.targets.len(), pixels)))
    };
    let mut waiting_on: Vec<Unit> = Vec::new();
    for (position, &unit) in units.iter().enumerate() {
        job.report("regenerate", position as u64, units.len() as u64, "");
        // Another shard's unit is looked at once this shard is done: by then its owner has
        // scored the row into the score cache, which is read, not scored twice at once.
        if !plan.shard.owns(position) {
            waiting_on.push(unit);
            continue;
        }
        let (label, seed, removed) = removal(unit)?;
        if done(&label, seed, &removed)? {
            continue;
        }
        let path = result_path(dir, &label, seed);
        let stem = file_safe(&format!("{label}-s{seed}"));
        let root = dir.join("models").join(&stem);
        let net = if removed.is_empty() && seed == spec.training.full_seed {
            // The benchmark's full-data model of this seed generated the queries.
            bench.model.load_latest(device)?.0
        } else {
            let what = format!("without {label}'s top {} of {} samples", plan.k, plan.targets.len());
            retrain_without(&builder, bench, &root, &removed, seed, plan.retraining, &what)?
        };
        let images = generate(bench, &net, &generated, device, job)?;
        let (losses, _) = measure_losses(spec, &net, &bench.truth.queries, &plan.targets, device, job)?;
        let result = Regenerated {
            method: label,
            seed,
            queries: generated.clone(),
            removed,
            images,
            losses,
            retraining: plan.retraining,
        };
        write_json(&path, &result)?;
        let _ = std::fs::remove_dir_all(&root);
    }
    // The other shards' units, now that this shard is done: the last shard to finish finds
    // them all.
    let mut waiting = 0;
    for &unit in &waiting_on {
        let (label, seed, removed) = removal(unit)?;
        waiting += usize::from(!done(&label, seed, &removed)?);
    }
    if waiting > 0 {
        return Ok(RegenerationOutcome::ShardDone { waiting });
    }
    assemble(bench, plan, dir, device).map(|r| RegenerationOutcome::Report(Box::new(r)))
}

/// The samples `queries` generated again by `net` with each query's sampler seed and class
/// under the benchmark's sampler (guidance included).
fn generate(
    bench: &BuiltBenchmark,
    net: &Network,
    queries: &[usize],
    device: &burn::tensor::Device,
    job: &JobContext,
) -> Result<Vec<StoredImage>, EvalError> {
    let stored = |q: usize| &bench.truth.queries[q];
    let seeds: Vec<u64> = queries.iter().map(|&q| stored(q).source).collect();
    let conditions: Vec<Condition> = queries.iter().map(|&q| stored(q).condition()).collect();
    let images = sample_queries(
        &bench.truth.spec,
        net,
        &seeds,
        &conditions,
        "generating again",
        device,
        job,
    )?;
    Ok(images.into_iter().map(StoredImage).collect())
}

/// The training images `row` removes with training seed `seed`: the union of its top k over
/// the targets, or of k random images per target.
fn removed_union(
    bench: &BuiltBenchmark,
    plan: &RegenerationPlan,
    row: &EvalRow,
    seed: u64,
    device: &burn::tensor::Device,
    job: &JobContext,
) -> Result<Vec<usize>, EvalError> {
    let lists: Vec<Vec<usize>> = if matches!(row.method, RowMethod::Random) {
        plan.targets
            .iter()
            .map(|&q| {
                let mut r = permutation(&mut stream("regenerate-random", &[q as u64, seed]), bench.data.len());
                r.truncate(plan.k);
                r
            })
            .collect()
    } else {
        // Scored once per query: the benchmark's score cache keeps them for the other shards
        // and later runs.
        plan.targets
            .iter()
            .map(|&q| Ok(top_k(&bench.scores(row, q, device, job)?, plan.k)))
            .collect::<Result<_, EvalError>>()?
    };
    let mut union: Vec<usize> = lists.into_iter().flatten().collect();
    union.sort_unstable();
    union.dedup();
    Ok(union)
}

fn result_path(dir: &Path, label: &str, seed: u64) -> PathBuf {
    dir.join("results")
        .join(format!("{}.json", file_safe(&format!("{label}-s{seed}"))))
}

/// Every sample's change under every measure: `[metric][sample][seed]`.
type Changes = Vec<Vec<Vec<f64>>>;

/// Measures images against their "before" images of the same seed.
struct ChangeMeter {
    shape: [usize; 3],
    /// The bundled classifier, when it reads these images.
    classifier: Option<crate::classifier::Classifier>,
    device: burn::tensor::Device,
}

impl ChangeMeter {
    fn new(shape: [usize; 3], device: &burn::tensor::Device) -> Result<Self, EvalError> {
        let (classifier, about) = crate::classifier::load_classifier(&crate::data::bundled_classifier_dir(), device)?;
        let reads = [about.config.channels, about.config.size, about.config.size];
        Ok(Self {
            shape,
            classifier: (reads == shape).then_some(classifier),
            device: device.clone(),
        })
    }

    /// The measures this meter reports.
    fn metrics(&self) -> usize {
        if self.classifier.is_some() { 4 } else { 2 }
    }

    /// `[metric][i]`: how much `after[i]` differs from `before[i]`.
    fn changes(&self, before: &[StoredImage], after: &[StoredImage]) -> Result<Vec<Vec<f64>>, EvalError> {
        let unit = |images: &[StoredImage]| -> Vec<Vec<f32>> {
            images
                .iter()
                .map(|i| i.0.iter().map(|&b| f32::from(b) / 255.0).collect())
                .collect()
        };
        let (b, a) = (unit(before), unit(after));
        let mut out = vec![
            b.iter().zip(&a).map(|(x, y)| 1.0 - ssim(x, y, self.shape)).collect(),
            b.iter().zip(&a).map(|(x, y)| mse(x, y)).collect(),
        ];
        if let Some(classifier) = &self.classifier {
            let signed =
                |images: &[StoredImage]| -> Vec<f32> { images.iter().flat_map(|i| bytes_to_unit(&i.0)).collect() };
            let (sb, sa) = (signed(before), signed(after));
            let (fb, fa) = (
                classifier.embed(&sb, self.shape, &self.device)?,
                classifier.embed(&sa, self.shape, &self.device)?,
            );
            let (cb, ca) = (
                classifier.predict(&sb, self.shape, &self.device)?,
                classifier.predict(&sa, self.shape, &self.device)?,
            );
            out.push(fb.iter().zip(&fa).map(|(x, y)| cosine_distance(x, y)).collect());
            out.push(cb.iter().zip(&ca).map(|(x, y)| f64::from(u8::from(x != y))).collect());
        }
        Ok(out)
    }
}

/// The report from the finished models' files.
fn assemble(
    bench: &BuiltBenchmark,
    plan: &RegenerationPlan,
    dir: &Path,
    device: &burn::tensor::Device,
) -> Result<RegenerationReport, EvalError> {
    let shape = bench.model.info.image_shape();
    let generated = plan.generated();
    let load = |label: &str, seed: u64| -> Result<Regenerated, EvalError> {
        let path = result_path(dir, label, seed);
        let result = read_json::<Regenerated>(&path)?
            .ok_or_else(|| EvalError::Invalid(format!("{} is missing", path.display())))?;
        let pixels = shape.iter().product();
        if !result.answers(&result.removed, plan.retraining, &generated, plan.targets.len(), pixels) {
            return Err(EvalError::Invalid(format!(
                "{} does not hold this plan's samples ({} images of {shape:?} and the targets' losses): run again to remake it",
                path.display(),
                generated.len()
            )));
        }
        Ok(result)
    };
    let references: Vec<Regenerated> = plan
        .seeds
        .iter()
        .map(|&s| load(REFERENCE, s))
        .collect::<Result<_, _>>()?;
    let meter = ChangeMeter::new(shape, device)?;
    let n_targets = plan.targets.len();
    // Per row: its models, its changes `[metric][sample][seed]` and its relative loss increases.
    let mut measured: Vec<(Vec<Regenerated>, Changes, Vec<Vec<f64>>)> = Vec::new();
    for row in &plan.rows {
        let models: Vec<Regenerated> = plan
            .seeds
            .iter()
            .map(|&s| load(&row.label(), s))
            .collect::<Result<_, _>>()?;
        let mut changes: Changes = vec![vec![Vec::new(); models[0].images.len()]; meter.metrics()];
        let mut increases = vec![Vec::new(); n_targets];
        for (model, reference) in models.iter().zip(&references) {
            for (m, per_sample) in meter.changes(&reference.images, &model.images)?.into_iter().enumerate() {
                for (i, c) in per_sample.into_iter().enumerate() {
                    changes[m][i].push(c);
                }
            }
            for (t, (after, before)) in model.losses.iter().zip(&reference.losses).enumerate() {
                increases[t].push((after - before) / before);
            }
        }
        measured.push((models, changes, increases));
    }
    let random = plan.rows.iter().position(|r| matches!(r.method, RowMethod::Random));
    let groups = [0..n_targets, n_targets..n_targets + plan.controls.len()];
    let rows = plan
        .rows
        .iter()
        .zip(&measured)
        .enumerate()
        .map(|(r, (row, (models, changes, increases)))| {
            let summarise = |range: &std::ops::Range<usize>| -> Vec<ChangeSummary> {
                (0..meter.metrics())
                    .map(|m| {
                        let own = &changes[m][range.clone()];
                        let against = random.filter(|&x| x != r).map(|x| &measured[x].1[m][range.clone()]);
                        summarise_change(own, against, (r * 8 + m) as u64)
                    })
                    .collect()
            };
            RegenerationRow {
                method: row.label(),
                removed: models.iter().map(|m| m.removed.len() as f64).sum::<f64>() / models.len() as f64,
                targets: summarise(&groups[0]),
                controls: summarise(&groups[1]),
                loss_increase: bootstrap_statistic(increases.len(), 1000 + r as u64, |sample| {
                    let values: Vec<f64> = sample.iter().flat_map(|&t| increases[t].iter().copied()).collect();
                    values.iter().sum::<f64>() / values.len().max(1) as f64
                }),
            }
        })
        .collect();
    Ok(RegenerationReport {
        k: plan.k,
        targets: plan.targets.clone(),
        controls: plan.controls.clone(),
        seeds: plan.seeds.clone(),
        retraining: plan.retraining,
        metrics: CHANGE_METRICS[..meter.metrics()]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        different_sample: different_sample(bench, plan, &references[0], &meter)?,
        rows,
        example: RegenerationExample {
            query: plan.targets[0],
            description: bench.describe(plan.targets[0]),
            shape,
            before: references[0].images[0].clone(),
            after: plan
                .rows
                .iter()
                .zip(&measured)
                .map(|(row, (models, _, _))| (row.label(), models[0].images[0].clone()))
                .collect(),
        },
    })
}

/// The mean change, its ratio to the random row's and the AUC against it, for `own` changes
/// (`[sample][seed]`) against `random`'s on the same samples.
fn summarise_change(own: &[Vec<f64>], random: Option<&[Vec<f64>]>, seed: u64) -> ChangeSummary {
    let pooled = |values: &[Vec<f64>], sample: &[usize]| -> Vec<f64> {
        sample.iter().flat_map(|&i| values[i].iter().copied()).collect()
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    ChangeSummary {
        change: bootstrap_statistic(own.len(), seed, |s| mean(&pooled(own, s))),
        ratio_to_random: random.map(|random| {
            bootstrap_statistic(own.len(), seed + 1, |s| {
                mean(&pooled(own, s)) / mean(&pooled(random, s)).max(f64::MIN_POSITIVE)
            })
        }),
        auc: random
            .map(|random| bootstrap_statistic(own.len(), seed + 2, |s| auc(&pooled(own, s), &pooled(random, s)))),
    }
}

/// P(a > b) + P(a = b)/2 over all pairs of `a` and `b` (the Mann–Whitney form of ROC AUC with
/// `a` scored against `b`).
pub fn auc(a: &[f64], b: &[f64]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.5;
    }
    let wins: f64 = a
        .iter()
        .flat_map(|x| {
            b.iter().map(move |y| {
                if x > y {
                    1.0
                } else if x == y {
                    0.5
                } else {
                    0.0
                }
            })
        })
        .sum();
    wins / (a.len() * b.len()) as f64
}

/// Per measure, the mean change between the before images of two targets of one class (each
/// target paired with the next of its class), or of consecutive targets when no two share a
/// class; empty with a single target.
fn different_sample(
    bench: &BuiltBenchmark,
    plan: &RegenerationPlan,
    reference: &Regenerated,
    meter: &ChangeMeter,
) -> Result<Vec<f64>, EvalError> {
    let class = |slot: usize| bench.truth.queries[plan.targets[slot]].class;
    let n = plan.targets.len();
    let mut pairs: Vec<(usize, usize)> = (0..n)
        .filter_map(|a| (a + 1..n).find(|&b| class(b) == class(a)).map(|b| (a, b)))
        .collect();
    if pairs.is_empty() {
        pairs = (1..n).map(|b| (b - 1, b)).collect();
    }
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let images = |pick: fn(&(usize, usize)) -> usize| -> Vec<StoredImage> {
        pairs.iter().map(|p| reference.images[pick(p)].clone()).collect()
    };
    Ok(meter
        .changes(&images(|p| p.0), &images(|p| p.1))?
        .iter()
        .map(|v| v.iter().sum::<f64>() / v.len() as f64)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_wins_and_half_ties() {
        assert_eq!(auc(&[2.0, 3.0], &[1.0, 1.0]), 1.0);
        assert_eq!(auc(&[1.0], &[2.0]), 0.0);
        assert_eq!(auc(&[1.0, 2.0], &[1.0, 2.0]), 0.5);
        assert!((auc(&[1.0, 3.0], &[2.0]) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn a_row_equal_to_random_has_ratio_one_and_auc_one_half() {
        let own = vec![vec![0.1, 0.2], vec![0.3, 0.4], vec![0.5, 0.6]];
        let s = summarise_change(&own, Some(&own), 0);
        assert!((s.ratio_to_random.unwrap().lds - 1.0).abs() < 1e-12);
        assert!((s.auc.unwrap().lds - 0.5).abs() < 1e-12);
        assert!((s.change.lds - 0.35).abs() < 1e-12);
        let doubled: Vec<Vec<f64>> = own.iter().map(|v| v.iter().map(|x| 2.0 * x).collect()).collect();
        let s = summarise_change(&doubled, Some(&own), 0);
        assert!((s.ratio_to_random.unwrap().lds - 2.0).abs() < 1e-12);
    }
}
