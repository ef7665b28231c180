//! A complete benchmark made into what retrace ships (`assets/lds-garments`): everything that
//! reading it needs — its spec, ground truth, queries, recorded commands, per-model results and
//! results file — and of the full-data model only its newest checkpoint (every method of the
//! evaluation reads the last one), optionally stored in half precision to fit the assets' budget.
//! The subset models were never kept; CI reads the ground truth and never retrains.

use std::path::Path;

use super::build::{BENCHMARK_FILE, GROUND_TRUTH_FILE};
use super::built::BuiltBenchmark;
use super::built::SCORE_CACHE;
use super::error::EvalError;
use crate::diffusion::ModelDir;
use crate::files::at;

/// The files and folders of a build directory that a bundle keeps as they are (those present).
const KEPT: [&str; 7] = [
    BENCHMARK_FILE,
    GROUND_TRUTH_FILE,
    "queries.json",
    "commands",
    "results",
    "results.json",
    "README.md",
];

/// What [`bundle`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bundled {
    /// The bundle's size in bytes.
    pub bytes: u64,
    /// Subsets of the ground truth bundled.
    pub subsets: usize,
    /// Whether the build was still in progress (its subsets measured so far were bundled; bundle
    /// again once it is complete).
    pub partial: bool,
}

/// Writes the benchmark in `source` into `out` (replacing what is there once the new bundle is
/// whole, but keeping its score cache, whose entries name the weights they were computed
/// with), its full-data model's newest checkpoint in f16 when `half` is set. A build still in
/// progress bundles the subsets measured so far, as every scoring command reads it.
pub fn bundle(source: &Path, out: &Path, half: bool) -> Result<Bundled, EvalError> {
    let bench = BuiltBenchmark::open(source)?;
    let partial = bench.is_partial()? || !source.join(GROUND_TRUTH_FILE).is_file();
    let staging = crate::files::temporary_sibling(out);
    let _ = std::fs::remove_dir_all(&staging);
    let written = (|| -> Result<(), EvalError> {
        crate::files::create_dir_all(&staging)?;
        for name in KEPT {
            let from = source.join(name);
            if from.is_dir() {
                copy_dir(&from, &staging.join(name))?;
            } else if from.is_file() {
                std::fs::copy(&from, staging.join(name)).map_err(at(&from))?;
            }
        }
        let (net, newest) = bench.model.load_latest(&burn::tensor::Device::flex())?;
        let full = ModelDir::create(&staging.join("full"), bench.model.info.clone())?;
        let state = newest.state.clone();
        if half {
            full.save_half_precision(&net, state)?;
        } else {
            full.save(&net, None, state)?;
        }
        // Read back as any reader will: the bundle opens as the benchmark it came from.
        let reopened = BuiltBenchmark::open(&staging)?;
        if reopened.truth.spec != bench.truth.spec || reopened.truth.queries.len() != bench.truth.queries.len() {
            return Err(EvalError::Invalid(format!(
                "{} does not read back as the benchmark it was made from",
                staging.display()
            )));
        }
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    let cache = out.join(SCORE_CACHE);
    if cache.is_dir() {
        std::fs::rename(&cache, staging.join(SCORE_CACHE)).map_err(at(&cache))?;
    }
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(at(out))?;
    }
    std::fs::rename(&staging, out).map_err(at(out))?;
    Ok(Bundled {
        bytes: dir_size(out),
        subsets: bench.truth.spec.subsets,
        partial,
    })
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), EvalError> {
    crate::files::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).map_err(at(from))? {
        let path = entry.map_err(at(from))?.path();
        let target = to.join(path.file_name().expect("a directory entry has a name"));
        if path.is_dir() {
            copy_dir(&path, &target)?;
        } else {
            std::fs::copy(&path, &target).map_err(at(&path))?;
        }
    }
    Ok(())
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                dir_size(&path)
            } else {
                e.metadata().map_or(0, |m| m.len())
            }
        })
        .sum()
}
