//! `retrace train`: train a DDPM on a dataset, saving checkpoints (Ctrl-C saves one and stops).

use std::path::PathBuf;

use anyhow::{Result, bail};

use retrace::data::{DataSpec, Dataset};
use retrace::device::DeviceRequest;
use retrace::diffusion::train::{TrainLength, train};
use retrace::diffusion::{InitFrom, ModelDir, ModelInfo, ScheduleConfig, TrainRecipe};

use retrace::diffusion::latent::{VAE_DIR, install_vae, read_vae_config, vae_sha256};

use super::{compute_device, named_config_for, terminal_job};

/// Train a DDPM on a dataset, saving checkpoints (Ctrl-C saves one and stops).
#[derive(clap::Args)]
pub struct TrainArgs {
    /// Dataset spec, e.g. `bundled`, `fashion-mnist:/usr/share/datasets/fashion-mnist?subset=1000`.
    #[arg(long)]
    pub data: String,
    /// Model directory to create (or to continue with --resume).
    #[arg(long)]
    pub out: PathBuf,
    /// Architecture: a preset (tiny, base, ddpm-cifar10), a model directory (retrace's or
    /// diffusers') or a diffusers config.json (default base; a resumed run keeps its own).
    #[arg(long)]
    pub config: Option<String>,
    /// Epochs to train in all (a resumed run continues up to this count).
    #[arg(long, default_value_t = 100)]
    pub epochs: usize,
    /// Continue from the newest checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Examples per step.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Linear learning-rate warm-up steps.
    #[arg(long, default_value_t = 200)]
    pub warmup: usize,
    /// Learning rate after the warm-up: constant, or cosine (decays to 0 at the last epoch).
    #[arg(long, value_enum, default_value = "constant")]
    pub lr_schedule: retrace::diffusion::LrSchedule,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,
    /// Save a checkpoint every this many steps.
    #[arg(long, default_value_t = 1000)]
    pub checkpoint_every: usize,
    /// Seed of initialisation, batch order and noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Class-conditional: a class-embedding table over the data's classes plus a null class,
    /// trained with label dropout so that samples can be guided (classifier-free guidance).
    #[arg(long)]
    pub conditional: bool,
    /// Probability that a training image's class is dropped for the null class, in a
    /// class-conditional model (--conditional, or a DiT; Ho & Salimans use 0.1–0.2).
    #[arg(long, default_value_t = 0.1)]
    pub label_dropout: f64,
    /// Latent diffusion: a diffusers `AutoencoderKL` directory (config.json and
    /// diffusion_pytorch_model.safetensors, e.g. a pipeline's vae/) whose latents the network
    /// learns to denoise; it is copied into the model directory. --config presets are then
    /// built for the latents' channels and side.
    #[arg(long)]
    pub vae: Option<PathBuf>,
    /// Fine-tune: start from another model's weights instead of a random initialisation (a
    /// model directory, or `bundled`; `MODEL@STEP` picks a checkpoint, default the newest). The
    /// architecture, and a latent model's autoencoder, are that model's; the optimizer starts
    /// fresh. The weights are pinned by checksum in model.json.
    #[arg(long, value_name = "MODEL[@STEP]")]
    pub init_from: Option<String>,
}

/// Runs `retrace train` on the requested compute device.
pub fn run(args: TrainArgs, device: Option<DeviceRequest>) -> Result<()> {
    let TrainArgs {
        data,
        out,
        config,
        epochs,
        resume,
        batch_size,
        lr,
        warmup,
        lr_schedule,
        weight_decay,
        checkpoint_every,
        seed,
        conditional,
        label_dropout,
        vae,
        init_from,
    } = args;
    if !(0.0..1.0).contains(&label_dropout) {
        bail!("--label-dropout {label_dropout}: use a probability in [0, 1)");
    }
    let spec: DataSpec = data.parse()?;
    let dataset = Dataset::load(&spec)?;
    if conditional && dataset.class_names.len() < 2 {
        bail!(
            "--conditional: {spec} names {} classes; a class-conditional model needs at least two",
            dataset.class_names.len()
        );
    }
    if dataset.height != dataset.width {
        bail!(
            "{} holds {}×{} images; retrace's U-Net needs square images",
            spec,
            dataset.height,
            dataset.width
        );
    }
    let dev = compute_device(device)?;
    let dir = if resume {
        let dir = ModelDir::open(&out)?;
        if let Some(name) = &config
            && dir.info.architecture != named_config_for(name, &dataset, dir.info.vae.as_ref())?
        {
            bail!(
                "{} was trained with another architecture than --config {name}",
                out.display()
            );
        }
        if let Some(from) = &vae
            && (dir.info.vae.is_none() || vae_sha256(from)? != vae_sha256(&out.join(VAE_DIR))?)
        {
            bail!(
                "--vae {}: {} keeps the autoencoder it was created with (its {VAE_DIR}/); leave --vae out to resume",
                from.display(),
                out.display()
            );
        }
        dir
    } else {
        if out.join("model.json").exists() {
            bail!(
                "{} already holds a model; pass --resume to continue it or choose another --out",
                out.display()
            );
        }
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        let init = init_from.as_deref().map(super::args::init_from_arg).transpose()?;
        let (architecture, vae_config, vae_source) = match &init {
            Some(init) => {
                if config.is_some() || conditional || vae.is_some() {
                    bail!(
                        "--init-from {}: a fine-tune keeps the architecture and autoencoder of the model it starts from; leave out --config, --conditional and --vae",
                        init.model
                    );
                }
                let from = ModelDir::open(&InitFrom::path_of(&init.model))?;
                let vae_source = from.info.vae.is_some().then(|| from.root.join(VAE_DIR));
                (from.info.architecture.clone(), from.info.vae.clone(), vae_source)
            }
            None => {
                let vae_config = vae.as_deref().map(read_vae_config).transpose()?;
                let architecture =
                    named_config_for(config.as_deref().unwrap_or("base"), &dataset, vae_config.as_ref())?;
                let architecture = if conditional {
                    architecture.with_classes(dataset.class_names.len())
                } else {
                    architecture
                };
                (architecture, vae_config, vae.clone())
            }
        };
        let can_drop = architecture.condition_encoding().null_class().is_some();
        let info = ModelInfo {
            format_version: retrace::diffusion::checkpoint::FORMAT_VERSION,
            architecture,
            schedule: ScheduleConfig::default(),
            data_spec: spec.to_string(),
            data_hash: dataset.content_hash(),
            data_len: dataset.len(),
            class_names: dataset.class_names.clone(),
            train: TrainRecipe {
                learning_rate: lr,
                warmup_steps: warmup,
                lr_schedule,
                batch_size,
                weight_decay,
                seed,
                checkpoint_every: checkpoint_every.max(1),
                // Label dropout needs a null class to drop to (retrace's conditional U-Nets and
                // DiTs have one; a class-conditional diffusers config may not).
                label_dropout: if can_drop { label_dropout } else { 0.0 },
                excluded: Vec::new(),
                init,
                command,
            },
            vae: vae_config,
        };
        if let Some(from) = &vae_source {
            install_vae(from, &out)?;
        }
        ModelDir::create(&out, info)?
    };
    eprintln!("training on {} images of {}", dataset.len(), spec);
    let (job, bar) = terminal_job()?;
    let outcome = train(&dir, &dataset, &TrainLength { epochs }, resume, &dev.device, &job)?;
    bar.finish();
    let rate = (outcome.step - outcome.first_step) as f64 / outcome.seconds.max(1e-9);
    if outcome.cancelled {
        println!(
            "stopped at step {}/{}; resume with the same command plus --resume",
            outcome.step, outcome.total_steps
        );
    } else if outcome.step == outcome.first_step {
        println!(
            "already trained to step {} of {}: nothing to do (raise --epochs to train further); checkpoints in {}",
            outcome.step,
            outcome.total_steps,
            dir.root.join("checkpoints").display()
        );
    } else {
        println!(
            "trained to step {} in {:.0} s ({rate:.1} steps/s), last loss {:.4}; checkpoints in {}",
            outcome.step,
            outcome.seconds,
            outcome.last_loss,
            dir.root.join("checkpoints").display()
        );
    }
    Ok(())
}
