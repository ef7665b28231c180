//! The subcommands of the `retrace` binary, a file each, and the helpers they share.

use std::sync::Arc;

use anyhow::{Context, Result};

use retrace::data::Dataset;
use retrace::device::{self, ComputeDevice, DeviceRequest};
use retrace::diffusion::Architecture;
use retrace::diffusion::dit::DIT_CONFIG_NAMES;
use retrace::diffusion::unet::CONFIG_NAMES;
use retrace::diffusion::vae::VaeConfig;
use retrace::jobs::{CancelToken, JobContext, TerminalProgress};

pub mod args;
pub mod attribute;
pub mod bench;
pub mod classes;
pub mod devices;
pub mod eval;
pub mod export;
#[cfg(feature = "viewer")]
pub mod gui;
pub mod index;
pub mod info;
pub mod lds_presets;
pub mod methods;
pub mod regenerate;
pub mod report;
pub mod sample;
pub mod train;

/// The compute device `request` asks for (or the automatic choice), announced on stderr.
pub(crate) fn compute_device(request: Option<DeviceRequest>) -> Result<ComputeDevice> {
    let chosen = device::choose(request)?;
    eprintln!("compute device: {chosen}");
    Ok(chosen)
}

/// Whether `error` is a job's cancellation (Ctrl-C), whichever layer's error carries it.
pub(crate) fn is_cancellation(error: &anyhow::Error) -> bool {
    use retrace::jobs::Cancellable;
    fn cancelled<E: Cancellable>(e: &(dyn std::error::Error + 'static)) -> bool {
        e.downcast_ref::<E>().is_some_and(Cancellable::is_cancelled)
    }
    error.chain().any(|e| {
        cancelled::<retrace::jobs::Cancelled>(e)
            || cancelled::<retrace::grad::GradError>(e)
            || cancelled::<retrace::index::IndexError>(e)
            || cancelled::<retrace::curvature::CurvatureError>(e)
            || cancelled::<retrace::attribution::AttributionError>(e)
            || cancelled::<retrace::eval::EvalError>(e)
    })
}

/// A job context with a terminal progress bar, cancelled by Ctrl-C.
pub(crate) fn terminal_job() -> Result<(JobContext, Arc<TerminalProgress>)> {
    let cancel = CancelToken::new();
    let on_signal = cancel.clone();
    ctrlc::set_handler(move || {
        eprintln!("\ninterrupted: finishing the current step and saving a checkpoint…");
        on_signal.cancel();
    })
    .context("cannot install the Ctrl-C handler")?;
    let bar = Arc::new(TerminalProgress::new());
    Ok((
        JobContext {
            cancel,
            progress: bar.clone(),
        },
        bar,
    ))
}

/// The architecture `name` names for `data`'s images, checked against them: a preset
/// (`tiny`, `base`, `ddpm-cifar10`, `dit-tiny`, `dit-small`), a model directory (retrace's or
/// diffusers'), or a diffusers `UNet2DModel` or `DiTTransformer2DModel` `config.json`.
pub(crate) fn named_config(name: &str, data: &Dataset) -> Result<Architecture> {
    named_config_for(name, data, None)
}

/// [`named_config`] for a network that denoises the latents of the autoencoder `vae`
/// (`None`: pixels): presets are built for the latents' channels and side.
pub(crate) fn named_config_for(name: &str, data: &Dataset, vae: Option<&VaeConfig>) -> Result<Architecture> {
    let (channels, side, what) = match vae {
        None => (data.channels, data.height, "images"),
        Some(vae) => (vae.latent_channels, data.height / vae.downsampling(), "latents"),
    };
    let path = std::path::Path::new(name);
    let cfg = if let Some(preset) = Architecture::named(name, channels, side, data.class_names.len()) {
        preset
    } else if path.is_dir() {
        retrace::diffusion::ModelDir::open(path)?.info.architecture
    } else if path.is_file() {
        retrace::diffusion::diffusers::read_architecture(path)?
    } else {
        anyhow::bail!(
            "unknown config {name:?}: expected one of {CONFIG_NAMES:?} or {DIT_CONFIG_NAMES:?}, a model directory or a \
             diffusers config.json"
        );
    };
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("config {name} does not fit {}: {e}", data.name))?;
    let shape = cfg.shape();
    if shape != [channels, side, side] {
        anyhow::bail!(
            "config {name} takes {}×{}×{} {what} but {} gives {channels}×{side}×{side}",
            shape[0],
            shape[1],
            shape[2],
            data.name,
        );
    }
    Ok(cfg)
}
