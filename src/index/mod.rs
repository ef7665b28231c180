//! The on-disk index of projected training-gradient features: `manifest.json` plus one binary
//! chunk file per (checkpoint, chunk of training images). Chunks are written to a temporary name
//! and renamed, and the manifest (rewritten atomically after every chunk) records each chunk's
//! SHA-256, so a build killed at any point resumes from the last complete chunk, and a damaged
//! file is detected when the index is opened. An index built for another model, dataset, plan
//! or projection is refused with a message naming what differs.

pub mod gpu;
pub mod kernels;
pub mod manifest;
pub mod scan;
pub mod settings;
pub mod shards;
pub mod summary;

use std::path::{Path, PathBuf};

use memmap2::Mmap;

pub use manifest::{INDEX_FORMAT_VERSION, IndexKey, IndexedCheckpoint, Manifest, Storage};
pub use settings::{CheckpointChoice, IndexSettings};
pub use summary::SummaryPart;
use summary::{ChunkSummary, summary_path};

/// The file in an index directory that describes it and records which chunks are built.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The file in an index directory that records its last full verification (a cache: not part
/// of the index's content).
pub const VERIFIED_STAMP: &str = VERIFIED_FILE;

use crate::data::Dataset;
use crate::diffusion::latent::{LatentError, VAE_DIR, training_latents, vae_sha256};
use crate::diffusion::{CheckpointEntry, CheckpointError, Measurement, ModelDir, ModelError, Schedule};
use crate::files::{sha256, write_atomic};
use crate::grad::{
    Examples, FeatureRun, Features, GradError, ProjectionConfig, Projector, TimestepPlan, model_layer_shapes,
};
use crate::jobs::JobContext;
use crate::shard::Shard;

/// Why an index could not be built or opened.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// File-system failure.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The index exists but was built from or with something else.
    #[error("the index in {dir} was built for another setting: {}. Delete it or choose another --index directory", .differences.join("; "))]
    Foreign {
        /// The index directory.
        dir: PathBuf,
        /// What differs.
        differences: Vec<String>,
    },
    /// A file is damaged or the index is unusable.
    #[error("{0}")]
    Invalid(String),
    /// A file of the index is not there: the index was removed (or is being rebuilt) while in
    /// use, or was never complete.
    #[error(
        "{0}: no such file: the index (or shard) is incomplete or was removed while in use; building it again restores it (`retrace index`, which resumes; in the viewer, the next ranking)"
    )]
    Missing(PathBuf),
    /// The job was cancelled (what was written stays, and a later build resumes from it).
    #[error("cancelled")]
    Cancelled,
    /// The model or its data cannot be used (a mismatch, unreadable weights).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The model directory cannot be read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The gradient features could not be computed.
    #[error(transparent)]
    Grad(GradError),
    /// A latent model's training latents could not be encoded or read.
    #[error(transparent)]
    Latent(LatentError),
}

crate::jobs::cancellable_error!(IndexError { Grad(GradError), Latent(LatentError) });

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IndexError + '_ {
    move |source| match source.kind() {
        std::io::ErrorKind::NotFound => IndexError::Missing(path.to_owned()),
        _ => IndexError::Io {
            path: path.to_owned(),
            source,
        },
    }
}

/// A failed atomic write of an index file, as an [`IndexError`].
fn written(e: crate::files::FileError) -> IndexError {
    io(&e.path)(e.source)
}

/// What to index.
pub struct IndexSpec<'a> {
    /// Index directory.
    pub dir: &'a Path,
    /// The model.
    pub model: &'a ModelDir,
    /// Checkpoints to index (oldest first).
    pub checkpoints: Vec<CheckpointEntry>,
    /// The training data the model was trained on.
    pub data: &'a Dataset,
    /// Timestep plan.
    pub plan: TimestepPlan,
    /// Projection.
    pub projection: ProjectionConfig,
    /// Value storage.
    pub storage: Storage,
    /// What the gradients differentiate (the loss for every method but D-TRAK).
    pub measurement: Measurement,
    /// Training images per chunk file.
    pub chunk_size: usize,
    /// (image, point) pairs per batch.
    pub batch_size: usize,
    /// The share of the chunks to build ([`Shard::ALL`] for the whole index; another shard
    /// builds its chunks only, for `retrace index merge` to join).
    pub shard: Shard,
    /// Compute device.
    pub device: &'a burn::tensor::Device,
}

/// An opened, complete index.
#[derive(Debug)]
pub struct Index {
    /// Its directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// The projection its features were made with.
    pub projector: Projector,
    /// Blocks of the index uploaded to a GPU, kept for the next query.
    device_cache: gpu::DeviceCache,
    /// The files scored so far, kept mapped: a mapping's page tables fill on first touch, so a
    /// later query reads them without a page fault.
    maps: scan::Mappings,
}

fn chunk_path(dir: &Path, step: usize, chunk: usize) -> PathBuf {
    dir.join(format!("ckpt-{step:07}-chunk-{chunk:05}.bin"))
}

/// Refuses features the index cannot store faithfully, naming the training image: NaN or
/// infinite values (a diverged model), and in f16 storage values beyond its range (±65,504),
/// which would otherwise become ±∞ and then NaN scores. `first` is the image of the first
/// row, and a row holds `row` values.
fn check_storable(values: &[f32], storage: Storage, first: usize, row: usize) -> Result<(), IndexError> {
    let limit = match storage {
        Storage::F32 => f32::MAX,
        Storage::F16 => half::f16::MAX.to_f32(),
    };
    let Some(at) = values.iter().position(|v| v.is_nan() || v.abs() > limit) else {
        return Ok(());
    };
    let image = first + at / row;
    let value = values[at];
    Err(IndexError::Invalid(if value.is_finite() {
        format!(
            "training image #{image}: a gradient feature of {value:e} exceeds what f16 storage holds \
             (±65504); build the index with f32 storage (without --f16)"
        )
    } else {
        format!(
            "training image #{image}: its gradient features hold {value} (the model's loss or \
             gradients overflow on it); check the checkpoint (`retrace info`) or retrain"
        )
    }))
}

fn encode(values: &[f32], storage: Storage) -> Vec<u8> {
    match storage {
        Storage::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Storage::F16 => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
    }
}

/// Appends the values `bytes` hold (little-endian, as `storage`) to `out`. f16 rows convert in
/// bulk (F16C instructions where the CPU has them).
fn decode(bytes: &[u8], storage: Storage, out: &mut Vec<f32>) {
    let start = out.len();
    match storage {
        Storage::F32 => match bytemuck::try_cast_slice::<u8, f32>(bytes) {
            Ok(values) if cfg!(target_endian = "little") => out.extend_from_slice(values),
            _ => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
        },
        Storage::F16 => match bytemuck::try_cast_slice::<u8, u16>(bytes) {
            Ok(bits) if cfg!(target_endian = "little") => {
                use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
                let halves: &[half::f16] = bits.reinterpret_cast();
                out.resize(start + halves.len(), 0.0);
                halves.convert_to_f32_slice(&mut out[start..]);
            }
            _ => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
            ),
        },
    }
}

impl IndexSpec<'_> {
    fn key(&self, layer_shapes: Vec<(usize, usize)>, vae_sha256: Option<String>) -> IndexKey {
        IndexKey {
            checkpoint_hashes: self
                .checkpoints
                .iter()
                .map(|c| c.state.weights_sha256.clone())
                .collect(),
            data_hash: self.data.content_hash(),
            plan: self.plan.clone(),
            projection: self.projection,
            layer_shapes,
            storage: self.storage,
            measurement: self.measurement,
            vae_sha256,
        }
    }

    /// Builds the index, or finishes a partial one. When cancelled, what is done stays on disk
    /// and a later call resumes from it.
    pub fn build(&self, job: &JobContext) -> Result<Index, IndexError> {
        if self.checkpoints.is_empty() {
            return Err(IndexError::Invalid("no checkpoint to index".into()));
        }
        self.model.check_data(self.data)?;
        let shape = self.model.info.architecture.shape();
        let first = self.model.load_model(&self.checkpoints[0], self.device)?;
        let shapes = model_layer_shapes(&first, shape, self.device);
        let latents = training_latents(self.model, self.data, self.device, job)?;
        let vae_sha256 = match latents {
            Some(_) => Some(vae_sha256(&self.model.root.join(VAE_DIR))?),
            None => None,
        };
        let key = self.key(shapes.clone(), vae_sha256);
        let projector = Projector::new(self.projection, &shapes, self.device);
        std::fs::create_dir_all(self.dir).map_err(io(self.dir))?;
        let _builder = build_lock(self.dir, job)?;
        let manifest_path = self.dir.join(MANIFEST_FILE);
        let shard = (self.shard != Shard::ALL).then_some(self.shard);
        let mut manifest = if manifest_path.is_file() {
            let m = read_manifest(self.dir)?;
            let mut differences = m.key.differences(&key);
            if m.shard != shard {
                let name = |s: Option<Shard>| s.map_or("the whole index".to_owned(), |s| format!("shard {s}"));
                differences.push(format!("sharding ({} vs {})", name(m.shard), name(shard)));
            }
            if !differences.is_empty() {
                return Err(IndexError::Foreign {
                    dir: self.dir.to_owned(),
                    differences,
                });
            }
            m
        } else {
            let chunks = self.data.len().div_ceil(self.chunk_size.max(1));
            Manifest {
                format_version: INDEX_FORMAT_VERSION,
                key,
                examples: self.data.len(),
                chunk_size: self.chunk_size.max(1),
                dim: projector.dim(),
                checkpoints: self
                    .checkpoints
                    .iter()
                    .map(|c| IndexedCheckpoint {
                        step: c.state.step,
                        learning_rate: c.state.learning_rate,
                        chunks: vec![None; chunks],
                        summaries: vec![None; chunks],
                    })
                    .collect(),
                shard,
            }
        };
        let schedule = Schedule::new(&self.model.info.schedule);
        let built: Vec<Vec<usize>> = (0..self.checkpoints.len())
            .map(|ci| {
                (0..manifest.chunks_per_checkpoint())
                    .filter(|&k| manifest.builds(ci, k))
                    .collect()
            })
            .collect();
        let chunk_size = manifest.chunk_size;
        let points = |k: usize| {
            let start = k * chunk_size;
            (self.data.len().min(start + chunk_size) - start) * self.plan.points_per_example()
        };
        let total: u64 = built.iter().flatten().map(|&k| points(k) as u64).sum();
        let mut done = 0u64;
        for (ci, entry) in self.checkpoints.iter().enumerate() {
            let (missing, written): (Vec<usize>, Vec<usize>) = built[ci]
                .iter()
                .partition(|&&k| manifest.checkpoints[ci].chunks[k].is_none());
            done += written.iter().map(|&k| points(k) as u64).sum::<u64>();
            if missing.is_empty() {
                continue;
            }
            let model = self.model.load_model(entry, self.device)?;
            let run = FeatureRun {
                model: &model,
                schedule: &schedule,
                plan: &self.plan,
                projector: &projector,
                measurement: self.measurement,
                batch_size: self.batch_size,
                device: self.device,
            };
            for k in missing {
                let start = k * manifest.chunk_size;
                let end = (start + manifest.chunk_size).min(self.data.len());
                let indices: Vec<usize> = (start..end).collect();
                let examples = Examples::from_dataset(self.data, latents.as_ref(), &indices);
                let base = done;
                let sub = JobContext {
                    cancel: job.cancel.clone(),
                    progress: std::sync::Arc::new(Offset {
                        base,
                        total,
                        inner: job.clone(),
                        step: entry.state.step,
                    }),
                };
                let features = run.run(&examples, &sub)?;
                write_chunk(self.dir, &mut manifest, ci, k, &features.values)?;
                done += points(k) as u64;
            }
        }
        write_manifest(self.dir, &manifest)?;
        // Chunks written before summaries existed get theirs now.
        summarise_missing(self.dir, &mut manifest)?;
        Ok(Index {
            dir: self.dir.to_owned(),
            manifest,
            projector,
            device_cache: Default::default(),
            maps: Default::default(),
        })
    }
}

/// Progress of one chunk, offset into the progress of the whole build.
struct Offset {
    base: u64,
    total: u64,
    inner: JobContext,
    step: usize,
}

impl crate::jobs::ProgressSink for Offset {
    fn update(&self, p: &crate::jobs::Progress) {
        self.inner.report(
            "indexing",
            self.base + p.done,
            self.total,
            format!("checkpoint step {}", self.step),
        );
    }
}

/// Writes chunk `k` of checkpoint `ci` (encoded in the manifest's storage) and its summary
/// file, and records both checksums in the manifest, all atomically.
fn write_chunk(dir: &Path, manifest: &mut Manifest, ci: usize, k: usize, values: &[f32]) -> Result<(), IndexError> {
    let storage = manifest.key.storage;
    let row = (manifest.key.plan.buckets * manifest.dim).max(1);
    check_storable(values, storage, k * manifest.chunk_size, row)?;
    let bytes = encode(values, storage);
    let path = chunk_path(dir, manifest.checkpoints[ci].step, k);
    write_atomic(&path, &bytes).map_err(written)?;
    // The summary is made from the stored (rounded) values, so that a summary derived later
    // from the chunk file is the same bytes.
    let mut stored = Vec::with_capacity(values.len());
    decode(&bytes, storage, &mut stored);
    let summary = write_summary(dir, manifest, ci, k, &stored)?;
    let c = &mut manifest.checkpoints[ci];
    c.summaries.resize(c.chunks.len(), None);
    c.chunks[k] = Some(sha256(&bytes));
    c.summaries[k] = Some(summary);
    write_manifest(dir, manifest)
}

/// Writes the summary file of chunk `k` of checkpoint `ci` from its (decoded) feature values;
/// returns its checksum.
fn write_summary(dir: &Path, manifest: &Manifest, ci: usize, k: usize, values: &[f32]) -> Result<String, IndexError> {
    let (b, d) = (manifest.key.plan.buckets, manifest.dim);
    let rows = values.len() / (b * d).max(1);
    let bytes = ChunkSummary::of(values, rows, b, d).encode(manifest.key.storage);
    let path = summary_path(dir, manifest.checkpoints[ci].step, k);
    write_atomic(&path, &bytes).map_err(written)?;
    Ok(sha256(&bytes))
}

/// Writes the summary file of every chunk that lacks one (an index built before summaries
/// existed), from its chunk file, and records them in the manifest. Returns whether any was
/// written.
fn summarise_missing(dir: &Path, manifest: &mut Manifest) -> Result<bool, IndexError> {
    let mut wrote = false;
    for ci in 0..manifest.checkpoints.len() {
        let chunks = manifest.checkpoints[ci].chunks.len();
        manifest.checkpoints[ci].summaries.resize(chunks, None);
        for k in 0..chunks {
            if manifest.checkpoints[ci].summaries[k].is_some() || manifest.checkpoints[ci].chunks[k].is_none() {
                continue;
            }
            let path = chunk_path(dir, manifest.checkpoints[ci].step, k);
            let mut values = Vec::new();
            decode(&map_file(&path)?, manifest.key.storage, &mut values);
            let sha = write_summary(dir, manifest, ci, k, &values).map_err(|e| {
                IndexError::Invalid(format!(
                    "the index in {} has no compact summaries and they could not be written ({e}): \
                     open a writable copy once, or rebuild it",
                    dir.display()
                ))
            })?;
            manifest.checkpoints[ci].summaries[k] = Some(sha);
            wrote = true;
        }
    }
    if wrote {
        write_manifest(dir, manifest)?;
    }
    Ok(wrote)
}

/// The name of the lock file an index build holds in its directory.
pub const BUILD_LOCK: &str = "build.lock";

/// Takes the index directory's build lock: an advisory lock on `build.lock` that the operating
/// system releases when its process ends, so a killed build never leaves it stuck. A second
/// build of the same directory (another `retrace index`, or the viewer's) waits for the first,
/// saying so, and then resumes from what the first wrote instead of computing it again.
/// [`IndexError::Cancelled`] when cancelled while waiting.
fn build_lock(dir: &Path, job: &JobContext) -> Result<std::fs::File, IndexError> {
    let path = dir.join(BUILD_LOCK);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    let mut said = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => {
                job.stop_if_cancelled()?;
                if !said {
                    job.report(
                        "waiting",
                        0,
                        0,
                        format!(
                            "another process is building the index in {}: waiting for it",
                            dir.display()
                        ),
                    );
                    said = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(IndexError::Io { path, source: e }),
        }
    }
}

/// Writes a complete index whose features come from `features(checkpoint, start, end)`
/// ([end − start, B, dim] values) instead of a model — for benchmarks at sizes no bundled
/// dataset has. `manifest` gives the key, sizes and checkpoints; its chunk list is filled in.
pub fn write_index(
    dir: &Path,
    mut manifest: Manifest,
    mut features: impl FnMut(usize, usize, usize) -> Vec<f32>,
) -> Result<(), IndexError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let chunks = manifest.chunks_per_checkpoint();
    for ci in 0..manifest.checkpoints.len() {
        manifest.checkpoints[ci].chunks = vec![None; chunks];
        manifest.checkpoints[ci].summaries = vec![None; chunks];
        for k in 0..chunks {
            let start = k * manifest.chunk_size;
            let end = (start + manifest.chunk_size).min(manifest.examples);
            let values = features(ci, start, end);
            write_chunk(dir, &mut manifest, ci, k, &values)?;
        }
    }
    Ok(())
}

/// The default index directory of a model: in the user's cache, named after the model
/// directory and a hash of its absolute path, so the source tree (and `assets/`) stays clean.
pub fn default_index_dir(model: &Path) -> PathBuf {
    let absolute = std::fs::canonicalize(model).unwrap_or_else(|_| model.to_owned());
    let hash = sha256(absolute.display().to_string().as_bytes());
    let name = absolute
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    crate::files::cache_root().join(format!("index-{name}-{}", &hash[..12]))
}

fn read_manifest(dir: &Path) -> Result<Manifest, IndexError> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    parse_manifest(&path, &bytes)
}

/// The manifest in `bytes`, read from `path`, of this retrace's format.
/// The key under which `manifest.json` holds the SHA-256 of the rest of itself.
const MANIFEST_CHECKSUM: &str = "checksum";

/// The checksum of a manifest's JSON value without its checksum field: of its compact
/// serialisation, whose keys serde_json orders, so that it does not depend on the layout.
fn manifest_checksum(value: &serde_json::Value) -> String {
    sha256(&serde_json::to_vec(value).expect("a JSON value serialises"))
}

fn parse_manifest(path: &Path, bytes: &[u8]) -> Result<Manifest, IndexError> {
    let invalid = |what: String| IndexError::Invalid(format!("{}: {what}", path.display()));
    let mut value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("unreadable index manifest: {e}")))?;
    // A manifest written before manifests carried a checksum has none; the next write adds it.
    if let Some(stored) = value.as_object_mut().and_then(|o| o.remove(MANIFEST_CHECKSUM))
        && stored.as_str() != Some(manifest_checksum(&value).as_str())
    {
        return Err(invalid(
            "the index manifest does not match its checksum (edited or damaged): rebuild the index, \
             or delete the directory"
                .into(),
        ));
    }
    let m: Manifest = serde_json::from_value(value).map_err(|e| invalid(format!("unreadable index manifest: {e}")))?;
    if m.format_version != INDEX_FORMAT_VERSION {
        return Err(invalid(format!(
            "index format {} but this retrace reads {INDEX_FORMAT_VERSION}; rebuild it",
            m.format_version
        )));
    }
    m.validate()
        .map_err(|e| invalid(format!("damaged index manifest: {e}; rebuild the index")))?;
    Ok(m)
}

/// A manifest's JSON value with its checksum field set to the checksum of the rest (replacing
/// any it had): what [`write_manifest`] stores, and what a test that edits a manifest on purpose
/// writes back.
pub fn seal_manifest(mut value: serde_json::Value) -> serde_json::Value {
    if let Some(object) = value.as_object_mut() {
        object.remove(MANIFEST_CHECKSUM);
    }
    let checksum = manifest_checksum(&value);
    if let Some(object) = value.as_object_mut() {
        object.insert(MANIFEST_CHECKSUM.into(), checksum.into());
    }
    value
}

fn write_manifest(dir: &Path, m: &Manifest) -> Result<(), IndexError> {
    let value = seal_manifest(serde_json::to_value(m).expect("a manifest serialises"));
    let json = serde_json::to_vec_pretty(&value).expect("a JSON value serialises");
    write_atomic(&dir.join(MANIFEST_FILE), &json).map_err(written)
}

/// What a full verification of an index saw, kept in `verified.json` so that later opens
/// check file sizes and modification times instead of hashing every byte again.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct VerifiedStamp {
    /// SHA-256 of the manifest file that was verified.
    manifest_sha256: String,
    /// (file name, length, modification time in ns since the epoch) of every chunk file.
    files: Vec<(String, u64, u128)>,
}

const VERIFIED_FILE: &str = "verified.json";

/// The stamp of `manifest`'s chunk files as they are on disk now.
fn stamp_of(dir: &Path, manifest: &Manifest, manifest_bytes: &[u8]) -> Result<VerifiedStamp, IndexError> {
    let mut files = Vec::new();
    for c in &manifest.checkpoints {
        let summaries = (0..c.summaries.len()).map(|k| (summary_path(dir, c.step, k), k, true));
        for (path, k, is_summary) in (0..c.chunks.len())
            .map(|k| (chunk_path(dir, c.step, k), k, false))
            .chain(summaries)
        {
            let meta = std::fs::metadata(&path).map_err(io(&path))?;
            let expected = if is_summary {
                c.summaries[k].is_some().then(|| summary_layout(manifest, k).len())
            } else {
                Some(manifest.chunk_rows(k) * manifest.key.plan.buckets * manifest.dim * manifest.key.storage.bytes())
            };
            // A damaged manifest must not promise more images than the files hold (and make a
            // reader allocate for them).
            if let Some(expected) = expected.filter(|&e| e as u64 != meta.len()) {
                return Err(IndexError::Invalid(format!(
                    "{}: {} bytes where the manifest lays out {expected}: the index is damaged; rebuild it",
                    path.display(),
                    meta.len()
                )));
            }
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            files.push((crate::files::file_name(&path), meta.len(), modified));
        }
    }
    Ok(VerifiedStamp {
        manifest_sha256: sha256(manifest_bytes),
        files,
    })
}

/// The layout of chunk `k`'s compact block.
pub(crate) fn summary_layout(manifest: &Manifest, k: usize) -> summary::SummaryLayout {
    summary::SummaryLayout {
        rows: manifest.chunk_rows(k),
        buckets: manifest.key.plan.buckets,
        dim: manifest.dim,
        storage: manifest.key.storage,
    }
}

/// Records that the chunk files are as `stamp` describes them and were just verified. A
/// read-only index cannot keep the stamp and is verified on every open instead.
fn write_stamp(dir: &Path, stamp: &VerifiedStamp) {
    let _ = write_atomic(
        &dir.join(VERIFIED_FILE),
        &serde_json::to_vec(stamp).expect("stamp serialises"),
    );
}

/// Stamps the complete index in `dir` as verified, for a caller that has just checked every
/// chunk's checksum itself (the shard merge), so the first open does not hash them again.
fn stamp_verified(dir: &Path, manifest: &Manifest) -> Result<(), IndexError> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    write_stamp(dir, &stamp_of(dir, manifest, &bytes)?);
    Ok(())
}

/// Hashes every chunk and summary file of `manifest` against its recorded checksum.
fn verify_chunks(dir: &Path, manifest: &Manifest, job: &JobContext) -> Result<(), IndexError> {
    let files: Vec<(PathBuf, Option<&String>)> = manifest
        .checkpoints
        .iter()
        .flat_map(|c| {
            let chunks = c
                .chunks
                .iter()
                .enumerate()
                .map(|(k, sha)| (chunk_path(dir, c.step, k), sha.as_ref()));
            let summaries = c
                .summaries
                .iter()
                .enumerate()
                .filter(|(_, sha)| sha.is_some())
                .map(|(k, sha)| (summary_path(dir, c.step, k), sha.as_ref()));
            chunks.chain(summaries)
        })
        .collect();
    let total = files.len() as u64;
    for (done, (path, sha)) in files.iter().enumerate() {
        if job.cancel.is_cancelled() {
            return Err(IndexError::Cancelled);
        }
        job.report(VERIFY_STAGE, done as u64, total, "");
        let map = map_file(path)?;
        if sha.map(String::as_str) != Some(sha256(&map).as_str()) {
            return Err(IndexError::Invalid(format!(
                "{}: checksum mismatch: the index file is damaged; rebuild the index",
                path.display()
            )));
        }
    }
    job.report(VERIFY_STAGE, total, total, "");
    Ok(())
}

/// The progress stage of checking an index's files.
pub const VERIFY_STAGE: &str = "checking the index files";

/// How thoroughly [`Index::open`] checks the chunk files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verification {
    /// Hash every byte when the files are not as the last full verification saw them (size,
    /// modification time, manifest); otherwise trust them. The default.
    OnChange,
    /// Hash every byte now (`retrace index --verify`).
    Full,
}

impl Index {
    /// Opens a complete index, checking that it matches `expected` and that its chunks are
    /// intact: every checksum the first time (and whenever a file or the manifest changed
    /// since), only sizes and modification times afterwards ([`Verification::OnChange`]).
    pub fn open(dir: &Path, expected: &IndexKey, device: &burn::tensor::Device) -> Result<Self, IndexError> {
        Self::open_with(dir, expected, Verification::OnChange, device, &JobContext::silent())
    }

    /// [`Self::open`] with the chosen verification, reporting the checksum pass to `job` (a
    /// first open of a 60,000-image index hashes 23 GB) and stopping with
    /// [`IndexError::Cancelled`] when it is cancelled.
    pub fn open_with(
        dir: &Path,
        expected: &IndexKey,
        verification: Verification,
        device: &burn::tensor::Device,
        job: &JobContext,
    ) -> Result<Self, IndexError> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let manifest_bytes = std::fs::read(&manifest_path).map_err(io(&manifest_path))?;
        let manifest = parse_manifest(&manifest_path, &manifest_bytes)?;
        let differences = manifest.key.differences(expected);
        if !differences.is_empty() {
            return Err(IndexError::Foreign {
                dir: dir.to_owned(),
                differences,
            });
        }
        let projector = Projector::new(manifest.key.projection, &manifest.key.layer_shapes, device);
        if projector.dim() != manifest.dim {
            return Err(IndexError::Invalid(format!(
                "{}: the manifest's feature width {} is not the projection's {}: the manifest is damaged; \
                 rebuild the index",
                manifest_path.display(),
                manifest.dim,
                projector.dim()
            )));
        }
        if !manifest.is_complete() {
            return Err(IndexError::Invalid(format!(
                "the index in {} is incomplete: run `retrace index` to finish it",
                dir.display()
            )));
        }
        // Also checks every file's length against the manifest, before any reader allocates.
        let now = stamp_of(dir, &manifest, &manifest_bytes)?;
        let stamp_path = dir.join(VERIFIED_FILE);
        let trusted = verification == Verification::OnChange
            && std::fs::read(&stamp_path)
                .ok()
                .and_then(|b| serde_json::from_slice::<VerifiedStamp>(&b).ok())
                .is_some_and(|stamp| stamp == now);
        if !trusted {
            verify_chunks(dir, &manifest, job)?;
            write_stamp(dir, &now);
        }
        let mut manifest = manifest;
        if summarise_missing(dir, &mut manifest)? {
            // The chunks were just verified and the summaries made from them.
            stamp_verified(dir, &manifest)?;
        }
        Ok(Self {
            dir: dir.to_owned(),
            manifest,
            projector,
            device_cache: Default::default(),
            maps: Default::default(),
        })
    }

    /// The training features of checkpoint `i` (manifest order), decoded from the mapped files.
    pub fn features(&self, i: usize) -> Result<Features, IndexError> {
        self.rows(i, 0, self.manifest.examples)
    }

    /// The features of training images `start..end` at checkpoint `i`, decoding only the chunk
    /// files that hold them.
    pub fn rows(&self, i: usize, start: usize, end: usize) -> Result<Features, IndexError> {
        let m = &self.manifest;
        let c = m
            .checkpoints
            .get(i)
            .ok_or_else(|| IndexError::Invalid(format!("the index has no checkpoint #{i}")))?;
        let end = end.min(m.examples);
        let row = m.key.plan.buckets * m.dim;
        let mut values = Vec::new();
        let bytes_per_row = row * m.key.storage.bytes();
        for (chunk, from, to) in self.chunk_spans(start, end) {
            let map = map_file(&chunk_path(&self.dir, c.step, chunk))?;
            if map.len() != self.chunk_rows(chunk) * bytes_per_row {
                return Err(IndexError::Invalid(format!(
                    "index checkpoint {} chunk {chunk} holds {} bytes, not its {} rows of {bytes_per_row}",
                    c.step,
                    map.len(),
                    self.chunk_rows(chunk)
                )));
            }
            decode(
                &map[from * bytes_per_row..to * bytes_per_row],
                m.key.storage,
                &mut values,
            );
        }
        let expected = end.saturating_sub(start) * row;
        if values.len() != expected {
            return Err(IndexError::Invalid(format!(
                "index checkpoint {} holds {} values for images {start}..{end}, expected {expected}",
                c.step,
                values.len()
            )));
        }
        Ok(Features {
            values,
            examples: end.saturating_sub(start),
            buckets: m.key.plan.buckets,
            dim: m.dim,
        })
    }
}

fn map_file(path: &Path) -> Result<Mmap, IndexError> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    // SAFETY: index files are written once under a temporary name and renamed into place; they
    // are never modified afterwards, so the mapping stays valid while it is read.
    unsafe { Mmap::map(&file) }.map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(examples: usize, chunk_size: usize) -> Manifest {
        let chunks = examples.div_ceil(chunk_size.max(1));
        Manifest {
            format_version: INDEX_FORMAT_VERSION,
            key: IndexKey {
                checkpoint_hashes: vec![sha256(b"checkpoint")],
                data_hash: sha256(b"data"),
                plan: TimestepPlan::new(1000, 10, 1, 0).unwrap(),
                projection: ProjectionConfig::default(),
                layer_shapes: vec![(3, 5)],
                storage: Storage::F16,
                measurement: Measurement::Loss,
                vae_sha256: None,
            },
            examples,
            chunk_size,
            dim: 15,
            checkpoints: vec![IndexedCheckpoint {
                step: 7,
                learning_rate: 1e-3,
                chunks: vec![Some(sha256(b"chunk")); chunks],
                summaries: vec![None; chunks],
            }],
            shard: None,
        }
    }

    #[test]
    fn a_manifest_carries_its_checksum_and_every_field_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST_FILE);
        write_manifest(dir.path(), &manifest(250, 100)).unwrap();
        assert_eq!(read_manifest(dir.path()).unwrap(), manifest(250, 100));
        // Edited by hand: the checksum no longer matches.
        let text = std::fs::read_to_string(&path).unwrap().replace("250", "260");
        std::fs::write(&path, &text).unwrap();
        let error = read_manifest(dir.path()).unwrap_err().to_string();
        assert!(error.contains("does not match its checksum"), "{error}");
        // Without a checksum (an older manifest), the fields are still checked.
        let unchecked = |m: &Manifest| {
            std::fs::write(&path, serde_json::to_vec(m).unwrap()).unwrap();
            read_manifest(dir.path()).map_err(|e| e.to_string())
        };
        assert!(unchecked(&manifest(250, 100)).is_ok());
        let mut bad = vec![
            manifest(250, 0),
            manifest(250, 100),
            manifest(250, 100),
            manifest(250, 100),
        ];
        bad[1].checkpoints[0].chunks.pop();
        bad[2].key.data_hash.truncate(12);
        bad[3].key.plan.buckets = 0;
        for m in &bad {
            let error = unchecked(m).unwrap_err();
            assert!(error.contains("damaged index manifest"), "{error}");
        }
    }

    #[test]
    fn features_beyond_the_storage_are_refused_with_the_image_named() {
        let mut values = vec![0.5f32; 3 * 4];
        assert!(check_storable(&values, Storage::F16, 200, 4).is_ok());
        values[9] = 70_000.0;
        assert!(check_storable(&values, Storage::F32, 200, 4).is_ok());
        let message = check_storable(&values, Storage::F16, 200, 4).unwrap_err().to_string();
        assert!(
            message.contains("training image #202") && message.contains("f32"),
            "{message}"
        );
        values[9] = f32::NAN;
        let message = check_storable(&values, Storage::F32, 200, 4).unwrap_err().to_string();
        assert!(
            message.contains("training image #202") && message.contains("NaN"),
            "{message}"
        );
    }
}
