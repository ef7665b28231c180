//! `retrace eval train-classifier` and `retrace eval classes`: train the classifier that judges
//! samples, and judge a class-conditional model's samples with it.

use std::path::PathBuf;

use anyhow::{Result, bail};

use retrace::classifier::{ClassifierInfo, ClassifierRecipe, load_classifier, save_classifier, train_classifier};
use retrace::data::{DataSpec, Dataset, Split};
use retrace::device::ComputeDevice;
use retrace::diffusion::{ModelDir, SamplerKind};
use retrace::eval::class_fidelity::judge_samples;
use retrace::jobs::JobContext;

use super::args::ConditionArgs;

/// `retrace eval train-classifier`.
#[derive(clap::Args)]
pub struct TrainClassifierArgs {
    /// Training split (the test split of the same source measures it).
    #[arg(long, default_value = "fashion-mnist:/usr/share/datasets/fashion-mnist")]
    pub data: String,
    /// Directory to write (classifier.json, weights.bpk).
    #[arg(long)]
    pub out: PathBuf,
    /// Passes over the training split.
    #[arg(long, default_value_t = 8)]
    pub epochs: usize,
    /// Images per step.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Seed of initialisation and order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// `retrace eval classes`.
#[derive(clap::Args)]
pub struct ClassesArgs {
    /// Class-conditional model directory (default: the bundled model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Classifier directory (`retrace eval train-classifier`; default: the bundled one).
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// Samples per class (seeds 0..N).
    #[arg(long, default_value_t = 20)]
    pub per_class: usize,
    /// Denoising steps.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// ddpm (ancestral) or ddim (deterministic).
    #[arg(long, default_value = "ddim")]
    pub sampler: SamplerKind,
    /// The guidance (--class is not used: every class is sampled).
    #[command(flatten)]
    pub condition: ConditionArgs,
    /// Also write the judgement as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Trains the classifier and writes it with its test accuracy.
pub fn train(args: TrainClassifierArgs, device: &ComputeDevice, job: &JobContext) -> Result<()> {
    let spec: DataSpec = args.data.parse()?;
    let mut test_spec = spec.clone();
    test_spec.split = Split::Test;
    let (train_data, test_data) = (Dataset::load(&spec)?, Dataset::load(&test_spec)?);
    let recipe = ClassifierRecipe {
        epochs: args.epochs,
        batch_size: args.batch_size,
        learning_rate: args.lr,
        seed: args.seed,
    };
    eprintln!(
        "training a classifier on {} images of {spec}, testing on {} of {test_spec}",
        train_data.len(),
        test_data.len()
    );
    let started = std::time::Instant::now();
    let (net, accuracy) = train_classifier(&train_data, &test_data, &recipe, &device.device, job)?;
    let info = ClassifierInfo {
        config: retrace::classifier::ClassifierConfig::new(
            train_data.channels,
            train_data.height,
            train_data.class_names.len(),
        ),
        class_names: train_data.class_names.clone(),
        data_spec: spec.to_string(),
        data_hash: train_data.content_hash(),
        recipe,
        test_spec: test_spec.to_string(),
        test_accuracy: accuracy.clone(),
        weights_sha256: String::new(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    save_classifier(&args.out, &net, info)?;
    println!(
        "test accuracy {:.2}% ({} images) in {:.0} s; wrote {}",
        100.0 * accuracy.overall,
        test_data.len(),
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

/// Samples every class of a class-conditional model and prints how many the classifier
/// assigns to the class asked for.
pub fn judge(args: ClassesArgs, device: &ComputeDevice, job: &JobContext) -> Result<()> {
    let model = ModelDir::open(&args.model.unwrap_or_else(retrace::data::bundled_model_dir))?;
    let classifier_dir = args.classifier.unwrap_or_else(retrace::data::bundled_classifier_dir);
    let classifier = load_classifier(&classifier_dir, &device.device)?;
    if classifier.1.class_names != model.info.class_names {
        bail!(
            "the classifier in {} knows the classes {:?}, the model {:?}",
            classifier_dir.display(),
            classifier.1.class_names,
            model.info.class_names
        );
    }
    let sampler = args.condition.sampler(&model.info, args.sampler, args.steps)?;
    let judged = judge_samples(&model, &classifier, args.per_class, &sampler, &device.device, job)?;
    println!(
        "{} samples per class, {:?} {} steps, guidance {}:\n{}",
        args.per_class,
        sampler.kind,
        sampler.steps,
        sampler.guidance_scale,
        judged.table()
    );
    if let Some(out) = args.out {
        retrace::files::write_atomic(&out, &serde_json::to_vec_pretty(&judged)?)?;
        println!("wrote {}", out.display());
    }
    Ok(())
}
