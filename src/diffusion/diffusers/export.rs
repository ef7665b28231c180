//! `retrace export --format diffusers`: a model's weights as a `DDPMPipeline` directory.

use std::path::Path;

use burn::tensor::Device;
use serde_json::json;

use super::config::{DIFFUSERS_VERSION, SchedulerConfig, UNet2DModelConfig};
use super::dit_config::DiTTransformer2DModelConfig;
use super::weights::save_network;
use super::{CONFIG_FILE, Provenance, RETRACE_FILE, SCHEDULER_FILE, WEIGHTS_FILE};
use crate::diffusion::Architecture;
use crate::diffusion::checkpoint::{CheckpointEntry, CheckpointError, ModelDir};
use crate::files::write_atomic;

fn pretty(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec_pretty(value).expect("configs serialise")
}

/// Writes `checkpoint` of `model` to `out` as a diffusers pipeline: `model_index.json`,
/// `unet/` (`config.json`, `diffusion_pytorch_model.safetensors`; a DiT's `transformer/`),
/// `scheduler/` (`scheduler_config.json`), a latent model's `vae/`, and `retrace.json` with
/// the data and recipe. The directory is
/// assembled under a temporary name and renamed into place; an earlier export at `out` is
/// replaced, anything else there is refused.
pub fn export_pipeline(
    model: &ModelDir,
    checkpoint: &CheckpointEntry,
    out: &Path,
    device: &Device,
) -> Result<(), CheckpointError> {
    if out.exists() && !out.join(RETRACE_FILE).is_file() {
        let empty = std::fs::read_dir(out).map(|mut d| d.next().is_none()).unwrap_or(false);
        if !empty {
            return Err(CheckpointError::invalid(
                out,
                "exists and is not an earlier retrace export: choose a new directory",
            ));
        }
    }
    let net = model.load_model(checkpoint, device)?;
    // Sorted header: two exports of one checkpoint are the same bytes.
    let weights = crate::files::canonical_safetensors(
        save_network(&net).map_err(|e| CheckpointError::invalid(&checkpoint.dir, e))?,
    );
    let info = &model.info;
    let provenance = Provenance {
        data_spec: info.data_spec.clone(),
        data_hash: info.data_hash.clone(),
        data_len: info.data_len,
        class_names: info.class_names.clone(),
        train: info.train.clone(),
        final_step: checkpoint.state.step,
    };
    // A U-Net is a DDPMPipeline's `unet/`; a DiT has no pixel-space pipeline in diffusers, so
    // its export is `transformer/` beside `scheduler/` (DiTTransformer2DModel.from_pretrained
    // with subfolder="transformer").
    let (network, config) = match &info.architecture {
        Architecture::UNet(unet) => ("unet", pretty(&UNet2DModelConfig::from_unet(unet))),
        Architecture::DiT(dit) => ("transformer", pretty(&DiTTransformer2DModelConfig::from_dit(dit))),
    };
    if let Some(parent) = out.parent() {
        crate::files::remove_stale_temporaries(parent);
    }
    let tmp = crate::files::temporary_sibling(out);
    let mut files = vec![
        (RETRACE_FILE.to_owned(), pretty(&provenance)),
        (format!("{network}/{CONFIG_FILE}"), config),
        (format!("{network}/{WEIGHTS_FILE}"), weights),
        (
            format!("scheduler/{SCHEDULER_FILE}"),
            pretty(&SchedulerConfig::from_schedule(&info.schedule)),
        ),
    ];
    // A latent model's autoencoder goes along as `vae/`, byte for byte. diffusers has no
    // pipeline class for an unconditional UNet2DModel on AutoencoderKL latents (the K-FAC
    // paper's code loads the parts one by one), so such an export has no model_index.json.
    if info.is_latent() {
        let vae_dir = model.root.join(crate::diffusion::latent::VAE_DIR);
        for name in [CONFIG_FILE, WEIGHTS_FILE] {
            let path = vae_dir.join(name);
            let bytes = std::fs::read(&path).map_err(|source| CheckpointError::Io { path, source })?;
            files.push((format!("{}/{name}", crate::diffusion::latent::VAE_DIR), bytes));
        }
    }
    if network == "unet" && !info.is_latent() {
        let index = json!({
            "_class_name": "DDPMPipeline",
            "_diffusers_version": DIFFUSERS_VERSION,
            "scheduler": ["diffusers", "DDPMScheduler"],
            "unet": ["diffusers", "UNet2DModel"],
        });
        files.push(("model_index.json".to_owned(), pretty(&index)));
    }
    let write_files = || -> Result<(), CheckpointError> {
        for (file, bytes) in &files {
            let path = tmp.join(file);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|source| CheckpointError::Io {
                    path: parent.to_owned(),
                    source,
                })?;
            }
            write_atomic(&path, bytes)?;
        }
        Ok(())
    };
    if let Err(e) = write_files() {
        // A failed write (a full disk) takes its partial directory with it.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let _ = std::fs::remove_dir_all(out);
    std::fs::rename(&tmp, out).map_err(|source| {
        let _ = std::fs::remove_dir_all(&tmp);
        CheckpointError::Io {
            path: out.to_owned(),
            source,
        }
    })
}
