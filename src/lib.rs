//! retrace: which training images made a diffusion model generate this?
//!
//! The library holds the engine — data, diffusion models, device policy, jobs and benchmarks —
//! that the `retrace` command-line tool and the desktop viewer share. See `ARCHITECTURE.md`
//! for a map of the modules and `../shared/DESIGN.md` for the formulas.

#[cfg(feature = "viewer")]
pub mod app;
pub mod attribution;
pub mod classifier;
pub mod contained;
pub mod curvature;
pub mod data;
pub mod device;
pub mod diffusion;
pub mod eval;
pub mod files;
pub mod grad;
pub mod index;
pub mod jobs;
pub mod perf;
pub mod report;
pub mod session;
pub mod shard;
pub mod stats;

/// The version string shown in reports and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
