//! Per-example gradients without per-example backward passes: layer capture (activations and
//! output gradients from one batched forward/backward), factored random projection (LoGra) and
//! the timestep plan that says which (t, noise) pairs every example is evaluated at.

pub mod capture;

pub use capture::{CaptureTape, LayerGrads, LayerKind, capture_layers, layer_names};
