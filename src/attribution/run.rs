//! One attribution request end to end: the index settings, the request (methods and
//! parameters), and [`attribute`], which runs the methods over one shared [`Context`]. The CLI,
//! the viewer and the evaluation all call it.

use std::path::PathBuf;

use burn::tensor::Device;

use super::context::Context;
use super::registry::{Parameters, lookup};
use super::{Query, Scores};
use crate::data::Dataset;
use crate::diffusion::{CheckpointEntry, Measurement, ModelDir};
use crate::grad::{ProjectionConfig, TimestepPlan};
use crate::index::{Index, IndexSpec, Storage};
use crate::jobs::JobContext;
use crate::shard::Shard;

/// Which checkpoints to index and sum over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckpointChoice {
    /// Every checkpoint of the model directory.
    All,
    /// Only the newest.
    Last,
}

/// Index settings shared by `retrace index` and `retrace attribute`.
#[derive(Clone, Debug)]
pub struct IndexSettings {
    /// Index directory.
    pub dir: PathBuf,
    /// Timestep plan.
    pub plan: TimestepPlan,
    /// Projection.
    pub projection: ProjectionConfig,
    /// Checkpoints.
    pub checkpoints: CheckpointChoice,
    /// Value storage.
    pub storage: Storage,
    /// What the training gradients differentiate: the loss, except for D-TRAK's index.
    pub measurement: Measurement,
    /// (image, point) pairs per batch.
    pub batch_size: usize,
    /// Training images per index chunk (the unit of resumption).
    pub chunk_size: usize,
}

impl IndexSettings {
    /// The default settings for a model: its last checkpoint, 10 buckets of one shared draw,
    /// k = 16, f32, in the user's cache ([`crate::index::default_index_dir`]). The LDS table's
    /// development queries chose them (README, "Are the rankings right?").
    pub fn standard(model: &ModelDir) -> Self {
        let mut settings = Self {
            dir: PathBuf::new(),
            plan: TimestepPlan::new(model.info.schedule.steps, 10, 1, 0)
                .unwrap_or_else(|_| TimestepPlan::new(model.info.schedule.steps, 1, 1, 0).expect("one bucket fits")),
            projection: ProjectionConfig::default(),
            checkpoints: CheckpointChoice::Last,
            storage: Storage::F32,
            measurement: Measurement::Loss,
            batch_size: 32,
            chunk_size: 100,
        };
        settings.dir = crate::index::default_index_dir(&model.root).join(settings.slug());
        settings
    }

    /// These settings, checked, with their directory renamed after [`Self::slug`] beside the
    /// current one: what the viewer applies when the user changes buckets, draws, k,
    /// checkpoints or storage, so indexes of different settings live side by side.
    pub fn relocated(mut self) -> Result<Self, String> {
        let plan = &self.plan;
        let checked = TimestepPlan::new(plan.steps, plan.buckets, plan.draws, plan.seed)?;
        self.plan = TimestepPlan {
            shared_noise: plan.shared_noise,
            ..checked
        };
        if self.projection.k_in == 0 || self.projection.k_out == 0 {
            return Err("the projection needs k of at least 1".into());
        }
        let parent = self.dir.parent().map(PathBuf::from).unwrap_or_default();
        self.dir = parent.join(self.slug());
        Ok(self)
    }

    /// A short name of the settings, so indexes built with different settings for one model
    /// live side by side: `last-b10x1-k8-s0-shared-f32`.
    pub fn slug(&self) -> String {
        format!(
            "{}-b{}x{}-k{}x{}-s{}-{}-{}",
            match self.checkpoints {
                CheckpointChoice::All => "all",
                CheckpointChoice::Last => "last",
            },
            self.plan.buckets,
            self.plan.draws,
            self.projection.k_in,
            self.projection.k_out,
            self.plan.seed,
            if self.plan.shared_noise {
                "shared"
            } else {
                "per-example"
            },
            match self.storage {
                Storage::F32 => "f32",
                Storage::F16 => "f16",
            }
        ) + match self.measurement {
            Measurement::Loss => "",
            Measurement::ElboLoss => "-elbo",
            Measurement::SquareNorm => "-sqnorm",
        }
    }

    /// These settings for gradients of `measurement`, in their own directory beside these.
    pub fn for_measurement(&self, measurement: Measurement) -> Result<Self, String> {
        Self {
            measurement,
            ..self.clone()
        }
        .relocated()
    }

    /// What building this index for `model` and `data` takes: the checkpoints chosen, in
    /// `dir`, restricted to `shard`.
    fn spec<'a>(
        &'a self,
        model: &'a ModelDir,
        data: &'a Dataset,
        dir: &'a std::path::Path,
        shard: Shard,
        device: &'a Device,
    ) -> Result<IndexSpec<'a>, String> {
        let mut checkpoints: Vec<CheckpointEntry> = model.checkpoints().map_err(|e| e.to_string())?;
        if checkpoints.is_empty() {
            return Err(model.no_checkpoint().to_string());
        }
        if self.checkpoints == CheckpointChoice::Last {
            checkpoints = checkpoints.split_off(checkpoints.len().saturating_sub(1));
        }
        Ok(IndexSpec {
            dir,
            model,
            checkpoints,
            data,
            plan: self.plan.clone(),
            projection: self.projection,
            storage: self.storage,
            measurement: self.measurement,
            chunk_size: self.chunk_size,
            batch_size: self.batch_size,
            shard,
            device,
        })
    }

    /// Builds the index if needed (resuming a partial one) and opens it, verified. `Ok(None)`
    /// when cancelled.
    pub fn ensure(
        &self,
        model: &ModelDir,
        data: &Dataset,
        device: &Device,
        job: &JobContext,
    ) -> Result<Option<Index>, String> {
        let spec = self.spec(model, data, &self.dir, Shard::ALL, device)?;
        let Some(index) = spec.build(job).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let opened = Index::open_with(
            &index.dir,
            &index.manifest.key,
            crate::index::Verification::OnChange,
            device,
            job,
        );
        match opened {
            Ok(index) => Ok(Some(index)),
            Err(crate::index::IndexError::Cancelled) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Builds (or resumes) shard `shard` of the index, in its own directory under this one
    /// ([`crate::index::shards::shard_dir`]), for `retrace index merge` to join. Returns the
    /// shard's manifest; `Ok(None)` when cancelled.
    pub fn build_shard(
        &self,
        model: &ModelDir,
        data: &Dataset,
        shard: Shard,
        device: &Device,
        job: &JobContext,
    ) -> Result<Option<crate::index::Manifest>, String> {
        let dir = crate::index::shards::shard_dir(&self.dir, shard);
        let spec = self.spec(model, data, &dir, shard, device)?;
        Ok(spec.build(job).map_err(|e| e.to_string())?.map(|index| index.manifest))
    }
}

/// What to compute for a query: the methods (registry names, [`super::registry::lookup`]) and
/// their parameters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MethodSettings {
    /// Methods, in the order their scores are returned.
    pub methods: Vec<String>,
    /// Parameter values (defaults where not set).
    pub parameters: Parameters,
}

impl MethodSettings {
    /// `methods` with default parameters.
    pub fn new(methods: &[&str]) -> Self {
        Self {
            methods: methods.iter().map(|m| m.to_string()).collect(),
            parameters: Parameters::default(),
        }
    }
}

/// Runs the requested methods for `query`, returning their scores in the order asked: each
/// method takes what it needs from one shared [`Context`], so the index, the query's features
/// and the curvature are made once. `Ok(None)` when cancelled.
pub fn attribute(
    model: &ModelDir,
    data: &Dataset,
    query: &Query,
    request: &MethodSettings,
    settings: &IndexSettings,
    device: &Device,
    job: &JobContext,
) -> Result<Option<Vec<Scores>>, String> {
    let cfg = &model.info.unet;
    let model_shape = [cfg.image_channels, cfg.sample_size, cfg.sample_size];
    if query.shape != model_shape {
        return Err(format!(
            "the query is {:?} but the model takes {:?}",
            query.shape, model_shape
        ));
    }
    if let Some(region) = &query.mask {
        check_region(region, cfg.sample_size, cfg.sample_size)?;
    }
    // Refuse an unknown name, or a query a method cannot take, before any work starts.
    for name in &request.methods {
        lookup(name)?.applies_to(query).map_err(|e| format!("{name}: {e}"))?;
    }
    let mut context = Context::new(model, data, query, settings, &request.parameters, device, job);
    let mut out = Vec::with_capacity(request.methods.len());
    for name in &request.methods {
        let Some(scores) = context.scores_of(name)? else {
            return Ok(None);
        };
        out.push(scores);
    }
    Ok(Some(out))
}

/// Checks a region's weights: H×W of them, each in [0, 1], not all zero.
pub fn check_region(region: &[f32], height: usize, width: usize) -> Result<(), String> {
    if region.len() != height * width {
        return Err(format!(
            "the region has {} pixels but the model takes {height}×{width} images",
            region.len()
        ));
    }
    if let Some(bad) = region.iter().find(|w| !(0.0..=1.0).contains(*w)) {
        return Err(format!("region weights lie in [0, 1]; found {bad}"));
    }
    if region.iter().all(|&w| w == 0.0) {
        return Err("the region is empty: paint or pass a mask with some white pixels".into());
    }
    Ok(())
}
