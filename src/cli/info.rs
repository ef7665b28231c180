//! `retrace info`: describe a model directory or a dataset spec.

use std::path::Path;

use anyhow::{Context, Result};

use retrace::data::{DataSpec, Dataset};
use retrace::diffusion::ModelDir;

/// Describe a model directory or a dataset spec.
#[derive(clap::Args)]
pub struct InfoArgs {
    /// A model directory or a dataset spec.
    pub path: String,
}

/// Runs `retrace info`.
pub fn run(args: InfoArgs) -> Result<()> {
    info(&args.path)
}

fn info(path: &str) -> Result<()> {
    let p = Path::new(path);
    if p.join("model.json").is_file() {
        let dir = ModelDir::open(p)?;
        let i = &dir.info;
        let net = i.unet.init(&burn::tensor::Device::flex());
        println!("model directory {}", p.display());
        println!(
            "  architecture: U-Net, widths {:?}, attention {:?}, {} resnet(s) per level, {} parameters",
            i.unet.block_out_channels,
            i.unet.attention,
            i.unet.layers_per_block,
            burn::module::Module::num_params(&net)
        );
        println!(
            "  images: {}×{}×{}",
            i.unet.image_channels, i.unet.sample_size, i.unet.sample_size
        );
        println!(
            "  schedule: linear β {}…{}, T = {}",
            i.schedule.beta_start, i.schedule.beta_end, i.schedule.steps
        );
        println!(
            "  data: {} ({} images, hash {}…)",
            i.data_spec,
            i.data_len,
            &i.data_hash[..16]
        );
        println!("  trained with: {}", i.train.command);
        for c in dir.checkpoints()? {
            println!(
                "  checkpoint step {:>7}  epoch {:>6.1}  lr {:.2e}  loss {:.4}  {}",
                c.state.step,
                c.state.epoch,
                c.state.learning_rate,
                c.state.loss,
                c.dir.display()
            );
        }
        return Ok(());
    }
    let spec: DataSpec = path
        .parse()
        .with_context(|| format!("{path} is neither a model directory nor a dataset spec"))?;
    let ds = Dataset::load(&spec)?;
    println!("dataset {spec}");
    println!(
        "  {} images of {}×{}×{}, content hash {}",
        ds.len(),
        ds.channels,
        ds.height,
        ds.width,
        ds.content_hash()
    );
    for (k, (name, n)) in ds.class_names.iter().zip(ds.class_counts()).enumerate() {
        println!("  class {k:>2} {name:<14} {n}");
    }
    Ok(())
}
