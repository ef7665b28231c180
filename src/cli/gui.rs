//! `retrace gui`: open the desktop viewer on a model and its training data.

use std::path::PathBuf;

use anyhow::Result;

use retrace::data::bundled_model_dir;
use retrace::device::{self, DeviceRequest};

/// Open the desktop viewer on a model and its training data.
#[derive(clap::Args, Default)]
pub struct GuiArgs {
    /// Model directory (default: the bundled model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Training data spec (default: the model's own).
    #[arg(long)]
    pub data: Option<String>,
    /// Methods ticked at start, comma-separated (default: retrac,kfac).
    #[arg(long, value_delimiter = ',', value_parser = super::attribute::parse_method)]
    pub method: Vec<String>,
    /// Method parameters at start, as KEY=VALUE (repeatable; `retrace methods` lists them).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// Runs `retrace gui` on the requested compute device.
pub fn run(args: GuiArgs, device: Option<DeviceRequest>) -> Result<()> {
    let GuiArgs {
        model,
        data,
        method,
        set,
    } = args;
    let mut parameters = retrace::attribution::Parameters::default();
    for pair in &set {
        parameters.set_pair(pair).map_err(anyhow::Error::msg)?;
    }
    let session = device::choose_shared(device).and_then(|dev| {
        eprintln!("compute device: {dev}");
        retrace::session::Session::open(&model.unwrap_or_else(bundled_model_dir), data.as_deref(), dev)
    });
    let start = retrace::app::Start {
        methods: method,
        parameters,
    };
    retrace::app::run(session, start).map_err(anyhow::Error::msg)?;
    Ok(())
}
