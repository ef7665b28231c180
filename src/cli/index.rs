//! `retrace index`: build (or finish) the index of projected training-gradient features.

use anyhow::Result;

use retrace::device::DeviceRequest;

use super::args::IndexTarget;
use super::{compute_device, terminal_job};

/// Build (or finish) the index of projected training-gradient features.
#[derive(clap::Args)]
pub struct IndexArgs {
    #[command(flatten)]
    pub target: IndexTarget,
}

/// Runs `retrace index` on the requested compute device.
pub fn run(args: IndexArgs, device: Option<DeviceRequest>) -> Result<()> {
    let IndexArgs { target } = args;
    let dev = compute_device(device)?;
    let (model, data, settings) = target.open()?;
    let (job, bar) = terminal_job()?;
    let started = std::time::Instant::now();
    let index = settings
        .ensure(&model, &data, &dev.device, &job)
        .map_err(anyhow::Error::msg)?;
    bar.finish();
    match index {
        None => println!("stopped; run the same command again to resume from the last complete chunk"),
        Some(index) => {
            let m = &index.manifest;
            let per_image = m.key.plan.buckets * m.dim * m.key.storage.bytes() * m.checkpoints.len();
            println!("{:.1} KB per indexed image", per_image as f64 / 1024.0);
            println!(
                "index {} ready in {:.1} s: {} images × {} buckets × {} features × {} checkpoint(s), {} storage",
                index.dir.display(),
                started.elapsed().as_secs_f64(),
                m.examples,
                m.key.plan.buckets,
                m.dim,
                m.checkpoints.len(),
                format!("{:?}", m.key.storage).to_lowercase()
            );
        }
    }
    Ok(())
}
