//! Compute-device policy. A real GPU adapter → burn's wgpu backend; when the only wgpu adapters
//! are CPU rasterisers (llvmpipe, lavapipe, WARP) → burn's flex backend, which on a CPU is about
//! ten times faster than wgpu on lavapipe (≈100 vs ≈10 GFLOP/s for a 512² matmul, measured on a
//! 2-core machine). `--device` or `RETRACE_DEVICE` (`auto`, `cpu`, `wgpu`) overrides the choice.

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
}

impl FromStr for DeviceRequest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" | "flex" => Ok(Self::Cpu),
            "wgpu" | "gpu" => Ok(Self::Wgpu),
            _ => Err(format!("unknown device {s:?}; expected auto, cpu or wgpu")),
        }
    }
}

/// Which backend computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// burn's pure-Rust CPU backend.
    Flex,
    /// burn's wgpu backend.
    Wgpu,
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

fn wgpu_device(adapter: Option<&AdapterSummary>, reason: String) -> ComputeDevice {
    let name = adapter.map_or_else(|| "wgpu".to_owned(), |a| format!("{} ({})", a.name, a.api));
    ComputeDevice {
        device: Device::wgpu(DeviceKind::DefaultDevice),
        backend: BackendKind::Wgpu,
        name,
        reason,
        wgpu_setup: None,
    }
}

/// The environment variable burn reads for its default device (`Device::default()`). retrace
/// never computes there, but burn-optim restores optimizer state onto it: the `retrace` binary
/// sets it to `flex` unless the user did (see `main.rs`).
pub const BURN_DEFAULT_ENV: &str = "BURN_DEVICE";

/// Applies the policy to a request (the `--device` flag, else `RETRACE_DEVICE`, else auto).
pub fn choose(flag: Option<DeviceRequest>) -> Result<ComputeDevice, String> {
    let request = match flag {
        Some(r) => r,
        None => match std::env::var(DEVICE_ENV) {
            Ok(v) if !v.is_empty() => v.parse().map_err(|e| format!("{DEVICE_ENV}: {e}"))?,
            _ => DeviceRequest::Auto,
        },
    };
    Ok(match request {
        DeviceRequest::Cpu => flex("requested".to_owned()),
        DeviceRequest::Wgpu => {
            let adapters = wgpu_adapters();
            let best = adapters.iter().find(|a| !a.is_cpu).or(adapters.first());
            if best.is_none() {
                return Err("wgpu was requested but no wgpu adapter exists on this machine".to_owned());
            }
            wgpu_device(best, "requested".to_owned())
        }
        DeviceRequest::Auto => {
            let adapters = wgpu_adapters();
            match adapters.iter().find(|a| !a.is_cpu) {
                Some(gpu) => wgpu_device(Some(gpu), "GPU adapter found".to_owned()),
                None if adapters.is_empty() => flex("no GPU adapter".to_owned()),
                None => flex(format!(
                    "only a CPU rasteriser ({}) — flex is faster there",
                    adapters.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(", ")
                )),
            }
        }
    })
}

/// Like [`choose`], but when the choice is wgpu, burn's runtime is brought up here and its
/// instance, adapter, device and queue are kept in [`ComputeDevice::wgpu_setup`], so that a
/// renderer (the viewer's eframe window) draws with the very device burn computes on: one GPU
/// context, no second copy of the driver's state, and textures could be shared later.
///
/// Call it before any tensor touches wgpu's default device in this process. If burn's wgpu
/// runtime cannot be brought up, the CPU (flex) computes instead, and the reason says why: the
/// viewer still opens.
pub fn choose_shared(flag: Option<DeviceRequest>) -> Result<ComputeDevice, String> {
    let mut chosen = choose(flag)?;
    if chosen.backend == BackendKind::Wgpu {
        match Device::wgpu_options().init_with_setup() {
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
pub fn read_back<const D: usize>(x: burn::tensor::Tensor<D>) -> Result<Vec<f32>, String> {
    x.into_data()
        .try_to_vec::<f32>()
        .map_err(|e| format!("cannot read a tensor back from the device: {e:?}"))
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
