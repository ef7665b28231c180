//! `retrace bench`: the heavy passes on the chosen device — plain forward+backward, gradient
//! capture + projection (index build), the K-FAC factor pass — as throughputs and as ratios of
//! the plain pass measured in the same run, and query latency against synthetic indexes (on
//! disk, and resident in GPU memory).

use std::path::PathBuf;

use anyhow::{Result, anyhow};
use burn::module::Module;

use retrace::data::{DataSpec, bundled_model_dir};
use retrace::device::DeviceRequest;
use retrace::diffusion::{Architecture, ModelDir};

use super::{compute_device, named_config};

/// Measure the heavy passes and query latency on the chosen device.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Model directory (default: the bundled model; its architecture is what is measured).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Measure an architecture preset (tiny, base, ddpm-cifar10), a model directory's or a
    /// diffusers config.json's, with random weights, instead of a model directory.
    #[arg(long, conflicts_with = "model")]
    pub config: Option<String>,
    /// Image shape for --config, CHANNELSxSIZE (e.g. 3x32 for ddpm-cifar10's CIFAR images);
    /// default: the bundled data's.
    #[arg(long, requires = "config", value_parser = parse_image_shape)]
    pub image: Option<(usize, usize)>,
    /// Examples per batch, comma-separated: the plain pass is measured at each, the other
    /// passes at the batch where it was fastest.
    #[arg(long, value_delimiter = ',', default_value = "32")]
    pub batch: Vec<usize>,
    /// Timed batches.
    #[arg(long, default_value_t = 5)]
    pub iterations: usize,
    /// Measure only query latency (--synthetic-images, --resident-images): no passes.
    #[arg(long)]
    pub query_only: bool,
    /// Skip the gradient-capture + projection pass (index build).
    #[arg(long)]
    pub no_index_pass: bool,
    /// Images (× 10 timestep buckets) to time a K-FAC/EK-FAC curvature fit on (0 skips).
    #[arg(long, default_value_t = 16)]
    pub fit_images: usize,
    /// Time only the fit's Kronecker-factor pass (no host eigendecomposition, no EK-FAC
    /// correction).
    #[arg(long)]
    pub factor_pass_only: bool,
    /// Sizes of the synthetic indexes whose query latency is measured, comma-separated (0
    /// skips; each is written to a temporary directory: 60,000 images take about 19 GB).
    #[arg(long, value_delimiter = ',', default_value = "1000,60000")]
    pub synthetic_images: Vec<usize>,
    /// Sizes of compact blocks held in GPU memory whose one-query latency is measured,
    /// comma-separated (GPU runtimes only; no files: a million images fit where their index
    /// would not).
    #[arg(long, value_delimiter = ',')]
    pub resident_images: Vec<usize>,
    /// Also write the results as JSON: plain forward+backward throughput per batch, the index
    /// and factor passes as ratios of it, query seconds per index size and method, bytes per
    /// image, resident-query seconds.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Parses `CxS` (channels × size, square images).
fn parse_image_shape(s: &str) -> Result<(usize, usize)> {
    let (c, size) = s
        .split_once(['x', 'X', '×'])
        .ok_or_else(|| anyhow!("{s:?}: expected CHANNELSxSIZE, e.g. 3x32"))?;
    let parse = |v: &str| match v.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(anyhow!("{s:?}: {v:?} is not a positive whole number")),
    };
    Ok((parse(c)?, parse(size)?))
}

/// The architecture (and trained weights, for a model directory) to measure, and its name.
fn architecture(
    model: Option<PathBuf>,
    config: Option<String>,
    image: Option<(usize, usize)>,
    device: &burn::tensor::Device,
) -> Result<(Architecture, Option<retrace::diffusion::Network>, String)> {
    Ok(match (config, image) {
        (Some(name), Some((channels, size))) => {
            let cfg = Architecture::named(&name, channels, size, 10).ok_or_else(|| {
                anyhow::anyhow!(
                    "--image takes a preset ({:?}); {name:?} is not one",
                    retrace::diffusion::unet::CONFIG_NAMES
                )
            })?;
            cfg.validate()
                .map_err(|e| anyhow::anyhow!("config {name} at {channels}x{size}: {e}"))?;
            (cfg, None, format!("preset {name} at {channels}x{size}x{size}"))
        }
        (Some(name), None) => (
            named_config(
                &name,
                &retrace::data::Dataset::load(&DataSpec::bundled(Default::default()))?,
            )?,
            None,
            format!("preset {name}"),
        ),
        (None, _) => {
            let dir = ModelDir::open(&model.unwrap_or_else(bundled_model_dir))?;
            let (net, _) = dir.load_latest(device)?;
            (dir.info.architecture.clone(), Some(net), dir.root.display().to_string())
        }
    })
}

/// Runs `retrace bench` on the requested compute device.
pub fn run(args: BenchArgs, device: Option<DeviceRequest>) -> Result<()> {
    let dev = compute_device(device)?;
    let (cfg, net, what) = architecture(args.model.clone(), args.config.clone(), args.image, &dev.device)?;
    let net = net.unwrap_or_else(|| cfg.init(&dev.device));
    println!("device: {}", dev.name);
    let passes = if args.query_only {
        serde_json::Value::Null
    } else {
        passes(&args, &cfg, &net, &what, &dev.device)?
    };
    let shape = cfg.shape();
    // The layer shapes come from one forward pass, on the CPU: they do not depend on the device.
    let cpu = burn::tensor::Device::flex();
    let shapes = retrace::grad::model_layer_shapes(&net.clone().to_device(&cpu), shape, &cpu);
    let mut query_seconds = serde_json::Map::new();
    let mut query_seconds_cold = serde_json::Map::new();
    let mut bytes_per_image = None;
    let mut compact_bytes_per_image = None;
    for images in args.synthetic_images.iter().copied().filter(|&n| n > 0) {
        let q = retrace::perf::query::synthetic_query_latency(
            images,
            10,
            &shapes,
            retrace::index::Storage::F16,
            &dev.device,
        )?;
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
    let mut resident = serde_json::Map::new();
    if !args.resident_images.is_empty() {
        let dim = retrace::grad::Projector::new(Default::default(), &shapes, &cpu).dim();
        for images in args.resident_images.iter().copied().filter(|&n| n > 0) {
            let q = retrace::perf::query::resident_compact_query(images, dim, &dev.device)?;
            println!(
                "compact block in GPU memory: {} images × {} features, f16, {:.2} GB (uploaded in {:.1} s); one query {:.2} ms ({:.0} GB/s)",
                q.images,
                q.dim,
                q.bytes as f64 / 1e9,
                q.upload_seconds,
                q.seconds * 1e3,
                q.gigabytes_per_second
            );
            resident.insert(
                images.to_string(),
                serde_json::json!({"seconds": q.seconds, "gb_per_second": q.gigabytes_per_second, "dim": q.dim}),
            );
        }
    }
    if let Some(path) = &args.json {
        let mut report = serde_json::json!({
            "device": dev.name,
            "model": what,
            "query_seconds": query_seconds,
            "query_seconds_cold": query_seconds_cold,
            "resident_query_seconds": resident,
            "bytes_per_image": bytes_per_image,
            "compact_bytes_per_image": compact_bytes_per_image,
        });
        if let (Some(report), serde_json::Value::Object(passes)) = (report.as_object_mut(), passes) {
            report.extend(passes);
        }
        let bytes = serde_json::to_vec_pretty(&report).expect("the report serialises");
        retrace::files::write_atomic(path, &bytes)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// The plain forward+backward pass at each batch size, then the index and factor passes at
/// the fastest one: printed, and returned as JSON (throughputs and ratios).
fn passes(
    args: &BenchArgs,
    cfg: &Architecture,
    net: &retrace::diffusion::Network,
    what: &str,
    device: &burn::tensor::Device,
) -> Result<serde_json::Value> {
    let mut plain_rows = Vec::new();
    let mut best: Option<retrace::perf::TrainStepBench> = None;
    for &batch in args.batch.iter().filter(|&&b| b > 0) {
        let r = retrace::perf::forward_backward(cfg, Some(net.clone()), batch, args.iterations, device);
        if plain_rows.is_empty() {
            println!("model: {what} ({:.2} GFLOP per example forward)", r.forward_flops / 1e9);
        }
        println!(
            "forward+backward: {:.1} example·timesteps/s at batch {} ({} batches), {:.1} GFLOP/s",
            r.examples_per_second, r.batch, r.iterations, r.gflops
        );
        plain_rows.push(serde_json::json!({
            "batch": batch,
            "plain_fwd_bwd": r.examples_per_second,
            "gflops": r.gflops,
        }));
        if best
            .as_ref()
            .is_none_or(|b| r.examples_per_second > b.examples_per_second)
        {
            best = Some(r);
        }
    }
    let best = best.ok_or_else(|| anyhow::anyhow!("--batch: give at least one positive batch size"))?;
    let batch = best.batch;
    let mut index_ratio = None;
    if !args.no_index_pass {
        let features = retrace::perf::feature_throughput(cfg, net, Default::default(), batch, args.iterations, device)?;
        index_ratio = Some(features / best.examples_per_second);
        println!(
            "gradient features (capture + projection, k = {}): {features:.1} example·timesteps/s at batch {batch}, {:.2}× forward+backward",
            retrace::grad::ProjectionConfig::default().k_in,
            features / best.examples_per_second
        );
    }
    let mut factor_ratio = None;
    if args.fit_images > 0 {
        let c = retrace::perf::curvature_fit(cfg, net, (args.fit_images, 10), batch, !args.factor_pass_only, device)?;
        let points_per_second = c.points as f64 / c.factor_seconds;
        factor_ratio = Some(points_per_second / best.examples_per_second);
        print!(
            "curvature fit on {} points: factors {:.1} s ({points_per_second:.1} points/s, {:.2}× forward+backward)",
            c.points,
            c.factor_seconds,
            points_per_second / best.examples_per_second,
        );
        if let (Some(eigen), Some(correction)) = (c.eigen_seconds, c.correction_seconds) {
            print!(
                ", eigendecomposition {eigen:.1} s (largest factor {}), EK-FAC correction {correction:.1} s ({:.1} points/s)",
                c.largest_factor,
                c.points as f64 / correction
            );
        }
        println!();
    }
    Ok(serde_json::json!({
        "plain_fwd_bwd": best.examples_per_second,
        "plain_batch": batch,
        "plain_rows": plain_rows,
        "forward_gflop": best.forward_flops / 1e9,
        "index_ratio": index_ratio,
        "factor_ratio": factor_ratio,
    }))
}

#[cfg(test)]
mod tests {
    use super::parse_image_shape;

    #[test]
    fn image_shapes_parse_and_bad_ones_are_named() {
        assert_eq!(parse_image_shape("3x32").unwrap(), (3, 32));
        assert_eq!(parse_image_shape("1×28").unwrap(), (1, 28));
        for bad in ["32", "0x32", "3x", "ax32", "3x-1"] {
            let e = parse_image_shape(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }
}
