//! K-FAC / EK-FAC influence against the exact damped GGN-inverse influence, computed densely:
//! equal where K-FAC is exact (one linear layer under the squared error), close on a small
//! two-layer convolutional net where it is an approximation, and — through [`CurvatureFit`]
//! itself, with its Monte Carlo output gradients — converging to it as the fit's draws grow.

use crate::common;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Distribution, Tensor};
use common::cpu;
use retrace::curvature::{
    CurvatureFit, Damping, EigenCorrection, Eigenvalues, FactorAccumulator, Fisher, FitConfig, LayerEigen,
    Preconditioner, Sharing,
};
use retrace::diffusion::noise::{gaussian as standard_normal, stream};
use retrace::diffusion::{Denoiser, Schedule, ScheduleConfig, Tape};
use retrace::grad::{CaptureTape, Examples, LayerGrads, PlanWalk, TimestepPlan};
use retrace::jobs::JobContext;
use retrace::stats::pearson;

/// A small network whose Linear/Conv2d calls go through a tape; returns [B, D] outputs.
trait Net {
    fn forward(&self, x: Tensor<4>, tape: &mut CaptureTape) -> Tensor<2>;
}

struct OneLinear(Linear);

impl Net for OneLinear {
    fn forward(&self, x: Tensor<4>, tape: &mut CaptureTape) -> Tensor<2> {
        let [b, c, h, w] = x.dims();
        let x = x.reshape([b, 1, c * h * w]);
        let y = self.0.forward(x.clone());
        let y = tape.dense(&self.0, &x, y);
        let d = y.dims()[2];
        y.reshape([b, d])
    }
}

struct TwoConvs(Conv2d, Conv2d);

impl Net for TwoConvs {
    fn forward(&self, x: Tensor<4>, tape: &mut CaptureTape) -> Tensor<2> {
        let h = self.0.forward(x.clone());
        let h = silu(tape.conv(&self.0, &x, h));
        let y = self.1.forward(h.clone());
        let y = tape.conv(&self.1, &h, y);
        let [b, c, hh, ww] = y.dims();
        y.reshape([b, c * hh * ww])
    }
}

/// Captures `net` on `x` with per-example objective `objective(output)`.
fn capture(net: &impl Net, x: &Tensor<4>, objective: impl FnOnce(Tensor<2>) -> Tensor<1>) -> Vec<LayerGrads> {
    let mut tape = CaptureTape::default();
    let y = net.forward(x.clone(), &mut tape);
    let grads = objective(y).sum().backward();
    tape.finish(&grads)
}

/// Per-example gradients of every layer flattened and concatenated: [B][params].
fn flat_gradients(layers: &[LayerGrads]) -> Vec<Vec<f64>> {
    let per_layer: Vec<(usize, Vec<f32>)> = layers
        .iter()
        .map(|l| {
            let g = l.per_example();
            let [_, o, i] = g.dims();
            (o * i, g.into_data().try_to_vec::<f32>().unwrap())
        })
        .collect();
    let b = layers[0].output_grads.dims()[0];
    (0..b)
        .map(|n| {
            per_layer
                .iter()
                .flat_map(|(w, v)| v[n * w..(n + 1) * w].iter().map(|&x| x as f64))
                .collect()
        })
        .collect()
}

/// Everything the comparison needs for one network and data set.
struct Problem {
    /// Exact GGN of the mean squared error, 1/N Σ_n Jᵀ (2/D) J.
    ggn: nalgebra::DMatrix<f64>,
    /// K-FAC eigendecompositions, with EK-FAC's corrected eigenvalues.
    layers: Vec<LayerEigen>,
    /// Per-layer gradient shapes (d_out, d_in+1).
    shapes: Vec<(usize, usize)>,
    /// Loss gradients of the training examples, flattened.
    train: Vec<Vec<f64>>,
    /// Loss gradients of the queries, flattened.
    queries: Vec<Vec<f64>>,
}

fn mse(target: Tensor<2>) -> impl FnOnce(Tensor<2>) -> Tensor<1> {
    move |y| {
        let d = y.dims()[1];
        (y - target).powi_scalar(2).sum_dim(1).reshape([-1]) / d as f64
    }
}

fn problem(net: &impl Net, x: Tensor<4>, target: Tensor<2>, queries: Tensor<4>, query_targets: Tensor<2>) -> Problem {
    let n = x.dims()[0];
    let d = target.dims()[1];
    let device = x.device();
    // Output-gradient basis: backpropagating √2·e_k for every output k gives the outer products
    // whose mean over k is (2/D)·JᵀJ exactly — the expectation the Monte Carlo GGN estimates.
    let basis = |k: usize| {
        let mask = Tensor::<2>::zeros([n, d], &device).slice_assign([0..n, k..k + 1], Tensor::ones([n, 1], &device));
        move |y: Tensor<2>| (y * mask).sum_dim(1).reshape([-1]) * 2f64.sqrt()
    };
    let mut factors = FactorAccumulator::new(Sharing::Expand);
    let mut captures = Vec::new();
    let params: usize;
    let mut ggn;
    {
        let first = capture(net, &x, basis(0));
        params = first
            .iter()
            .map(|l| l.per_example().dims()[1..].iter().product::<usize>())
            .sum();
        ggn = nalgebra::DMatrix::<f64>::zeros(params, params);
        captures.push(first);
    }
    for k in 1..d {
        captures.push(capture(net, &x, basis(k)));
    }
    for layers in &captures {
        factors.add(layers);
        for row in flat_gradients(layers) {
            let j = nalgebra::DVector::from_vec(row);
            // Each capture already carries the √2 scale; 1/(N·D) averages over examples and k
            // and D·(1/D) leaves the (2/D) of the Hessian: Σ_k (√2 j_k)(√2 j_k)ᵀ / (N·D).
            ggn += &j * j.transpose() / (n * d) as f64;
        }
    }
    let mut layers: Vec<LayerEigen> = factors.finish().unwrap().iter().map(LayerEigen::new).collect();
    let mut correction = EigenCorrection::new(&layers, &device.clone().inner());
    for c in &captures {
        correction.add(c);
    }
    correction.finish(&mut layers).unwrap();
    let shapes = layers.iter().map(|l| (l.d_out, l.d_in)).collect();
    let train = flat_gradients(&capture(net, &x, mse(target)));
    let queries = flat_gradients(&capture(net, &queries, mse(query_targets)));
    Problem {
        ggn,
        layers,
        shapes,
        train,
        queries,
    }
}

impl Problem {
    /// Exact influences qᵀ (G + λI)⁻¹ g_i of every query on every training example.
    fn exact(&self, lambda: f64) -> Vec<Vec<f64>> {
        let p = self.ggn.nrows();
        let damped = &self.ggn + nalgebra::DMatrix::<f64>::identity(p, p) * lambda;
        let inverse = damped.try_inverse().expect("damped GGN is invertible");
        self.queries
            .iter()
            .map(|q| {
                let pre = &inverse * nalgebra::DVector::from_vec(q.clone());
                self.train
                    .iter()
                    .map(|g| pre.dot(&nalgebra::DVector::from_vec(g.clone())))
                    .collect()
            })
            .collect()
    }

    /// Influences through retrace's preconditioner.
    fn kfac(&self, eigenvalues: Eigenvalues, lambda: f64, device: &Device) -> Vec<Vec<f64>> {
        let pre = Preconditioner::new(&self.layers, eigenvalues, Damping::Absolute(lambda), device).unwrap();
        self.queries
            .iter()
            .map(|q| {
                let mut offset = 0;
                let per_layer: Vec<Tensor<3>> = self
                    .shapes
                    .iter()
                    .map(|&(o, i)| {
                        let v: Vec<f32> = q[offset..offset + o * i].iter().map(|&x| x as f32).collect();
                        offset += o * i;
                        Tensor::<1>::from_floats(v.as_slice(), device).reshape([1, o, i])
                    })
                    .collect();
                let pre_q: Vec<f64> = pre
                    .apply(&per_layer)
                    .unwrap()
                    .into_iter()
                    .flat_map(|t| t.into_data().try_to_vec::<f32>().unwrap())
                    .map(|x| x as f64)
                    .collect();
                self.train
                    .iter()
                    .map(|g| g.iter().zip(&pre_q).map(|(a, b)| a * b).sum())
                    .collect()
            })
            .collect()
    }

    /// A damping of `factor` × the mean eigenvalue of the exact GGN.
    fn damping(&self, factor: f64) -> f64 {
        factor * self.ggn.trace() / self.ggn.nrows() as f64
    }
}

/// The flex device's random generator is shared: the tests that seed it and draw from it take
/// turns, so each sees the same numbers on every run.
static SEEDED: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn gaussian(shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

#[test]
fn kfac_and_ekfac_equal_the_exact_ggn_influence_on_one_linear_layer() {
    let _turn = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
    let device = cpu().autodiff();
    device.seed(5);
    let net = OneLinear(LinearConfig::new(6, 3).init(&device));
    let (x, q) = (gaussian([20, 1, 2, 3], &device), gaussian([3, 1, 2, 3], &device));
    let (t, tq) = (gaussian([20, 3, 1, 1], &device), gaussian([3, 3, 1, 1], &device));
    let p = problem(&net, x, t.reshape([20, 3]), q, tq.reshape([3, 3]));
    assert_eq!(p.ggn.nrows(), 3 * 7);
    for factor in [1e-3, 0.1] {
        let lambda = p.damping(factor);
        let exact = p.exact(lambda);
        for eigenvalues in [Eigenvalues::Kfac, Eigenvalues::Ekfac] {
            let approx = p.kfac(eigenvalues, lambda, &cpu());
            let scale = exact.iter().flatten().map(|v| v.abs()).fold(0.0, f64::max);
            let worst = exact
                .iter()
                .flatten()
                .zip(approx.iter().flatten())
                .map(|(a, b)| (a - b).abs() / scale)
                .fold(0.0, f64::max);
            println!("{eigenvalues:?}, damping {factor}× mean eigenvalue: max relative error {worst:.2e}");
            assert!(
                worst <= 1e-4,
                "{eigenvalues:?} at damping {factor}: relative error {worst:.2e}"
            );
        }
    }
    // The preconditioner computes the same on wgpu (lavapipe in CI) as on flex.
    let lambda = p.damping(0.1);
    let flex = p.kfac(Eigenvalues::Ekfac, lambda, &cpu());
    let gpu = p.kfac(Eigenvalues::Ekfac, lambda, &common::wgpu());
    let scale = flex.iter().flatten().map(|v| v.abs()).fold(0.0, f64::max);
    let diff = flex
        .iter()
        .flatten()
        .zip(gpu.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(diff <= 1e-4 * scale, "flex vs wgpu differ by {diff} (scale {scale})");
}

#[test]
fn kfac_and_ekfac_track_the_exact_ggn_influence_on_a_small_conv_net() {
    let _turn = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
    let device = cpu().autodiff();
    device.seed(9);
    let conv = |cin, cout| {
        Conv2dConfig::new([cin, cout], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(&device)
    };
    let net = TwoConvs(conv(1, 3), conv(3, 1));
    let n = 24;
    let (x, q) = (gaussian([n, 1, 5, 5], &device), gaussian([4, 1, 5, 5], &device));
    let t = (x.clone() * 0.5 + gaussian([n, 1, 5, 5], &device) * 0.3).reshape([n, 25]);
    let tq = (q.clone() * 0.5 + gaussian([4, 1, 5, 5], &device) * 0.3).reshape([4, 25]);
    let p = problem(&net, x, t, q, tq);
    let lambda = p.damping(0.1);
    let exact: Vec<f64> = p.exact(lambda).into_iter().flatten().collect();
    for (eigenvalues, floor) in [(Eigenvalues::Kfac, 0.9), (Eigenvalues::Ekfac, 0.9)] {
        let approx: Vec<f64> = p.kfac(eigenvalues, lambda, &cpu()).into_iter().flatten().collect();
        let r = pearson(&exact, &approx);
        println!("{eigenvalues:?} vs exact GGN influence on a two-conv net: Pearson {r:.4}");
        assert!(r >= floor, "{eigenvalues:?}: Pearson {r:.4} < {floor}");
    }
}

/// A denoiser that is one linear map of the flattened noisy image (the step is ignored). Under
/// the squared error its GGN is A ⊗ (2/D)·I exactly, so K-FAC is exact for it and a Monte Carlo
/// fit can differ from the exact GGN only by sampling noise.
#[derive(Module, Debug)]
struct LinearDenoiser {
    map: Linear,
}

impl Denoiser for LinearDenoiser {
    fn predict_with(
        &self,
        x: Tensor<4>,
        _t: Tensor<1>,
        _condition: Option<Tensor<2>>,
        tape: &mut impl Tape,
    ) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let flat = x.reshape([b, 1, c * h * w]);
        let y = self.map.forward(flat.clone());
        tape.dense(&self.map, &flat, y).reshape([b, c, h, w])
    }
}

impl Net for LinearDenoiser {
    fn forward(&self, x: Tensor<4>, tape: &mut CaptureTape) -> Tensor<2> {
        let [b, c, h, w] = x.dims();
        let t = Tensor::zeros([b], &x.device());
        self.predict_with(x, t, None, tape).reshape([b, c * h * w])
    }
}

/// The worst entry-wise error of `approx` against `exact`, relative to exact's largest entry.
fn worst_relative_error(exact: &[Vec<f64>], approx: &[Vec<f64>]) -> f64 {
    let scale = exact.iter().flatten().map(|v| v.abs()).fold(0.0, f64::max);
    exact
        .iter()
        .flatten()
        .zip(approx.iter().flatten())
        .map(|(a, b)| (a - b).abs() / scale)
        .fold(0.0, f64::max)
}

#[test]
fn curvature_fit_with_monte_carlo_ggn_converges_to_the_exact_ggn_influence_where_kfac_is_exact() {
    let _turn = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
    let device = cpu();
    device.seed(13);
    let model = LinearDenoiser {
        map: LinearConfig::new(6, 6).init(&device),
    };
    let images = 16;
    let examples = Examples {
        ids: (0..images as u64).collect(),
        shape: [1, 2, 3],
        log_variance: None,
        values: standard_normal(&mut stream("kfac-test-images", &[]), images * 6)
            .into_iter()
            .map(|v| (v * 0.5).clamp(-1.0, 1.0))
            .collect(),
        region: None,
        conditions: vec![Default::default(); images],
    };
    let schedule = Schedule::new(&ScheduleConfig::default());
    let job = JobContext::silent();
    let ad = device.clone().autodiff();
    let mut errors = Vec::new();
    for draws in [2, 32] {
        let plan = TimestepPlan {
            shared_noise: false,
            ..TimestepPlan::new(schedule.len(), 4, draws, 3).unwrap()
        };
        let config = FitConfig {
            fisher: Fisher::Ggn,
            sharing: Sharing::Expand,
            plan: plan.clone(),
        };
        let fit = CurvatureFit {
            model: &model,
            schedule: &schedule,
            config: &config,
            examples: &examples,
            batch_size: 48,
            device: &device,
        };
        let fitted = fit.run(true, &job).unwrap();
        // The exact GGN over the very points the fit visited: the noisy inputs of the plan.
        let (mut inputs, mut noises) = (Vec::new(), Vec::new());
        let walk = PlanWalk {
            examples: &examples,
            plan: &plan,
            schedule: &schedule,
            batch_size: 48,
            device: &ad,
            encoding: Default::default(),
        };
        let walked = walk.run(&job, "exact GGN", |batch| {
            inputs.push(batch.noisy.x_t);
            noises.push(batch.noisy.noise);
            Ok::<(), retrace::grad::GradError>(())
        });
        walked.unwrap();
        let x = Tensor::cat(inputs, 0);
        let noise = Tensor::cat(noises, 0);
        let points = x.dims()[0];
        assert_eq!(points, images * 4 * draws);
        // Queries and training gradients: the squared error at a few points and at all of them.
        let queries = x.clone().narrow(0, 0, 5);
        let query_targets = noise.clone().narrow(0, 0, 5).reshape([5, 6]);
        let on_autodiff = model.clone().to_device(&ad);
        let mut p = problem(&on_autodiff, x, noise.reshape([points, 6]), queries, query_targets);
        p.layers = fitted;
        let lambda = p.damping(0.1);
        let exact = p.exact(lambda);
        let kfac = worst_relative_error(&exact, &p.kfac(Eigenvalues::Kfac, lambda, &device));
        let ekfac = worst_relative_error(&exact, &p.kfac(Eigenvalues::Ekfac, lambda, &device));
        println!("{points} fit points: worst relative error K-FAC {kfac:.3}, EK-FAC {ekfac:.3}");
        errors.push((kfac, ekfac));
    }
    let ((kfac_few, ekfac_few), (kfac_many, ekfac_many)) = (errors[0], errors[1]);
    // 16× the points: the sampling error should shrink about 4×; a wrong scale or a biased
    // estimate would leave an error that does not shrink.
    assert!(kfac_many <= 0.1 && ekfac_many <= 0.1, "{errors:?}");
    assert!(
        kfac_many <= kfac_few / 2.0 && ekfac_many <= ekfac_few / 2.0,
        "{errors:?}"
    );
}
