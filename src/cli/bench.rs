//! `retrace bench`: measure plain forward+backward throughput of a model on the chosen device.

use std::path::PathBuf;

use anyhow::Result;

use retrace::data::{DataSpec, bundled_model_dir};
use retrace::device::DeviceRequest;
use retrace::diffusion::ModelDir;

use super::{compute_device, named_config};

/// Measure plain forward+backward throughput of a model on the chosen device.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Model directory (default: the bundled model; its architecture is what is measured).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Measure an architecture preset instead of a model directory.
    #[arg(long, conflicts_with = "model")]
    pub config: Option<String>,
    /// Examples per batch.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Timed batches.
    #[arg(long, default_value_t = 5)]
    pub iterations: usize,
    /// Images (× 10 timestep buckets) to time a K-FAC/EK-FAC curvature fit on (0 skips).
    #[arg(long, default_value_t = 16)]
    pub fit_images: usize,
    /// Training images of the synthetic index whose query latency is measured (0 skips).
    #[arg(long, default_value_t = 60_000)]
    pub synthetic_images: usize,
}

/// Runs `retrace bench` on the requested compute device.
pub fn run(args: BenchArgs, device: Option<DeviceRequest>) -> Result<()> {
    let BenchArgs {
        model,
        config,
        batch,
        iterations,
        fit_images,
        synthetic_images,
    } = args;
    let dev = compute_device(device)?;
    let (cfg, net, what) = match config {
        Some(name) => (
            named_config(
                &name,
                &retrace::data::Dataset::load(&DataSpec::bundled(Default::default()))?,
            )?,
            None,
            format!("preset {name}"),
        ),
        None => {
            let dir = ModelDir::open(&model.unwrap_or_else(bundled_model_dir))?;
            let (net, _) = dir.load_latest(&dev.device)?;
            (dir.info.unet.clone(), Some(net), dir.root.display().to_string())
        }
    };
    let net_for_features = net.clone().unwrap_or_else(|| cfg.init(&dev.device));
    let r = retrace::bench::forward_backward(&cfg, net, batch, iterations, &dev.device);
    let features = retrace::bench::feature_throughput(
        &cfg,
        &net_for_features,
        Default::default(),
        batch,
        iterations,
        &dev.device,
    );
    println!("model: {what} ({:.2} GFLOP per example forward)", r.forward_flops / 1e9);
    println!("device: {}", dev.name);
    println!(
        "forward+backward: {:.1} example·timesteps/s at batch {} ({} batches), {:.1} GFLOP/s",
        r.examples_per_second, r.batch, r.iterations, r.gflops
    );
    println!(
        "gradient features (capture + projection, k = {}): {features:.1} example·timesteps/s, {:.2}× forward+backward",
        retrace::grad::ProjectionConfig::default().k_in,
        features / r.examples_per_second
    );
    if fit_images > 0 {
        let c = retrace::bench::curvature_fit(&cfg, &net_for_features, fit_images, 10, batch, &dev.device)
            .map_err(anyhow::Error::msg)?;
        println!(
            "curvature fit on {} points: factors {:.1} s ({:.1} points/s), eigendecomposition {:.1} s (largest factor {}), EK-FAC correction {:.1} s ({:.1} points/s)",
            c.points,
            c.factor_seconds,
            c.points as f64 / c.factor_seconds,
            c.eigen_seconds,
            c.largest_factor,
            c.correction_seconds,
            c.points as f64 / c.correction_seconds
        );
    }
    if synthetic_images > 0 {
        let shape = [cfg.image_channels, cfg.sample_size, cfg.sample_size];
        let shapes = retrace::grad::model_layer_shapes(&net_for_features, shape, &dev.device);
        let q = retrace::bench::synthetic_query_latency(
            synthetic_images,
            10,
            &shapes,
            retrace::index::Storage::F16,
            &dev.device,
        )
        .map_err(anyhow::Error::msg)?;
        println!(
            "synthetic index: {} images × {} buckets × {} features, f16, {:.2} GB ({:.1} KB per image); first open (every checksum) {:.2} s, later opens (sizes and times) {:.3} s",
            q.images,
            q.buckets,
            q.dim,
            q.index_bytes as f64 / 1e9,
            q.index_bytes as f64 / q.images as f64 / 1024.0,
            q.open_seconds,
            q.reopen_seconds
        );
        for (name, seconds) in &q.methods {
            println!("  query scoring, {name}: {:.0} ms", seconds * 1e3);
        }
    }
    Ok(())
}
