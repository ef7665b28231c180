//! Argument groups several subcommands share: influence-function settings, feature (index)
//! settings, and the model, data and index an `index` or `attribute` run works on.

use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};

use retrace::data::{DataSpec, Dataset, bundled_model_dir};
use retrace::diffusion::ModelDir;

/// `MODEL[@STEP]` of `--init-from`, resolved to a pinned checkpoint (default: the newest).
pub(crate) fn init_from_arg(text: &str) -> Result<retrace::diffusion::InitFrom> {
    let (model, step) = match text.rsplit_once('@') {
        Some((model, step)) if !model.is_empty() => match step.parse::<usize>() {
            Ok(step) => (model, Some(step)),
            Err(_) => bail!("--init-from {text}: the part after @ must be a checkpoint step"),
        },
        _ => (text, None),
    };
    Ok(retrace::diffusion::InitFrom::resolve(model, step)?)
}

/// Method parameters: the influence-function settings as flags of their own, and any
/// method's parameter as `--set key=value` (`retrace methods` lists them).
#[derive(clap::Args)]
pub(crate) struct MethodArgs {
    /// What the query's gradient differentiates (K-FAC/EK-FAC): loss, elbo or square-norm.
    #[arg(long, default_value = "loss")]
    measurement: retrace::diffusion::Measurement,
    /// Damping: a factor of each layer's mean eigenvalue (0.1), or an absolute value (abs:1e-8).
    #[arg(long, default_value = "0.1", value_parser = parse_damping)]
    damping: (f64, retrace::attribution::kfac::DampingScale),
    /// Curvature: ggn (Monte Carlo GGN) or empirical (empirical Fisher).
    #[arg(long, default_value = "ggn")]
    curvature: retrace::curvature::Fisher,
    /// K-FAC treatment of convolution positions and attention tokens: expand or reduce.
    #[arg(long, default_value = "expand")]
    sharing: retrace::curvature::Sharing,
    /// Training images the curvature is fitted on (a seeded subset; × buckets points per pass).
    #[arg(long, default_value_t = 64)]
    fit_images: usize,
    /// Any method parameter, as KEY=VALUE (repeatable; `retrace methods` lists them).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

impl MethodArgs {
    /// The parameter values: the flags, then every `--set`.
    pub(crate) fn parameters(&self) -> Result<retrace::attribution::Parameters> {
        let mut p = retrace::attribution::Parameters::default();
        let (damping, scale) = self.damping;
        p.set_choice("measurement", self.measurement)?;
        p.set("damping", &damping.to_string())?;
        p.set_choice("damping-scale", scale)?;
        p.set_choice("curvature", self.curvature)?;
        p.set_choice("sharing", self.sharing)?;
        p.set("fit-images", &self.fit_images.max(1).to_string())?;
        for pair in &self.set {
            p.set_pair(pair)?;
        }
        Ok(p)
    }
}

fn parse_damping(s: &str) -> Result<(f64, retrace::attribution::kfac::DampingScale)> {
    let (scale, number) = match s.strip_prefix("abs:") {
        Some(rest) => (retrace::attribution::kfac::DampingScale::Absolute, rest),
        None => (retrace::attribution::kfac::DampingScale::Relative, s),
    };
    let v: f64 = number
        .parse()
        .map_err(|_| anyhow!("damping {s:?} is not a number (or abs:NUMBER)"))?;
    if !(v.is_finite() && v > 0.0) {
        bail!("damping must be positive, not {s}");
    }
    Ok((v, scale))
}

/// The model, data and index settings shared by `index` and `attribute`.
#[derive(clap::Args)]
pub(crate) struct IndexTarget {
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
    checkpoints: retrace::index::CheckpointChoice,
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
    ) -> Result<retrace::index::IndexSettings> {
        let mut plan = retrace::grad::TimestepPlan::new(steps, self.buckets, self.draws, self.plan_seed)?;
        plan.shared_noise = shared_noise;
        if self.projection_k == 0 {
            bail!("the projection needs k of at least 1");
        }
        Ok(retrace::index::IndexSettings {
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
            measurement: retrace::diffusion::Measurement::Loss,
            batch_size: self.batch.max(1),
            chunk_size: 100,
        })
    }
}

impl IndexTarget {
    /// Opens the model and its data and picks the index settings and directory.
    pub(crate) fn open(&self) -> Result<(ModelDir, Dataset, retrace::index::IndexSettings)> {
        let model = ModelDir::open(&self.model_root())?;
        let spec: DataSpec = model.data_spec(self.data.as_deref())?.parse()?;
        let data = Dataset::load(&spec)?;
        model.check_data(&data)?;
        if let Some(warning) = model.unverified_data(&data) {
            eprintln!("{warning}");
        }
        let settings = self.index_settings(&model)?;
        Ok((model, data, settings))
    }

    /// The index directory: `--index`, or the default for the model and settings.
    fn dir_for(&self, root: &std::path::Path, settings: &retrace::index::IndexSettings) -> PathBuf {
        self.index
            .clone()
            .unwrap_or_else(|| retrace::index::default_index_dir(root).join(settings.slug()))
    }

    /// The index directory these options name, without loading the data.
    pub(crate) fn index_dir(&self) -> Result<PathBuf> {
        let root = self.model_root();
        Ok(self.index_settings(&ModelDir::open(&root)?)?.dir)
    }

    /// The model directory: `--model`, or the bundled model.
    pub(crate) fn model_root(&self) -> PathBuf {
        self.model.clone().unwrap_or_else(bundled_model_dir)
    }

    /// The training data spec given with `--data`, if any (the viewer's start).
    #[cfg(feature = "viewer")]
    pub(crate) fn data_spec(&self) -> Option<&str> {
        self.data.as_deref()
    }

    /// The index settings (and directory) these options name for `model`.
    pub(crate) fn index_settings(&self, model: &ModelDir) -> Result<retrace::index::IndexSettings> {
        let mut settings =
            self.features
                .settings(model.info.schedule.steps, !self.per_example_noise, PathBuf::new())?;
        settings.dir = self.dir_for(&model.root, &settings);
        Ok(settings)
    }
}

/// What a sample is generated for, and a loaded image attributed under: a class of a
/// class-conditional model, and the classifier-free guidance scale.
#[derive(clap::Args)]
pub(crate) struct ConditionArgs {
    /// Class (its name, e.g. Sneaker, or its label number) of a class-conditional model
    /// (`retrace sample` without it draws every class, one row each).
    #[arg(long = "class")]
    class: Option<String>,
    /// Classifier-free guidance scale (1: none; default 2 for a model with a null class, as
    /// Serrà et al. sample, else 1).
    #[arg(long)]
    guidance: Option<f64>,
}

impl ConditionArgs {
    /// The condition `--class` names for the model `info` describes: required by a
    /// class-conditional model, refused by an unconditional one.
    pub(crate) fn condition(&self, info: &retrace::diffusion::ModelInfo) -> Result<retrace::diffusion::Condition> {
        use retrace::diffusion::Condition;
        let conditional = info.architecture.condition_encoding().is_conditional();
        if self.class.is_none() && conditional {
            bail!(
                "the model is class-conditional: pass --class (one of: {})",
                class_list(info)
            );
        }
        Ok(self.named(info)?.unwrap_or(Condition::Unconditional))
    }

    /// The class `--class` names, checked against the model `info` describes (`None` when
    /// no class is given); refused for an unconditional model.
    pub(crate) fn named(&self, info: &retrace::diffusion::ModelInfo) -> Result<Option<retrace::diffusion::Condition>> {
        use retrace::diffusion::Condition;
        let conditional = info.architecture.condition_encoding().is_conditional();
        let condition = match (&self.class, conditional) {
            (None, _) => return Ok(None),
            (Some(class), false) => bail!("--class {class}: the model is unconditional; it takes no class"),
            (Some(class), true) => {
                let by_name = info.class_names.iter().position(|n| n.eq_ignore_ascii_case(class));
                match (by_name, class.parse::<u32>()) {
                    (Some(i), _) => Condition::Class(i as u32),
                    (None, Ok(label)) => Condition::Class(label),
                    (None, Err(_)) => bail!("--class {class}: no class of that name (one of: {})", class_list(info)),
                }
            }
        };
        info.architecture.condition_encoding().check(&condition)?;
        Ok(Some(condition))
    }

    /// The guidance scale `--guidance` gives, if any.
    #[cfg_attr(not(feature = "viewer"), allow(dead_code))] // the viewer's starting guidance
    pub(crate) fn guidance(&self) -> Option<f64> {
        self.guidance
    }

    /// The conditions `retrace sample` generates for: the class `--class` names; every class
    /// named by the model's data when a class-conditional model is given none (a grid with one
    /// row per class); no condition for an unconditional model.
    pub(crate) fn sample_conditions(
        &self,
        info: &retrace::diffusion::ModelInfo,
    ) -> Result<Vec<retrace::diffusion::Condition>> {
        let conditional = info.architecture.condition_encoding().is_conditional();
        if self.class.is_some() || !conditional || info.class_names.is_empty() {
            return Ok(vec![self.condition(info)?]);
        }
        Ok((0..info.class_names.len() as u32)
            .map(retrace::diffusion::Condition::Class)
            .collect())
    }

    /// The sampler `kind` with `steps` steps and the guidance asked for (or the default).
    pub(crate) fn sampler(
        &self,
        info: &retrace::diffusion::ModelInfo,
        kind: retrace::diffusion::SamplerKind,
        steps: usize,
    ) -> Result<retrace::diffusion::SamplerConfig> {
        let mut config =
            retrace::diffusion::SamplerConfig::for_model(kind, steps, &info.architecture.condition_encoding());
        if let Some(guidance) = self.guidance {
            config.guidance_scale = guidance;
        }
        config.validate(info.schedule.steps)?;
        Ok(config)
    }
}

/// The model's classes as `0 T-shirt/top, 1 Trouser, …`, for messages.
fn class_list(info: &retrace::diffusion::ModelInfo) -> String {
    info.class_names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{i} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
