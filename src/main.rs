//! The `retrace` command: train, sample, inspect and benchmark diffusion models; with no
//! subcommand, the desktop viewer on the bundled default.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use retrace::data::{DataSpec, Dataset, bundled_model_dir};
use retrace::device::{self, ComputeDevice, DeviceRequest};
use retrace::diffusion::images::{grid, tensor_to_images};
use retrace::diffusion::train::{TrainLength, train};
use retrace::diffusion::unet::CONFIG_NAMES;
use retrace::diffusion::{
    ModelDir, ModelInfo, SamplerConfig, SamplerKind, Schedule, ScheduleConfig, TrainRecipe, UNetConfig, sample,
};
use retrace::jobs::{CancelToken, JobContext, TerminalProgress};

mod cli;

#[derive(Parser)]
#[command(
    name = "retrace",
    version,
    about = "Which training images made a diffusion model generate this?"
)]
struct Cli {
    /// Compute device: auto (GPU if any, else CPU), cpu (flex) or wgpu. Overrides RETRACE_DEVICE.
    #[arg(long, global = true)]
    device: Option<DeviceRequest>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Train a DDPM on a dataset, saving checkpoints (Ctrl-C saves one and stops).
    Train {
        /// Dataset spec, e.g. `bundled`, `fashion-mnist:/usr/share/datasets/fashion-mnist?subset=1000`.
        #[arg(long)]
        data: String,
        /// Model directory to create (or to continue with --resume).
        #[arg(long)]
        out: PathBuf,
        /// Architecture preset: tiny or base (default base; a resumed run keeps its own).
        #[arg(long)]
        config: Option<String>,
        /// Epochs to train in all (a resumed run continues up to this count).
        #[arg(long, default_value_t = 100)]
        epochs: usize,
        /// Continue from the newest checkpoint in --out.
        #[arg(long)]
        resume: bool,
        /// Examples per step.
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
        /// Peak learning rate (AdamW).
        #[arg(long, default_value_t = 1e-3)]
        lr: f64,
        /// Linear learning-rate warm-up steps.
        #[arg(long, default_value_t = 200)]
        warmup: usize,
        /// Learning rate after the warm-up: constant, or cosine (decays to 0 at the last epoch).
        #[arg(long, value_enum, default_value = "constant")]
        lr_schedule: retrace::diffusion::LrSchedule,
        /// AdamW weight decay.
        #[arg(long, default_value_t = 1e-4)]
        weight_decay: f64,
        /// Save a checkpoint every this many steps.
        #[arg(long, default_value_t = 1000)]
        checkpoint_every: usize,
        /// Seed of initialisation, batch order and noise.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Generate images from a trained model (one PNG, a grid when several seeds are given).
    Sample {
        /// Model directory (default: the bundled model).
        #[arg(long)]
        model: Option<PathBuf>,
        /// One seed.
        #[arg(long, conflicts_with = "seeds")]
        seed: Option<u64>,
        /// A range of seeds, `A..B` (B excluded).
        #[arg(long)]
        seeds: Option<String>,
        /// Denoising steps.
        #[arg(long, default_value_t = 100)]
        steps: usize,
        /// ddpm (ancestral) or ddim (deterministic).
        #[arg(long, default_value = "ddim")]
        sampler: SamplerKind,
        /// Use the checkpoint of this training step (default: the newest).
        #[arg(long)]
        checkpoint: Option<usize>,
        /// Output PNG.
        #[arg(long)]
        out: PathBuf,
    },
    /// Build (or finish) the index of projected training-gradient features.
    Index {
        #[command(flatten)]
        target: IndexArgs,
    },
    /// Rank the training images by their influence on a query image or a generated sample.
    Attribute {
        #[command(flatten)]
        target: IndexArgs,
        /// Query image (PNG/JPEG; converted to the model's channels and size).
        #[arg(long, conflicts_with = "seed")]
        query: Option<PathBuf>,
        /// Generate the query from the model with this seed (DDIM, 100 steps).
        #[arg(long)]
        seed: Option<u64>,
        /// Methods, comma-separated: retrac, tracin, kfac, ekfac, pixel.
        #[arg(long, default_value = "retrac,tracin,kfac,ekfac,pixel", value_delimiter = ',')]
        method: Vec<String>,
        #[command(flatten)]
        influence: InfluenceArgs,
        /// How many top images to print per method.
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// Output file: .json or .csv.
        #[arg(long)]
        out: PathBuf,
    },
    /// Render a scores file of `retrace attribute` as a self-contained HTML report or a PDF.
    Report {
        /// The JSON file `retrace attribute` wrote.
        #[arg(long)]
        scores: PathBuf,
        /// Output: report.html or report.pdf (the extension picks the format).
        #[arg(long)]
        out: PathBuf,
        /// Training data spec (default: the one recorded in the file).
        #[arg(long)]
        data: Option<String>,
        /// Images per side for every method.
        #[arg(long, default_value_t = 24)]
        top: usize,
    },
    /// Open the desktop viewer on a model and its training data.
    Gui {
        /// Model directory (default: the bundled model).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Training data spec (default: the model's own).
        #[arg(long)]
        data: Option<String>,
    },
    /// Describe a model directory or a dataset spec.
    Info {
        /// A model directory or a dataset spec.
        path: String,
    },
    /// Evaluate attribution methods: build an LDS ground truth, merge its shards, score methods.
    Eval {
        #[command(subcommand)]
        command: cli::eval::EvalCommand,
    },
    /// Measure plain forward+backward throughput of a model on the chosen device.
    Bench {
        /// Model directory (default: the bundled model; its architecture is what is measured).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Measure an architecture preset instead of a model directory.
        #[arg(long, conflicts_with = "model")]
        config: Option<String>,
        /// Examples per batch.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Timed batches.
        #[arg(long, default_value_t = 5)]
        iterations: usize,
        /// Images (× 10 timestep buckets) to time a K-FAC/EK-FAC curvature fit on (0 skips).
        #[arg(long, default_value_t = 16)]
        fit_images: usize,
        /// Training images of the synthetic index whose query latency is measured (0 skips).
        #[arg(long, default_value_t = 60_000)]
        synthetic_images: usize,
    },
}

/// Settings of the influence-function methods (K-FAC, EK-FAC).
#[derive(clap::Args)]
pub(crate) struct InfluenceArgs {
    /// What the query's gradient differentiates (K-FAC/EK-FAC): loss, elbo or square-norm.
    #[arg(long, default_value = "loss")]
    measurement: retrace::diffusion::Measurement,
    /// Damping: a factor of each layer's mean eigenvalue (0.1), or an absolute value (abs:1e-8).
    #[arg(long, default_value = "0.1", value_parser = parse_damping)]
    damping: retrace::curvature::Damping,
    /// Curvature: ggn (Monte Carlo GGN) or empirical (empirical Fisher).
    #[arg(long, default_value = "ggn")]
    curvature: retrace::curvature::Fisher,
    /// K-FAC treatment of convolution positions and attention tokens: expand or reduce.
    #[arg(long, default_value = "expand")]
    sharing: retrace::curvature::Sharing,
    /// Training images the curvature is fitted on (a seeded subset; × buckets points per pass).
    #[arg(long, default_value_t = 64)]
    fit_images: usize,
}

impl InfluenceArgs {
    /// The engine's settings.
    pub(crate) fn settings(&self) -> retrace::attribution::InfluenceSettings {
        retrace::attribution::InfluenceSettings {
            measurement: self.measurement,
            damping: self.damping,
            fisher: self.curvature,
            sharing: self.sharing,
            fit_images: self.fit_images.max(1),
        }
    }
}

fn parse_damping(s: &str) -> std::result::Result<retrace::curvature::Damping, String> {
    let (absolute, number) = match s.strip_prefix("abs:") {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let v: f64 = number
        .parse()
        .map_err(|_| format!("damping {s:?} is not a number (or abs:NUMBER)"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("damping must be positive, not {s}"));
    }
    Ok(if absolute {
        retrace::curvature::Damping::Absolute(v)
    } else {
        retrace::curvature::Damping::Relative(v)
    })
}

/// The model, data and index settings shared by `index` and `attribute`.
#[derive(clap::Args)]
struct IndexArgs {
    /// Model directory (default: the bundled model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Training data spec (default: the model's own).
    #[arg(long)]
    data: Option<String>,
    /// Index directory (default: one per model and setting under $XDG_CACHE_HOME/retrace, or
    /// ~/.cache/retrace).
    #[arg(long)]
    index: Option<PathBuf>,
    #[command(flatten)]
    features: FeatureArgs,
    /// Draw (t, ε) per training image instead of one shared set for all images and the query.
    #[arg(long)]
    per_example_noise: bool,
}

/// How training images become features: the timestep plan, the projection, the checkpoints and
/// the storage (shared by `index`, `attribute` and the `eval` commands).
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct FeatureArgs {
    /// Projection width per layer side (k_in = k_out = K).
    #[arg(long, default_value_t = 16)]
    projection_k: usize,
    /// Timestep buckets.
    #[arg(long, default_value_t = 10)]
    buckets: usize,
    /// (t, ε) draws per bucket.
    #[arg(long, default_value_t = 1)]
    draws: usize,
    /// Checkpoints to index: last, or all (TracIn then sums over the training trajectory).
    #[arg(long, default_value = "last")]
    checkpoints: retrace::attribution::CheckpointChoice,
    /// Store features as 16-bit floats.
    #[arg(long)]
    f16: bool,
    /// Examples·timesteps per batch.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Seed of the plan and the projection.
    #[arg(long, default_value_t = 0)]
    plan_seed: u64,
}

impl FeatureArgs {
    /// Index settings for a model of `steps` diffusion steps, to live in `dir`.
    pub(crate) fn settings(
        &self,
        steps: usize,
        shared_noise: bool,
        dir: PathBuf,
    ) -> Result<retrace::attribution::IndexSettings> {
        let mut plan = retrace::grad::TimestepPlan::new(steps, self.buckets, self.draws, self.plan_seed)
            .map_err(anyhow::Error::msg)?;
        plan.shared_noise = shared_noise;
        if self.projection_k == 0 {
            bail!("the projection needs k of at least 1");
        }
        Ok(retrace::attribution::IndexSettings {
            dir,
            plan,
            projection: retrace::grad::ProjectionConfig {
                k_in: self.projection_k,
                k_out: self.projection_k,
                seed: self.plan_seed,
            },
            checkpoints: self.checkpoints,
            storage: if self.f16 {
                retrace::index::Storage::F16
            } else {
                retrace::index::Storage::F32
            },
            batch_size: self.batch.max(1),
            chunk_size: 100,
        })
    }
}

impl IndexArgs {
    fn open(&self) -> Result<(ModelDir, Dataset, retrace::attribution::IndexSettings)> {
        let root = self.model.clone().unwrap_or_else(bundled_model_dir);
        let model = ModelDir::open(&root)?;
        let spec: DataSpec = self
            .data
            .clone()
            .unwrap_or_else(|| model.info.data_spec.clone())
            .parse()?;
        let data = Dataset::load(&spec)?;
        let mut settings =
            self.features
                .settings(model.info.schedule.steps, !self.per_example_noise, PathBuf::new())?;
        settings.dir = self
            .index
            .clone()
            .unwrap_or_else(|| retrace::index::default_index_dir(&root).join(settings.slug()));
        Ok((model, data, settings))
    }
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn compute_device(request: Option<DeviceRequest>) -> Result<ComputeDevice> {
    let chosen = device::choose(request).map_err(anyhow::Error::msg)?;
    eprintln!("compute device: {chosen}");
    Ok(chosen)
}

/// A job context with a terminal progress bar, cancelled by Ctrl-C.
fn terminal_job() -> Result<(JobContext, Arc<TerminalProgress>)> {
    let cancel = CancelToken::new();
    let on_signal = cancel.clone();
    ctrlc::set_handler(move || {
        eprintln!("\ninterrupted: finishing the current step and saving a checkpoint…");
        on_signal.cancel();
    })
    .context("cannot install the Ctrl-C handler")?;
    let bar = Arc::new(TerminalProgress::new());
    Ok((
        JobContext {
            cancel,
            progress: bar.clone(),
        },
        bar,
    ))
}

fn run(cli: Cli) -> Result<()> {
    let command = cli.command.unwrap_or(Command::Gui {
        model: None,
        data: None,
    });
    match command {
        Command::Train {
            data,
            out,
            config,
            epochs,
            resume,
            batch_size,
            lr,
            warmup,
            lr_schedule,
            weight_decay,
            checkpoint_every,
            seed,
        } => {
            let spec: DataSpec = data.parse()?;
            let dataset = Dataset::load(&spec)?;
            if dataset.height != dataset.width {
                bail!(
                    "{} holds {}×{} images; retrace's U-Net needs square images",
                    spec,
                    dataset.height,
                    dataset.width
                );
            }
            let dev = compute_device(cli.device)?;
            let dir = if resume {
                let dir = ModelDir::open(&out)?;
                if let Some(name) = &config
                    && dir.info.unet != named_config(name, &dataset)?
                {
                    bail!(
                        "{} was trained with another architecture than --config {name}",
                        out.display()
                    );
                }
                dir
            } else {
                if out.join("model.json").exists() {
                    bail!(
                        "{} already holds a model; pass --resume to continue it or choose another --out",
                        out.display()
                    );
                }
                let command = std::env::args().collect::<Vec<_>>().join(" ");
                let info = ModelInfo {
                    format_version: retrace::diffusion::checkpoint::FORMAT_VERSION,
                    unet: named_config(config.as_deref().unwrap_or("base"), &dataset)?,
                    schedule: ScheduleConfig::default(),
                    data_spec: spec.to_string(),
                    data_hash: dataset.content_hash(),
                    data_len: dataset.len(),
                    class_names: dataset.class_names.clone(),
                    train: TrainRecipe {
                        learning_rate: lr,
                        warmup_steps: warmup,
                        lr_schedule,
                        batch_size,
                        weight_decay,
                        seed,
                        checkpoint_every: checkpoint_every.max(1),
                        command,
                    },
                };
                ModelDir::create(&out, info)?
            };
            eprintln!("training on {} images of {}", dataset.len(), spec);
            let (job, bar) = terminal_job()?;
            let outcome = train(&dir, &dataset, &TrainLength { epochs }, resume, &dev.device, &job)?;
            bar.finish();
            let rate = outcome.step as f64 / outcome.seconds.max(1e-9);
            if outcome.cancelled {
                println!(
                    "stopped at step {}/{}; resume with the same command plus --resume",
                    outcome.step, outcome.total_steps
                );
            } else {
                println!(
                    "trained to step {} in {:.0} s ({rate:.1} steps/s), last loss {:.4}; checkpoints in {}",
                    outcome.step,
                    outcome.seconds,
                    outcome.last_loss,
                    dir.root.join("checkpoints").display()
                );
            }
        }
        Command::Sample {
            model,
            seed,
            seeds,
            steps,
            sampler,
            checkpoint,
            out,
        } => {
            let dev = compute_device(cli.device)?;
            let dir = ModelDir::open(&model.unwrap_or_else(bundled_model_dir))?;
            let seeds = parse_seeds(seed, seeds.as_deref())?;
            let entry = pick_checkpoint(&dir, checkpoint)?;
            let net = dir.load_model(&entry, &dev.device)?;
            let schedule = Schedule::new(&dir.info.schedule);
            let cfg = &dir.info.unet;
            let shape = [cfg.image_channels, cfg.sample_size, cfg.sample_size];
            let (job, bar) = terminal_job()?;
            let config = SamplerConfig { kind: sampler, steps };
            let images = sample(&net, &schedule, &config, shape, &seeds, &dev.device, |step| {
                job.report("sampling", step.done as u64, step.total as u64, "");
                !job.cancel.is_cancelled()
            });
            bar.finish();
            let Some(images) = images else {
                bail!("sampling cancelled")
            };
            let images = tensor_to_images(images).map_err(anyhow::Error::msg)?;
            let cols = (images.len() as f64).sqrt().ceil() as usize;
            let picture = grid(&images, shape, cols);
            save_png(&picture, &out)?;
            println!(
                "wrote {} image(s) (seeds {:?}…, checkpoint step {}) to {}",
                images.len(),
                &seeds[..seeds.len().min(4)],
                entry.state.step,
                out.display()
            );
        }
        Command::Index { target } => {
            let dev = compute_device(cli.device)?;
            let (model, data, settings) = target.open()?;
            let (job, bar) = terminal_job()?;
            let started = std::time::Instant::now();
            let index = settings
                .ensure(&model, &data, &dev.device, &job)
                .map_err(anyhow::Error::msg)?;
            bar.finish();
            match index {
                None => println!("stopped; run the same command again to resume from the last complete chunk"),
                Some(index) => {
                    let m = &index.manifest;
                    let per_image = m.key.plan.buckets * m.dim * m.key.storage.bytes() * m.checkpoints.len();
                    println!("{:.1} KB per indexed image", per_image as f64 / 1024.0);
                    println!(
                        "index {} ready in {:.1} s: {} images × {} buckets × {} features × {} checkpoint(s), {} storage",
                        index.dir.display(),
                        started.elapsed().as_secs_f64(),
                        m.examples,
                        m.key.plan.buckets,
                        m.dim,
                        m.checkpoints.len(),
                        format!("{:?}", m.key.storage).to_lowercase()
                    );
                }
            }
        }
        Command::Attribute {
            target,
            query,
            seed,
            method,
            influence,
            top,
            out,
        } => {
            let dev = compute_device(cli.device)?;
            let (model, data, settings) = target.open()?;
            let methods = method
                .iter()
                .map(|m| m.parse())
                .collect::<Result<Vec<retrace::attribution::MethodName>, _>>()
                .map_err(anyhow::Error::msg)?;
            let cfg = &model.info.unet;
            let (job, bar) = terminal_job()?;
            let q = match (query, seed) {
                (Some(path), _) => retrace::attribution::load_query_image(&path, cfg.image_channels, cfg.sample_size)
                    .map_err(anyhow::Error::msg)?,
                (None, seed) => {
                    let config = SamplerConfig {
                        kind: SamplerKind::Ddim,
                        steps: 100,
                    };
                    retrace::attribution::query::generate_query(
                        &model,
                        seed.unwrap_or(0),
                        &config,
                        &dev.device,
                        &job,
                        |_, _, _| {},
                    )
                    .map_err(anyhow::Error::msg)?
                    .context("sampling cancelled")?
                }
            };
            eprintln!("query: {}", q.description);
            let request = retrace::attribution::MethodSettings {
                methods,
                influence: influence.settings(),
            };
            let scores = retrace::attribution::attribute(&model, &data, &q, &request, &settings, &dev.device, &job)
                .map_err(anyhow::Error::msg)?;
            bar.finish();
            let Some(scores) = scores else { bail!("cancelled") };
            let file = retrace::attribution::scores::AttributionFile {
                retrace_version: retrace::VERSION.to_owned(),
                model: model.root.display().to_string(),
                data: data.name.clone(),
                query: serde_json::json!({
                    "description": q.description,
                    "seed": seed,
                    "image": retrace::report::png_data_uri(
                        &retrace::diffusion::images::unit_to_bytes(&q.pixels),
                        q.shape,
                        1
                    ),
                }),
                device: dev.name.clone(),
                methods: scores
                    .iter()
                    .map(|s| retrace::attribution::scores::MethodResult::from_scores(s, &data.class_names))
                    .collect(),
            };
            let bytes = if out.extension().is_some_and(|e| e == "csv") {
                file.to_csv().into_bytes()
            } else {
                serde_json::to_vec_pretty(&file)?
            };
            retrace::files::write_atomic(&out, &bytes)?;
            for m in &file.methods {
                let best: Vec<String> = m
                    .ranking
                    .iter()
                    .take(top)
                    .map(|e| format!("#{} {} ({:.3e})", e.id, e.class, e.total))
                    .collect();
                println!("{:>7}: {}", m.method, best.join(", "));
            }
            println!("wrote {}", out.display());
        }
        Command::Gui { model, data } => {
            let session = device::choose_shared(cli.device).and_then(|dev| {
                eprintln!("compute device: {dev}");
                retrace::session::Session::open(&model.unwrap_or_else(bundled_model_dir), data.as_deref(), dev)
            });
            retrace::app::run(session).map_err(anyhow::Error::msg)?;
        }
        Command::Report { scores, out, data, top } => {
            retrace::report::ReportFormat::from_path(&out).map_err(anyhow::Error::msg)?;
            let bytes = std::fs::read(&scores).with_context(|| format!("cannot read {}", scores.display()))?;
            let file: retrace::attribution::scores::AttributionFile = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a scores file of retrace attribute", scores.display()))?;
            let spec: DataSpec = data.unwrap_or_else(|| file.data.clone()).parse()?;
            let dataset = Dataset::load(&spec)?;
            let methods = file
                .methods
                .iter()
                .map(|m| m.to_scores(&dataset))
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::msg)?;
            let uri = file.query["image"]
                .as_str()
                .context("the scores file holds no query image (written by an older retrace?)")?;
            let (query, shape) =
                retrace::report::decode_png_data_uri(uri, dataset.channels).map_err(anyhow::Error::msg)?;
            if shape != [dataset.channels, dataset.height, dataset.width] {
                bail!(
                    "the query image is {shape:?} but the training images are {}×{}",
                    dataset.height,
                    dataset.width
                );
            }
            let input = retrace::report::ReportInput {
                query: &query,
                query_description: file.query["description"].as_str().unwrap_or(""),
                data: &dataset,
                methods: &methods,
                top_k: top,
                device: &file.device,
                model: &file.model,
            };
            retrace::report::write_report(&out, &input).map_err(anyhow::Error::msg)?;
            println!(
                "wrote {} ({} methods, top {top} per side)",
                out.display(),
                methods.len()
            );
        }
        Command::Info { path } => info(&path)?,
        Command::Eval { command } => {
            let dev = compute_device(cli.device)?;
            let (job, bar) = terminal_job()?;
            let outcome = cli::eval::run(command, &dev, &job);
            bar.finish();
            outcome?;
        }
        Command::Bench {
            model,
            config,
            batch,
            iterations,
            fit_images,
            synthetic_images,
        } => {
            let dev = compute_device(cli.device)?;
            let (cfg, net, what) = match config {
                Some(name) => (
                    named_config(
                        &name,
                        &retrace::data::Dataset::load(&DataSpec::bundled(Default::default()))?,
                    )?,
                    None,
                    format!("preset {name}"),
                ),
                None => {
                    let dir = ModelDir::open(&model.unwrap_or_else(bundled_model_dir))?;
                    let (net, _) = dir.load_latest(&dev.device)?;
                    (dir.info.unet.clone(), Some(net), dir.root.display().to_string())
                }
            };
            let net_for_features = net.clone().unwrap_or_else(|| cfg.init(&dev.device));
            let r = retrace::bench::forward_backward(&cfg, net, batch, iterations, &dev.device);
            let features = retrace::bench::feature_throughput(
                &cfg,
                &net_for_features,
                Default::default(),
                batch,
                iterations,
                &dev.device,
            );
            println!("model: {what} ({:.2} GFLOP per example forward)", r.forward_flops / 1e9);
            println!("device: {}", dev.name);
            println!(
                "forward+backward: {:.1} example·timesteps/s at batch {} ({} batches), {:.1} GFLOP/s",
                r.examples_per_second, r.batch, r.iterations, r.gflops
            );
            println!(
                "gradient features (capture + projection, k = {}): {features:.1} example·timesteps/s, {:.2}× forward+backward",
                retrace::grad::ProjectionConfig::default().k_in,
                features / r.examples_per_second
            );
            if fit_images > 0 {
                let c = retrace::bench::curvature_fit(&cfg, &net_for_features, fit_images, 10, batch, &dev.device)
                    .map_err(anyhow::Error::msg)?;
                println!(
                    "curvature fit on {} points: factors {:.1} s ({:.1} points/s), eigendecomposition {:.1} s (largest factor {}), EK-FAC correction {:.1} s ({:.1} points/s)",
                    c.points,
                    c.factor_seconds,
                    c.points as f64 / c.factor_seconds,
                    c.eigen_seconds,
                    c.largest_factor,
                    c.correction_seconds,
                    c.points as f64 / c.correction_seconds
                );
            }
            if synthetic_images > 0 {
                let shape = [cfg.image_channels, cfg.sample_size, cfg.sample_size];
                let shapes = retrace::grad::model_layer_shapes(&net_for_features, shape, &dev.device);
                let q = retrace::bench::synthetic_query_latency(
                    synthetic_images,
                    10,
                    &shapes,
                    retrace::index::Storage::F16,
                    &dev.device,
                )
                .map_err(anyhow::Error::msg)?;
                println!(
                    "synthetic index: {} images × {} buckets × {} features, f16, {:.2} GB ({:.1} KB per image); opened and verified in {:.1} s",
                    q.images,
                    q.buckets,
                    q.dim,
                    q.index_bytes as f64 / 1e9,
                    q.index_bytes as f64 / q.images as f64 / 1024.0,
                    q.open_seconds
                );
                for (name, seconds) in &q.methods {
                    println!("  query scoring, {name}: {:.0} ms", seconds * 1e3);
                }
            }
        }
    }
    Ok(())
}

fn named_config(name: &str, data: &Dataset) -> Result<UNetConfig> {
    let cfg = UNetConfig::named(name, data.channels, data.height)
        .with_context(|| format!("unknown config {name:?}; expected one of {CONFIG_NAMES:?}"))?;
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("config {name} does not fit {}: {e}", data.name))?;
    Ok(cfg)
}

fn parse_seeds(seed: Option<u64>, seeds: Option<&str>) -> Result<Vec<u64>> {
    match (seed, seeds) {
        (_, Some(range)) => {
            let (a, b) = range
                .split_once("..")
                .with_context(|| format!("--seeds {range:?} is not A..B"))?;
            let (a, b): (u64, u64) = (a.trim().parse()?, b.trim().parse()?);
            if b <= a || b - a > 1024 {
                bail!("--seeds {range:?} must name 1 to 1024 seeds (A..B, B excluded)");
            }
            Ok((a..b).collect())
        }
        (Some(s), None) => Ok(vec![s]),
        (None, None) => Ok(vec![0]),
    }
}

fn pick_checkpoint(dir: &ModelDir, step: Option<usize>) -> Result<retrace::diffusion::CheckpointEntry> {
    let all = dir.checkpoints()?;
    match step {
        None => all
            .last()
            .cloned()
            .with_context(|| format!("{} holds no checkpoint yet", dir.root.display())),
        Some(s) => all.iter().find(|c| c.state.step == s).cloned().with_context(|| {
            let steps: Vec<usize> = all.iter().map(|c| c.state.step).collect();
            format!("no checkpoint at step {s}; available: {steps:?}")
        }),
    }
}

fn save_png(picture: &image::RgbImage, out: &Path) -> Result<()> {
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut bytes = Vec::new();
    picture.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
    retrace::files::write_atomic(out, &bytes)?;
    Ok(())
}

fn info(path: &str) -> Result<()> {
    let p = Path::new(path);
    if p.join("model.json").is_file() {
        let dir = ModelDir::open(p)?;
        let i = &dir.info;
        let net = i.unet.init(&burn::tensor::Device::flex());
        println!("model directory {}", p.display());
        println!(
            "  architecture: U-Net, widths {:?}, attention {:?}, {} resnet(s) per level, {} parameters",
            i.unet.block_out_channels,
            i.unet.attention,
            i.unet.layers_per_block,
            burn::module::Module::num_params(&net)
        );
        println!(
            "  images: {}×{}×{}",
            i.unet.image_channels, i.unet.sample_size, i.unet.sample_size
        );
        println!(
            "  schedule: linear β {}…{}, T = {}",
            i.schedule.beta_start, i.schedule.beta_end, i.schedule.steps
        );
        println!(
            "  data: {} ({} images, hash {}…)",
            i.data_spec,
            i.data_len,
            &i.data_hash[..16]
        );
        println!("  trained with: {}", i.train.command);
        for c in dir.checkpoints()? {
            println!(
                "  checkpoint step {:>7}  epoch {:>6.1}  lr {:.2e}  loss {:.4}  {}",
                c.state.step,
                c.state.epoch,
                c.state.learning_rate,
                c.state.loss,
                c.dir.display()
            );
        }
        return Ok(());
    }
    let spec: DataSpec = path
        .parse()
        .with_context(|| format!("{path} is neither a model directory nor a dataset spec"))?;
    let ds = Dataset::load(&spec)?;
    println!("dataset {spec}");
    println!(
        "  {} images of {}×{}×{}, content hash {}",
        ds.len(),
        ds.channels,
        ds.height,
        ds.width,
        ds.content_hash()
    );
    for (k, (name, n)) in ds.class_names.iter().zip(ds.class_counts()).enumerate() {
        println!("  class {k:>2} {name:<14} {n}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_has_no_clashing_arguments() {
        super::Cli::command().debug_assert();
        // Flattened argument groups share one namespace of ids: a clash only shows in parsing.
        for args in [
            &["retrace", "eval", "remove-topk", "--k", "20", "--projection-k", "16"][..],
            &["retrace", "eval", "overlap", "--k", "5", "--projection-k", "16"],
            &["retrace", "eval", "lds", "--projection-k", "16", "--draws", "4"],
            &["retrace", "index", "--projection-k", "16", "--buckets", "5"],
        ] {
            if let Err(e) = <super::Cli as clap::Parser>::try_parse_from(args) {
                panic!("{args:?}: {e}");
            }
        }
    }
}
