//! Argument groups several subcommands share: influence-function settings, feature (index)
//! settings, and the model, data and index an `index` or `attribute` run works on.

use std::path::PathBuf;

use anyhow::{Result, bail};

use retrace::data::{DataSpec, Dataset, bundled_model_dir};
use retrace::diffusion::ModelDir;

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

impl IndexTarget {
    /// Opens the model and its data and picks the index settings and directory.
    pub(crate) fn open(&self) -> Result<(ModelDir, Dataset, retrace::attribution::IndexSettings)> {
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
