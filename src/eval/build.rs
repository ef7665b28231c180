//! Building an LDS ground truth: train the full-data model, draw the queries (held-out images
//! and samples of the full-data model), then retrain on every (subset, seed) and measure every
//! query's loss under the benchmark's fixed (t, ε) draws.
//!
//! A build directory holds:
//! ```text
//! benchmark.json        the specification (every other file follows from it)
//! commands/             the command lines that worked on this directory, one file each
//! full/                 the full-data model (a model directory)
//! queries.json          the queries, as image bytes
//! results/full.json     the full-data model's measurement
//! results/m007-s1.json  one file per (subset, seed) model, written atomically once measured
//! models/m007-s1/       a model in training (its checkpoints are the unit of resumption)
//! ground-truth.json     every result together, once all are in
//! ```
//! A build killed at any point resumes where it stopped: finished models are skipped, a model in
//! training continues from its newest checkpoint (training is deterministic across resumption),
//! and no file is ever half-written. Shards (`index`/`count`) take every count-th model, so N
//! machines sharing the directory (or merging theirs afterwards) split the work.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};

use super::benchmark::{BenchmarkQuery, BenchmarkSpec, ModelKey, QueryKind, half_of};
use super::error::EvalError;
use super::ground_truth::{GroundTruth, ModelResult};
use crate::data::pixels::bytes_to_unit;
use crate::data::{DataSpec, Dataset};
use crate::diffusion::checkpoint::FORMAT_VERSION;
use crate::diffusion::images::tensor_to_images;
use crate::diffusion::train::{TrainLength, noise_images, train};
use crate::diffusion::{Condition, Measurement, ModelDir, ModelInfo, Network, Schedule, sample};
use crate::files::write_atomic;
use crate::jobs::{JobContext, Progress, ProgressSink};

/// The file names of a build directory.
pub const BENCHMARK_FILE: &str = "benchmark.json";
/// The merged ground truth.
pub const GROUND_TRUTH_FILE: &str = "ground-truth.json";
const COMMANDS_DIR: &str = "commands";
const QUERIES_FILE: &str = "queries.json";

pub use crate::shard::Shard;

/// What a build step returns ([`EvalError::Cancelled`] when cancelled).
pub type BuildResult<T> = Result<T, EvalError>;

/// A build directory and what works on it.
pub struct LdsBuild<'a> {
    /// The directory.
    pub dir: PathBuf,
    /// Where models train and are measured.
    pub device: &'a Device,
    /// Progress and cancellation.
    pub job: &'a JobContext,
    /// Keep every subset model's final weights under `models/` (off: they are deleted once
    /// measured, which is all the ground truth needs).
    pub keep_models: bool,
}

impl<'a> LdsBuild<'a> {
    /// Opens (or starts) a build in `dir` for `spec`: writes `benchmark.json`, or checks that
    /// the one there is the same benchmark (or the same with more subsets, which it grows
    /// into). `spec = None` opens an existing build.
    pub fn open(
        dir: &Path,
        spec: Option<&BenchmarkSpec>,
        device: &'a Device,
        job: &'a JobContext,
    ) -> BuildResult<(Self, BenchmarkSpec)> {
        let path = dir.join(BENCHMARK_FILE);
        let existing = read_json::<BenchmarkSpec>(&path)?;
        let spec = match (existing, spec) {
            // More subsets of the same benchmark: subset m depends only on the mask seed and m,
            // so every model measured so far belongs to the larger benchmark as it is.
            (Some(old), Some(new))
                if new.subsets > old.subsets
                    && &BenchmarkSpec {
                        subsets: new.subsets,
                        ..old.clone()
                    } == new =>
            {
                new.validate()?;
                write_json(&path, new)?;
                new.clone()
            }
            (Some(old), Some(new)) if &old != new => {
                return Err(EvalError::Invalid(format!(
                    "{} holds another benchmark ({}); choose another --out or repeat its settings",
                    dir.display(),
                    differences(&old, new)
                )));
            }
            (Some(old), _) => old,
            (None, Some(new)) => {
                new.validate()?;
                crate::files::create_dir_all(&dir.join("results"))?;
                write_json(&path, new)?;
                new.clone()
            }
            (None, None) => {
                return Err(EvalError::Invalid(format!(
                    "{} holds no {BENCHMARK_FILE}",
                    dir.display()
                )));
            }
        };
        spec.validate()
            .map_err(|e| EvalError::Invalid(format!("{}: {e}", path.display())))?;
        let build = Self {
            dir: dir.to_owned(),
            device,
            job,
            keep_models: false,
        };
        Ok((build, spec))
    }

    /// Records a command line that worked on this build: one file per distinct command under
    /// `commands/`, so shards running at once never overwrite each other's.
    pub fn record_command(&self, command: &str) -> BuildResult<()> {
        let digest = crate::files::sha256(command.as_bytes());
        let dir = self.dir.join(COMMANDS_DIR);
        let path = dir.join(format!("{}.txt", &digest[..16]));
        if !path.is_file() {
            crate::files::create_dir_all(&dir)?;
            write_atomic(&path, command.as_bytes())?;
        }
        Ok(())
    }

    fn result_path(&self, key: Option<ModelKey>) -> PathBuf {
        result_path(&self.dir, key)
    }

    /// Loads the training data and the held-out images and checks the data is the benchmark's.
    pub fn load_data(spec: &BenchmarkSpec) -> BuildResult<(Dataset, Dataset)> {
        let data = load_spec(&spec.data)?;
        spec.check_data(&data)?;
        let held_out = Self::load_held_out(spec, &data)?;
        Ok((data, held_out))
    }

    /// Loads the held-out query images and checks they suit the training images `data`.
    pub fn load_held_out(spec: &BenchmarkSpec, data: &Dataset) -> BuildResult<Dataset> {
        let held_out = load_spec(&spec.held_out)?;
        if held_out.len() < spec.queries_per_kind {
            return Err(EvalError::Invalid(format!(
                "{} holds {} images but the benchmark asks for {} held-out queries",
                spec.held_out,
                held_out.len(),
                spec.queries_per_kind
            )));
        }
        if held_out.image_len() != data.image_len() {
            return Err(EvalError::Invalid(format!(
                "the held-out images of {} are not the size of the training images",
                spec.held_out
            )));
        }
        Ok(held_out)
    }

    /// Trains the full-data model, draws the queries and measures the full-data model on them.
    /// Idempotent: what exists is reused.
    pub fn prepare(
        &self,
        spec: &BenchmarkSpec,
        data: &Dataset,
        held_out: &Dataset,
    ) -> BuildResult<Vec<BenchmarkQuery>> {
        let full_dir = self.dir.join("full");
        let info = model_info(spec, data, spec.training.full_seed, FULL_DATA_MODEL);
        let (net, train_seconds, final_loss) =
            self.train_model(&full_dir, info, data, spec.training.full_epochs, "full-data model")?;
        let queries_path = self.dir.join(QUERIES_FILE);
        let queries = match read_json::<Vec<BenchmarkQuery>>(&queries_path)? {
            Some(q) => q,
            None => {
                let q = self.draw_queries(spec, &net, data, held_out)?;
                write_json(&queries_path, &q)?;
                q
            }
        };
        if read_json::<ModelResult>(&self.result_path(None))?.is_none() {
            let result = self.measure(spec, &net, &queries, None, train_seconds, final_loss)?;
            write_json(&self.result_path(None), &result)?;
        }
        Ok(queries)
    }

    fn draw_queries(
        &self,
        spec: &BenchmarkSpec,
        full: &Network,
        data: &Dataset,
        held_out: &Dataset,
    ) -> BuildResult<Vec<BenchmarkQuery>> {
        let n = spec.queries_per_kind;
        let classes = data_classes(data);
        let mut queries = Vec::with_capacity(2 * n);
        for i in 0..n {
            let class = spec.query_class(i, &classes);
            let image = held_out_image(held_out, class, i / classes.len().max(1), i)?;
            queries.push(BenchmarkQuery {
                kind: QueryKind::HeldOut,
                half: half_of(i, n),
                source: held_out.ids[image],
                class,
                pixels: held_out.image(image).to_vec(),
            });
        }
        let seeds: Vec<u64> = (0..n as u64).collect();
        let conditions: Vec<Condition> = (0..n)
            .map(|i| {
                spec.query_class(i, &classes)
                    .map_or(Condition::Unconditional, Condition::Class)
            })
            .collect();
        let images = sample_queries(
            spec,
            full,
            &seeds,
            &conditions,
            "sampling queries",
            self.device,
            self.job,
        )?;
        for (i, pixels) in images.into_iter().enumerate() {
            queries.push(BenchmarkQuery {
                kind: QueryKind::Generated,
                half: half_of(i, n),
                source: seeds[i],
                class: spec.query_class(i, &classes),
                pixels,
            });
        }
        Ok(queries)
    }

    /// Trains (or finishes training) the model in `root`. Returns the model, this invocation's
    /// training seconds and the final training loss.
    pub(crate) fn train_model(
        &self,
        root: &Path,
        info: ModelInfo,
        data: &Dataset,
        epochs: usize,
        label: &str,
    ) -> BuildResult<(Network, f64, f64)> {
        let dir = if root.join("model.json").is_file() {
            let dir = ModelDir::open(root)?;
            if dir.info.architecture != info.architecture
                || dir.info.data_hash != info.data_hash
                || dir.info.train.seed != info.train.seed
            {
                return Err(EvalError::Invalid(format!(
                    "{} holds another model than the benchmark's {label}",
                    root.display()
                )));
            }
            dir
        } else {
            ModelDir::create(root, info)?
        };
        let latest = dir.latest()?;
        let total_steps = data.len().div_ceil(dir.info.train.batch_size) * epochs;
        let mut seconds = 0.0;
        // A finished model is only loaded (a bundled one keeps no optimizer state to resume).
        if latest.as_ref().is_none_or(|l| l.state.step < total_steps) {
            let outcome = train(
                &dir,
                data,
                &TrainLength { epochs },
                latest.is_some(),
                self.device,
                self.job,
            )?;
            if outcome.cancelled {
                return Err(EvalError::Cancelled);
            }
            seconds = outcome.seconds;
        }
        let (net, entry) = dir.load_latest(self.device)?;
        Ok((net, seconds, entry.state.loss))
    }

    /// Measures `net` on every query: the mean loss over the benchmark's draws (and over the
    /// even-numbered draws).
    fn measure(
        &self,
        spec: &BenchmarkSpec,
        net: &Network,
        queries: &[BenchmarkQuery],
        key: Option<ModelKey>,
        train_seconds: f64,
        final_train_loss: f64,
    ) -> BuildResult<ModelResult> {
        let started = Instant::now();
        let all: Vec<usize> = (0..queries.len()).collect();
        let (losses, even_losses) = measure_losses(spec, net, queries, &all, self.device, self.job)?;
        Ok(ModelResult {
            key,
            losses,
            even_losses,
            final_train_loss,
            train_seconds,
            measure_seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Trains and measures this shard's (subset, seed) models that have no result yet.
    pub fn run_shard(
        &self,
        spec: &BenchmarkSpec,
        shard: Shard,
        data: &Dataset,
        queries: &[BenchmarkQuery],
    ) -> BuildResult<()> {
        let mine: Vec<ModelKey> = spec
            .models()
            .into_iter()
            .enumerate()
            .filter(|(i, _)| shard.owns(*i))
            .map(|(_, k)| k)
            .collect();
        let todo: Vec<ModelKey> = mine
            .iter()
            .copied()
            .filter(|k| !self.result_path(Some(*k)).is_file())
            .collect();
        let total = mine.len() as u64;
        let mut done = total - todo.len() as u64;
        // Progress is counted in thousandths of a model, so the bar (and its ETA) move while a
        // model trains.
        self.job.report("ground truth", done * 1000, total * 1000, "");
        for key in todo {
            self.job.stop_if_cancelled()?;
            let inner = JobContext {
                cancel: self.job.cancel.clone(),
                progress: Arc::new(ModelProgress {
                    outer: self.job.progress.clone(),
                    done,
                    total,
                    label: key.stem(),
                }),
            };
            let step = LdsBuild {
                dir: self.dir.clone(),
                device: self.device,
                job: &inner,
                keep_models: self.keep_models,
            };
            let subset = data.select(&spec.subset(key.subset));
            let root = self.dir.join("models").join(key.stem());
            let info = model_info(
                spec,
                &subset,
                key.seed,
                &format!("subset {} seed {}", key.subset, key.seed),
            );
            let (net, seconds, loss) =
                step.train_model(&root, info, &subset, spec.training.subset_epochs, &key.stem())?;
            let result = step.measure(spec, &net, queries, Some(key), seconds, loss)?;
            write_json(&self.result_path(Some(key)), &result)?;
            if !self.keep_models {
                let _ = std::fs::remove_dir_all(&root);
            }
            done += 1;
            self.job.report(
                "ground truth",
                done * 1000,
                total * 1000,
                format!("{} measured", key.stem()),
            );
        }
        Ok(())
    }

    /// Copies the results of another build directory of the same benchmark (a shard that ran
    /// elsewhere) into this one. Returns how many were new.
    pub fn merge_from(&self, spec: &BenchmarkSpec, other: &Path) -> BuildResult<usize> {
        let theirs: Option<BenchmarkSpec> = read_json(&other.join(BENCHMARK_FILE))?;
        match theirs {
            Some(s) if &s == spec => {}
            Some(s) => {
                return Err(EvalError::Invalid(format!(
                    "{} builds another benchmark ({})",
                    other.display(),
                    differences(spec, &s)
                )));
            }
            None => {
                return Err(EvalError::Invalid(format!(
                    "{} holds no {BENCHMARK_FILE}",
                    other.display()
                )));
            }
        }
        let mut copied = 0;
        for key in spec.models().into_iter().map(Some).chain([None]) {
            let stem = key.map_or_else(|| "full".to_owned(), |k| k.stem());
            let src = other.join("results").join(format!("{stem}.json"));
            let dst = self.result_path(key);
            if dst.is_file() || !src.is_file() {
                continue;
            }
            let result: ModelResult =
                read_json(&src)?.ok_or_else(|| EvalError::Invalid(format!("{} vanished", src.display())))?;
            if result.key != key {
                return Err(EvalError::Invalid(format!(
                    "{} holds the result of another model",
                    src.display()
                )));
            }
            write_json(&dst, &result)?;
            copied += 1;
        }
        let (src, dst) = (other.join(QUERIES_FILE), self.dir.join(QUERIES_FILE));
        if src.is_file() && !dst.is_file() {
            write_atomic(&dst, &crate::files::read(&src)?)?;
        }
        for command in recorded_commands(other)? {
            self.record_command(&command)?;
        }
        Ok(copied)
    }

    /// How many of the benchmark's models are measured.
    pub fn measured(&self, spec: &BenchmarkSpec) -> usize {
        spec.models()
            .into_iter()
            .filter(|k| self.result_path(Some(*k)).is_file())
            .count()
    }

    /// Writes `ground-truth.json` once every model is measured; `Ok(None)` while some are not.
    pub fn assemble(&self, spec: &BenchmarkSpec) -> BuildResult<Option<GroundTruth>> {
        let Some(truth) = collect(&self.dir, spec)? else {
            return Ok(None);
        };
        write_json(&self.dir.join(GROUND_TRUTH_FILE), &truth)?;
        Ok(Some(truth))
    }
}

/// The ground truth of the models measured so far in the build directory `dir`: the subsets
/// 0..M' whose every seed is measured (M' ≥ 2), as if the benchmark had M' subsets. A preview
/// while a build runs; its spec says how many subsets it holds.
pub fn partial_ground_truth(dir: &Path) -> BuildResult<GroundTruth> {
    measured_so_far(dir, 2)
}

/// [`partial_ground_truth`] with at least `min_subsets` complete subsets (0: a prepared build,
/// its full-data model and queries, for what needs no LDS).
pub(crate) fn measured_so_far(dir: &Path, min_subsets: usize) -> BuildResult<GroundTruth> {
    let spec: BenchmarkSpec = read_json(&dir.join(BENCHMARK_FILE))?
        .ok_or_else(|| EvalError::Invalid(format!("{} holds no {BENCHMARK_FILE}", dir.display())))?;
    let build = |subset| result_path(dir, Some(subset)).is_file();
    let complete = (0..spec.subsets)
        .take_while(|&m| spec.seeds.iter().all(|&seed| build(ModelKey { subset: m, seed })))
        .count();
    if complete < min_subsets {
        return Err(EvalError::Invalid(format!(
            "{} holds {complete} fully measured subset(s); LDS needs at least {min_subsets}",
            dir.display()
        )));
    }
    let prefix = BenchmarkSpec {
        subsets: complete,
        ..spec
    };
    collect(dir, &prefix)?
        .ok_or_else(|| EvalError::Invalid(format!("{}: the full-data model is not measured yet", dir.display())))
}

/// The result file of a model (`None`: the full-data model) in the build directory `dir`.
fn result_path(dir: &Path, key: Option<ModelKey>) -> PathBuf {
    let stem = key.map_or_else(|| "full".to_owned(), |k| k.stem());
    dir.join("results").join(format!("{stem}.json"))
}

/// Loads the dataset a spec string names.
pub(crate) fn load_spec(spec: &str) -> BuildResult<Dataset> {
    let parsed: DataSpec = spec.parse()?;
    Ok(Dataset::load(&parsed)?)
}

/// Every result of `spec`'s models in `dir` as a ground truth; `Ok(None)` while some are missing.
fn collect(dir: &Path, spec: &BenchmarkSpec) -> BuildResult<Option<GroundTruth>> {
    let mut models = Vec::new();
    for key in spec.models() {
        match read_json::<ModelResult>(&result_path(dir, Some(key)))? {
            Some(r) => models.push(r),
            None => return Ok(None),
        }
    }
    let Some(full) = read_json::<ModelResult>(&result_path(dir, None))? else {
        return Ok(None);
    };
    let queries: Vec<BenchmarkQuery> = read_json(&dir.join(QUERIES_FILE))?
        .ok_or_else(|| EvalError::Invalid("the queries were never drawn (run build-lds first)".into()))?;
    let commands = recorded_commands(dir)?;
    GroundTruth::assemble(spec.clone(), commands, queries, full, models).map(Some)
}

/// Every command line recorded in the build directory `dir`, sorted.
pub fn recorded_commands(dir: &Path) -> BuildResult<Vec<String>> {
    let dir = dir.join(COMMANDS_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(EvalError::Invalid(format!("cannot read {}: {e}", dir.display()))),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| EvalError::Invalid(format!("cannot read {}: {e}", dir.display())))?
            .path();
        if path.extension().is_some_and(|e| e == "txt") {
            out.push(
                std::fs::read_to_string(&path)
                    .map_err(|e| EvalError::Invalid(format!("cannot read {}: {e}", path.display())))?,
            );
        }
    }
    out.sort();
    Ok(out)
}

/// What the benchmark's model trained on all of its data is called in its records.
pub(crate) const FULL_DATA_MODEL: &str = "full-data model";

/// `model.json` of a benchmark model trained on `data` with `seed`. The full-data model
/// records the benchmark's data spec as it is, so every command runs on it without `--data`;
/// a model trained on a part of the data records the spec with a note of which part (no spec
/// names a benchmark's subset, so such a model needs `--data`).
pub(crate) fn model_info(spec: &BenchmarkSpec, data: &Dataset, seed: u64, what: &str) -> ModelInfo {
    let data_spec = if what == FULL_DATA_MODEL {
        spec.data.to_string()
    } else {
        format!("{} ({what} of the LDS benchmark)", spec.data)
    };
    ModelInfo {
        format_version: FORMAT_VERSION,
        architecture: spec.unet.clone().into(),
        schedule: spec.schedule.clone(),
        data_spec,
        data_hash: data.content_hash(),
        data_len: data.len(),
        class_names: data.class_names.clone(),
        train: spec.recipe(seed, format!("retrace eval build-lds ({what})")),
        vae: None,
    }
}

/// Byte images the benchmark's generated queries are made as: one per sampler seed under the
/// condition of the same position, with the benchmark's sampler (guidance included), reporting
/// progress as `stage`.
pub(crate) fn sample_queries(
    spec: &BenchmarkSpec,
    net: &Network,
    seeds: &[u64],
    conditions: &[Condition],
    stage: &str,
    device: &Device,
    job: &JobContext,
) -> BuildResult<Vec<Vec<u8>>> {
    let cfg = &spec.unet;
    let images = sample(
        net,
        &Schedule::new(&spec.schedule),
        &spec.query_sampler(),
        [cfg.image_channels, cfg.sample_size, cfg.sample_size],
        seeds,
        conditions,
        device,
        |step| {
            job.report(stage, step.done as u64, step.total as u64, "");
            !job.cancel.is_cancelled()
        },
    )?
    .ok_or(EvalError::Cancelled)?;
    Ok(tensor_to_images(images)?)
}

/// The mean loss of queries `which` (indices into `queries`, which key their draws) under the
/// benchmark's draws, and the mean over the even-numbered draws alone, in the order of `which`.
pub fn measure_losses(
    spec: &BenchmarkSpec,
    net: &Network,
    queries: &[BenchmarkQuery],
    which: &[usize],
    device: &Device,
    job: &JobContext,
) -> BuildResult<(Vec<f64>, Vec<f64>)> {
    const BATCH: usize = 64;
    let schedule = Schedule::new(&spec.schedule);
    let cfg = &spec.unet;
    let encoding = net.condition_encoding();
    let pixels = cfg.image_channels * cfg.sample_size * cfg.sample_size;
    let (mut sums, mut even_sums) = (vec![0.0f64; which.len()], vec![0.0f64; which.len()]);
    // (slot in `which`, draw) pairs.
    let pairs: Vec<(usize, usize)> = (0..which.len())
        .flat_map(|slot| (0..spec.draws).map(move |k| (slot, k)))
        .collect();
    let mut draws_of = (usize::MAX, Vec::new());
    for (b, chunk) in pairs.chunks(BATCH).enumerate() {
        job.stop_if_cancelled()?;
        let (mut x0, mut noise, mut ts) = (Vec::new(), Vec::new(), Vec::new());
        for &(slot, k) in chunk {
            let q = *which
                .get(slot)
                .filter(|&&q| q < queries.len())
                .ok_or_else(|| EvalError::Invalid("no such query".into()))?;
            if queries[q].pixels.len() != pixels {
                return Err(EvalError::Invalid(format!(
                    "query {q} has {} values, not {pixels}",
                    queries[q].pixels.len()
                )));
            }
            if draws_of.0 != q {
                draws_of = (q, spec.measurement_draws(q, pixels));
            }
            let (t, eps) = &draws_of.1[k];
            x0.extend(bytes_to_unit(&queries[q].pixels));
            noise.extend_from_slice(eps);
            ts.push(*t);
        }
        let shape = [chunk.len(), cfg.image_channels, cfg.sample_size, cfg.sample_size];
        let x0 = Tensor::<4>::from_data(TensorData::new(x0, shape), device);
        // Each query's loss under its own class (none in an unconditional benchmark, whose
        // model reads no condition rows).
        let conditions: Vec<Condition> = chunk
            .iter()
            .map(|&(slot, _)| queries[which[slot]].condition())
            .collect();
        let batch = noise_images(&schedule, x0, &ts, noise).conditioned(&encoding, &conditions)?;
        let prediction = batch.predict(net);
        let losses = crate::device::read_back(Measurement::Loss.evaluate(&schedule, prediction, batch.noise, &ts))?;
        for (&(slot, k), &l) in chunk.iter().zip(&losses) {
            sums[slot] += l as f64;
            if k % 2 == 0 {
                even_sums[slot] += l as f64;
            }
        }
        job.report(
            "measuring",
            ((b + 1) * BATCH).min(pairs.len()) as u64,
            pairs.len() as u64,
            "",
        );
    }
    let evens = spec.draws.div_ceil(2) as f64;
    Ok((
        sums.iter().map(|s| s / spec.draws as f64).collect(),
        even_sums.iter().map(|s| s / evens).collect(),
    ))
}

/// The distinct labels of `data`, ascending: the classes a class-conditional benchmark's
/// queries take in turn.
fn data_classes(data: &Dataset) -> Vec<u32> {
    let mut classes = data.labels.clone();
    classes.sort_unstable();
    classes.dedup();
    classes
}

/// The held-out image of query `i`: the `rank`-th image of `class` (class-conditional), or the
/// `i`-th image (unconditional).
fn held_out_image(held_out: &Dataset, class: Option<u32>, rank: usize, i: usize) -> BuildResult<usize> {
    match class {
        None => Ok(i),
        Some(c) => held_out
            .labels
            .iter()
            .enumerate()
            .filter(|&(_, &l)| l == c)
            .nth(rank)
            .map(|(j, _)| j)
            .ok_or_else(|| {
                EvalError::Invalid(format!(
                    "the held-out images hold fewer than {} of class {c}; use more held-out images or fewer queries",
                    rank + 1
                ))
            }),
    }
}

/// Forwards a model's training progress as "model i of n" progress of the build.
struct ModelProgress {
    outer: Arc<dyn ProgressSink>,
    done: u64,
    total: u64,
    label: String,
}

impl ProgressSink for ModelProgress {
    fn update(&self, p: &Progress) {
        let fraction = if p.total > 0 {
            p.done as f64 / p.total as f64
        } else {
            0.0
        };
        // Training takes the first 90% of a model's share of the bar, measuring the rest.
        let within = if p.stage == "measuring" {
            0.9 + 0.1 * fraction
        } else {
            0.9 * fraction
        };
        self.outer.update(&Progress {
            stage: "ground truth".into(),
            done: self.done * 1000 + (within * 1000.0) as u64,
            total: self.total * 1000,
            message: format!("{}: {} {}", self.label, p.stage, p.message),
        });
    }
}

/// Which top-level fields of two specs differ.
fn differences(a: &BenchmarkSpec, b: &BenchmarkSpec) -> String {
    let (a, b) = (
        serde_json::to_value(a).unwrap_or_default(),
        serde_json::to_value(b).unwrap_or_default(),
    );
    let fields: Vec<String> = a
        .as_object()
        .map(|m| {
            m.keys()
                .filter(|k| a.get(k.as_str()) != b.get(k.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    format!("differs in {}", fields.join(", "))
}

/// Reads a JSON file; `Ok(None)` when it does not exist.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> BuildResult<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            EvalError::Invalid(format!(
                "{} is damaged ({e}); delete it to redo that step",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EvalError::Invalid(format!("cannot read {}: {e}", path.display()))),
    }
}

/// Writes a JSON file atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> BuildResult<()> {
    if let Some(parent) = path.parent() {
        crate::files::create_dir_all(parent)?;
    }
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| EvalError::Invalid(format!("cannot serialise {}: {e}", path.display())))?;
    Ok(write_atomic(path, &bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_partition() {
        let s: Shard = "2/4".parse().unwrap();
        assert_eq!(s, Shard { index: 2, count: 4 });
        assert!(s.owns(6) && !s.owns(7));
        for bad in ["4/4", "1", "a/2", "0/0"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }
}
