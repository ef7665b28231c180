//! Evaluation of attribution methods: the LDS benchmark (its specification, the ground-truth
//! build, the score), and the statistics they use.

pub mod benchmark;
pub mod build;
pub mod built;
pub mod bundle;
pub mod class_fidelity;
pub mod error;
pub mod ground_truth;
pub mod image_metrics;
pub mod lds;
pub mod regenerate;
pub mod remove_topk;
pub mod retraining;
pub mod rows;
pub mod table;

pub use benchmark::{BenchmarkQuery, BenchmarkSpec, BenchmarkTraining, QueryHalf, QueryKind};
pub use build::{LdsBuild, Shard};
pub use built::BuiltBenchmark;
pub use error::EvalError;
pub use ground_truth::GroundTruth;
