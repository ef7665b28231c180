//! The benchmarks `retrace eval build-lds --preset` builds: every recipe setting of each, so that
//! a benchmark is named instead of spelled out (each setting can still be given on its own).

use std::path::Path;

use anyhow::{Result, bail};

use retrace::diffusion::LrSchedule;

/// Where Debian's `dataset-fashion-mnist` puts the idx files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// A named benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// The bundled benchmark (`assets/lds`): the first 256 T-shirts/tops and ankle boots of
    /// Fashion-MNIST, the `tiny` U-Net trained from scratch, 64 half-subsets × 2 seeds, 32 + 32
    /// queries × 100 draws.
    Bundled,
    /// The garment benchmark: the bundled class-conditional model fine-tuned on Fashion-MNIST
    /// training images 1,000–1,249 (all ten classes, disjoint from the 1,000 it was trained
    /// on), 192 steps of batch 32 at 3e-4 (24 epochs; a half-subset's 48 epochs are as many
    /// steps); 32 half-subsets × 2 seeds (about 5 CPU-minutes per model on 2 cores, so the 64
    /// models fit the 6 hours; `--subsets 64` grows a built one); 40 held-out test
    /// images and 40 guided samples (DDIM 50), the classes in turn, × 64 draws. Chosen by
    /// pilots: 1,000 images over 96 steps left the subset's share of the loss differences near
    /// 0 (consistency ICC .01/.07), 250 over 192 steps at 3e-4 reached about .3 (at 1e-3,
    /// less).
    Garments,
    /// D-TRAK's CIFAR-2 protocol (Zheng et al. 2024; `sail-sg/D-TRAK`,
    /// `CIFAR2/scripts/run_lds_val_sub.sh`, `train_unconditional.py`): the 5,000 automobiles
    /// and horses, the `ddpm-cifar10` U-Net, 200 epochs of batch 128 at 1e-4 (cosine, weight
    /// decay 1e-6) for the full model and, as D-TRAK trains them, as many epochs for each of
    /// 64 half-subsets × 3 seeds; 1,000 validation images and 1,000 samples, each measured at
    /// every one of the 1,000 steps. Departures: no random flips (retrace does not augment);
    /// the warm-up is 800 steps for every model (D-TRAK's 10% of the full model's steps; its
    /// subset models warm up over 10% of their own, 400); DDIM 100 samples.
    DtrakCifar2,
}

/// Every setting of a benchmark's recipe that a preset fixes.
#[derive(Clone, Debug, PartialEq)]
pub struct Recipe {
    /// Training data spec.
    pub data: String,
    /// Held-out query images.
    pub held_out: String,
    /// Architecture (ignored when fine-tuning).
    pub config: String,
    /// Epochs of the full-data model.
    pub epochs: usize,
    /// Epochs of every subset model (`None`: epochs / α).
    pub subset_epochs: Option<usize>,
    /// Examples per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// After the warm-up.
    pub lr_schedule: LrSchedule,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Subsets M.
    pub subsets: usize,
    /// Seeds per subset.
    pub seeds: u64,
    /// Subset fraction α.
    pub alpha: f64,
    /// Queries of each kind.
    pub queries: usize,
    /// DDIM steps of the generated queries.
    pub sampler_steps: usize,
    /// Draws per query.
    pub draws: usize,
    /// The weights every model is fine-tuned from (`MODEL[@STEP]`).
    pub init_from: Option<String>,
}

impl Preset {
    /// The preset's recipe, reading the dataset in `data_dir` (a preset's default where it
    /// has one).
    pub fn recipe(self, data_dir: Option<&Path>) -> Result<Recipe> {
        let fashion = || data_dir.map_or_else(|| FASHION_MNIST_DIR.to_owned(), |d| d.display().to_string());
        Ok(match self {
            Preset::Bundled => Recipe {
                data: format!("fashion-mnist:{}?classes=0,9&subset=256", fashion()),
                held_out: format!("fashion-mnist:{}?split=test&classes=0,9&subset=32", fashion()),
                config: "tiny".into(),
                epochs: 28,
                subset_epochs: None,
                batch_size: 16,
                lr: 2e-3,
                warmup: 50,
                lr_schedule: LrSchedule::Cosine,
                weight_decay: 1e-4,
                subsets: 64,
                seeds: 2,
                alpha: 0.5,
                queries: 32,
                sampler_steps: 100,
                draws: 100,
                init_from: None,
            },
            Preset::Garments => Recipe {
                data: format!("fashion-mnist:{}?offset=1000&subset=250", fashion()),
                held_out: format!("fashion-mnist:{}?split=test", fashion()),
                config: "base".into(),
                epochs: 24,
                subset_epochs: None,
                batch_size: 32,
                lr: 3e-4,
                warmup: 10,
                lr_schedule: LrSchedule::Cosine,
                weight_decay: 1e-4,
                subsets: 32,
                seeds: 2,
                alpha: 0.5,
                queries: 40,
                sampler_steps: 50,
                draws: 64,
                init_from: Some("bundled".into()),
            },
            Preset::DtrakCifar2 => {
                let Some(dir) = data_dir else {
                    bail!(
                        "--preset dtrak-cifar2 reads CIFAR-10's binary batches: give their directory with --data-dir"
                    );
                };
                let dir = dir.display();
                Recipe {
                    data: format!("cifar2:{dir}"),
                    held_out: format!("cifar2:{dir}?split=test&subset=1000"),
                    config: "ddpm-cifar10".into(),
                    epochs: 200,
                    subset_epochs: Some(200),
                    batch_size: 128,
                    lr: 1e-4,
                    warmup: 800,
                    lr_schedule: LrSchedule::Cosine,
                    weight_decay: 1e-6,
                    subsets: 64,
                    seeds: 3,
                    alpha: 0.5,
                    queries: 1000,
                    sampler_steps: 100,
                    draws: 1000,
                    init_from: None,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bundled preset is the bundled benchmark's recipe as its `benchmark.json` records it,
    /// so `build-lds --out assets/lds` resumes it instead of refusing another benchmark.
    #[test]
    fn the_bundled_preset_is_the_bundled_benchmark() {
        let spec: retrace::eval::BenchmarkSpec = serde_json::from_slice(
            &std::fs::read(retrace::eval::BuiltBenchmark::bundled_dir().join("benchmark.json")).unwrap(),
        )
        .unwrap();
        let r = Preset::Bundled.recipe(None).unwrap();
        assert_eq!(
            (r.data.as_str(), r.held_out.as_str()),
            (spec.data.as_str(), spec.held_out.as_str())
        );
        let t = &spec.training;
        assert_eq!(
            (r.epochs, r.batch_size, r.warmup, r.lr_schedule),
            (t.full_epochs, t.batch_size, t.warmup_steps, t.lr_schedule)
        );
        assert_eq!((r.lr, r.weight_decay), (t.learning_rate, t.weight_decay));
        assert_eq!(
            (r.subsets, r.seeds as usize, r.alpha),
            (spec.subsets, spec.seeds.len(), spec.alpha)
        );
        assert_eq!(
            (r.queries, r.sampler_steps, r.draws),
            (spec.queries_per_kind, spec.sampler_steps, spec.draws)
        );
        assert!(
            Preset::DtrakCifar2.recipe(None).is_err(),
            "CIFAR-10 has no default directory"
        );
    }
}
