//! `retrace eval …`: build an LDS ground truth (`build-lds`, sharded, resumable), merge shards
//! (`merge`), and score attribution methods against it (`lds`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use retrace::data::{DataSpec, Dataset};
use retrace::device::ComputeDevice;
use retrace::diffusion::{Architecture, InitFrom, ScheduleConfig};
use retrace::eval::BuiltBenchmark;
use retrace::eval::benchmark::BENCHMARK_FORMAT_VERSION;
use retrace::eval::build::BENCHMARK_FILE;
use retrace::eval::remove_topk::RemovalOutcome;
use retrace::eval::rows::EvalRow;
use retrace::eval::table::{EvalReport, evaluate_row};
use retrace::eval::{BenchmarkSpec, BenchmarkTraining, GroundTruth, LdsBuild, QueryHalf, Shard};
use retrace::jobs::JobContext;

/// The evaluation subcommands.
#[derive(Subcommand)]
pub enum EvalCommand {
    /// Build (or resume, or run one shard of) an LDS ground truth: retrain on random subsets
    /// with several seeds and measure every query's loss under fixed (t, ε) draws.
    BuildLds(BuildLdsArgs),
    /// Train the image classifier that judges samples (on a real training split, measured on
    /// its test split).
    TrainClassifier(super::classes::TrainClassifierArgs),
    /// Sample every class of a class-conditional model and report the share the classifier
    /// assigns to the class asked for, beside its accuracy on real test images.
    Classes(super::classes::ClassesArgs),
    /// Join the results of shards built in other directories into --out and assemble the
    /// ground truth once every model is measured (with no --from: say how far --out is, with
    /// the quality of the subsets measured so far).
    Merge {
        /// The build directory to complete.
        #[arg(long)]
        out: PathBuf,
        /// Build directories of shards of the same benchmark.
        #[arg(long = "from")]
        from: Vec<PathBuf>,
    },
    /// Copy a complete benchmark into a directory that ships with retrace (spec, ground truth,
    /// queries, results and the full-data model's newest checkpoint; no subset model).
    Bundle {
        /// The built benchmark.
        #[arg(long)]
        benchmark: PathBuf,
        /// Where the bundle goes (replaced once the new one is whole).
        #[arg(long)]
        out: PathBuf,
        /// Store the full-data model's weights as 16-bit floats (half the bytes).
        #[arg(long)]
        f16: bool,
    },
    /// Retrain without each query's top-k training images per method (and without k random
    /// ones) and report how much the query's loss rises.
    RemoveTopk(RemoveTopkArgs),
    /// Retrain without each method's top-k of the generated target samples (their union, as
    /// Serrà et al. do), generate them again with the same seeds and classes, and report how
    /// much they changed against removing random images.
    Regenerate(super::regenerate::RegenerateArgs),
    /// Xie et al.'s "generally influential" statistic: how many distinct training images fill
    /// the top-k of every generated query, and how concentrated they are.
    Overlap {
        /// Methods.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "tracin,retrac,retrac-bucket,kfac,ekfac,pixel,random"
        )]
        methods: Vec<String>,
        /// Length of every top list.
        #[arg(long, default_value_t = 10)]
        k: usize,
        #[command(flatten)]
        scoring: ScoringArgs,
    },
    /// Score attribution methods against a ground truth (default: the bundled benchmark) and
    /// print LDS on held-out and generated queries with bootstrap 95% intervals.
    Lds {
        /// Rows, comma-separated: a method (`retrace methods` lists them; an ensemble as
        /// ensemble:A+B) or random, kfac/ekfac with -elbo or -sqnorm for another measurement,
        /// other parameters as [key=value;…], +shared for a query that shares the training
        /// images' (t, ε) draws, and @generated or @held-out to score one kind of query only.
        #[arg(long, value_delimiter = ',', default_value = DEFAULT_ROWS)]
        methods: Vec<String>,
        /// Which half of the queries: report (the figures) or dev (to choose defaults).
        #[arg(long, value_enum, default_value = "report")]
        half: QueryHalf,
        #[command(flatten)]
        scoring: ScoringArgs,
        /// Write the table as JSON (the viewer's Evaluation tab reads it). Rows already in the
        /// file (same benchmark, half and features) are kept; rows scored again replace theirs.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Arguments of `retrace eval remove-topk`.
#[derive(Args)]
pub struct RemoveTopkArgs {
    /// Training images removed per query.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Methods whose top-k are removed; `random` removes k random images.
    #[arg(long, value_delimiter = ',', default_value = "tracin,retrac,kfac,pixel,random")]
    methods: Vec<String>,
    /// Queries of each kind, the first of the reported half.
    #[arg(long, default_value_t = 2)]
    queries: usize,
    #[command(flatten)]
    retraining: RetrainingArgs,
}

/// What the commands that retrain without some images share: seeds, where the work lives,
/// which share of it this process does, the benchmark and its methods' settings, and the
/// results file.
#[derive(Args)]
pub struct RetrainingArgs {
    /// Training seeds per retrained model.
    #[arg(long, default_value_t = 2)]
    pub seeds: u64,
    /// Work directory (models in training and one result per model; resumable).
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// Train only this share of the models (i/N); processes with the other shares may work in
    /// the same directory at once, and the last to finish writes the report.
    #[arg(long, default_value = "0/1")]
    pub shard: Shard,
    /// How a retrained model draws its randomness: matched (the full-data run of the same seed
    /// replayed with the removed images masked out of its batches, so that only their absence
    /// differs) or independent (a fresh run on the remaining images, as the papers retrain).
    #[arg(long, value_enum, default_value_t)]
    pub retraining: retrace::eval::retraining::Retraining,
    #[command(flatten)]
    pub scoring: ScoringArgs,
    /// Write the report into this JSON file, as its section beside the LDS table `retrace eval
    /// lds --out` wrote there (the viewer's Evaluation tab reads them together).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl RetrainingArgs {
    /// The work directory: `--work`, or `name` in the benchmark's directory.
    pub fn work_dir(&self, bench: &BuiltBenchmark, name: &str) -> PathBuf {
        self.work.clone().unwrap_or_else(|| bench.root.join(name))
    }
}

/// What every scoring command shares: the benchmark, and the settings of the methods it scores.
#[derive(Args)]
pub struct ScoringArgs {
    /// Benchmark directory: ground-truth.json and the full-data model in full/ (default: the
    /// bundled benchmark).
    #[arg(long)]
    benchmark: Option<PathBuf>,
    #[command(flatten)]
    parameters: super::args::MethodArgs,
    #[command(flatten)]
    features: super::args::FeatureArgs,
}

impl ScoringArgs {
    /// Opens the benchmark with these feature settings and parses `methods` into rows.
    pub(super) fn open(&self, methods: &[String]) -> Result<(BuiltBenchmark, Vec<EvalRow>)> {
        self.open_for(methods, true)
    }

    /// [`Self::open`], with `ground_truth` false for a command that needs only a prepared
    /// benchmark (its full-data model and queries), not a single subset.
    pub(super) fn open_for(&self, methods: &[String], ground_truth: bool) -> Result<(BuiltBenchmark, Vec<EvalRow>)> {
        let parameters = self.parameters.parameters()?;
        let rows = methods
            .iter()
            .map(|m| EvalRow::parse(m, &parameters))
            .collect::<Result<Vec<_>, _>>()?;
        let root = self.benchmark.clone().unwrap_or_else(BuiltBenchmark::bundled_dir);
        let mut bench = if ground_truth {
            BuiltBenchmark::open(&root)?
        } else {
            BuiltBenchmark::open_prepared(&root)?
        };
        if ground_truth && bench.is_partial()? {
            eprintln!(
                "warning: the ground truth is still being built; using the {} subsets measured so far",
                bench.truth.spec.subsets
            );
        }
        let dir = bench.features.dir.clone();
        bench.features = self.features.settings(bench.model.info.schedule.steps, false, dir)?;
        bench.score_cache = Some(root.join(retrace::eval::built::SCORE_CACHE));
        Ok((bench, rows))
    }
}

/// The rows `retrace eval lds` scores by default.
pub const DEFAULT_ROWS: &str = "tracin,tracin+shared,retrac,retrac+shared,retrac-bucket,kfac,kfac+shared,ekfac,kfac-elbo,kfac-sqnorm,ekfac-sqnorm,pixel,random";

/// Settings of `retrace eval build-lds`. Run the same command again to resume. Every recipe
/// setting left out takes the value of the `--preset` (default `bundled`).
#[derive(Args)]
pub struct BuildLdsArgs {
    /// Build directory (created; a build there is resumed).
    #[arg(long)]
    out: PathBuf,
    /// The benchmark the unset settings come from: bundled (the two-class `tiny` benchmark in
    /// assets/lds), garments (a fine-tune of the bundled class-conditional model on ten
    /// Fashion-MNIST classes) or dtrak-cifar2 (D-TRAK's CIFAR-2 protocol, for a cluster).
    #[arg(long, value_enum, default_value = "bundled")]
    preset: super::lds_presets::Preset,
    /// The dataset directory a preset reads (Fashion-MNIST idx files for bundled and garments,
    /// default /usr/share/datasets/fashion-mnist; CIFAR-10 binary batches for dtrak-cifar2).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Training data spec.
    #[arg(long)]
    data: Option<String>,
    /// Data spec of the held-out query images.
    #[arg(long)]
    held_out: Option<String>,
    /// Architecture: a preset (tiny, base, ddpm-cifar10), a model directory (retrace's or
    /// diffusers') or a diffusers config.json.
    #[arg(long)]
    config: Option<String>,
    /// Epochs of the full-data model.
    #[arg(long)]
    epochs: Option<usize>,
    /// Epochs of every subset model (default: epochs / α, as many steps as the full model;
    /// dtrak-cifar2: as many epochs, as D-TRAK trains them).
    #[arg(long)]
    subset_epochs: Option<usize>,
    /// Examples per step.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate (AdamW).
    #[arg(long)]
    lr: Option<f64>,
    /// Linear warm-up steps.
    #[arg(long)]
    warmup: Option<usize>,
    /// Learning rate after the warm-up: cosine (decays to 0, so the final weights depend less
    /// on the last batches and seeds agree more) or constant.
    #[arg(long, value_enum)]
    lr_schedule: Option<retrace::diffusion::LrSchedule>,
    /// AdamW weight decay.
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Random subsets M.
    #[arg(long)]
    subsets: Option<usize>,
    /// Training seeds per subset.
    #[arg(long)]
    seeds: Option<u64>,
    /// Fraction of the training set in every subset.
    #[arg(long)]
    alpha: Option<f64>,
    /// Queries of each kind (held-out, generated); the first half of each develops defaults.
    #[arg(long)]
    queries: Option<usize>,
    /// DDIM steps of the generated queries.
    #[arg(long)]
    sampler_steps: Option<usize>,
    /// (t, ε) draws per query of the loss measurement.
    #[arg(long)]
    draws: Option<usize>,
    /// Seed of the subsets and of the measurement draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Build only this shard, `i/N` (0-based): every N-th model from the i-th.
    #[arg(long)]
    shard: Option<Shard>,
    /// Only train the full-data model, draw the queries and measure them (before launching
    /// shards in parallel on one directory).
    #[arg(long)]
    prepare_only: bool,
    /// Keep every subset model's weights under models/ (deleted once measured by default).
    #[arg(long)]
    keep_models: bool,
    /// Fine-tune every model from these weights (a model directory, or `bundled`;
    /// `MODEL@STEP` picks a checkpoint) instead of training from scratch; the architecture is
    /// that model's, class-conditional ones included.
    #[arg(long, value_name = "MODEL[@STEP]")]
    init_from: Option<String>,
    /// Class-conditional: the U-Net gets a class table (plus a null class), the queries take
    /// the classes in turn and are sampled with --guidance (implied by --init-from of a
    /// class-conditional model).
    #[arg(long)]
    conditional: bool,
    /// Guidance scale of a class-conditional benchmark's generated queries.
    #[arg(long, default_value_t = retrace::diffusion::sampler::DEFAULT_GUIDANCE_SCALE)]
    guidance: f64,
    /// Label dropout of a class-conditional benchmark's models (keeps the null class trained).
    #[arg(long, default_value_t = 0.1)]
    label_dropout: f64,
    /// A class-conditional benchmark stops after its queries are drawn unless the bundled
    /// classifier assigns at least this share of the generated ones to their class (0: no
    /// check).
    #[arg(long, default_value_t = 0.8)]
    min_class_share: f64,
}

impl BuildLdsArgs {
    /// The preset's recipe with every setting given on the command line put over it.
    fn recipe(&self) -> Result<super::lds_presets::Recipe> {
        let mut r = self.preset.recipe(self.data_dir.as_deref())?;
        let put = |slot: &mut String, given: &Option<String>| {
            if let Some(v) = given {
                slot.clone_from(v);
            }
        };
        put(&mut r.data, &self.data);
        put(&mut r.held_out, &self.held_out);
        put(&mut r.config, &self.config);
        r.epochs = self.epochs.unwrap_or(r.epochs);
        r.subset_epochs = self.subset_epochs.or(r.subset_epochs);
        r.batch_size = self.batch_size.unwrap_or(r.batch_size);
        r.lr = self.lr.unwrap_or(r.lr);
        r.warmup = self.warmup.unwrap_or(r.warmup);
        r.lr_schedule = self.lr_schedule.unwrap_or(r.lr_schedule);
        r.weight_decay = self.weight_decay.unwrap_or(r.weight_decay);
        r.subsets = self.subsets.unwrap_or(r.subsets);
        r.seeds = self.seeds.unwrap_or(r.seeds);
        r.alpha = self.alpha.unwrap_or(r.alpha);
        r.queries = self.queries.unwrap_or(r.queries);
        r.sampler_steps = self.sampler_steps.unwrap_or(r.sampler_steps);
        r.draws = self.draws.unwrap_or(r.draws);
        if self.init_from.is_some() {
            r.init_from.clone_from(&self.init_from);
        }
        Ok(r)
    }

    fn spec(&self, recipe: &super::lds_presets::Recipe, data: &Dataset) -> Result<BenchmarkSpec> {
        let init = recipe
            .init_from
            .as_deref()
            .map(super::args::init_from_arg)
            .transpose()?;
        let architecture = match &init {
            Some(init) => retrace::diffusion::ModelDir::open(&InitFrom::path_of(&init.model))?
                .info
                .architecture
                .clone(),
            None if self.conditional => super::named_config(&recipe.config, data)?.with_classes(data.class_names.len()),
            None => super::named_config(&recipe.config, data)?,
        };
        let Architecture::UNet(unet) = architecture else {
            anyhow::bail!("LDS benchmarks train U-Nets so far");
        };
        let conditional = unet.condition_encoding().is_conditional();
        let spec = BenchmarkSpec {
            format_version: BENCHMARK_FORMAT_VERSION,
            data: recipe.data.clone(),
            data_hash: data.content_hash(),
            data_len: data.len(),
            held_out: recipe.held_out.clone(),
            unet,
            schedule: ScheduleConfig::default(),
            training: BenchmarkTraining {
                learning_rate: recipe.lr,
                warmup_steps: recipe.warmup,
                lr_schedule: recipe.lr_schedule,
                batch_size: recipe.batch_size,
                weight_decay: recipe.weight_decay,
                full_epochs: recipe.epochs,
                subset_epochs: recipe
                    .subset_epochs
                    .unwrap_or_else(|| (recipe.epochs as f64 / recipe.alpha).round() as usize),
                full_seed: 0,
                label_dropout: if conditional { self.label_dropout } else { 0.0 },
                init,
            },
            subsets: recipe.subsets,
            alpha: recipe.alpha,
            seeds: (0..recipe.seeds).collect(),
            mask_seed: self.seed,
            queries_per_kind: recipe.queries,
            sampler_steps: recipe.sampler_steps,
            draws: recipe.draws,
            draw_seed: self.seed,
            guidance: conditional.then_some(self.guidance),
        };
        spec.validate()?;
        Ok(spec)
    }
}

/// Runs an evaluation subcommand.
pub fn run(command: EvalCommand, device: &ComputeDevice, job: &JobContext) -> Result<()> {
    match command {
        EvalCommand::BuildLds(args) => build_lds(args, device, job),
        EvalCommand::TrainClassifier(args) => super::classes::train(args, device, job),
        EvalCommand::Classes(args) => super::classes::judge(args, device, job),
        EvalCommand::Merge { out, from } => merge(out, from, device, job),
        EvalCommand::Lds {
            methods,
            half,
            scoring,
            out,
        } => lds(&scoring, &methods, half, out, device, job),
        EvalCommand::Bundle { benchmark, out, f16 } => {
            let bundled = retrace::eval::bundle::bundle(&benchmark, &out, f16)?;
            if bundled.partial {
                eprintln!(
                    "warning: the ground truth is still being built; bundled the {} subsets measured so far (bundle again once it is complete)",
                    bundled.subsets
                );
            }
            println!(
                "bundled {} into {} ({:.1} MB)",
                benchmark.display(),
                out.display(),
                bundled.bytes as f64 / 1e6
            );
            Ok(())
        }
        EvalCommand::RemoveTopk(args) => remove_topk(args, device, job),
        EvalCommand::Regenerate(args) => super::regenerate::run(args, device, job),
        EvalCommand::Overlap { methods, k, scoring } => overlap(&scoring, &methods, k, device, job),
    }
}

fn build_lds(args: BuildLdsArgs, device: &ComputeDevice, job: &JobContext) -> Result<()> {
    let recipe = args.recipe()?;
    let spec_of_data: DataSpec = recipe.data.parse()?;
    let data = Dataset::load(&spec_of_data)?;
    let spec = args.spec(&recipe, &data)?;
    let (mut build, spec) = LdsBuild::open(&args.out, Some(&spec), &device.device, job)?;
    build.keep_models = args.keep_models;
    build.record_command(&std::env::args().collect::<Vec<_>>().join(" "))?;
    // `open` checked that the directory's benchmark is this one, so `data` is its training set.
    let held_out = LdsBuild::load_held_out(&spec, &data)?;
    eprintln!(
        "LDS benchmark: {} images, {} subsets × {} seeds of {}, {} + {} queries × {} draws",
        spec.data_len,
        spec.subsets,
        spec.seeds.len(),
        spec.subset_size(),
        spec.queries_per_kind,
        spec.queries_per_kind,
        spec.draws
    );
    let queries = build.prepare(&spec, &data, &held_out)?;
    check_class_share(&spec, &queries, args.min_class_share, device)?;
    if args.prepare_only {
        println!(
            "prepared {}: full-data model trained, {} queries measured",
            args.out.display(),
            queries.len()
        );
        return Ok(());
    }
    let shard = args.shard.unwrap_or(Shard::ALL);
    build.run_shard(&spec, shard, &data, &queries)?;
    finish(&build, &spec)
}

/// Stops a class-conditional build whose generated queries do not look like their class (the
/// bundled classifier's judgement), before the subset models cost hours.
fn check_class_share(
    spec: &BenchmarkSpec,
    queries: &[retrace::eval::BenchmarkQuery],
    min_share: f64,
    device: &ComputeDevice,
) -> Result<()> {
    if spec.guidance.is_none() || min_share <= 0.0 {
        return Ok(());
    }
    let classifier = retrace::classifier::load_classifier(&retrace::data::bundled_classifier_dir(), &device.device)?;
    let shape = [spec.unet.image_channels, spec.unet.sample_size, spec.unet.sample_size];
    let Some(share) =
        retrace::eval::class_fidelity::generated_query_share(queries, &classifier, shape, &device.device)?
    else {
        return Ok(());
    };
    let per_class: Vec<String> = share.per_class.iter().map(|s| format!("{:.0}", 100.0 * s)).collect();
    eprintln!(
        "generated queries classified as their class: {:.1}% (per class, %: {})",
        100.0 * share.overall,
        per_class.join(" ")
    );
    if share.overall < min_share {
        anyhow::bail!(
            "only {:.1}% of the generated queries look like their class (--min-class-share {min_share}): \
             the full-data model's samples are not good enough to attribute; train it longer or change the recipe",
            100.0 * share.overall
        );
    }
    Ok(())
}

fn merge(out: PathBuf, from: Vec<PathBuf>, device: &ComputeDevice, job: &JobContext) -> Result<()> {
    if !out.join(BENCHMARK_FILE).is_file() {
        let Some(first) = from.first() else {
            anyhow::bail!(
                "{} holds no {BENCHMARK_FILE}: name the shards to merge with --from",
                out.display()
            );
        };
        let first = first.join(BENCHMARK_FILE);
        let bytes = std::fs::read(&first).with_context(|| format!("cannot read {}", first.display()))?;
        std::fs::create_dir_all(out.join("results"))?;
        retrace::files::write_atomic(&out.join(BENCHMARK_FILE), &bytes)?;
    }
    let (build, spec) = LdsBuild::open(&out, None, &device.device, job)?;
    for dir in &from {
        let copied = build.merge_from(&spec, dir)?;
        eprintln!("{}: {copied} new result(s)", dir.display());
    }
    finish(&build, &spec)
}

/// Assembles the ground truth when complete and prints its quality, or says what is missing.
fn finish(build: &LdsBuild<'_>, spec: &BenchmarkSpec) -> Result<()> {
    match build.assemble(spec)? {
        None => {
            println!(
                "{} of {} models measured in {}; run the other shards, then `retrace eval merge`",
                build.measured(spec),
                spec.models().len(),
                build.dir.display()
            );
            // What the subsets measured so far already say (a build's progress report).
            if let Ok(partial) = retrace::eval::build::partial_ground_truth(&build.dir) {
                print_quality(&partial, "the subsets measured so far");
            }
        }
        Some(truth) => print_quality(
            &truth,
            &build
                .dir
                .join(retrace::eval::build::GROUND_TRUTH_FILE)
                .display()
                .to_string(),
        ),
    }
    Ok(())
}

fn print_quality(truth: &GroundTruth, title: &str) {
    let q = &truth.quality;
    println!("ground truth: {title}");
    println!(
        "  {} models ({} subsets × {} seeds) + the full-data model, {} queries, {:.0} s of compute",
        truth.models.len(),
        truth.spec.subsets,
        truth.spec.seeds.len(),
        truth.queries.len(),
        truth.compute_seconds
    );
    println!(
        "  ceiling (seed-to-seed Spearman over subsets): {:.3} (held-out {:.3}, generated {:.3})",
        q.seed_spearman,
        q.seed_spearman_by_kind.first().copied().unwrap_or(0.0),
        q.seed_spearman_by_kind.get(1).copied().unwrap_or(0.0)
    );
    println!(
        "  seed ICC (share of the across-model loss variance the subset explains): held-out {:.3}, generated {:.3}",
        q.seed_icc_by_kind.first().copied().unwrap_or(0.0),
        q.seed_icc_by_kind.get(1).copied().unwrap_or(0.0)
    );
    println!(
        "  measurement: split-draw Spearman {:.3}, noise share of the across-model variance {:.4}",
        q.split_draw_spearman, q.noise_share
    );
    if q.seed_spearman < 0.3 {
        println!("  warning: a ceiling below 0.3 cannot separate methods; enlarge the benchmark");
    }
}

fn lds(
    scoring: &ScoringArgs,
    methods: &[String],
    half: QueryHalf,
    out: Option<PathBuf>,
    device: &ComputeDevice,
    job: &JobContext,
) -> Result<()> {
    let (bench, rows) = scoring.open(methods)?;
    let root = bench.root.clone();
    let ceiling = bench.truth.quality.seed_spearman;
    eprintln!(
        "benchmark {}: {} training images, {} subsets × {} seeds, ceiling {ceiling:.3}",
        root.display(),
        bench.data.len(),
        bench.truth.spec.subsets,
        bench.truth.spec.seeds.len()
    );
    let mut report = EvalReport::new(&bench, half)?;
    // A table rewritten keeps the remove-top-k section `eval remove-topk` put in the same file,
    // and, when it was made on the same queries and features, the rows not scored again.
    if let Some(previous) = out.as_deref().and_then(EvalReport::read) {
        report.remove_top_k = previous.remove_top_k;
        report.regenerate = previous.regenerate;
        if (&previous.benchmark, previous.half, &previous.index) == (&report.benchmark, half, &report.index) {
            report.methods = previous.methods;
        }
    }
    println!(
        "{:<20} {:>24} {:>24} {:>10} {:>22}",
        "method", "LDS held-out [95% CI]", "LDS generated [95% CI]", "s / query", "top-10: distinct, top10"
    );
    for row in &rows {
        // Each query's result is kept beside the table while a row is scored, so a stopped run
        // resumes where it was (a MUCS row takes hours on a CPU).
        let parts = out.as_ref().map(|o| o.with_extension("parts"));
        let result = evaluate_row(&bench, row, half, parts.as_deref(), &device.device, job)?;
        let cell = |i: &retrace::eval::lds::Interval| match i.queries {
            0 => "—".to_owned(),
            _ => format!("{:.3} [{:.3}, {:.3}]", i.lds, i.ci95[0], i.ci95[1]),
        };
        job.progress.update(&Default::default());
        let spread = &result.generally_influential;
        println!(
            "{:<20} {:>24} {:>24} {:>10.3} {:>13} {:>8.2}",
            result.method,
            cell(&result.held_out),
            cell(&result.generated),
            result.seconds_per_query,
            format!("{}/{}", spread.distinct, spread.queries * spread.k),
            spread.top10_share
        );
        match report.methods.iter_mut().find(|r| r.method == result.method) {
            Some(slot) => *slot = result,
            None => report.methods.push(result),
        }
        if let Some(path) = &out {
            // Written after every row, so a long table keeps what it has; the row's per-query
            // results are then in the table and go.
            retrace::eval::build::write_json(path, &report)?;
            if let Some(parts) = &parts {
                let _ = std::fs::remove_dir_all(retrace::eval::rows::row_parts_dir(parts, &row.label()));
                let _ = std::fs::remove_dir(parts);
            }
        }
    }
    if let Some(path) = &out {
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn remove_topk(args: RemoveTopkArgs, device: &ComputeDevice, job: &JobContext) -> Result<()> {
    let (bench, rows) = args.retraining.scoring.open(&args.methods)?;
    let queries: Vec<usize> = retrace::eval::QueryKind::ALL
        .iter()
        .flat_map(|&kind| {
            bench
                .truth
                .query_indices(kind, QueryHalf::Report)
                .into_iter()
                .take(args.queries)
        })
        .collect();
    let plan = retrace::eval::remove_topk::RemovalPlan {
        k: args.k,
        queries,
        seeds: (0..args.retraining.seeds).collect(),
        rows,
        shard: args.retraining.shard,
        retraining: args.retraining.retraining,
    };
    let work = args.retraining.work_dir(&bench, "remove-topk");
    let report = match retrace::eval::remove_topk::remove_top_k(&bench, &plan, &work, &device.device, job)? {
        RemovalOutcome::ShardDone { waiting } => return shard_done(waiting),
        RemovalOutcome::Report(report) => report,
    };
    job.progress.update(&Default::default());
    println!(
        "query-loss increase after retraining without the top {} ({} queries × {} seeds):",
        report.k,
        report.queries.len(),
        report.seeds.len()
    );
    println!(
        "{:<20} {:<31}  {:>26} {:>26} {:>26}",
        "method", "absolute [95% CI]", "relative", "held-out", "generated"
    );
    for row in &report.rows {
        let cell = |(p, ci): (f64, [f64; 2])| format!("{p:+.2}% [{:+.2}%, {:+.2}%]", ci[0], ci[1]);
        println!(
            "{:<20} {:+.5} [{:+.5}, {:+.5}]  {:>26} {:>26} {:>26}",
            row.method,
            row.increase.lds,
            row.increase.ci95[0],
            row.increase.ci95[1],
            cell(row.percent_increase()),
            row.percent_increase_of(retrace::eval::QueryKind::HeldOut)
                .map_or("—".into(), cell),
            row.percent_increase_of(retrace::eval::QueryKind::Generated)
                .map_or("—".into(), cell)
        );
    }
    if let Some(path) = &args.retraining.out {
        write_section(path, &bench, |table| table.remove_top_k = Some(report))?;
    }
    Ok(())
}

/// Says that this shard's models are done while `waiting` of other shards are not.
pub(super) fn shard_done(waiting: usize) -> Result<()> {
    println!(
        "this shard is done; {waiting} models of other shards are not yet (the last shard to finish writes the report)"
    );
    Ok(())
}

/// Sets one section of the results file `path` with `set`: into the LDS table's file when there
/// is one (the viewer reads them together), else into a new one.
pub(super) fn write_section(
    path: &std::path::Path,
    bench: &BuiltBenchmark,
    set: impl FnOnce(&mut EvalReport),
) -> Result<()> {
    let mut table = match EvalReport::read(path) {
        Some(table) => table,
        None => EvalReport::new(bench, QueryHalf::Report)?,
    };
    set(&mut table);
    retrace::eval::build::write_json(path, &table)?;
    println!("wrote {}", path.display());
    Ok(())
}

fn overlap(
    scoring: &ScoringArgs,
    methods: &[String],
    k: usize,
    device: &ComputeDevice,
    job: &JobContext,
) -> Result<()> {
    let (bench, rows) = scoring.open(methods)?;
    let generated: Vec<usize> = [QueryHalf::Dev, QueryHalf::Report]
        .iter()
        .flat_map(|&h| bench.truth.query_indices(retrace::eval::QueryKind::Generated, h))
        .collect();
    println!("top-{k} lists of {} generated queries:", generated.len());
    for row in &rows {
        let mut lists = Vec::new();
        for &q in &generated {
            let scores = bench.scores(row, q, &device.device, job)?;
            lists.push(retrace::stats::top_k(&scores, k));
        }
        let spread = retrace::stats::top_k_spread(&lists, k);
        job.progress.update(&Default::default());
        println!(
            "{:<20} {:>4} distinct of {:>4} slots; the 10 most frequent fill {:.0}%",
            row.label(),
            spread.distinct,
            spread.queries * k,
            100.0 * spread.top10_share
        );
    }
    Ok(())
}
