//! `retrace devices`: the compute devices this machine offers each of burn's runtimes, and the
//! one `--device auto` (or the requested one) takes.

use anyhow::Result;

use retrace::device::{self, DeviceRequest};

/// Lists the wgpu adapters, whether CUDA answers, and the device that would compute.
pub fn run(request: Option<DeviceRequest>) -> Result<()> {
    let adapters = device::wgpu_adapters();
    if adapters.is_empty() {
        println!("wgpu adapters: none (no Vulkan driver? Debian: apt-get install mesa-vulkan-drivers libvulkan1)");
    } else {
        println!("wgpu adapters:");
        for a in &adapters {
            let kind = if a.is_cpu { ", a CPU rasteriser" } else { "" };
            println!("  {} ({}{kind})", a.name, a.api);
        }
    }
    match device::cuda_device() {
        Ok(cuda) => println!("cuda: {}", cuda.name),
        Err(e) => println!("cuda: {e}"),
    }
    let chosen = device::choose(request)?;
    println!("computes on: {chosen}");
    Ok(())
}
