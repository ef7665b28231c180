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
pub mod eval;
pub mod export;
pub mod gui;
pub mod index;
pub mod info;
pub mod methods;
pub mod report;
pub mod sample;
pub mod train;

/// The compute device `request` asks for (or the automatic choice), announced on stderr.
pub(crate) fn compute_device(request: Option<DeviceRequest>) -> Result<ComputeDevice> {
    let chosen = device::choose(request).map_err(anyhow::Error::msg)?;
    eprintln!("compute device: {chosen}");
    Ok(chosen)
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

/// Architecture preset `name` for `data`'s images, checked against them.
pub(crate) fn named_config(name: &str, data: &Dataset) -> Result<UNetConfig> {
    let cfg = UNetConfig::named(name, data.channels, data.height)
        .with_context(|| format!("unknown config {name:?}; expected one of {CONFIG_NAMES:?}"))?;
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("config {name} does not fit {}: {e}", data.name))?;
    Ok(cfg)
}
