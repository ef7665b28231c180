//! Projected gradient inner products track the exact ones.

use crate::common;

use burn::tensor::Tensor;
use common::{cpu, fashion_subset, tiny_config};
use retrace::diffusion::Schedule;
use retrace::diffusion::images::batch_tensor;
use retrace::diffusion::train::{batch_plan, noise_images};
use retrace::grad::{ProjectionConfig, Projector, capture_layers, layer_shapes};
use retrace::stats::{pearson, spearman};

#[test]
fn projected_inner_products_track_exact_ones_at_the_default_k() {
    let device = cpu().autodiff();
    let model = tiny_config().init_seeded(&device, 11);
    let n = 16;
    let data = fashion_subset(n);
    let schedule = Schedule::new(&Default::default());
    let (_, ts, noise) = batch_plan(2, 0, n, n, schedule.len(), data.image_len());
    let idx: Vec<usize> = (0..n).collect();
    let batch = noise_images(&schedule, batch_tensor(&data, &idx, &device), &ts, noise);
    let (layers, _) = capture_layers(&model, batch.x_t, batch.t, None, |p| {
        let [b, c, h, w] = p.dims();
        (p - batch.noise)
            .powi_scalar(2)
            .reshape([b, c * h * w])
            .mean_dim(1)
            .reshape([b])
    });

    let exact: Vec<Tensor<2>> = layers
        .iter()
        .map(|l| {
            let g = l.per_example();
            let [b, o, i] = g.dims();
            g.reshape([b, o * i])
        })
        .collect();
    let exact = Tensor::cat(exact, 1);
    let projector = Projector::new(ProjectionConfig::default(), &layer_shapes(&layers), &cpu());
    let projected = projector.project(&layers);
    assert_eq!(projected.dims(), [n, projector.dim()]);

    let gram = |m: Tensor<2>| m.clone().matmul(m.transpose()).into_data().try_to_vec::<f32>().unwrap();
    let (ge, gp) = (gram(exact), gram(projected));
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for i in 0..n {
        for j in 0..i {
            xs.push(ge[i * n + j] as f64);
            ys.push(gp[i * n + j] as f64);
        }
    }
    let (r, rho) = (pearson(&xs, &ys), spearman(&xs, &ys));
    println!(
        "projection dim {} over {} layers: Pearson {r:.3}, Spearman {rho:.3}",
        projector.dim(),
        layers.len()
    );
    assert!(r >= 0.9 && rho >= 0.8, "Pearson {r:.3}, Spearman {rho:.3}");
}
