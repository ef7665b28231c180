//! Performance measurements, what `retrace bench` prints (the LDS benchmark of `crate::eval` is
//! another thing): the throughput floor every attribution method is measured against — plain
//! batched forward+backward passes of the diffusion loss, in example·timesteps per second —
//! and the arithmetic rate that implies.

pub mod error;
pub mod query;

pub use error::PerfError;

use std::time::Instant;

use burn::module::Module;
use burn::nn::Linear;
use burn::nn::conv::Conv2d;
use burn::tensor::{Device, Tensor};

use crate::diffusion::train::{batch_plan, diffusion_loss, noise_images};
use crate::diffusion::{Architecture, Condition, Denoiser, Network, Schedule, Tape};

/// Counts the multiply-adds of every Conv2d and Linear in a forward pass.
#[derive(Default)]
pub struct FlopCounter {
    /// Floating-point operations (2 per multiply-add) of one forward pass.
    pub flops: f64,
}

impl Tape for FlopCounter {
    fn conv(&mut self, conv: &Conv2d, input: &Tensor<4>, output: Tensor<4>) -> Tensor<4> {
        let [b, cin, _, _] = input.dims();
        let [_, cout, ho, wo] = output.dims();
        let [kh, kw] = conv.kernel_size;
        self.flops += 2.0 * (b * cout * ho * wo * cin * kh * kw) as f64;
        output
    }
    fn dense(&mut self, dense: &Linear, input: &Tensor<3>, output: Tensor<3>) -> Tensor<3> {
        let [b, p, din] = input.dims();
        let dout = dense.weight.dims()[1];
        self.flops += 2.0 * (b * p * din * dout) as f64;
        output
    }
}

/// FLOPs of one example's forward pass through the Conv2d and Linear layers.
pub fn forward_flops(model: &Network, config: &Architecture, device: &Device) -> f64 {
    let s = config.sample_size();
    let x = Tensor::<4>::zeros([1, config.image_channels(), s, s], device);
    let t = Tensor::<1>::zeros([1], device);
    let mut counter = FlopCounter::default();
    let _ = model.predict_with(
        x,
        t,
        config.condition_encoding().class_zero_rows(1, device),
        &mut counter,
    );
    counter.flops
}

/// Result of the forward+backward benchmark.
#[derive(Clone, Debug)]
pub struct TrainStepBench {
    /// Examples per batch.
    pub batch: usize,
    /// Timed batches.
    pub iterations: usize,
    /// Example·timesteps per second (one example at one timestep is one unit).
    pub examples_per_second: f64,
    /// Achieved GFLOP/s, counting forward + backward as 3× the forward FLOPs.
    pub gflops: f64,
    /// Forward FLOPs per example.
    pub forward_flops: f64,
}

/// Times `iterations` batched forward+backward passes of the diffusion loss (after one warm-up).
pub fn forward_backward(
    config: &Architecture,
    model: Option<Network>,
    batch: usize,
    iterations: usize,
    device: &Device,
) -> TrainStepBench {
    let ad = device.clone().autodiff();
    let model = match model {
        Some(m) => m.to_device(&ad).train(),
        None => config.init(&ad),
    };
    let schedule = Schedule::new(&Default::default());
    let s = config.sample_size();
    let pixels = config.image_channels() * s * s;
    let run = |step: usize| {
        let (_, ts, noise) = batch_plan(0, step, batch, batch, schedule.len(), pixels);
        let x0 = Tensor::<4>::zeros([batch, config.image_channels(), s, s], &ad);
        let mut noisy = noise_images(&schedule, x0, &ts, noise);
        noisy.condition = config.condition_encoding().class_zero_rows(batch, &ad);
        let loss = diffusion_loss(&model, &noisy);
        let grads = loss.backward();
        drop(grads);
    };
    run(0);
    let _ = ad.sync();
    let start = Instant::now();
    for i in 0..iterations {
        run(i + 1);
    }
    let _ = ad.sync();
    let secs = start.elapsed().as_secs_f64();
    let fwd = forward_flops(&model, config, &ad);
    let examples = (batch * iterations) as f64;
    TrainStepBench {
        batch,
        iterations,
        examples_per_second: examples / secs,
        gflops: 3.0 * fwd * examples / secs / 1e9,
        forward_flops: fwd,
    }
}

/// Example·timesteps per second of gradient capture + projection (what index building does),
/// measured on `batch × iterations` (image, timestep) pairs after one warm-up batch.
pub fn feature_throughput(
    config: &Architecture,
    model: &Network,
    projection: crate::grad::ProjectionConfig,
    batch: usize,
    iterations: usize,
    device: &Device,
) -> Result<f64, PerfError> {
    use crate::grad::{Examples, FeatureRun, Projector, TimestepPlan, model_layer_shapes};
    let s = config.sample_size();
    let shape = [config.image_channels(), s, s];
    let projector = Projector::new(projection, &model_layer_shapes(model, shape, device), device);
    let schedule = Schedule::new(&Default::default());
    let job = crate::jobs::JobContext::silent();
    let run = |buckets: usize| {
        let plan = TimestepPlan::new(schedule.len(), buckets, 1, 0)?;
        let examples = Examples {
            ids: (0..batch as u64).collect(),
            shape,
            values: vec![0.0; batch * shape.iter().product::<usize>()],
            log_variance: None,
            region: None,
            conditions: vec![Condition::Class(0); batch],
        };
        let features = FeatureRun {
            model,
            schedule: &schedule,
            plan: &plan,
            projector: &projector,
            measurement: crate::diffusion::Measurement::Loss,
            batch_size: batch,
            device,
        };
        features.run(&examples, &job).map(|_| ())
    };
    run(1)?;
    let start = Instant::now();
    run(iterations)?;
    Ok((batch * iterations) as f64 / start.elapsed().as_secs_f64())
}

/// Timings of a curvature fit.
#[derive(Clone, Debug)]
pub struct CurvatureTimings {
    /// (image, t, ε) points per pass.
    pub points: usize,
    /// The Kronecker-factor pass.
    pub factor_seconds: f64,
    /// Host eigendecomposition of every factor (`None` when only the factor pass was timed).
    pub eigen_seconds: Option<f64>,
    /// EK-FAC's eigenvalue-correction pass (`None` when only the factor pass was timed).
    pub correction_seconds: Option<f64>,
    /// Largest factor side (d_in + 1 or d_out).
    pub largest_factor: usize,
}

/// Times a K-FAC + EK-FAC fit of `model` on `images` random images × `buckets` points each:
/// the Kronecker-factor pass, and with `whole` the host eigendecomposition and EK-FAC's
/// correction pass too.
pub fn curvature_fit(
    config: &Architecture,
    model: &Network,
    (images, buckets): (usize, usize),
    batch: usize,
    whole: bool,
    device: &Device,
) -> Result<CurvatureTimings, PerfError> {
    use crate::curvature::{CurvatureFit, Fisher, FitConfig, Sharing, eigendecompose};
    use crate::diffusion::noise::{gaussian, stream};
    use crate::grad::{Examples, TimestepPlan};
    let s = config.sample_size();
    let shape = [config.image_channels(), s, s];
    let pixels = shape.iter().product::<usize>();
    let examples = Examples {
        ids: (0..images as u64).collect(),
        shape,
        log_variance: None,
        values: gaussian(&mut stream("bench-images", &[0]), images * pixels)
            .into_iter()
            .map(|v| v.clamp(-1.0, 1.0))
            .collect(),
        region: None,
        conditions: vec![Condition::Class(0); images],
    };
    let mut plan = TimestepPlan::new(1000, buckets, 1, 0)?;
    plan.shared_noise = false;
    let fit_config = FitConfig {
        fisher: Fisher::Ggn,
        sharing: Sharing::Expand,
        plan,
    };
    let schedule = Schedule::new(&Default::default());
    let fit = CurvatureFit {
        model,
        schedule: &schedule,
        config: &fit_config,
        examples: &examples,
        batch_size: batch,
        device,
    };
    let job = crate::jobs::JobContext::silent();
    let start = Instant::now();
    let factors = fit.factors(&job)?;
    let factor_seconds = start.elapsed().as_secs_f64();
    let largest_factor = factors.iter().map(|f| f.d_in.max(f.d_out)).max().unwrap_or(0);
    let (mut eigen_seconds, mut correction_seconds) = (None, None);
    if whole {
        let start = Instant::now();
        let mut layers = eigendecompose(&factors, &job);
        eigen_seconds = Some(start.elapsed().as_secs_f64());
        let start = Instant::now();
        fit.correct(&mut layers, &job)?;
        correction_seconds = Some(start.elapsed().as_secs_f64());
    }
    Ok(CurvatureTimings {
        points: images * buckets,
        factor_seconds,
        eigen_seconds,
        correction_seconds,
        largest_factor,
    })
}
