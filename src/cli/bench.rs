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
    /// Sizes of the synthetic indexes whose query latency is measured, comma-separated (0
    /// skips; each is written to a temporary directory: 60,000 images take about 19 GB).
    #[arg(long, value_delimiter = ',', default_value = "1000,60000")]
    pub synthetic_images: Vec<usize>,
    /// Also write the results as JSON: plain forward+backward throughput, the index and
    /// factor passes as ratios of it, query seconds per index size and method, bytes per image.
    #[arg(long)]
    pub json: Option<PathBuf>,
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
        json,
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
    let mut factor_ratio = None;
    if fit_images > 0 {
        let c = retrace::bench::curvature_fit(&cfg, &net_for_features, fit_images, 10, batch, &dev.device)
            .map_err(anyhow::Error::msg)?;
        let points_per_second = c.points as f64 / c.factor_seconds;
        factor_ratio = Some(points_per_second / r.examples_per_second);
        println!(
            "curvature fit on {} points: factors {:.1} s ({:.1} points/s, {:.2}× forward+backward), eigendecomposition {:.1} s (largest factor {}), EK-FAC correction {:.1} s ({:.1} points/s)",
            c.points,
            c.factor_seconds,
            points_per_second,
            points_per_second / r.examples_per_second,
            c.eigen_seconds,
            c.largest_factor,
            c.correction_seconds,
            c.points as f64 / c.correction_seconds
        );
    }
    let mut query_seconds = serde_json::Map::new();
    let mut query_seconds_cold = serde_json::Map::new();
    let mut bytes_per_image = None;
    let mut compact_bytes_per_image = None;
    for images in synthetic_images.into_iter().filter(|&n| n > 0) {
        let shape = [cfg.image_channels, cfg.sample_size, cfg.sample_size];
        let shapes = retrace::grad::model_layer_shapes(&net_for_features, shape, &dev.device);
        let q = retrace::bench::query::synthetic_query_latency(
            images,
            10,
            &shapes,
            retrace::index::Storage::F16,
            &dev.device,
        )
        .map_err(anyhow::Error::msg)?;
        let per_image = q.index_bytes as f64 / q.images as f64;
        bytes_per_image = Some(per_image);
        compact_bytes_per_image = Some(q.compact_bytes_per_image);
        println!(
            "synthetic index: {} images × {} buckets × {} features, f16, {:.2} GB ({:.1} KB per image, {:.1} KB of it read by a ranking method); first open (every checksum) {:.2} s, later opens (sizes and times) {:.3} s",
            q.images,
            q.buckets,
            q.dim,
            q.index_bytes as f64 / 1e9,
            per_image / 1024.0,
            q.compact_bytes_per_image as f64 / 1024.0,
            q.open_seconds,
            q.reopen_seconds
        );
        println!(
            "  floor: reading the compact block once (warm) {:.0} ms",
            q.floor_seconds * 1e3
        );
        let (mut warm, mut cold) = (serde_json::Map::new(), serde_json::Map::new());
        for m in &q.methods {
            let cold_text = m.cold_seconds.map_or("—".to_owned(), |s| format!("{:.0} ms", s * 1e3));
            println!(
                "  query scoring, {}: warm {:.0} ms ({:.1}× the floor), cold {cold_text}",
                m.method,
                m.warm_seconds * 1e3,
                m.warm_seconds / q.floor_seconds
            );
            warm.insert(m.method.clone(), serde_json::json!(m.warm_seconds));
            cold.insert(m.method.clone(), serde_json::json!(m.cold_seconds));
        }
        warm.insert("open_first".into(), serde_json::json!(q.open_seconds));
        warm.insert("open_later".into(), serde_json::json!(q.reopen_seconds));
        warm.insert("floor".into(), serde_json::json!(q.floor_seconds));
        query_seconds.insert(images.to_string(), serde_json::Value::Object(warm));
        query_seconds_cold.insert(images.to_string(), serde_json::Value::Object(cold));
    }
    if let Some(path) = json {
        let report = serde_json::json!({
            "device": dev.name,
            "model": what,
            "plain_fwd_bwd": r.examples_per_second,
            "index_ratio": features / r.examples_per_second,
            "factor_ratio": factor_ratio,
            "query_seconds": query_seconds,
            "query_seconds_cold": query_seconds_cold,
            "bytes_per_image": bytes_per_image,
            "compact_bytes_per_image": compact_bytes_per_image,
        });
        let bytes = serde_json::to_vec_pretty(&report).expect("the report serialises");
        retrace::files::write_atomic(&path, &bytes)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
