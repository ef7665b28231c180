//! The subcommands of the `retrace` binary, a file each, and the helpers they share.

use std::sync::Arc;

use anyhow::{Context, Result};

use retrace::data::Dataset;
use retrace::device::{self, ComputeDevice, DeviceRequest};
use retrace::diffusion::UNetConfig;
use retrace::diffusion::unet::CONFIG_NAMES;
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
pub mod methods;
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
/// (`tiny`, `base`, `ddpm-cifar10`), a model directory (retrace's or diffusers'), or a
/// diffusers `UNet2DModel` `config.json`.
pub(crate) fn named_config(name: &str, data: &Dataset) -> Result<UNetConfig> {
    let path = std::path::Path::new(name);
    let cfg = if let Some(preset) = UNetConfig::named(name, data.channels, data.height) {
        preset
    } else if path.is_dir() {
        retrace::diffusion::ModelDir::open(path)?.info.unet
    } else if path.is_file() {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {name}"))?;
        let config: retrace::diffusion::diffusers::UNet2DModelConfig =
            serde_json::from_slice(&bytes).with_context(|| format!("{name} is not a diffusers UNet2DModel config"))?;
        config.to_unet().map_err(|e| anyhow::anyhow!("{name}: {e}"))?
    } else {
        anyhow::bail!(
            "unknown config {name:?}: expected one of {CONFIG_NAMES:?}, a model directory or a diffusers config.json"
        );
    };
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("config {name} does not fit {}: {e}", data.name))?;
    if [cfg.image_channels, cfg.sample_size, cfg.sample_size] != [data.channels, data.height, data.width] {
        anyhow::bail!(
            "config {name} takes {}×{}×{} images but {} holds {}×{}×{}",
            cfg.image_channels,
            cfg.sample_size,
            cfg.sample_size,
            data.name,
            data.channels,
            data.height,
            data.width
        );
    }
    Ok(cfg)
}
