//! Curvature of the training loss for influence functions: K-FAC and EK-FAC approximations of
//! the GGN (or empirical Fisher) of a diffusion model, tailored to diffusion losses as in
//! Mlodozeniec et al. 2024 — every (image, t, ε) sample is a point, convolution positions and
//! attention tokens are a weight-sharing dimension handled by expand or reduce.
//!
//! [`factors`] accumulates A and S from batched captures, [`eigen`] eigendecomposes them,
//! corrects the eigenvalues (EK-FAC) and applies the damped inverse, [`fit`] runs the passes
//! over a training set, and [`store`] keeps a fit on disk beside the index.

pub mod eigen;
pub mod error;
pub mod factors;
pub mod fit;
pub mod store;

pub use eigen::{Damping, EigenCorrection, Eigenvalues, LayerEigen, Preconditioner};
pub use error::CurvatureError;
pub use factors::{FactorAccumulator, LayerFactors, Sharing};
pub use fit::{CurvatureFit, Fisher, FitConfig, eigendecompose};
pub use store::{CurvatureKey, load_curvature, save_curvature};
