//! Compute-device policy. burn's runtimes, chosen at run time in one binary:
//!
//! - `cuda`: CubeCL's CUDA runtime (only in builds with the `cuda` feature);
//! - `vulkan`: the wgpu runtime pinned to Vulkan, whose kernels CubeCL compiles to SPIR-V
//!   (cooperative matrices where the driver has them);
//! - `wgpu`: the wgpu runtime on the API it settles on (Vulkan, with SPIR-V, where the adapter
//!   has the features CubeCL's SPIR-V compiler needs; WGSL through naga elsewhere);
//! - `cpu`: burn's flex backend.
//!
//! `auto` takes CUDA where it is built and a CUDA device answers, else a real GPU adapter
//! through wgpu; when the only wgpu adapters are CPU rasterisers (llvmpipe, lavapipe, WARP), flex,
//! which on a CPU is about ten times faster than wgpu on lavapipe (≈100 vs ≈10 GFLOP/s for a
//! 512² matmul, measured on a 2-core machine). `--device` or `RETRACE_DEVICE` overrides the
//! choice. Every probe answers with an error, never a panic, where a driver library is missing.

use std::fmt;
use std::str::FromStr;

/// The wgpu handles (instance, adapter, device, queue) burn computes with.
pub use burn::tensor::wgpu::WgpuSetup;
use burn::tensor::{Device, DeviceKind};

/// Environment variable that overrides the device choice.
pub const DEVICE_ENV: &str = "RETRACE_DEVICE";

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    /// A GPU through wgpu if one exists, else the CPU through flex.
    #[default]
    Auto,
    /// The CPU through flex.
    Cpu,
    /// wgpu's default adapter, even a software one.
    Wgpu,
    /// wgpu pinned to Vulkan (SPIR-V kernels), even a software adapter.
    Vulkan,
    /// CubeCL's CUDA runtime, device 0 (builds with the `cuda` feature).
    Cuda,
}

/// Why no compute device could be chosen, or a tensor not read back from one.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A device name no one knows.
    #[error("unknown device {0:?}; expected auto, cpu, wgpu, vulkan or cuda")]
    Unknown(String),
    /// The device named by the environment variable is unknown.
    #[error("{DEVICE_ENV}: {0}")]
    Environment(Box<DeviceError>),
    /// The requested device does not exist here or this build lacks its runtime (the message
    /// says which and what to do).
    #[error("{0}")]
    Unavailable(String),
    /// A tensor could not be read back to the host.
    #[error("cannot read a tensor back from the device: {0}")]
    ReadBack(String),
}

impl crate::jobs::Cancellable for DeviceError {}

impl FromStr for DeviceRequest {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, DeviceError> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" | "flex" => Ok(Self::Cpu),
            "wgpu" | "gpu" => Ok(Self::Wgpu),
            "vulkan" => Ok(Self::Vulkan),
            "cuda" => Ok(Self::Cuda),
            _ => Err(DeviceError::Unknown(s.to_owned())),
        }
    }
}

/// Which backend computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// burn's pure-Rust CPU backend.
    Flex,
    /// burn's wgpu backend (its API and shader language the runtime's choice).
    Wgpu,
    /// burn's wgpu backend pinned to Vulkan (SPIR-V kernels).
    Vulkan,
    /// burn's CUDA backend.
    Cuda,
}

impl BackendKind {
    /// True for the runtimes built on wgpu, whose device a wgpu renderer can share.
    pub fn is_wgpu(self) -> bool {
        matches!(self, Self::Wgpu | Self::Vulkan)
    }
}

/// The chosen device with a description for the user.
#[derive(Clone, Debug)]
pub struct ComputeDevice {
    /// The burn device (without autodiff).
    pub device: Device,
    /// Which backend it is.
    pub backend: BackendKind,
    /// Short name for status bars: "CPU (flex)" or the GPU's name.
    pub name: String,
    /// Why it was chosen.
    pub reason: String,
    /// The wgpu instance, adapter, device and queue burn computes with, when they were set up to
    /// be shared with a renderer ([`choose_shared`]); `None` otherwise.
    pub wgpu_setup: Option<WgpuSetup>,
}

impl fmt::Display for ComputeDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} — {}", self.name, self.reason)
    }
}

/// A wgpu adapter as seen by the policy.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    /// Adapter name ("NVIDIA H100", "llvmpipe (LLVM 15.0.6, 256 bits)").
    pub name: String,
    /// Graphics API ("Vulkan", …).
    pub api: String,
    /// True for software rasterisers running on the CPU.
    pub is_cpu: bool,
}

/// Lists the wgpu adapters of this machine.
pub fn wgpu_adapters() -> Vec<AdapterSummary> {
    // The primary backends only: the GL backend's set-up probes for a Wayland display, which on
    // a headless machine prints "XDG_RUNTIME_DIR is invalid" to stderr, as if retrace had failed.
    let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
    descriptor.backends = wgpu::Backends::PRIMARY;
    let instance = wgpu::Instance::new(descriptor.with_env());
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY))
        .into_iter()
        .map(|a| {
            let info = a.get_info();
            let software = ["llvmpipe", "lavapipe", "swiftshader", "warp", "microsoft basic render"];
            let lower = info.name.to_ascii_lowercase();
            AdapterSummary {
                is_cpu: info.device_type == wgpu::DeviceType::Cpu || software.iter().any(|s| lower.contains(s)),
                name: info.name,
                api: format!("{:?}", info.backend),
            }
        })
        .collect()
}

fn flex(reason: String) -> ComputeDevice {
    ComputeDevice {
        device: Device::flex(),
        backend: BackendKind::Flex,
        name: "CPU (flex)".to_owned(),
        reason,
        wgpu_setup: None,
    }
}

fn wgpu_device(adapter: Option<&AdapterSummary>, backend: BackendKind, reason: String) -> ComputeDevice {
    let name = adapter.map_or_else(|| "wgpu".to_owned(), |a| format!("{} ({})", a.name, a.api));
    let (device, name) = match backend {
        #[cfg(feature = "vulkan")]
        BackendKind::Vulkan => (Device::vulkan(DeviceKind::DefaultDevice), format!("{name}, SPIR-V")),
        _ => (Device::wgpu(DeviceKind::DefaultDevice), name),
    };
    ComputeDevice {
        device,
        backend,
        name,
        reason,
        wgpu_setup: None,
    }
}

/// CubeCL's CUDA device 0, if this build has the runtime and a CUDA device answers: the probe
/// runs one small computation, and a missing driver library (a panic inside the runtime) or
/// no device comes back as the error.
#[cfg(feature = "cuda")]
pub fn cuda_device() -> Result<ComputeDevice, DeviceError> {
    let probe = crate::contained::contain(|| {
        let device = Device::cuda(0);
        let sum = burn::tensor::Tensor::<1>::ones([4], &device).sum().into_scalar::<f32>();
        (device, sum)
    });
    match probe {
        Some((device, sum)) if sum == 4.0 => {
            let name = device
                .clone()
                .as_dispatch()
                .identity()
                .map_or_else(|| "CUDA device 0".to_owned(), |i| i.name);
            Ok(ComputeDevice {
                device,
                backend: BackendKind::Cuda,
                name: format!("{name} (CUDA)"),
                reason: String::new(),
                wgpu_setup: None,
            })
        }
        Some((_, sum)) => Err(DeviceError::Unavailable(format!(
            "the CUDA device computed 1+1+1+1 = {sum}"
        ))),
        None => Err(DeviceError::Unavailable(
            "CUDA is not available here: no CUDA driver library, or no CUDA device".to_owned(),
        )),
    }
}

/// This build has no CUDA runtime: the error says so and how to get one.
#[cfg(not(feature = "cuda"))]
pub fn cuda_device() -> Result<ComputeDevice, DeviceError> {
    Err(DeviceError::Unavailable(
        "this retrace was built without CUDA: build it with `cargo build --release --features cuda` \
         (cubecl-cuda links an LLVM build that its build script downloads), or use --device vulkan"
            .to_owned(),
    ))
}

/// The environment variable burn reads for its default device (`Device::default()`). retrace
/// never computes there, but burn-optim restores optimizer state onto it: the `retrace` binary
/// sets it to `flex` unless the user did (see `main.rs`).
pub const BURN_DEFAULT_ENV: &str = "BURN_DEVICE";

/// Applies the policy to a request (the `--device` flag, else `RETRACE_DEVICE`, else auto).
pub fn choose(flag: Option<DeviceRequest>) -> Result<ComputeDevice, DeviceError> {
    let request = match flag {
        Some(r) => r,
        None => match std::env::var(DEVICE_ENV) {
            Ok(v) if !v.is_empty() => v.parse().map_err(|e| DeviceError::Environment(Box::new(e)))?,
            _ => DeviceRequest::Auto,
        },
    };
    Ok(match request {
        DeviceRequest::Cpu => flex("requested".to_owned()),
        DeviceRequest::Vulkan if !cfg!(feature = "vulkan") => {
            return Err(DeviceError::Unavailable(
                "this retrace was built without the Vulkan (SPIR-V) runtime: build it with \
                 `cargo build --release --features vulkan`, or use --device wgpu"
                    .to_owned(),
            ));
        }
        DeviceRequest::Wgpu | DeviceRequest::Vulkan => {
            let vulkan = request == DeviceRequest::Vulkan;
            let adapters: Vec<_> = wgpu_adapters()
                .into_iter()
                .filter(|a| !vulkan || a.api == "Vulkan")
                .collect();
            let best = adapters.iter().find(|a| !a.is_cpu).or(adapters.first());
            if best.is_none() {
                let what = if vulkan { "Vulkan" } else { "wgpu" };
                return Err(DeviceError::Unavailable(format!(
                    "{what} was requested but no {what} adapter exists on this machine (is a Vulkan \
                     driver installed? Debian: apt-get install mesa-vulkan-drivers libvulkan1)"
                )));
            }
            let backend = if vulkan { BackendKind::Vulkan } else { BackendKind::Wgpu };
            wgpu_device(best, backend, "requested".to_owned())
        }
        DeviceRequest::Cuda => {
            let mut chosen = cuda_device()?;
            chosen.reason = "requested".to_owned();
            chosen
        }
        DeviceRequest::Auto => {
            if cfg!(feature = "cuda")
                && let Ok(mut chosen) = cuda_device()
            {
                chosen.reason = "CUDA device found".to_owned();
                return Ok(chosen);
            }
            let adapters = wgpu_adapters();
            match adapters.iter().find(|a| !a.is_cpu) {
                Some(gpu) => wgpu_device(Some(gpu), BackendKind::Wgpu, "GPU adapter found".to_owned()),
                None if adapters.is_empty() => flex("no GPU adapter".to_owned()),
                None => flex(format!(
                    "only a CPU rasteriser ({}) — flex is faster there",
                    adapters.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(", ")
                )),
            }
        }
    })
}

/// Like [`choose`], but when the choice is a wgpu runtime (wgpu or Vulkan), burn's runtime is
/// brought up here and its instance, adapter, device and queue are kept in
/// [`ComputeDevice::wgpu_setup`], so that a renderer (the viewer's eframe window) draws with the
/// very device burn computes on: one GPU context, no second copy of the driver's state, and
/// textures could be shared later. CUDA cannot share with a wgpu renderer: the reason says the
/// renderer has its own device.
///
/// Call it before any tensor touches wgpu's default device in this process. If burn's wgpu
/// runtime cannot be brought up, the CPU (flex) computes instead, and the reason says why: the
/// viewer still opens.
pub fn choose_shared(flag: Option<DeviceRequest>) -> Result<ComputeDevice, DeviceError> {
    let mut chosen = choose(flag)?;
    if chosen.backend == BackendKind::Cuda {
        chosen.reason += "; the renderer has its own device";
    }
    if chosen.backend.is_wgpu() {
        #[allow(unused_mut)]
        let mut options = Device::wgpu_options();
        #[cfg(feature = "vulkan")]
        if chosen.backend == BackendKind::Vulkan {
            options = options.graphics_api(burn::tensor::wgpu::WgpuBackend::Vulkan);
        }
        match options.init_with_setup() {
            Ok((device, setup)) => {
                let info = setup.adapter.get_info();
                chosen.device = device;
                chosen.name = format!("{} ({:?})", info.name, info.backend);
                chosen.reason += "; shared with the renderer";
                chosen.wgpu_setup = Some(setup);
            }
            Err(e) => return Ok(flex(format!("burn's wgpu runtime failed to start ({e})"))),
        }
    }
    Ok(chosen)
}

/// Reads a tensor back to the host as f32 values (scores, features, curvature factors).
pub fn read_back<const D: usize>(x: burn::tensor::Tensor<D>) -> Result<Vec<f32>, DeviceError> {
    x.into_data()
        .try_to_vec::<f32>()
        .map_err(|e| DeviceError::ReadBack(format!("{e:?}")))
}

/// Runs `draw`, which draws from burn's random generator on `device` (initial weights), with
/// the generator first seeded with `seed` when one is given, and no other such draw in between:
/// burn keeps one generator per backend for the whole process, so two threads initialising
/// models at once (parallel tests, a viewer job beside another) would otherwise take each
/// other's numbers, and a seeded initialisation would not reproduce.
pub fn drawing<T>(device: &Device, seed: Option<u64>, draw: impl FnOnce() -> T) -> T {
    static GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _only_drawer = GENERATOR.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(seed) = seed {
        device.seed(seed);
    }
    draw()
}
