//! Retraining without some training images, as the counterfactual evaluations do it
//! (`retrace eval remove-topk`, `retrace eval regenerate`): the benchmark's recipe with seed s,
//! from its pretrained weights when it fine-tunes, on the data less the removed images.
//!
//! Two ways of drawing the retrained run's randomness:
//! - [`Retraining::Independent`], what the papers do (Georgiev et al. 2023; Zheng et al. 2024's
//!   `run_counter.sh`; Serrà et al. 2026's `pipeline.py`): a fresh run with seed s on the N − k
//!   remaining images. Its batches, timesteps and noise share nothing with the reference run's,
//!   so every sample changes by what retraining alone changes; on the garment benchmark that
//!   floor is about 30% of the change between two different samples, which hides the removal.
//! - [`Retraining::Matched`], retrace's departure (common random numbers, a standard
//!   variance-reduction device for comparing two simulations): the reference run of seed s
//!   replayed step by step, with the removed images taken out of every batch the seed's plan
//!   puts them in; every other image keeps its timestep, noise, label dropout and weight in the
//!   loss, and the run keeps its number of steps and learning-rate schedule. The two runs then
//!   differ by the removed images' gradient terms alone (and what they set off), which is the
//!   counterfactual the attribution methods estimate.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::build::{FULL_DATA_MODEL, LdsBuild, model_info};
use super::built::BuiltBenchmark;
use super::error::EvalError;
use crate::diffusion::{ModelDir, Network};

/// How a model retrained without some images draws its randomness (module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Retraining {
    /// The reference run replayed with the removed images masked out of its batches.
    #[default]
    Matched,
    /// A fresh run with the same seed on the remaining images (the papers' protocol). Files
    /// written before retrace had a choice hold such models.
    Independent,
}

impl Retraining {
    /// The retraining of files that do not record one: they were all independent.
    pub fn recorded_before_choice() -> Self {
        Retraining::Independent
    }

    /// How a retrained model was made, as a report says it.
    pub fn describe(self) -> &'static str {
        match self {
            Retraining::Matched => "the full-data run replayed without them",
            Retraining::Independent => "a fresh run on the remaining images",
        }
    }
}

/// Trains (or resumes) in `root` the benchmark's model of `seed` without the training images
/// `removed` (dataset indices), described as `what` (empty `removed`: the full-data
/// model). A model left there with other settings starts over.
pub(crate) fn retrain_without(
    builder: &LdsBuild<'_>,
    bench: &BuiltBenchmark,
    root: &Path,
    removed: &[usize],
    seed: u64,
    retraining: Retraining,
    what: &str,
) -> Result<Network, EvalError> {
    let spec = &bench.truth.spec;
    let mut removed = removed.to_vec();
    removed.sort_unstable();
    removed.dedup();
    let matched = retraining == Retraining::Matched && !removed.is_empty();
    let remaining;
    let data = if removed.is_empty() || matched {
        &bench.data
    } else {
        let keep: Vec<usize> = (0..bench.data.len())
            .filter(|i| removed.binary_search(i).is_err())
            .collect();
        remaining = bench.data.select(&keep);
        &remaining
    };
    let mut info = model_info(
        spec,
        data,
        seed,
        if removed.is_empty() { FULL_DATA_MODEL } else { what },
    );
    if matched {
        info.train.excluded = removed;
        info.data_spec = format!("{} ({what}, masked out of the full-data run's batches)", spec.data);
    }
    let stale = |m: ModelDir| m.info.data_hash != info.data_hash || m.info.train.excluded != info.train.excluded;
    if ModelDir::open(root).is_ok_and(stale) {
        std::fs::remove_dir_all(root).map_err(crate::files::at(root))?;
    }
    let stem = root
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    Ok(builder
        .train_model(root, info, data, spec.training.full_epochs, &stem)?
        .0)
}
