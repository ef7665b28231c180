//! A viewer session: one model, its training data, the held-out data beside it, index settings
//! and the compute device — and the engine work the viewer asks for (generate a sample, rank
//! the training images), each run as a [`BackgroundJob`], and what the viewer needs to know of
//! the engine without reaching into it: the methods on offer ([`method_names`],
//! [`MethodInfo`]) and the bundled evaluation ([`load_evaluation`], [`evaluation_label`]). The
//! viewer holds only what these return (images as bytes, [`Scores`], plain descriptions); it
//! never touches a tensor.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::attribution::query::generate_query;
use crate::attribution::{AttributionError, MethodSettings, Needs, Parameter, Parameters, Query, Scores, attribute};
use crate::data::pixels::unit_to_bytes;
use crate::data::{DataSpec, Dataset, Split};
use crate::device::ComputeDevice;
use crate::diffusion::{Condition, ConditionEncoding, ModelDir, SamplerConfig, SamplerKind};
use crate::index::{IndexSettings, MANIFEST_FILE, Manifest};
use crate::jobs::{BackgroundJob, JobContext};

/// What the viewer shows of a method: its name, what it computes, what it needs and the
/// parameters it reads.
#[derive(Clone, Debug)]
pub struct MethodInfo {
    /// Its registry name.
    pub name: String,
    /// What it computes, in one line, with its reference.
    pub summary: &'static str,
    /// What it needs from the engine.
    pub needs: Needs,
    /// The parameters it reads.
    pub parameters: Vec<Parameter>,
}

/// The built-in methods' names, in the registry's order.
pub fn method_names() -> Vec<String> {
    crate::attribution::registry::names()
}

/// What the method (or ensemble) called `name` is; an error for a name no one knows.
pub fn method_info(name: &str) -> Result<MethodInfo, AttributionError> {
    let method = crate::attribution::registry::lookup(name)?;
    Ok(MethodInfo {
        name: method.name(),
        summary: method.summary(),
        needs: method.needs(),
        parameters: method.parameters(),
    })
}

/// The bundled benchmarks' evaluation tables (`retrace eval lds --out` wrote them), the
/// headline first: the garment benchmark (ten classes, a fine-tune of the bundled model, whose
/// samples are garments), then the first one (T-shirts and ankle boots, a tiny model trained from
/// scratch). Only those present are listed.
pub fn bundled_evaluations() -> Vec<(&'static str, std::path::PathBuf)> {
    use crate::eval::BuiltBenchmark;
    [
        ("Garments (10 classes, fine-tune)", BuiltBenchmark::garments_dir()),
        ("T-shirts and ankle boots (tiny model)", BuiltBenchmark::bundled_dir()),
    ]
    .into_iter()
    .map(|(name, dir)| (name, dir.join("results.json")))
    .filter(|(_, path)| path.is_file())
    .collect()
}

/// The headline bundled evaluation table ([`bundled_evaluations`]).
pub fn bundled_evaluation() -> std::path::PathBuf {
    bundled_evaluations().into_iter().next().map_or_else(
        || crate::eval::BuiltBenchmark::bundled_dir().join("results.json"),
        |(_, p)| p,
    )
}

/// Reads an evaluation table as `retrace eval lds --out` writes it.
pub fn load_evaluation(path: &Path) -> Result<crate::eval::table::EvalReport, crate::eval::EvalError> {
    crate::eval::table::EvalReport::load(path)
}

/// The name an evaluation table gives the row of `method` with `parameters`, with the query's
/// draws shared with the training images' or not: how the viewer finds a method's LDS.
pub fn evaluation_label(method: &str, parameters: &Parameters, shared_noise: bool) -> String {
    crate::eval::rows::EvalRow {
        method: crate::eval::rows::RowMethod::Attribution(method.to_owned()),
        parameters: parameters.clone(),
        shared_noise,
        only: None,
    }
    .label()
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The model directory cannot be read.
    #[error(transparent)]
    Checkpoint(#[from] crate::diffusion::CheckpointError),
    /// The data cannot be read.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// The data does not fit the model.
    #[error(transparent)]
    Model(#[from] crate::diffusion::ModelError),
}

impl crate::jobs::Cancellable for SessionError {}

/// Everything a viewer session works on. Cheap to share between threads (`Arc`).
pub struct Session {
    /// The model directory.
    pub model: ModelDir,
    /// Its training data.
    pub data: Dataset,
    /// The same source's held-out split, when it has one.
    pub held_out: Option<Dataset>,
    /// Where and how the index is (or will be) built.
    pub index: IndexSettings,
    /// The compute device.
    pub device: ComputeDevice,
    /// The index state last read, with its manifest's modification time and length: the
    /// manifest is parsed again only when it changes (the status bar asks every frame, and a
    /// large index's manifest is some 100 KB of JSON).
    index_state: Mutex<Option<(SystemTime, u64, IndexState)>>,
}

/// How far the index is.
#[derive(Clone, Debug, PartialEq)]
pub enum IndexState {
    /// Nothing built yet.
    Missing,
    /// Some chunks built: (done, total).
    Partial(usize, usize),
    /// Complete.
    Ready,
}

impl Session {
    /// Opens the model in `model_root` with `data` (default: the data it was trained on).
    pub fn open(model_root: &Path, data: Option<&str>, device: ComputeDevice) -> Result<Self, SessionError> {
        let model = ModelDir::open(model_root)?;
        let spec: DataSpec = model.data_spec(data)?.parse()?;
        let data = Dataset::load(&spec)?;
        model.check_data(&data)?;
        let held_out = (spec.split == Split::Train)
            .then(|| {
                let mut test = spec.clone();
                test.split = Split::Test;
                Dataset::load(&test).ok()
            })
            .flatten();
        let index = IndexSettings::standard(&model);
        Ok(Self::new(model, data, held_out, index, device))
    }

    /// A session of these parts, its index not yet read.
    pub fn new(
        model: ModelDir,
        data: Dataset,
        held_out: Option<Dataset>,
        index: IndexSettings,
        device: ComputeDevice,
    ) -> Self {
        Self {
            model,
            data,
            held_out,
            index,
            device,
            index_state: Mutex::new(None),
        }
    }

    /// The same model, data and device with other index settings.
    pub fn with_index(&self, index: IndexSettings) -> Self {
        Self::new(
            self.model.clone(),
            self.data.clone(),
            self.held_out.clone(),
            index,
            self.device.clone(),
        )
    }

    /// C×H×W of the model's images (pixels, also for a latent model).
    pub fn shape(&self) -> [usize; 3] {
        self.model.info.image_shape()
    }

    /// The classes a class-conditional model generates and attributes under, as (label,
    /// description from the training data's class names), the null class left out; `None` for
    /// an unconditional model.
    pub fn classes(&self) -> Option<Vec<(u32, String)>> {
        let info = &self.model.info;
        let encoding = info.architecture.condition_encoding();
        encoding.is_conditional().then(|| {
            let null = encoding.null_class();
            let count = match encoding {
                ConditionEncoding::OneHot { classes, .. } => classes,
                _ => info.class_names.len(),
            };
            (0..count as u32)
                .filter(|&c| Some(c) != null)
                .map(|c| (c, Condition::Class(c).describe(&info.class_names)))
                .collect()
        })
    }

    /// The viewer's first sampler settings: DDIM, 50 steps, and the model's default guidance.
    pub fn default_sampler(&self) -> SamplerConfig {
        SamplerConfig::for_model(
            SamplerKind::Ddim,
            50,
            &self.model.info.architecture.condition_encoding(),
        )
    }

    /// Whether the model can be sampled with classifier-free guidance (class-conditional, with
    /// a null class).
    pub fn can_guide(&self) -> bool {
        self.model.info.architecture.condition_encoding().null_class().is_some()
    }

    /// How far the index is, read from its manifest when it has changed since the last call.
    pub fn index_state(&self) -> IndexState {
        let path = self.index.dir.join(MANIFEST_FILE);
        let Some((modified, len)) = std::fs::metadata(&path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
        else {
            return IndexState::Missing;
        };
        let mut kept = self.index_state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((m, l, state)) = kept.as_ref()
            && (*m, *l) == (modified, len)
        {
            return state.clone();
        }
        let state = Self::read_index_state(&path);
        *kept = Some((modified, len, state.clone()));
        state
    }

    /// How far the index whose manifest is `path` is.
    fn read_index_state(path: &Path) -> IndexState {
        let Some(manifest) = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
        else {
            return IndexState::Missing;
        };
        let total: usize = manifest.checkpoints.iter().map(|c| c.chunks.len()).sum();
        let done: usize = manifest
            .checkpoints
            .iter()
            .map(|c| c.chunks.iter().filter(|k| k.is_some()).count())
            .sum();
        if manifest.is_complete() {
            IndexState::Ready
        } else {
            IndexState::Partial(done, total)
        }
    }

    /// Generates a sample under `condition` as a background job; `frame` receives the image (as
    /// bytes) after every denoising step, for a live preview.
    pub fn generate(
        self: &Arc<Self>,
        seed: u64,
        condition: Condition,
        config: SamplerConfig,
        wake: impl Fn() + Send + Sync + Clone + 'static,
        frame: impl Fn(Vec<u8>) + Send + 'static,
    ) -> BackgroundJob<Query> {
        let session = self.clone();
        BackgroundJob::spawn(format!("sampling seed {seed}"), wake, move |job: &JobContext| {
            generate_query(
                &session.model,
                seed,
                condition,
                &config,
                &session.device.device,
                job,
                |_, _, pixels| frame(unit_to_bytes(pixels)),
            )
        })
    }

    /// Reads an image file as a query in the model's format, as a background job: a large or
    /// hostile file may take long to decode, and the window must not wait for it.
    pub fn load_query(
        self: &Arc<Self>,
        path: &Path,
        wake: impl Fn() + Send + Sync + Clone + 'static,
    ) -> BackgroundJob<Query> {
        let [channels, size, _] = self.shape();
        let path = path.to_owned();
        let title = format!("reading {}", crate::files::file_name(&path));
        BackgroundJob::spawn(title, wake, move |job: &JobContext| {
            // Decoding cannot stop half-way; a load cancelled meanwhile gives nothing.
            let query = crate::attribution::load_query_image(&path, channels, size)?;
            job.stop_if_cancelled()?;
            Ok::<_, AttributionError>(query)
        })
    }

    /// Builds (or finishes) the index as a background job.
    pub fn build_index(self: &Arc<Self>, wake: impl Fn() + Send + Sync + Clone + 'static) -> BackgroundJob<()> {
        let session = self.clone();
        BackgroundJob::spawn("building the index", wake, move |job: &JobContext| {
            session
                .index
                .ensure(&session.model, &session.data, &session.device.device, job)
                .map(|_| ())
        })
    }

    /// Ranks the training images for `query` with the requested methods, as a background job.
    pub fn attribute(
        self: &Arc<Self>,
        query: Query,
        request: MethodSettings,
        wake: impl Fn() + Send + Sync + Clone + 'static,
    ) -> BackgroundJob<Vec<Scores>> {
        let session = self.clone();
        let names = &request.methods;
        BackgroundJob::spawn(format!("ranking with {}", names.join(", ")), wake, move |job| {
            attribute(
                &session.model,
                &session.data,
                &query,
                &request,
                &session.index,
                &session.device.device,
                job,
            )
        })
    }
}
