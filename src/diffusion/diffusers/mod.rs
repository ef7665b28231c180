//! diffusers interoperability: a `UNet2DModel` directory (`config.json` and
//! `diffusion_pytorch_model.safetensors`) or a pipeline directory (`model_index.json`, `unet/`,
//! `scheduler/`) opens as a retrace model, and a retrace model exports to a pipeline directory
//! that `DDPMPipeline`, `UNet2DModel` and `DDPMScheduler` load with `from_pretrained`.
//!
//! An opened diffusers model is read-only. Its checkpoints are the final weights and, when the
//! directory is the output of diffusers' training scripts, every `checkpoint-N/unet/` they
//! saved (step N; the final weights are assumed one checkpoint interval after the last). A diffusers model does not record
//! its training data or recipe: `retrace.json`, which `retrace export` writes beside the
//! pipeline, supplies them when present; otherwise the data must be passed with `--data`, and
//! the recipe is assumed to be the defaults of diffusers' `train_unconditional.py` (learning
//! rate 1e-4, batch 16, AdamW weight decay 1e-6), which only MUCS and retraining read.

pub mod config;
mod defaults;
pub mod dit_config;
mod export;
pub mod vae;
pub mod weights;

pub use config::{SchedulerConfig, UNet2DModelConfig};
pub use dit_config::DiTTransformer2DModelConfig;
pub use export::export_pipeline;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::model_info::{
    CheckpointEntry, CheckpointError, CheckpointState, FORMAT_VERSION, LrSchedule, ModelInfo, TrainRecipe,
};
use crate::diffusion::Architecture;
use crate::files::sha256;

/// The config file of every diffusers model directory.
pub const CONFIG_FILE: &str = "config.json";
const SCHEDULER_FILE: &str = "scheduler_config.json";
/// The weights file diffusers writes with `safe_serialization` (its default).
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";
const HALF_WEIGHTS_FILE: &str = "diffusion_pytorch_model.fp16.safetensors";
const PICKLE_WEIGHTS_FILE: &str = "diffusion_pytorch_model.bin";
/// What `retrace export` writes beside a pipeline so that re-importing it recovers the data
/// and the recipe.
pub const RETRACE_FILE: &str = "retrace.json";

/// Where an opened diffusers model's files are.
#[derive(Clone, Debug, PartialEq)]
pub struct DiffusersLayout {
    /// The directory holding the U-Net's `config.json`.
    pub unet_dir: PathBuf,
    /// The scheduler's `scheduler_config.json`.
    pub scheduler_config: PathBuf,
    /// Every checkpoint's weights file with its step, oldest first; the final weights last.
    pub weights: Vec<(usize, PathBuf)>,
}

/// What retrace knows of a model that diffusers' files do not say: `retrace.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// Spec of the training data.
    pub data_spec: String,
    /// Content hash of the training data.
    pub data_hash: String,
    /// Number of training images.
    pub data_len: usize,
    /// Class names of the training data.
    pub class_names: Vec<String>,
    /// Training recipe.
    pub train: TrainRecipe,
    /// Optimizer steps behind the final weights.
    pub final_step: usize,
}

/// The sub-directories a pipeline keeps its denoising network in: a U-Net's, a transformer's.
const NETWORK_DIRS: [&str; 2] = ["unet", "transformer"];

/// True when `root` looks like a diffusers model or pipeline directory.
pub fn is_diffusers_dir(root: &Path) -> bool {
    root.join(CONFIG_FILE).is_file() || NETWORK_DIRS.iter().any(|d| root.join(d).join(CONFIG_FILE).is_file())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| CheckpointError::invalid(path, format!("unreadable {what}: {e}")))
}

/// The weights file of the U-Net in `dir`, refusing formats retrace does not read.
pub(crate) fn weights_file(dir: &Path) -> Result<PathBuf, CheckpointError> {
    for name in [WEIGHTS_FILE, HALF_WEIGHTS_FILE] {
        if dir.join(name).is_file() {
            return Ok(dir.join(name));
        }
    }
    if dir.join(PICKLE_WEIGHTS_FILE).is_file() {
        return Err(CheckpointError::invalid(
            dir,
            format!(
                "holds {PICKLE_WEIGHTS_FILE}, PyTorch's pickle format, which retrace does not read: save the model \
                 with safe_serialization=True (diffusers' default) to get {WEIGHTS_FILE}"
            ),
        ));
    }
    Err(CheckpointError::invalid(dir, format!("holds no {WEIGHTS_FILE}")))
}

/// Locates the files of the diffusers model in `root` (a `UNet2DModel` or
/// `DiTTransformer2DModel` directory, or a pipeline directory with `unet/` or `transformer/`,
/// and `scheduler/`).
pub fn locate(root: &Path) -> Result<DiffusersLayout, CheckpointError> {
    let network_dir = NETWORK_DIRS
        .iter()
        .map(|d| root.join(d))
        .find(|d| d.join(CONFIG_FILE).is_file());
    let (unet_dir, candidates) = if let Some(dir) = network_dir {
        (dir, vec![root.join("scheduler").join(SCHEDULER_FILE)])
    } else {
        let sibling = root.parent().map(|p| p.join("scheduler").join(SCHEDULER_FILE));
        (
            root.to_owned(),
            std::iter::once(root.join(SCHEDULER_FILE)).chain(sibling).collect(),
        )
    };
    let scheduler_config = candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        CheckpointError::invalid(
            root,
            format!(
                "a diffusers model without a scheduler config: retrace needs the noise schedule the model was \
                 trained with, from {} (diffusers writes it with scheduler.save_pretrained)",
                tried.join(" or ")
            ),
        )
    })?;
    let mut weights = Vec::new();
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(step) = name.strip_prefix("checkpoint-").and_then(|n| n.parse::<usize>().ok()) else {
                continue;
            };
            let saved = NETWORK_DIRS
                .iter()
                .find_map(|d| weights_file(&entry.path().join(d)).ok());
            if let Some(file) = saved {
                weights.push((step, file));
            }
        }
    }
    weights.sort();
    weights.push((final_step_guess(&weights), weights_file(&unet_dir)?));
    Ok(DiffusersLayout {
        unet_dir,
        scheduler_config,
        weights,
    })
}

/// The training step assumed for the final weights when nothing records it: one checkpoint
/// interval after the last saved checkpoint, or step 1 when there is none. (TracIn weighs a
/// checkpoint by the steps since the previous one, so the final weights must not sit at the
/// step of the last checkpoint, or at 0; `retrace.json` records the true step.)
fn final_step_guess(checkpoints: &[(usize, PathBuf)]) -> usize {
    match checkpoints {
        [] => 1,
        [(only, _)] => 2 * only.max(&1),
        [.., (before, _), (last, _)] => last + (last - before).max(1),
    }
}

/// Opens the diffusers model in `root`: its description in retrace's terms, and its files.
pub fn open(root: &Path) -> Result<(ModelInfo, DiffusersLayout), CheckpointError> {
    let mut layout = locate(root)?;
    let config_path = layout.unet_dir.join(CONFIG_FILE);
    let architecture = read_architecture(&config_path)?;
    let scheduler: SchedulerConfig = read_json(&layout.scheduler_config, "scheduler config")?;
    let schedule = scheduler
        .to_schedule()
        .map_err(|e| CheckpointError::invalid(&layout.scheduler_config, e))?;
    let provenance_path = root.join(RETRACE_FILE);
    let provenance: Option<Provenance> = if provenance_path.is_file() {
        Some(read_json(&provenance_path, "retrace provenance")?)
    } else {
        None
    };
    if let (Some(p), Some(last)) = (&provenance, layout.weights.last_mut()) {
        last.0 = p.final_step;
    }
    let vae_config = root.join(super::latent::VAE_DIR).join(CONFIG_FILE);
    let vae = if vae_config.is_file() {
        let config: vae::AutoencoderKLConfig = read_json(&vae_config, "autoencoder config")?;
        Some(config.to_vae().map_err(|e| CheckpointError::invalid(&vae_config, e))?)
    } else {
        None
    };
    let info = match provenance {
        Some(p) => ModelInfo {
            format_version: FORMAT_VERSION,
            architecture: architecture.clone(),
            schedule,
            data_spec: p.data_spec,
            data_hash: p.data_hash,
            data_len: p.data_len,
            class_names: p.class_names,
            train: p.train,
            vae,
        },
        None => ModelInfo {
            format_version: FORMAT_VERSION,
            architecture: architecture.clone(),
            schedule,
            data_spec: String::new(),
            data_hash: String::new(),
            data_len: 0,
            class_names: Vec::new(),
            train: TrainRecipe {
                label_dropout: 0.0,
                learning_rate: 1e-4,
                warmup_steps: 500,
                lr_schedule: LrSchedule::Cosine,
                batch_size: 16,
                weight_decay: 1e-6,
                seed: 0,
                checkpoint_every: 0,
                excluded: Vec::new(),
                init: None,
                command: format!(
                    "not recorded (diffusers model {}; recipe assumed: train_unconditional.py's defaults)",
                    root.display()
                ),
            },
            vae,
        },
    };
    info.validate()
        .map_err(|e| CheckpointError::invalid(root, format!("diffusers model: {e}")))?;
    Ok((info, layout))
}

/// The network a diffusers `config.json` describes: a `DiTTransformer2DModel` when its
/// `_class_name` says so, a `UNet2DModel` otherwise.
pub fn read_architecture(path: &Path) -> Result<Architecture, CheckpointError> {
    let value: serde_json::Value = read_json(path, "model config")?;
    let is_dit = value.get("_class_name").and_then(|c| c.as_str()) == Some(dit_config::DIT_CLASS);
    let architecture = if is_dit {
        let config: DiTTransformer2DModelConfig = serde_json::from_value(value)
            .map_err(|e| CheckpointError::invalid(path, format!("unreadable {} config: {e}", dit_config::DIT_CLASS)))?;
        config.to_dit().map(Architecture::from)
    } else {
        let config: UNet2DModelConfig = serde_json::from_value(value)
            .map_err(|e| CheckpointError::invalid(path, format!("unreadable UNet2DModel config: {e}")))?;
        config.to_unet().map(Architecture::from)
    };
    architecture.map_err(|e| CheckpointError::invalid(path, e))
}

/// SHA-256 of a weights file, remembered per (path, size, modification time) for the process:
/// the checkpoints of a model are listed several times per request.
pub(crate) fn weights_hash(path: &Path) -> Result<String, CheckpointError> {
    type FileVersion = (PathBuf, u64, std::time::SystemTime);
    static KNOWN: Mutex<Option<HashMap<FileVersion, String>>> = Mutex::new(None);
    let io = |source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    let key = (path.to_owned(), meta.len(), meta.modified().map_err(io)?);
    if let Some(hash) = KNOWN.lock().ok().and_then(|k| k.as_ref()?.get(&key).cloned()) {
        return Ok(hash);
    }
    let hash = sha256(&std::fs::read(path).map_err(io)?);
    if let Ok(mut known) = KNOWN.lock() {
        known.get_or_insert_with(HashMap::new).insert(key, hash.clone());
    }
    Ok(hash)
}

/// The checkpoints of an opened diffusers model, oldest first.
pub(crate) fn checkpoints(info: &ModelInfo, layout: &DiffusersLayout) -> Result<Vec<CheckpointEntry>, CheckpointError> {
    layout
        .weights
        .iter()
        .map(|(step, file)| {
            Ok(CheckpointEntry {
                dir: file.parent().map(Path::to_owned).unwrap_or_default(),
                state: CheckpointState {
                    step: *step,
                    epoch: f64::NAN,
                    learning_rate: info.train.learning_rate,
                    loss: f64::NAN,
                    weights_sha256: weights_hash(file)?,
                    optimizer_sha256: None,
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_final_weights_are_placed_one_interval_after_the_last_checkpoint() {
        let at = |steps: &[usize]| -> Vec<(usize, PathBuf)> { steps.iter().map(|&s| (s, PathBuf::new())).collect() };
        assert_eq!(final_step_guess(&at(&[])), 1);
        assert_eq!(final_step_guess(&at(&[500])), 1000);
        assert_eq!(final_step_guess(&at(&[500, 1000, 1500])), 2000);
    }
}
