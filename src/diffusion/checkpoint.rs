//! A model directory: `model.json` (architecture, schedule, data, training recipe) and
//! `checkpoints/step-NNNNNNN/` with `weights.bpk` (burnpack), `state.json` (step, learning rate,
//! loss, checksum) and, in the newest checkpoint only, `optimizer.bpk` for resuming.
//!
//! Every file is written to a temporary name and renamed, and a checkpoint directory is
//! assembled under a temporary name and renamed into place, so a killed process leaves either
//! the old checkpoint or the new one, never half of one. Weights are checksummed and checked for
//! non-finite values when loaded.
//!
//! A diffusers `UNet2DModel` or pipeline directory opens as a [`ModelDir`] too (read-only; see
//! [`super::diffusers`]).

use std::path::{Path, PathBuf};

use std::collections::HashMap;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::ModuleOptimizer;
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, DType, Device, Tensor};
use sha2::{Digest, Sha256};

use super::Network;
use super::error::ModelError;
use super::model_info::io;
pub use super::model_info::{
    CheckpointEntry, CheckpointError, CheckpointState, FORMAT_VERSION, InitFrom, LrSchedule, ModelInfo, TrainRecipe,
    is_sha256_hex,
};
use crate::files::{sha256, write_atomic};

const MODEL_FILE: &str = "model.json";
const WEIGHTS_FILE: &str = "weights.bpk";
const OPTIMIZER_FILE: &str = "optimizer.bpk";
const STATE_FILE: &str = "state.json";

/// A checkpoint directory whose `state.json` cannot be used.
#[derive(Clone, Debug)]
pub struct DamagedCheckpoint {
    /// Its directory.
    pub dir: PathBuf,
    /// What is wrong, naming the file.
    pub reason: String,
}

impl DamagedCheckpoint {
    /// What the user can do about it, for the model in `model`.
    pub fn fix(&self, model: &ModelDir) -> String {
        format!(
            "delete {} to use the other checkpoints (`{}` retrains from the one before it)",
            self.dir.display(),
            model.train_command()
        )
    }
}

/// How a model directory stores its weights.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelFormat {
    /// retrace's own layout: `model.json` and `checkpoints/step-N/weights.bpk`.
    Retrace,
    /// A diffusers `UNet2DModel` or pipeline directory (read-only).
    Diffusers(super::diffusers::DiffusersLayout),
}

/// A model directory on disk.
#[derive(Clone, Debug)]
pub struct ModelDir {
    /// Root directory.
    pub root: PathBuf,
    /// Parsed `model.json` (or what a diffusers directory says in retrace's terms).
    pub info: ModelInfo,
    /// The directory's layout.
    pub format: ModelFormat,
}

impl ModelDir {
    /// Creates a new model directory, or reopens one whose `model.json` matches `info`.
    pub fn create(root: &Path, info: ModelInfo) -> Result<Self, CheckpointError> {
        std::fs::create_dir_all(root.join("checkpoints")).map_err(io(root))?;
        let path = root.join(MODEL_FILE);
        let json = serde_json::to_vec_pretty(&info).expect("model info serialises");
        write_atomic(&path, &json)?;
        Ok(Self {
            root: root.to_owned(),
            info,
            format: ModelFormat::Retrace,
        })
    }

    /// Opens an existing model directory: retrace's own, or a diffusers model or pipeline.
    pub fn open(root: &Path) -> Result<Self, CheckpointError> {
        let path = root.join(MODEL_FILE);
        if !path.is_file() {
            if super::diffusers::is_diffusers_dir(root) {
                let (info, layout) = super::diffusers::open(root)?;
                return Ok(Self {
                    root: root.to_owned(),
                    info,
                    format: ModelFormat::Diffusers(layout),
                });
            }
            return Err(CheckpointError::invalid(
                root,
                "neither a retrace model directory (no model.json) nor a diffusers model (no config.json, \
                 no unet/config.json)",
            ));
        }
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let info: ModelInfo = serde_json::from_slice(&bytes)
            .map_err(|e| CheckpointError::invalid(&path, format!("unreadable model description: {e}")))?;
        if info.format_version != FORMAT_VERSION {
            return Err(CheckpointError::invalid(
                &path,
                format!(
                    "format version {} but this retrace reads {FORMAT_VERSION}",
                    info.format_version
                ),
            ));
        }
        info.validate().map_err(|e| CheckpointError::invalid(&path, e))?;
        let vae_config = root.join(super::latent::VAE_DIR).join(super::diffusers::CONFIG_FILE);
        if info.vae.is_some() && !vae_config.is_file() {
            return Err(CheckpointError::invalid(
                root,
                format!(
                    "a latent diffusion model without its autoencoder: {} is missing",
                    vae_config.display()
                ),
            ));
        }
        Ok(Self {
            root: root.to_owned(),
            info,
            format: ModelFormat::Retrace,
        })
    }

    /// The data spec to use: `given`, or the one the model was trained on, which a diffusers
    /// model does not record.
    pub fn data_spec(&self, given: Option<&str>) -> Result<String, CheckpointError> {
        match given {
            Some(spec) => Ok(spec.to_owned()),
            None if self.info.data_spec.is_empty() => Err(CheckpointError::invalid(
                &self.root,
                "does not record the data it was trained on (a diffusers model): pass --data SPEC, e.g. \
                 --data 'cifar10:DIR?classes=1,7&subset=5000' for CIFAR-2",
            )),
            None => Ok(self.info.data_spec.clone()),
        }
    }

    /// Checks that `data` fits the model: its images' shape, and its content when the model
    /// records the hash of the data it was trained on.
    pub fn check_data(&self, data: &crate::data::Dataset) -> Result<(), ModelError> {
        let shape = self.info.image_shape();
        if [data.channels, data.height, data.width] != shape {
            return Err(ModelError::DataMismatch(format!(
                "{} holds {}×{}×{} images but the model takes {}×{}×{}",
                data.name, data.channels, data.height, data.width, shape[0], shape[1], shape[2]
            )));
        }
        if !self.info.data_hash.is_empty() && self.info.data_hash != data.content_hash() {
            return Err(ModelError::DataMismatch(format!(
                "the model was trained on {} (data hash {}…) but the data given, {}, differs (hash {}…)",
                self.info.data_spec,
                crate::files::short_hash(&self.info.data_hash),
                data.name,
                crate::files::short_hash(&data.content_hash())
            )));
        }
        Ok(())
    }

    /// A warning when the model records no hash of its training data (a diffusers model
    /// without retrace's provenance file): retrace then cannot check that `data` is what the
    /// model was trained on, and rankings over other images say nothing about the model.
    pub fn unverified_data(&self, data: &crate::data::Dataset) -> Option<String> {
        self.info.data_hash.is_empty().then(|| {
            format!(
                "warning: {} records no hash of its training data, so retrace cannot check that {} is what it \
                 was trained on; rankings over images it was not trained on say nothing about it",
                self.root.display(),
                data.name
            )
        })
    }

    /// The autoencoder of a latent diffusion model (its `vae/`) on `device`; `None` for a
    /// pixel-space model.
    pub fn latent_space(&self, device: &Device) -> Result<Option<super::latent::LatentSpace>, ModelError> {
        if self.info.vae.is_none() {
            return Ok(None);
        }
        let space = super::latent::LatentSpace::open(&self.root.join(super::latent::VAE_DIR), device)?;
        if Some(&space.config) != self.info.vae.as_ref() {
            return Err(ModelError::Weights(format!(
                "the autoencoder in {} is not the one {} records",
                space.dir.display(),
                self.root.display()
            )));
        }
        Ok(Some(space))
    }

    /// All complete checkpoints, oldest first. Unfinished temporary directories are ignored; a
    /// checkpoint whose `state.json` is damaged is an error naming it and the fix (see
    /// [`Self::scan_checkpoints`] for a listing that reports it instead).
    pub fn checkpoints(&self) -> Result<Vec<CheckpointEntry>, CheckpointError> {
        let (found, damaged) = self.scan_checkpoints()?;
        match damaged.first() {
            None => Ok(found),
            Some(bad) => Err(CheckpointError::invalid(
                &bad.dir,
                format!("{}; {}", bad.reason, bad.fix(self)),
            )),
        }
    }

    /// The readable checkpoints, oldest first, and the damaged ones (an unreadable or invalid
    /// `state.json`): what `retrace info` lists, so that one damaged checkpoint does not hide
    /// the others.
    pub fn scan_checkpoints(&self) -> Result<(Vec<CheckpointEntry>, Vec<DamagedCheckpoint>), CheckpointError> {
        if let ModelFormat::Diffusers(layout) = &self.format {
            return Ok((super::diffusers::checkpoints(&self.info, layout)?, Vec::new()));
        }
        let dir = self.root.join("checkpoints");
        let (mut found, mut damaged) = (Vec::new(), Vec::new());
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((found, damaged)),
            Err(e) => return Err(io(&dir)(e)),
        };
        for entry in entries {
            let path = entry.map_err(io(&dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !name.starts_with("step-") || name.contains(".tmp") {
                continue;
            }
            let state_path = path.join(STATE_FILE);
            let state = std::fs::read(&state_path)
                .map_err(|e| format!("unreadable checkpoint state: {e}"))
                .and_then(|bytes| {
                    serde_json::from_slice::<CheckpointState>(&bytes)
                        .map_err(|e| format!("unreadable checkpoint state: {e}"))
                })
                .and_then(|state| {
                    state.validate().map_err(|e| format!("damaged checkpoint state: {e}"))?;
                    Ok(state)
                });
            match state {
                Ok(state) => found.push(CheckpointEntry { dir: path, state }),
                Err(reason) => damaged.push(DamagedCheckpoint {
                    dir: path,
                    reason: format!("{}: {reason}", state_path.display()),
                }),
            }
        }
        found.sort_by_key(|c| c.state.step);
        damaged.sort_by(|a, b| a.dir.cmp(&b.dir));
        Ok((found, damaged))
    }

    /// The newest checkpoint, if any.
    pub fn latest(&self) -> Result<Option<CheckpointEntry>, CheckpointError> {
        Ok(self.checkpoints()?.pop())
    }

    /// The newest checkpoint, or an error saying the directory holds none and how to make one.
    pub fn latest_required(&self) -> Result<CheckpointEntry, CheckpointError> {
        self.latest()?.ok_or_else(|| self.no_checkpoint())
    }

    /// The error of a directory that holds no checkpoint yet, with the command that trains one.
    pub fn no_checkpoint(&self) -> CheckpointError {
        CheckpointError::invalid(
            &self.root,
            format!("holds no checkpoint yet: train it first (`{}`)", self.train_command()),
        )
    }

    /// The command that trains this directory's model from its newest checkpoint (or from the
    /// start, when it has none), to the epoch count its training was started with (`--resume`
    /// takes the rest of the recipe from `model.json`; `--epochs` it must be told).
    pub fn train_command(&self) -> String {
        let quoted = |text: &str| shlex::try_quote(text).map_or_else(|_| text.to_owned(), |q| q.into_owned());
        let data = match self.info.data_spec.as_str() {
            "" => "DATA".to_owned(),
            spec => quoted(spec),
        };
        let root = quoted(&self.root.display().to_string());
        let recorded: Vec<&str> = self.info.train.command.split_whitespace().collect();
        let epochs = recorded
            .iter()
            .position(|w| *w == "--epochs")
            .and_then(|i| recorded.get(i + 1).copied())
            .or_else(|| recorded.iter().find_map(|w| w.strip_prefix("--epochs=")))
            .filter(|e| e.parse::<usize>().is_ok())
            .map(|e| format!(" --epochs {e}"))
            .unwrap_or_default();
        format!("retrace train --data {data} --out {root}{epochs} --resume")
    }

    /// Writes a checkpoint atomically. The optimizer state is kept only in the newest
    /// checkpoint: older ones lose theirs once this one is in place.
    pub fn save(
        &self,
        model: &Network,
        optimizer: Option<&ModuleOptimizer>,
        state: CheckpointState,
    ) -> Result<CheckpointEntry, CheckpointError> {
        self.write_checkpoint(model, false, optimizer, state)
    }

    /// Writes a checkpoint whose weights are stored as 16-bit floats (half the bytes; every
    /// weight rounded to f16's 11 significant bits), without optimizer state: what a bundled
    /// model that only needs to be read is made of. Loading casts them back to f32.
    pub fn save_half_precision(
        &self,
        model: &Network,
        state: CheckpointState,
    ) -> Result<CheckpointEntry, CheckpointError> {
        self.write_checkpoint(model, true, None, state)
    }

    fn write_checkpoint(
        &self,
        model: &Network,
        half: bool,
        optimizer: Option<&ModuleOptimizer>,
        mut state: CheckpointState,
    ) -> Result<CheckpointEntry, CheckpointError> {
        if self.format != ModelFormat::Retrace {
            return Err(CheckpointError::invalid(
                &self.root,
                "is a diffusers model, which retrace opens read-only: train into a new directory",
            ));
        }
        let final_dir = self.root.join("checkpoints").join(format!("step-{:07}", state.step));
        let tmp_dir = crate::files::temporary_sibling(&final_dir);
        crate::files::remove_stale_temporaries(&self.root.join("checkpoints"));
        // A failed write (a full disk) takes its partial directory with it.
        let mut write_files = || -> Result<(), CheckpointError> {
            std::fs::create_dir_all(&tmp_dir).map_err(io(&tmp_dir))?;
            let weights = model
                .record_bytes()
                .and_then(|bytes| if half { half_precision(bytes) } else { Ok(bytes) })
                .map_err(|e| CheckpointError::invalid(&final_dir, format!("cannot serialise weights: {e}")))?;
            state.weights_sha256 = sha256(&weights);
            write_atomic(&tmp_dir.join(WEIGHTS_FILE), &weights)?;
            if let Some(optim) = optimizer {
                let bytes = optim
                    .into_bytes()
                    .map_err(|e| ModelError::Weights(e.to_string()))
                    .and_then(canonical_record)
                    .map_err(|e| CheckpointError::invalid(&final_dir, format!("cannot serialise optimizer: {e}")))?;
                state.optimizer_sha256 = Some(sha256(&bytes));
                write_atomic(&tmp_dir.join(OPTIMIZER_FILE), &bytes)?;
            }
            write_atomic(
                &tmp_dir.join(STATE_FILE),
                &serde_json::to_vec_pretty(&state).expect("state serialises"),
            )?;
            Ok(())
        };
        if let Err(e) = write_files() {
            let _ = std::fs::remove_dir_all(&tmp_dir);
            return Err(e);
        }
        let _ = std::fs::remove_dir_all(&final_dir);
        std::fs::rename(&tmp_dir, &final_dir).map_err(|e| {
            let _ = std::fs::remove_dir_all(&tmp_dir);
            io(&final_dir)(e)
        })?;
        if optimizer.is_some() {
            for old in self.checkpoints()?.iter().filter(|c| c.state.step < state.step) {
                let _ = std::fs::remove_file(old.dir.join(OPTIMIZER_FILE));
            }
        }
        Ok(CheckpointEntry { dir: final_dir, state })
    }

    /// Loads a checkpoint's weights onto `device`, verifying checksum, shapes and finiteness.
    pub fn load_model(&self, checkpoint: &CheckpointEntry, device: &Device) -> Result<Network, CheckpointError> {
        let path = match &self.format {
            ModelFormat::Retrace => checkpoint.dir.join(WEIGHTS_FILE),
            ModelFormat::Diffusers(layout) => layout
                .weights
                .iter()
                .map(|(_, file)| file)
                .find(|file| file.parent() == Some(checkpoint.dir.as_path()))
                .cloned()
                .ok_or_else(|| CheckpointError::invalid(&checkpoint.dir, "is not a checkpoint of this model"))?,
        };
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let actual = sha256(&bytes);
        if actual != checkpoint.state.weights_sha256 {
            return Err(CheckpointError::invalid(
                &path,
                format!(
                    "checksum mismatch (file {actual}, recorded {}): the file is corrupt or truncated",
                    checkpoint.state.weights_sha256
                ),
            ));
        }
        let model = match &self.format {
            ModelFormat::Retrace => {
                let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes))
                    .map_err(|e| CheckpointError::invalid(&path, format!("unreadable weights: {e}")))?;
                self.info
                    .architecture
                    .load_record(record, device)
                    .map_err(|e| CheckpointError::invalid(&path, format!("weights do not fit the architecture: {e}")))?
            }
            ModelFormat::Diffusers(_) => {
                super::diffusers::weights::load_network(bytes, &self.info.architecture, device)
                    .map_err(|e| CheckpointError::invalid(&path, e))?
            }
        };
        if let Some(name) = first_non_finite(&model) {
            return Err(CheckpointError::invalid(
                &path,
                format!("parameter {name} holds NaN or infinite values"),
            ));
        }
        Ok(model)
    }

    /// Loads the optimizer state saved with a checkpoint into `optimizer`.
    ///
    /// burn-optim puts the restored state on burn's default device (`BURN_DEVICE`,
    /// [`crate::device::BURN_DEFAULT_ENV`]); the first step moves it to the model's device.
    pub fn load_optimizer(
        &self,
        checkpoint: &CheckpointEntry,
        optimizer: ModuleOptimizer,
    ) -> Result<ModuleOptimizer, CheckpointError> {
        let path = checkpoint.dir.join(OPTIMIZER_FILE);
        if !path.is_file() {
            return Err(CheckpointError::invalid(
                &checkpoint.dir,
                "holds no optimizer state, so training cannot resume from it (only the newest checkpoint \
                 of a run keeps its optimizer state, and bundled copies may omit it)",
            ));
        }
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        if let Some(recorded) = &checkpoint.state.optimizer_sha256 {
            let actual = sha256(&bytes);
            if &actual != recorded {
                return Err(CheckpointError::invalid(
                    &path,
                    format!(
                        "checksum mismatch (file {actual}, recorded {recorded}): the optimizer state is \
                         corrupt or truncated; delete this checkpoint directory to resume from the one before"
                    ),
                ));
            }
        }
        // burn-optim's reader panics on some malformed records (a tensor without a parameter
        // id); a file that passes the checksum but was not written by this retrace (or one from
        // before checksums) could hold one, so its panic becomes this error.
        match crate::contained::contain(|| optimizer.from_bytes(Bytes::from_bytes_vec(bytes))) {
            Some(Ok(optimizer)) => Ok(optimizer),
            Some(Err(e)) => Err(CheckpointError::invalid(
                &path,
                format!("unreadable optimizer state: {e}"),
            )),
            None => Err(CheckpointError::invalid(
                &path,
                "unreadable optimizer state (a malformed record); delete this checkpoint directory to resume \
                 from the one before",
            )),
        }
    }

    /// Loads the newest checkpoint's weights.
    pub fn load_latest(&self, device: &Device) -> Result<(Network, CheckpointEntry), CheckpointError> {
        let latest = self.latest_required()?;
        Ok((self.load_model(&latest, device)?, latest))
    }
}

/// Dotted module path of every parameter ("down_blocks.0.resnets.0.conv1.weight"), by id.
pub fn param_paths<M: Module>(module: &M) -> HashMap<ParamId, String> {
    struct Paths {
        path: Vec<String>,
        names: HashMap<ParamId, String>,
    }
    impl ModuleVisitor for Paths {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.path.push(name.to_owned());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.names.insert(param.id, self.path.join("."));
        }
    }
    let mut v = Paths {
        path: Vec::new(),
        names: HashMap::new(),
    };
    module.visit(&mut v);
    v.names
}

/// `module` with every parameter's id derived from its dotted path (the first 8 bytes of the
/// path's SHA-256). burn draws parameter ids at random per process and stores them in weight
/// and optimizer files, so without this two identical trainings write different bytes; with it,
/// a resumed training ends with the bytes of an uninterrupted one.
pub fn with_path_ids<M: Module>(module: M) -> M {
    struct PathIds {
        path: Vec<String>,
    }
    impl burn::module::ModuleMapper for PathIds {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.path.push(name.to_owned());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, mut param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let digest = Sha256::digest(self.path.join(".").as_bytes());
            let id = u64::from_le_bytes(digest[..8].try_into().expect("a SHA-256 digest has 32 bytes"));
            param.id = ParamId::from(id);
            param
        }
    }
    module.map(&mut PathIds { path: Vec::new() })
}

/// A burn record with its tensors in name order. burn-optim lists the optimizer's tensors in
/// the order of a hash map seeded per process, so the same state would be written as different
/// bytes by two processes; sorted, a resumed training's optimizer file equals an uninterrupted
/// one's.
fn canonical_record(bytes: Bytes) -> Result<Vec<u8>, ModelError> {
    let unreadable = |e: burn_pack::Error| ModelError::Weights(e.to_string());
    let reader = burn_pack::Reader::from_bytes(bytes).map_err(unreadable)?;
    let (scalars, metadata) = (reader.scalars().clone(), reader.metadata().clone());
    let mut tensors = Vec::new();
    for tensor in reader.into_tensors().map_err(unreadable)? {
        let (name, dtype, shape, param_id, data) = tensor.into_parts().map_err(unreadable)?;
        tensors.push(burn_pack::Tensor::new(name, dtype, shape, param_id, data));
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let mut writer = burn_pack::Writer::new(tensors);
    for (key, value) in &scalars {
        writer = writer.with_scalar(key, *value);
    }
    for (key, value) in &metadata {
        writer = writer.with_metadata(key, value);
    }
    Ok(writer.into_bytes().map_err(unreadable)?.to_vec())
}

/// A burn record with every f32 tensor stored as f16 (rounded to nearest), the rest as it is.
fn half_precision(bytes: Vec<u8>) -> Result<Vec<u8>, ModelError> {
    let unreadable = |e: burn_pack::Error| ModelError::Weights(e.to_string());
    let reader = burn_pack::Reader::from_bytes(Bytes::from_bytes_vec(bytes)).map_err(unreadable)?;
    let metadata = reader.metadata().clone();
    let mut tensors = Vec::new();
    for tensor in reader.into_tensors().map_err(unreadable)? {
        let (name, dtype, shape, param_id, data) = tensor.into_parts().map_err(unreadable)?;
        let tensor = if dtype == DType::F32 {
            let halves: Vec<u8> = data
                .chunks_exact(4)
                .flat_map(|v| half::f16::from_f32(f32::from_le_bytes([v[0], v[1], v[2], v[3]])).to_le_bytes())
                .collect();
            burn_pack::Tensor::new(name, DType::F16, shape, param_id, Bytes::from_bytes_vec(halves))
        } else {
            burn_pack::Tensor::new(name, dtype, shape, param_id, data)
        };
        tensors.push(tensor);
    }
    let mut writer = burn_pack::Writer::new(tensors);
    for (key, value) in &metadata {
        writer = writer.with_metadata(key, value);
    }
    Ok(writer.into_bytes().map_err(unreadable)?.to_vec())
}

/// Path of the first parameter with a NaN or infinity, if any.
pub fn first_non_finite<M: Module>(module: &M) -> Option<String> {
    struct Finder(Option<ParamId>);
    impl ModuleVisitor for Finder {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.0.is_none() && !param.val().is_finite().all().into_scalar::<bool>() {
                self.0 = Some(param.id);
            }
        }
    }
    let mut finder = Finder(None);
    module.visit(&mut finder);
    let id = finder.0?;
    Some(param_paths(module).remove(&id).unwrap_or_else(|| format!("{id:?}")))
}

impl InitFrom {
    /// The weights of `model` (a model directory, or `bundled`) at checkpoint `step` (default:
    /// its newest), pinned by their checksum.
    pub fn resolve(model: &str, step: Option<usize>) -> Result<Self, CheckpointError> {
        let dir = ModelDir::open(&Self::path_of(model))?;
        let checkpoints = dir.checkpoints()?;
        let entry = match step {
            Some(step) => checkpoints.iter().find(|c| c.state.step == step).ok_or_else(|| {
                let steps: Vec<String> = checkpoints.iter().map(|c| c.state.step.to_string()).collect();
                CheckpointError::invalid(
                    &dir.root,
                    format!("has no checkpoint at step {step} (it has {})", steps.join(", ")),
                )
            })?,
            None => checkpoints.last().ok_or_else(|| dir.no_checkpoint())?,
        };
        Ok(Self {
            model: model.to_owned(),
            step: entry.state.step,
            weights_sha256: entry.state.weights_sha256.clone(),
        })
    }

    /// The directory a model name stands for: `bundled` is the bundled default model.
    pub fn path_of(model: &str) -> PathBuf {
        if model == "bundled" {
            crate::data::bundled_model_dir()
        } else {
            PathBuf::from(model)
        }
    }

    /// Loads the weights onto `device` for a model of `architecture`: an error says when the
    /// directory, its checkpoint or its architecture is not the one recorded.
    pub fn load(&self, architecture: &super::Architecture, device: &Device) -> Result<Network, CheckpointError> {
        let dir = ModelDir::open(&Self::path_of(&self.model))?;
        if &dir.info.architecture != architecture {
            return Err(CheckpointError::invalid(
                &dir.root,
                "its architecture is not the fine-tune's (a fine-tune keeps the architecture it starts from)",
            ));
        }
        let entry = dir
            .checkpoints()?
            .into_iter()
            .find(|c| c.state.step == self.step && c.state.weights_sha256 == self.weights_sha256)
            .ok_or_else(|| {
                CheckpointError::invalid(
                    &dir.root,
                    format!(
                        "has no checkpoint at step {} with weights {}…: the weights this model was fine-tuned from changed or are gone",
                        self.step,
                        crate::files::short_hash(&self.weights_sha256)
                    ),
                )
            })?;
        dir.load_model(&entry, device)
    }
}
