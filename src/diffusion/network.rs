//! The denoising networks retrace builds, as one type the engine works with: a diffusers
//! `UNet2DModel` ([`UNet`]) or `DiTTransformer2DModel` ([`DiT`]). Training, sampling,
//! gradient capture, curvature fits and every method take a [`Network`]; only what is
//! particular to one family (its diffusers layout, which parameters MUCS unlearns with) looks
//! inside.

use burn::module::Module;
use burn::store::ModuleRecord;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::condition::ConditionEncoding;
use super::dit::{DiT, DiTConfig};
use super::error::{ConfigError, ModelError};
use super::unet::{Denoiser, NoTape, Tape, UNet, UNetConfig};

/// The architecture of a model's network. In `model.json` it is one key, `unet` (as every
/// model written before DiTs were supported) or `dit`, holding that family's config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Architecture {
    /// A diffusers `UNet2DModel`.
    #[serde(rename = "unet")]
    UNet(UNetConfig),
    /// A diffusers `DiTTransformer2DModel`.
    #[serde(rename = "dit")]
    DiT(DiTConfig),
}

impl From<UNetConfig> for Architecture {
    fn from(config: UNetConfig) -> Self {
        Self::UNet(config)
    }
}

impl From<DiTConfig> for Architecture {
    fn from(config: DiTConfig) -> Self {
        Self::DiT(config)
    }
}

impl Architecture {
    /// A named preset of either family (`tiny`, `base`, `ddpm-cifar10`, `dit-tiny`,
    /// `dit-small`) for `classes` classes of `channels`×`size`×`size` images (a U-Net preset is
    /// unconditional, a DiT always class-conditional).
    pub fn named(name: &str, channels: usize, size: usize, classes: usize) -> Option<Self> {
        UNetConfig::named(name, channels, size)
            .map(Self::UNet)
            .or_else(|| DiTConfig::named(name, channels, size, classes).map(Self::DiT))
    }

    /// This architecture class-conditional over `classes` labels plus a null class: a U-Net
    /// gains a class table ([`UNetConfig::with_classes`]); a DiT is class-conditional already.
    pub fn with_classes(self, classes: usize) -> Self {
        match self {
            Self::UNet(c) if !c.condition_encoding().is_conditional() => Self::UNet(c.with_classes(classes)),
            other => other,
        }
    }

    /// The family's name, as users know it.
    pub fn family(&self) -> &'static str {
        match self {
            Self::UNet(_) => "UNet2DModel",
            Self::DiT(_) => "DiTTransformer2DModel",
        }
    }

    /// Channels of the images (or latents) the network denoises.
    pub fn image_channels(&self) -> usize {
        match self {
            Self::UNet(c) => c.image_channels,
            Self::DiT(c) => c.in_channels,
        }
    }

    /// Side of the (square) images.
    pub fn sample_size(&self) -> usize {
        match self {
            Self::UNet(c) => c.sample_size,
            Self::DiT(c) => c.sample_size,
        }
    }

    /// C×H×W of the images.
    pub fn shape(&self) -> [usize; 3] {
        [self.image_channels(), self.sample_size(), self.sample_size()]
    }

    /// How the network reads conditions.
    pub fn condition_encoding(&self) -> ConditionEncoding {
        match self {
            Self::UNet(c) => c.condition_encoding(),
            Self::DiT(c) => c.condition_encoding(),
        }
    }

    /// The U-Net's config, for a U-Net.
    pub fn as_unet(&self) -> Option<&UNetConfig> {
        match self {
            Self::UNet(c) => Some(c),
            Self::DiT(_) => None,
        }
    }

    /// Checks the config.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            Self::UNet(c) => c.validate(),
            Self::DiT(c) => c.validate(),
        }
    }

    /// An estimate of the parameter count, computed without building anything.
    pub fn estimated_parameters(&self) -> f64 {
        match self {
            Self::UNet(c) => c.estimated_parameters(),
            Self::DiT(c) => c.estimated_parameters(),
        }
    }

    /// Builds the network with fresh weights from burn's generator (see [`UNetConfig::init`]).
    pub fn init(&self, device: &Device) -> Network {
        self.init_drawn(device, None)
    }

    /// [`Self::init`] from the generator seeded with `seed`.
    pub fn init_seeded(&self, device: &Device, seed: u64) -> Network {
        self.init_drawn(device, Some(seed))
    }

    /// The network with the weights of a burn record written by [`Network::record_bytes`] (the
    /// family's own module record, so checkpoints written before DiTs existed still load).
    pub fn load_record(&self, record: ModuleRecord, device: &Device) -> Result<Network, ModelError> {
        // A record stored in half precision (a bundled checkpoint) is cast to the module's f32.
        let record = record.cast_to_module_dtype();
        match self.init(device) {
            Network::UNet(net) => net.try_load_record(record).map(Network::UNet),
            Network::DiT(net) => net.try_load_record(record).map(Network::DiT),
        }
        .map_err(|e| ModelError::Weights(e.to_string()))
    }

    fn init_drawn(&self, device: &Device, seed: Option<u64>) -> Network {
        match self {
            Self::UNet(c) => Network::UNet(match seed {
                Some(seed) => c.init_seeded(device, seed),
                None => c.init(device),
            }),
            Self::DiT(c) => Network::DiT(crate::device::drawing(device, seed, || {
                super::unet::materialised(c.build(device))
            })),
        }
    }
}

/// A denoising network of any family retrace builds.
// A process holds a handful of networks, moved rarely: the size of the larger variant does not
// matter, and burn's Module derive reads the variants' modules as they are (no Box).
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Network {
    /// A U-Net.
    UNet(UNet),
    /// A diffusion transformer.
    DiT(DiT),
}

impl Network {
    /// Predicts the noise in `x` ([batch, C, H, W]) at steps `t` ([batch]) under the condition
    /// rows `condition` ([`ConditionEncoding::rows`]; `None` for an unconditional network).
    pub fn forward(&self, x: Tensor<4>, t: Tensor<1>, condition: Option<Tensor<2>>) -> Tensor<4> {
        self.predict_with(x, t, condition, &mut NoTape)
    }

    /// How the network reads conditions.
    pub fn condition_encoding(&self) -> ConditionEncoding {
        Denoiser::condition_encoding(self)
    }

    /// The weights as the bytes of the family's burn module record (what a checkpoint's
    /// `weights.bpk` holds).
    pub fn record_bytes(&self) -> Result<Vec<u8>, ModelError> {
        match self {
            Self::UNet(net) => net.clone().into_record().into_bytes(),
            Self::DiT(net) => net.clone().into_record().into_bytes(),
        }
        .map(|bytes| bytes.to_vec())
        .map_err(|e| ModelError::Weights(e.to_string()))
    }

    /// The U-Net, for a U-Net.
    pub fn as_unet(&self) -> Option<&UNet> {
        match self {
            Self::UNet(u) => Some(u),
            Self::DiT(_) => None,
        }
    }
}

impl Denoiser for Network {
    /// # Panics
    /// When a class-conditional network gets no condition rows: [`ConditionEncoding::rows`]
    /// makes them for every condition it accepts.
    fn predict_with(
        &self,
        x: Tensor<4>,
        t: Tensor<1>,
        condition: Option<Tensor<2>>,
        tape: &mut impl Tape,
    ) -> Tensor<4> {
        match self {
            Self::UNet(u) => u.forward_with(x, t, condition, tape),
            Self::DiT(d) => d.forward_with(
                x,
                t,
                condition.expect("a DiT is class-conditional and needs condition rows"),
                tape,
            ),
        }
    }

    fn condition_encoding(&self) -> ConditionEncoding {
        match self {
            Self::UNet(u) => u.condition_encoding(),
            Self::DiT(d) => d.condition_encoding(),
        }
    }
}
