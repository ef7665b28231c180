//! Per-example gradients without per-example backward passes: layer capture (activations and
//! output gradients from one batched forward/backward), factored random projection (LoGra) and
//! the timestep plan that says which (t, noise) pairs every example is evaluated at.

pub mod capture;
pub mod error;
pub mod features;
pub mod plan;
pub mod project;

pub use crate::diffusion::checkpoint::param_paths as layer_names;
pub use capture::{CaptureTape, LayerGrads, LayerInput, LayerKind, capture_layers, frozen_on_autodiff};
pub use error::GradError;
pub use features::{Examples, FeatureRun, Features, PlanBatch, PlanWalk};
pub use plan::{PlanPoint, TimestepPlan};
pub use project::{ProjectionConfig, Projector, layer_shapes, model_layer_shapes};
