//! One attribution request end to end: make sure the index exists, featurise the query at every
//! indexed checkpoint, and run the requested methods. The CLI and the viewer both call this.

use std::path::PathBuf;
use std::str::FromStr;

use burn::tensor::Device;

use super::{CheckpointFeatures, GradientInputs, Method, Query, ReTrac, Scores, TracIn, pixel_cosine};
use crate::data::Dataset;
use crate::diffusion::{CheckpointEntry, Measurement, ModelDir, Schedule};
use crate::grad::{Examples, FeatureRun, ProjectionConfig, TimestepPlan};
use crate::index::{Index, IndexSpec, Storage};
use crate::jobs::JobContext;

/// The methods `retrace attribute` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodName {
    /// Diffusion-TracIn.
    TracIn,
    /// Diffusion-ReTrac.
    ReTrac,
    /// Pixel-space cosine similarity.
    Pixel,
}

impl MethodName {
    /// The name the method's [`Scores`] carry (and the command line uses).
    pub fn name(self) -> &'static str {
        match self {
            Self::TracIn => TracIn.name(),
            Self::ReTrac => ReTrac.name(),
            Self::Pixel => "pixel",
        }
    }
}

impl FromStr for MethodName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "tracin" => Ok(Self::TracIn),
            "retrac" => Ok(Self::ReTrac),
            "pixel" => Ok(Self::Pixel),
            other => Err(format!("unknown method {other:?}; expected tracin, retrac or pixel")),
        }
    }
}

/// Which checkpoints to index and sum over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointChoice {
    /// Every checkpoint of the model directory.
    All,
    /// Only the newest.
    Last,
}

impl FromStr for CheckpointChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(Self::All),
            "last" => Ok(Self::Last),
            _ => Err(format!("--checkpoints must be all or last, not {s:?}")),
        }
    }
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
    /// (image, point) pairs per batch.
    pub batch_size: usize,
    /// Training images per index chunk (the unit of resumption).
    pub chunk_size: usize,
}

impl IndexSettings {
    /// Builds the index if needed (resuming a partial one) and opens it, verified. `Ok(None)`
    /// when cancelled.
    pub fn ensure(
        &self,
        model: &ModelDir,
        data: &Dataset,
        device: &Device,
        job: &JobContext,
    ) -> Result<Option<Index>, String> {
        let mut checkpoints: Vec<CheckpointEntry> = model.checkpoints().map_err(|e| e.to_string())?;
        if self.checkpoints == CheckpointChoice::Last {
            checkpoints = checkpoints.split_off(checkpoints.len().saturating_sub(1));
        }
        let spec = IndexSpec {
            dir: &self.dir,
            model,
            checkpoints,
            data,
            plan: self.plan.clone(),
            projection: self.projection,
            storage: self.storage,
            chunk_size: self.chunk_size,
            batch_size: self.batch_size,
            device,
        };
        let Some(index) = spec.build(job).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        Index::open(&index.dir, &index.manifest.key, device)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

/// Runs `methods` for `query`. `Ok(None)` when cancelled.
pub fn attribute(
    model: &ModelDir,
    data: &Dataset,
    query: &Query,
    methods: &[MethodName],
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
    let mut out = Vec::new();
    let gradient_methods: Vec<&dyn Method> = methods
        .iter()
        .filter_map(|m| match m {
            MethodName::TracIn => Some(&TracIn as &dyn Method),
            MethodName::ReTrac => Some(&ReTrac as &dyn Method),
            MethodName::Pixel => None,
        })
        .collect();
    if !gradient_methods.is_empty() {
        let Some(index) = settings.ensure(model, data, device, job)? else {
            return Ok(None);
        };
        let schedule = Schedule::new(&model.info.schedule);
        let all = model.checkpoints().map_err(|e| e.to_string())?;
        let mut checkpoints = Vec::new();
        for (i, indexed) in index.manifest.checkpoints.iter().enumerate() {
            let entry = all
                .iter()
                .find(|c| c.state.step == indexed.step)
                .ok_or("an indexed checkpoint is missing from the model")?;
            let net = model.load_model(entry, device).map_err(|e| e.to_string())?;
            let run = FeatureRun {
                model: &net,
                schedule: &schedule,
                plan: &index.manifest.key.plan,
                projector: &index.projector,
                measurement: Measurement::Loss,
                batch_size: settings.batch_size,
                device,
            };
            let examples = Examples {
                ids: vec![u64::MAX],
                shape: query.shape,
                pixels: query.pixels.clone(),
            };
            let Some(query_features) = run.run(&examples, job)? else {
                return Ok(None);
            };
            checkpoints.push(CheckpointFeatures {
                step: indexed.step,
                learning_rate: indexed.learning_rate,
                train: index.features(i).map_err(|e| e.to_string())?,
                query: query_features,
            });
        }
        let inputs = GradientInputs {
            checkpoints,
            plan: index.manifest.key.plan.clone(),
            ids: data.ids.clone(),
            labels: data.labels.clone(),
            parameters: serde_json::json!({
                "projection": index.manifest.key.projection,
                "measurement": Measurement::Loss,
                "storage": index.manifest.key.storage,
                "query": query.description,
            }),
            device: device.clone(),
        };
        for m in gradient_methods {
            out.push(m.score(&inputs)?);
        }
    }
    if methods.contains(&MethodName::Pixel) {
        out.push(pixel_cosine(data, &query.pixels, model.info.schedule.steps, device)?);
    }
    // Keep the order the user asked for.
    out.sort_by_key(|s| methods.iter().position(|m| m.name() == s.method).unwrap_or(usize::MAX));
    Ok(Some(out))
}
