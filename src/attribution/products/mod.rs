//! What several methods share, below the methods: none of these files imports a method, and a
//! request's [`super::context::Context`] makes each product at most once.
//!
//! - [`checkpoint_weights`]: TracIn's η_c per indexed checkpoint;
//! - [`curvature`]: the K-FAC / EK-FAC curvature fitted at the last checkpoint;
//! - [`losses`]: MUCS's fixed scoring draws and loss matrices;
//! - [`ridge`] and [`trak_kernel`]: TRAK's kernel (TRAK, D-TRAK, Journey-TRAK).

pub mod checkpoint_weights;
pub mod curvature;
pub mod losses;
pub mod ridge;
pub mod trak_kernel;

pub use checkpoint_weights::checkpoint_weights;
