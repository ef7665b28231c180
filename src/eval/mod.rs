//! Evaluation statistics for attribution scores.

pub mod stats;
