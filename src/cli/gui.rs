//! `retrace gui`: open the desktop viewer on a model and its training data.

use std::path::PathBuf;

use anyhow::Result;

use retrace::data::bundled_model_dir;
use retrace::device::{self, DeviceRequest};

/// Open the desktop viewer on a model and its training data.
#[derive(clap::Args)]
pub struct GuiArgs {
    /// Model directory (default: the bundled model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Training data spec (default: the model's own).
    #[arg(long)]
    pub data: Option<String>,
}

/// Runs `retrace gui` on the requested compute device.
pub fn run(args: GuiArgs, device: Option<DeviceRequest>) -> Result<()> {
    let GuiArgs { model, data } = args;
    let session = device::choose_shared(device).and_then(|dev| {
        eprintln!("compute device: {dev}");
        retrace::session::Session::open(&model.unwrap_or_else(bundled_model_dir), data.as_deref(), dev)
    });
    retrace::app::run(session).map_err(anyhow::Error::msg)?;
    Ok(())
}
