//! Denoising diffusion: the noise schedule, the U-Net, training, checkpoints and samplers.

pub mod checkpoint;
pub mod condition;
pub mod diffusers;
pub mod dit;
pub mod error;
pub mod images;
pub mod latent;
pub mod measure;
pub mod model_info;
pub mod network;
pub mod noise;
pub mod sampler;
pub mod schedule;
pub mod train;
pub mod unet;
pub mod vae;

pub use checkpoint::{
    CheckpointEntry, CheckpointError, CheckpointState, InitFrom, LrSchedule, ModelDir, ModelFormat, ModelInfo,
    TrainRecipe,
};
pub use condition::{Condition, ConditionEncoding};
pub use error::{ConfigError, ModelError};
pub use measure::Measurement;
pub use network::{Architecture, Network};
pub use sampler::{SampleStep, SamplerConfig, SamplerKind, sample};
pub use schedule::{Schedule, ScheduleConfig};
pub use unet::{Denoiser, NoTape, Tape, UNet, UNetConfig};
