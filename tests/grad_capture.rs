//! Per-example gradients from one batched capture equal batch-of-one autodiff, layer by layer.

use crate::common;

use std::collections::HashMap;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::{Gradients, Tensor};
use common::{cpu, fashion_subset, tiny_config, tiny_unet_config};
use retrace::diffusion::images::batch_tensor;
use retrace::diffusion::train::label_conditions;
use retrace::diffusion::train::{NoisyBatch, batch_plan, noise_images};
use retrace::diffusion::unet::ClassEmbedType;
use retrace::diffusion::{Architecture, Schedule, UNetConfig};
use retrace::grad::{LayerKind, capture_layers, layer_names};

/// Per-example loss: mean over pixels of the squared noise-prediction error.
fn per_example_loss(prediction: Tensor<4>, noise: Tensor<4>) -> Tensor<1> {
    let [b, c, h, w] = prediction.dims();
    (prediction - noise)
        .powi_scalar(2)
        .reshape([b, c * h * w])
        .mean_dim(1)
        .reshape([b])
}

/// Every parameter's gradient, by id.
fn param_grads<M: Module>(module: &M, grads: &Gradients) -> HashMap<ParamId, Vec<f32>> {
    struct Collect<'a>(&'a Gradients, HashMap<ParamId, Vec<f32>>);
    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = param.val().grad(self.0) {
                self.1.insert(param.id, g.into_data().try_to_vec::<f32>().unwrap());
            }
        }
    }
    let mut c = Collect(grads, HashMap::new());
    module.visit(&mut c);
    c.1
}

fn slice(batch: &NoisyBatch, i: usize) -> (Tensor<4>, Tensor<1>, Tensor<4>, Option<Tensor<2>>) {
    (
        batch.x_t.clone().narrow(0, i, 1),
        batch.t.clone().narrow(0, i, 1),
        batch.noise.clone().narrow(0, i, 1),
        batch.condition.clone().map(|rows| rows.narrow(0, i, 1)),
    )
}

#[test]
fn captured_per_example_gradients_match_batch_of_one_autodiff() {
    check_capture(tiny_unet_config(), 0);
}

/// The class embedding of a class-conditional U-Net is captured like every other layer: a
/// table (one-hot rows through a bias-free Linear) and diffusers' "timestep" label MLP.
#[test]
fn captured_gradients_of_class_conditional_unets_match_autodiff() {
    let table = tiny_unet_config().with_classes(10);
    assert_eq!(check_capture(table, 1), 1, "the class table");
    let timestep = UNetConfig {
        class_embed_type: Some(ClassEmbedType::Timestep),
        null_class: Some(10),
        ..tiny_unet_config()
    };
    assert_eq!(check_capture(timestep, 2), 2, "the label MLP's two Linears");
}

/// Checks every captured layer's per-example gradient of `config`'s network against
/// batch-of-one autodiff, with each example under its own label; returns how many more layers
/// than the unconditional network it captured.
fn check_capture(config: UNetConfig, extra_layers: usize) -> usize {
    let device = cpu().autodiff();
    let model = Architecture::from(config.clone()).init_seeded(&device, 3);
    let data = fashion_subset(3);
    let schedule = Schedule::new(&Default::default());
    let (_, _, noise) = batch_plan(5, 0, 3, 3, schedule.len(), data.image_len());
    let batch = noise_images(
        &schedule,
        batch_tensor(&data, &[0, 1, 2], &device),
        &[10, 400, 900],
        noise,
    )
    .conditioned(&config.condition_encoding(), &label_conditions(&data, &[0, 1, 2]))
    .unwrap();
    assert_eq!(batch.condition.is_some(), extra_layers > 0);

    let (layers, losses) = capture_layers(
        &model,
        batch.x_t.clone(),
        batch.t.clone(),
        batch.condition.clone(),
        |p| per_example_loss(p, batch.noise.clone()),
    );
    let unconditional = tiny_config().init_seeded(&device, 3);
    let (plain, _) = capture_layers(&unconditional, batch.x_t.clone(), batch.t.clone(), None, |p| {
        per_example_loss(p, batch.noise.clone())
    });
    assert_eq!(losses.dims(), [3]);
    let names = layer_names(&model);
    let convs = layers.iter().filter(|l| l.kind == LayerKind::Conv).count();
    assert!(
        convs >= 10 && layers.len() > convs,
        "{convs} convs of {} layers",
        layers.len()
    );

    let mut worst = (0.0f32, String::new());
    for i in 0..3 {
        let (x, t, n, c) = slice(&batch, i);
        let loss = per_example_loss(model.forward(x, t, c), n).sum();
        let exact = param_grads(&model, &loss.backward());
        for layer in &layers {
            let captured = layer.per_example().narrow(0, i, 1);
            let [_, d_out, d_in] = captured.dims();
            let captured = captured.reshape([d_out, d_in]);
            let weight = &exact[&layer.weight];
            let weight = match layer.kind {
                // Conv2d weights are [out, in, kh, kw]: rows are already [out, in·kh·kw].
                LayerKind::Conv => {
                    Tensor::<1>::from_floats(weight.as_slice(), &cpu()).reshape([d_out, weight.len() / d_out])
                }
                // Linear weights are [in, out].
                LayerKind::Dense => Tensor::<1>::from_floats(weight.as_slice(), &cpu())
                    .reshape([weight.len() / d_out, d_out])
                    .transpose(),
            };
            let mut columns = vec![weight];
            if let Some(bias) = layer.bias {
                columns.push(Tensor::<1>::from_floats(exact[&bias].as_slice(), &cpu()).reshape([d_out, 1]));
            }
            let expected = Tensor::cat(columns, 1);
            let err = (captured.inner().to_device(&cpu()) - expected.clone())
                .powi_scalar(2)
                .sum()
                .sqrt()
                .into_scalar::<f32>();
            let norm = expected.powi_scalar(2).sum().sqrt().into_scalar::<f32>();
            let rel = err / norm.max(1e-12);
            if rel > worst.0 {
                worst = (rel, format!("{} (example {i}, |g| = {norm:e})", names[&layer.weight]));
            }
        }
    }
    assert!(worst.0 <= 1e-4, "worst relative error {:e} at {}", worst.0, worst.1);
    println!("worst relative error {:e} at {}", worst.0, worst.1);
    layers.len() - plain.len()
}
