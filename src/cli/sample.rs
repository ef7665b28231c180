//! `retrace sample`: generate images from a trained model (one PNG, a grid when several seeds are given).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use retrace::data::bundled_model_dir;
use retrace::data::pixels::grid;
use retrace::device::DeviceRequest;
use retrace::diffusion::images::tensor_to_images;
use retrace::diffusion::latent::to_images;
use retrace::diffusion::{ModelDir, SamplerKind, Schedule, sample};

use super::args::ConditionArgs;
use super::{compute_device, terminal_job};

/// Generate images from a trained model (one PNG, a grid when several seeds are given).
#[derive(clap::Args)]
pub struct SampleArgs {
    /// Model directory (default: the bundled model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// One seed.
    #[arg(long, conflicts_with = "seeds")]
    pub seed: Option<u64>,
    /// A range of seeds, `A..B` (B excluded).
    #[arg(long)]
    pub seeds: Option<String>,
    /// Denoising steps.
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// ddpm (ancestral) or ddim (deterministic).
    #[arg(long, default_value = "ddim")]
    pub sampler: SamplerKind,
    #[command(flatten)]
    pub condition: ConditionArgs,
    /// Use the checkpoint of this training step (default: the newest).
    #[arg(long)]
    pub checkpoint: Option<usize>,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `retrace sample` on the requested compute device.
pub fn run(args: SampleArgs, device: Option<DeviceRequest>) -> Result<()> {
    let SampleArgs {
        model,
        seed,
        seeds,
        steps,
        sampler,
        condition,
        checkpoint,
        out,
    } = args;
    let dev = compute_device(device)?;
    let dir = ModelDir::open(&model.unwrap_or_else(bundled_model_dir))?;
    let config = condition.sampler(&dir.info, sampler, steps)?;
    let classes = condition.sample_conditions(&dir.info)?;
    let seeds = parse_seeds(seed, seeds.as_deref())?;
    let entry = pick_checkpoint(&dir, checkpoint)?;
    let net = dir.load_model(&entry, &dev.device)?;
    let schedule = Schedule::new(&dir.info.schedule);
    let shape = dir.info.architecture.shape();
    let latent_space = dir.latent_space(&dev.device)?;
    let (job, bar) = terminal_job()?;
    // One row per class (class-major), one column per seed.
    let conditions: Vec<_> = classes
        .iter()
        .flat_map(|c| std::iter::repeat_n(*c, seeds.len()))
        .collect();
    let all_seeds: Vec<u64> = classes.iter().flat_map(|_| seeds.iter().copied()).collect();
    let images = sample(
        &net,
        &schedule,
        &config,
        shape,
        &all_seeds,
        &conditions,
        &dev.device,
        |step| {
            job.report("sampling", step.done as u64, step.total as u64, "");
            !job.cancel.is_cancelled()
        },
    );
    bar.finish();
    let Some(images) = images? else {
        bail!("sampling cancelled")
    };
    let images = tensor_to_images(to_images(latent_space.as_ref(), images))?;
    let cols = if classes.len() > 1 {
        seeds.len()
    } else {
        (images.len() as f64).sqrt().ceil() as usize
    };
    let picture = grid(&images, dir.info.image_shape(), cols);
    save_png(&picture, &out)?;
    let under = match classes.as_slice() {
        [retrace::diffusion::Condition::Unconditional] => String::new(),
        [c] => format!(
            ", {}, guidance {}",
            c.describe(&dir.info.class_names),
            config.guidance_scale
        ),
        all => format!(
            ", one row per class ({} classes), guidance {}",
            all.len(),
            config.guidance_scale
        ),
    };
    println!(
        "wrote {} image(s) (seeds {:?}…{under}, checkpoint step {}) to {}",
        images.len(),
        &seeds[..seeds.len().min(4)],
        entry.state.step,
        out.display()
    );
    Ok(())
}

fn parse_seeds(seed: Option<u64>, seeds: Option<&str>) -> Result<Vec<u64>> {
    match (seed, seeds) {
        (_, Some(range)) => {
            let (a, b) = range
                .split_once("..")
                .with_context(|| format!("--seeds {range:?} is not A..B"))?;
            let (a, b): (u64, u64) = (a.trim().parse()?, b.trim().parse()?);
            if b <= a || b - a > 1024 {
                bail!("--seeds {range:?} must name 1 to 1024 seeds (A..B, B excluded)");
            }
            Ok((a..b).collect())
        }
        (Some(s), None) => Ok(vec![s]),
        (None, None) => Ok(vec![0]),
    }
}

/// The checkpoint of training step `step` (default: the newest).
pub(crate) fn pick_checkpoint(dir: &ModelDir, step: Option<usize>) -> Result<retrace::diffusion::CheckpointEntry> {
    let all = dir.checkpoints()?;
    match step {
        None => all.last().cloned().ok_or_else(|| dir.no_checkpoint().into()),
        Some(s) => all.iter().find(|c| c.state.step == s).cloned().with_context(|| {
            let steps: Vec<usize> = all.iter().map(|c| c.state.step).collect();
            format!("no checkpoint at step {s}; available: {steps:?}")
        }),
    }
}

fn save_png(picture: &image::RgbImage, out: &Path) -> Result<()> {
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut bytes = Vec::new();
    picture.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
    retrace::files::write_atomic(out, &bytes)?;
    Ok(())
}
