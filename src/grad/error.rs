//! Why gradients could not be taken: a cancelled walk, examples that do not fit, a diverged
//! model, a device that cannot read back.

use crate::device::DeviceError;
use crate::diffusion::ConfigError;

/// Why gradient features (or a timestep plan) could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum GradError {
    /// The job was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// The request does not fit (a region of another size, a plan outside the schedule, …).
    #[error("{0}")]
    Invalid(String),
    /// A gradient holds NaN or infinity: the model has diverged.
    #[error("{0}")]
    NonFinite(String),
    /// A condition the model cannot read (a class outside its table, no class for a model
    /// without a null class).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A tensor could not be read back from the device.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

crate::jobs::cancellable_error!(GradError {});
