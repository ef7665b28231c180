//! `retrace info`: describe a model directory or a dataset spec.

use std::path::Path;

use anyhow::{Context, Result};

use retrace::data::{DataSpec, Dataset};
use retrace::diffusion::diffusers::is_diffusers_dir;
use retrace::diffusion::schedule::BetaSchedule;
use retrace::diffusion::{Architecture, ModelDir, ModelFormat};

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
    if p.join("model.json").is_file() || is_diffusers_dir(p) {
        let dir = ModelDir::open(p)?;
        describe_model(&dir)?;
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

fn describe_model(dir: &ModelDir) -> Result<()> {
    let i = &dir.info;
    let net = i.architecture.init(&burn::tensor::Device::flex());
    let kind = match dir.format {
        ModelFormat::Retrace => "model directory",
        ModelFormat::Diffusers(_) => "diffusers model (read-only)",
    };
    println!("{kind} {}", dir.root.display());
    let parameters = burn::module::Module::num_params(&net);
    match &i.architecture {
        Architecture::UNet(u) => println!(
            "  architecture: U-Net, widths {:?}, attention {:?}, {} resnet(s) per level, {parameters} parameters",
            u.block_out_channels, u.attention, u.layers_per_block,
        ),
        Architecture::DiT(d) => println!(
            "  architecture: DiT, {} blocks of {} heads × {}, patch {}, {parameters} parameters",
            d.num_layers, d.num_attention_heads, d.attention_head_dim, d.patch_size,
        ),
    }
    let encoding = i.architecture.condition_encoding();
    if encoding.is_conditional() {
        let null = encoding.null_class().map_or_else(
            || "no null class (no guidance)".to_owned(),
            |n| format!("null class {n}"),
        );
        println!("  conditioning: class labels, {null}");
    }
    let [c, h, w] = i.image_shape();
    println!("  images: {c}×{h}×{w}");
    if let Some(vae) = &i.vae {
        let [lc, lh, lw] = i.architecture.shape();
        println!(
            "  latent diffusion: {lc}×{lh}×{lw} latents of an AutoencoderKL (widths {:?}, scaling factor {})",
            vae.block_out_channels, vae.scaling_factor
        );
    }
    let shape = match i.schedule.beta_schedule {
        BetaSchedule::Linear => "linear",
        BetaSchedule::ScaledLinear => "scaled-linear",
        BetaSchedule::SquaredcosCapV2 => "cosine",
    };
    println!(
        "  schedule: {shape} β {}…{}, T = {}",
        i.schedule.beta_start, i.schedule.beta_end, i.schedule.steps
    );
    if i.data_spec.is_empty() {
        println!("  data: not recorded (pass --data SPEC to the commands that read it)");
    } else {
        println!(
            "  data: {} ({} images, hash {}…)",
            i.data_spec,
            i.data_len,
            retrace::files::short_hash(&i.data_hash)
        );
    }
    println!("  trained with: {}", i.train.command);
    let (checkpoints, damaged) = dir.scan_checkpoints()?;
    if checkpoints.is_empty() && damaged.is_empty() {
        println!("  checkpoints: none yet; train it with `{}`", dir.train_command());
    }
    for c in checkpoints {
        let known = |v: f64, text: String| if v.is_finite() { text } else { "—".to_owned() };
        println!(
            "  checkpoint step {:>7}  epoch {:>6}  lr {:.2e}  loss {:>6}  {}",
            c.state.step,
            known(c.state.epoch, format!("{:.1}", c.state.epoch)),
            c.state.learning_rate,
            known(c.state.loss, format!("{:.4}", c.state.loss)),
            c.dir.display()
        );
    }
    for bad in damaged {
        println!("  damaged checkpoint: {}\n    {}", bad.reason, bad.fix(dir));
    }
    Ok(())
}
