//! `retrace export`: a model's weights in another framework's layout.

use std::path::PathBuf;

use anyhow::Result;

use retrace::data::bundled_model_dir;
use retrace::device::DeviceRequest;
use retrace::diffusion::ModelDir;
use retrace::diffusion::diffusers::export_pipeline;

use super::compute_device;
use super::sample::pick_checkpoint;

/// The layouts `retrace export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// A diffusers `DDPMPipeline` directory: `unet/` (`UNet2DModel`) and `scheduler/`
    /// (`DDPMScheduler`), loadable with `from_pretrained`; a DiT as `transformer/`
    /// (`DiTTransformer2DModel`) beside `scheduler/`.
    Diffusers,
}

/// Write a model's weights in another framework's layout.
#[derive(clap::Args)]
pub struct ExportArgs {
    /// The layout to write.
    #[arg(long, value_enum, default_value = "diffusers")]
    pub format: ExportFormat,
    /// Model directory (default: the bundled model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Export the checkpoint of this training step (default: the newest).
    #[arg(long)]
    pub checkpoint: Option<usize>,
    /// Output directory (created; an earlier export there is replaced).
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `retrace export`.
pub fn run(args: ExportArgs, device: Option<DeviceRequest>) -> Result<()> {
    let dev = compute_device(device)?;
    let dir = ModelDir::open(&args.model.unwrap_or_else(bundled_model_dir))?;
    let entry = pick_checkpoint(&dir, args.checkpoint)?;
    match args.format {
        ExportFormat::Diffusers => export_pipeline(&dir, &entry, &args.out, &dev.device)?,
    }
    let how = match dir.info.architecture {
        retrace::diffusion::Architecture::UNet(_) if dir.info.architecture.condition_encoding().is_conditional() => {
            "a diffusers DDPMPipeline directory of a class-conditional U-Net: load it with \
             UNet2DModel.from_pretrained(…, subfolder=\"unet\") and pass class_labels (DDPMPipeline's \
             __call__ passes none, which a class-conditional UNet2DModel refuses)"
        }
        retrace::diffusion::Architecture::UNet(_) => {
            "a diffusers DDPMPipeline (DDPMPipeline.from_pretrained, or UNet2DModel.from_pretrained(…, subfolder=\"unet\"))"
        }
        retrace::diffusion::Architecture::DiT(_) => {
            "diffusers directories (DiTTransformer2DModel.from_pretrained(…, subfolder=\"transformer\"), \
             DDPMScheduler.from_pretrained(…, subfolder=\"scheduler\"))"
        }
    };
    println!(
        "wrote checkpoint step {} of {} to {} as {how}",
        entry.state.step,
        dir.root.display(),
        args.out.display()
    );
    Ok(())
}
