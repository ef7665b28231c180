//! How training images become an index: the timestep plan, the projection, the checkpoints,
//! the storage and the directory ([`IndexSettings`]), shared by `retrace index`, `retrace
//! attribute`, the viewer and the evaluation; [`IndexSettings::ensure`] builds (or resumes) and
//! opens the index they describe.

use std::path::PathBuf;

use burn::tensor::Device;

use super::{Index, IndexError, IndexSpec, Storage};
use crate::data::Dataset;
use crate::diffusion::{CheckpointEntry, Measurement, ModelDir};
use crate::grad::{ProjectionConfig, TimestepPlan};
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
    /// k = 16, f32, in the user's cache ([`super::default_index_dir`]). The LDS table's
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
        settings.dir = super::default_index_dir(&model.root).join(settings.slug());
        settings
    }

    /// These settings, checked, with their directory renamed after [`Self::slug`] beside the
    /// current one: what the viewer applies when the user changes buckets, draws, k,
    /// checkpoints or storage, so indexes of different settings live side by side.
    pub fn relocated(mut self) -> Result<Self, IndexError> {
        let plan = &self.plan;
        let checked = TimestepPlan::new(plan.steps, plan.buckets, plan.draws, plan.seed)?;
        self.plan = TimestepPlan {
            shared_noise: plan.shared_noise,
            ..checked
        };
        if self.projection.k_in == 0 || self.projection.k_out == 0 {
            return Err(IndexError::Invalid("the projection needs k of at least 1".into()));
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
            Measurement::MeanOutput => "-mean",
        }
    }

    /// These settings for gradients of `measurement`, in their own directory beside these.
    pub fn for_measurement(&self, measurement: Measurement) -> Result<Self, IndexError> {
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
    ) -> Result<IndexSpec<'a>, IndexError> {
        let mut checkpoints: Vec<CheckpointEntry> = model.checkpoints()?;
        if checkpoints.is_empty() {
            return Err(model.no_checkpoint().into());
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

    /// Builds the index if needed (resuming a partial one) and opens it, verified.
    pub fn ensure(
        &self,
        model: &ModelDir,
        data: &Dataset,
        device: &Device,
        job: &JobContext,
    ) -> Result<Index, IndexError> {
        let spec = self.spec(model, data, &self.dir, Shard::ALL, device)?;
        let index = spec.build(job)?;
        Index::open_with(
            &index.dir,
            &index.manifest.key,
            super::Verification::OnChange,
            device,
            job,
        )
    }

    /// Builds (or resumes) shard `shard` of the index, in its own directory under this one
    /// ([`super::shards::shard_dir`]), for `retrace index merge` to join. Returns the
    /// shard's manifest.
    pub fn build_shard(
        &self,
        model: &ModelDir,
        data: &Dataset,
        shard: Shard,
        device: &Device,
        job: &JobContext,
    ) -> Result<super::Manifest, IndexError> {
        let dir = super::shards::shard_dir(&self.dir, shard);
        let spec = self.spec(model, data, &dir, shard, device)?;
        Ok(spec.build(job)?.manifest)
    }
}
