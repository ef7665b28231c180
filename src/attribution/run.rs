//! One attribution request end to end: make sure the index exists, featurise the query at every
//! indexed checkpoint, and run the requested methods. The CLI and the viewer both call this.

use std::path::PathBuf;
use std::str::FromStr;

use burn::tensor::Device;

use super::{
    CheckpointFeatures, GradientInputs, KfacInfluence, Method, Query, ReTrac, ReTracBucket, Scores, TracIn,
    TrainFeatures, pixel_cosine, tracin::checkpoint_weights,
};
use crate::curvature::store::CURVATURE_FORMAT_VERSION;
use crate::curvature::{
    CurvatureFit, CurvatureKey, Damping, Eigenvalues, Fisher, FitConfig, Preconditioner, Sharing, load_curvature,
    save_curvature,
};
use crate::data::Dataset;
use crate::diffusion::noise::{permutation, stream};
use crate::diffusion::{CheckpointEntry, Measurement, ModelDir, Schedule};
use crate::grad::{Examples, FeatureRun, Features, ProjectionConfig, TimestepPlan};
use crate::index::{Index, IndexSpec, Storage};
use crate::jobs::JobContext;

/// The methods `retrace attribute` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MethodName {
    /// Diffusion-TracIn.
    TracIn,
    /// Diffusion-ReTrac, as Xie et al. compute it.
    ReTrac,
    /// ReTrac's bucket-matched cosine variant.
    ReTracBucket,
    /// K-FAC influence function.
    Kfac,
    /// EK-FAC influence function.
    Ekfac,
    /// Pixel-space cosine similarity.
    Pixel,
}

impl MethodName {
    /// The name the method's [`Scores`] carry (and the command line uses).
    pub fn name(self) -> &'static str {
        match self {
            Self::TracIn => TracIn.name(),
            Self::ReTrac => ReTrac.name(),
            Self::ReTracBucket => ReTracBucket.name(),
            Self::Kfac => "kfac",
            Self::Ekfac => "ekfac",
            Self::Pixel => "pixel",
        }
    }

    /// Every method, in the order the CLI lists them.
    pub const ALL: [MethodName; 6] = [
        Self::ReTrac,
        Self::ReTracBucket,
        Self::TracIn,
        Self::Kfac,
        Self::Ekfac,
        Self::Pixel,
    ];

    /// True for the influence-function methods (K-FAC, EK-FAC), which take a measurement.
    pub fn is_influence(self) -> bool {
        self.eigenvalues().is_some()
    }

    /// The curvature eigenvalues of an influence-function method.
    fn eigenvalues(self) -> Option<Eigenvalues> {
        match self {
            Self::Kfac => Some(Eigenvalues::Kfac),
            Self::Ekfac => Some(Eigenvalues::Ekfac),
            _ => None,
        }
    }
}

impl FromStr for MethodName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "tracin" => Ok(Self::TracIn),
            "retrac" => Ok(Self::ReTrac),
            "retrac-bucket" => Ok(Self::ReTracBucket),
            "kfac" => Ok(Self::Kfac),
            "ekfac" => Ok(Self::Ekfac),
            "pixel" => Ok(Self::Pixel),
            other => Err(format!(
                "unknown method {other:?}; expected one of {}",
                Self::ALL.map(Self::name).join(", ")
            )),
        }
    }
}

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
        )
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

/// Settings of the influence-function methods (K-FAC, EK-FAC).
#[derive(Clone, Debug, PartialEq)]
pub struct InfluenceSettings {
    /// What the query's gradient differentiates.
    pub measurement: Measurement,
    /// Damping added to the curvature's eigenvalues.
    pub damping: Damping,
    /// GGN (Monte Carlo) or empirical Fisher.
    pub fisher: Fisher,
    /// Expand or reduce over convolution positions and attention tokens.
    pub sharing: Sharing,
    /// Training images the curvature is fitted on (a seeded subset; all when larger).
    pub fit_images: usize,
}

impl Default for InfluenceSettings {
    fn default() -> Self {
        Self {
            measurement: Measurement::Loss,
            damping: Damping::default(),
            fisher: Fisher::Ggn,
            sharing: Sharing::Expand,
            fit_images: 64,
        }
    }
}

/// What to compute for a query: the methods and their settings.
#[derive(Clone, Debug, PartialEq)]
pub struct MethodSettings {
    /// Methods, in the order their scores are returned.
    pub methods: Vec<MethodName>,
    /// Settings of K-FAC and EK-FAC.
    pub influence: InfluenceSettings,
}

impl MethodSettings {
    /// `methods` with default settings.
    pub fn new(methods: &[MethodName]) -> Self {
        Self {
            methods: methods.to_vec(),
            influence: InfluenceSettings::default(),
        }
    }
}

/// The query as a one-example set; its id keys nothing under shared noise.
fn query_example(query: &Query) -> Examples {
    Examples {
        ids: vec![u64::MAX],
        shape: query.shape,
        pixels: query.pixels.clone(),
    }
}

/// Fits (or loads) the curvature at the index's last checkpoint and returns one
/// [`KfacInfluence`] per requested variant, its query preconditioned and projected.
/// `Ok(None)` when cancelled.
#[allow(clippy::too_many_arguments)]
fn influence_methods(
    model: &ModelDir,
    data: &Dataset,
    query: &Query,
    variants: &[MethodName],
    settings: &InfluenceSettings,
    index: &Index,
    batch_size: usize,
    device: &Device,
    job: &JobContext,
) -> Result<Option<Vec<KfacInfluence>>, String> {
    let indexed = index
        .manifest
        .checkpoints
        .last()
        .ok_or("the index holds no checkpoint")?;
    let entry = model
        .checkpoints()
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|c| c.state.step == indexed.step)
        .ok_or("an indexed checkpoint is missing from the model")?;
    let net = model.load_model(&entry, device).map_err(|e| e.to_string())?;
    let schedule = Schedule::new(&model.info.schedule);
    let index_plan = &index.manifest.key.plan;
    let fit = FitConfig {
        fisher: settings.fisher,
        sharing: settings.sharing,
        // Independent (t, ε) per fitted image: the curvature is an expectation over them.
        plan: TimestepPlan {
            shared_noise: false,
            seed: index_plan.seed.wrapping_add(1),
            ..index_plan.clone()
        },
    };
    let mut chosen = permutation(&mut stream("curvature-fit", &[index_plan.seed]), data.len());
    chosen.truncate(settings.fit_images.clamp(1, data.len().max(1)));
    chosen.sort_unstable();
    let key = CurvatureKey {
        format_version: CURVATURE_FORMAT_VERSION,
        checkpoint_hash: entry.state.weights_sha256.clone(),
        data_hash: data.content_hash(),
        fit,
        fit_images: chosen.len(),
        layer_shapes: index.manifest.key.layer_shapes.clone(),
    };
    let fit_examples = Examples::from_dataset(data, &chosen);
    let fitter = CurvatureFit {
        model: &net,
        schedule: &schedule,
        config: &key.fit,
        examples: &fit_examples,
        batch_size,
        device,
    };
    let need_correction = variants.contains(&MethodName::Ekfac);
    let layers = match load_curvature(&index.dir, &key)? {
        Some(mut layers) => {
            if need_correction && layers.iter().any(|l| l.corrected.is_none()) {
                if !fitter.correct(&mut layers, job)? {
                    return Ok(None);
                }
                save_curvature(&index.dir, &key, &layers)?;
            }
            layers
        }
        None => {
            let Some(layers) = fitter.run(need_correction, job)? else {
                return Ok(None);
            };
            save_curvature(&index.dir, &key, &layers)?;
            layers
        }
    };
    let run = FeatureRun {
        model: &net,
        schedule: &schedule,
        plan: index_plan,
        projector: &index.projector,
        measurement: settings.measurement,
        batch_size,
        device,
    };
    let Some(gradients) = run.bucket_gradients(&query_example(query), job)? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for &variant in variants {
        let Some(eigenvalues) = variant.eigenvalues() else {
            continue;
        };
        let preconditioner = Preconditioner::new(&layers, eigenvalues, settings.damping, device)?;
        let projected = index.projector.project_full(&preconditioner.apply(&gradients)?);
        let [buckets, dim] = projected.dims();
        out.push(KfacInfluence {
            name: variant.name(),
            query: Features {
                values: crate::device::read_back(projected)?,
                examples: 1,
                buckets,
                dim,
            },
            parameters: serde_json::json!({
                "measurement": settings.measurement,
                "damping": settings.damping,
                "curvature": key.fit.fisher,
                "sharing": key.fit.sharing,
                "fit_images": key.fit_images,
                "fit_plan": key.fit.plan,
                "mean_layer_damping": preconditioner.damping.iter().sum::<f64>() / preconditioner.damping.len().max(1) as f64,
            }),
        });
    }
    Ok(Some(out))
}

/// Runs the requested methods for `query`, returning their scores in the order asked.
/// `Ok(None)` when cancelled.
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
    let methods = &request.methods;
    let mut out = Vec::new();
    let needs_index = methods.iter().any(|m| *m != MethodName::Pixel);
    if needs_index {
        let Some(index) = settings.ensure(model, data, device, job)? else {
            return Ok(None);
        };
        let index = std::sync::Arc::new(index);
        let schedule = Schedule::new(&model.info.schedule);
        let all = model.checkpoints().map_err(|e| e.to_string())?;
        let mut checkpoints = Vec::new();
        let weights = checkpoint_weights(
            &index
                .manifest
                .checkpoints
                .iter()
                .map(|c| (c.step, c.learning_rate))
                .collect::<Vec<_>>(),
        );
        let dot_product_methods = methods
            .iter()
            .any(|m| matches!(m, MethodName::TracIn | MethodName::ReTrac | MethodName::ReTracBucket));
        for (i, indexed) in index.manifest.checkpoints.iter().enumerate() {
            // Influence functions need only the last checkpoint's training features.
            let last = i + 1 == index.manifest.checkpoints.len();
            if !dot_product_methods && !last {
                continue;
            }
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
            let query_features = if dot_product_methods {
                let Some(f) = run.run(&query_example(query), job)? else {
                    return Ok(None);
                };
                f
            } else {
                Features {
                    values: Vec::new(),
                    examples: 0,
                    buckets: index.manifest.key.plan.buckets,
                    dim: index.manifest.dim,
                }
            };
            checkpoints.push(CheckpointFeatures {
                step: indexed.step,
                weight: weights[i],
                train: TrainFeatures::Indexed {
                    index: index.clone(),
                    checkpoint: i,
                },
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
        for m in methods {
            match m {
                MethodName::TracIn => out.push(TracIn.score(&inputs)?),
                MethodName::ReTrac => out.push(ReTrac.score(&inputs)?),
                MethodName::ReTracBucket => out.push(ReTracBucket.score(&inputs)?),
                _ => {}
            }
        }
        let variants: Vec<MethodName> = methods.iter().copied().filter(|m| m.eigenvalues().is_some()).collect();
        if !variants.is_empty() {
            let Some(influence) = influence_methods(
                model,
                data,
                query,
                &variants,
                &request.influence,
                &index,
                settings.batch_size,
                device,
                job,
            )?
            else {
                return Ok(None);
            };
            for m in influence {
                out.push(m.score(&inputs)?);
            }
        }
    }
    if methods.contains(&MethodName::Pixel) {
        out.push(pixel_cosine(data, &query.pixels, model.info.schedule.steps, device)?);
    }
    // Keep the order the user asked for.
    out.sort_by_key(|s| methods.iter().position(|m| m.name() == s.method).unwrap_or(usize::MAX));
    Ok(Some(out))
}
